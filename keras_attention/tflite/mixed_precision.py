"""Mixed-precision models rebuilt under float32 for conversion: `backend`'s helpers, with TFLite's error."""

from keras_attention import backend
from keras_attention.backend import is_mixed_precision
from keras_attention.tflite._common import TFLiteConversionError


def float32_copy(model):
    """A float32 copy of a mixed-precision model, with the same weights and layer names.

    The variables of a mixed-precision model are float32 already, so nothing
    is lost; the TFLite model then computes in float32 (use
    `quantization="float16"` to store float16 weights). A model that cannot
    be rebuilt raises `TFLiteConversionError`. See `backend.float32_copy`.
    """
    return backend.float32_copy(model, "keras_attention.tflite", TFLiteConversionError)


__all__ = ["float32_copy", "is_mixed_precision"]
