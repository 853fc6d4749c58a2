"""Attention layers."""

from keras_attention.layers.cbam import CBAM, LightCBAM
from keras_attention.layers.centermask import SAGMaskHead
from keras_attention.layers.channel import ChannelAttention, EfficientChannelAttention, SqueezeExcitation
from keras_attention.layers.channel_variants import (
    CircularEfficientChannelAttention,
    EffectiveSqueezeExcitation,
    EfficientChannelAttentionMLP,
)
from keras_attention.layers.coord import CoordinateAttention, SimpleCoordinateAttention
from keras_attention.layers.factory import ATTENTIONS, get_attention
from keras_attention.layers.gather_excite import GatherExcite
from keras_attention.layers.global_context import GlobalContext
from keras_attention.layers.roi_align import RoIAlign, assign_levels_by_ratio
from keras_attention.layers.spatial import SpatialAttention
from keras_attention.layers.strip import EfficientLocalAttention, StripAttention
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
    "EfficientChannelAttentionMLP",
    "LightCBAM",
    "SimpleCoordinateAttention",
    "EfficientLocalAttention",
    "StripAttention",
    "GatherExcite",
    "GlobalContext",
    "EfficientChannelAttention",
    "SpatialAttention",
    "SqueezeExcitation",
    "get_attention",
]
