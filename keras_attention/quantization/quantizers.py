"""The int8 fake quantizers of Keras 3 QAT, kept importable here: they live in `keras_attention.layers.quantizers`
(beside the layers that run them at their quantization points, so nothing imports upward)."""

from keras_attention.layers.quantizers import *  # noqa: F403
from keras_attention.layers.quantizers import __all__  # noqa: F401
