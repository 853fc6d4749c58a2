"""Attention layers."""

from keras_attention.layers.cbam import CBAM
from keras_attention.layers.centermask import SAGMaskHead
from keras_attention.layers.channel import ChannelAttention, EfficientChannelAttention, SqueezeExcitation
from keras_attention.layers.channel_variants import CircularEfficientChannelAttention, EffectiveSqueezeExcitation
from keras_attention.layers.coord import CoordinateAttention
from keras_attention.layers.factory import ATTENTIONS, get_attention
from keras_attention.layers.roi_align import RoIAlign, assign_levels_by_ratio
from keras_attention.layers.spatial import SpatialAttention
from keras_attention.layers.thundernet import ContextEnhancement, LightRPNHead, RPNGuidedSpatialAttention

__all__ = [
    "RoIAlign",
    "SAGMaskHead",
    "assign_levels_by_ratio",
    "ContextEnhancement",
    "LightRPNHead",
    "RPNGuidedSpatialAttention",
    "ATTENTIONS",
    "CBAM",
    "ChannelAttention",
    "CircularEfficientChannelAttention",
    "EffectiveSqueezeExcitation",
    "CoordinateAttention",
    "EfficientChannelAttention",
    "SpatialAttention",
    "SqueezeExcitation",
    "get_attention",
]
