"""keras_attention: convolutional attention layers for Keras 3 and tf_keras.

Import `keras_attention` and every layer is registered under the package name,
so saved models reload with `safe_mode=True` and no `custom_objects`.
"""

from keras_attention import _native_logs

_native_logs.quiet_if_the_command()  # before TensorFlow is imported below: see _native_logs

from keras_attention import backend, data, losses, quantization  # noqa: E402
from keras_attention.backbones import attach, freeze_backbone, unfreeze  # noqa: E402
from keras_attention.layers import (  # noqa: E402
    CBAM,
    ChannelAttention,
    CircularEfficientChannelAttention,
    ContextEnhancement,
    CoordinateAttention,
    EffectiveSqueezeExcitation,
    EfficientChannelAttention,
    EfficientChannelAttentionMLP,
    EfficientLocalAttention,
    GatherExcite,
    GlobalContext,
    LightCBAM,
    LightRPNHead,
    RoIAlign,
    RPNGuidedSpatialAttention,
    SAGMaskHead,
    SimpleCoordinateAttention,
    SpatialAttention,
    SqueezeExcitation,
    StripAttention,
    get_attention,
)

__version__ = "0.1.0"

__all__ = [
    "CBAM",
    "ChannelAttention",
    "SpatialAttention",
    "SqueezeExcitation",
    "EfficientChannelAttention",
    "CoordinateAttention",
    "EffectiveSqueezeExcitation",
    "CircularEfficientChannelAttention",
    "EfficientChannelAttentionMLP",
    "LightCBAM",
    "SimpleCoordinateAttention",
    "EfficientLocalAttention",
    "StripAttention",
    "GatherExcite",
    "GlobalContext",
    "ContextEnhancement",
    "LightRPNHead",
    "RPNGuidedSpatialAttention",
    "RoIAlign",
    "SAGMaskHead",
    "get_attention",
    "attach",
    "freeze_backbone",
    "unfreeze",
    "backend",
    "data",
    "losses",
    "__version__",
]
