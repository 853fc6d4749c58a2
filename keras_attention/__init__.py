"""keras_attention: convolutional attention layers for Keras 3 and tf_keras.

Import `keras_attention` and every layer is registered under the package name,
so saved models reload with `safe_mode=True` and no `custom_objects`.
"""

from keras_attention import backend
from keras_attention.layers import (
    CBAM,
    ChannelAttention,
    EfficientChannelAttention,
    SpatialAttention,
    SqueezeExcitation,
    get_attention,
)

__version__ = "0.1.0"

__all__ = [
    "CBAM", "ChannelAttention", "EfficientChannelAttention", "SpatialAttention",
    "SqueezeExcitation", "backend", "get_attention", "__version__",
]
