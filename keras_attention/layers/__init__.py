"""Attention layers."""

from keras_attention.layers.cbam import CBAM
from keras_attention.layers.channel import ChannelAttention, EfficientChannelAttention, SqueezeExcitation
from keras_attention.layers.factory import ATTENTIONS, get_attention
from keras_attention.layers.spatial import SpatialAttention

__all__ = [
    "ATTENTIONS", "CBAM", "ChannelAttention", "EfficientChannelAttention", "SpatialAttention",
    "SqueezeExcitation", "get_attention",
]
