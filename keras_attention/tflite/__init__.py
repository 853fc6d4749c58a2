"""TFLite (LiteRT) for phones: conversion in one call, and its proof.

`convert(model, quantization=...)` turns a Keras 3 (TensorFlow backend) or a
tf_keras model into a `.tflite` flatbuffer that uses builtin ops only:

* `"float32"`: plain conversion; matches Keras to float rounding.
* `"float16"`: weights stored as float16 (half the file), computed in float32
  on CPU (float16 on GPU delegates).
* `"dynamic"`: dynamic-range quantization, int8 weights, float activations.
* `"int8"`: full-integer post-training quantization calibrated on
  `representative_data`; every op runs in int8 (float in/out unless
  `int8_io=True`). Calibrate with data like the data the model will see, and
  judge it on trained weights: a randomly initialised network's activations
  can fade to nothing, so int8 numbers on random weights mean little.

Keras 3 models go through a SavedModel export (converting through concrete
functions can leave the weights as live variables); mixed-precision models are
rebuilt under float32 first (the weights are float32 anyway). When a model
needs TensorFlow ops that have no TFLite builtin (Flex / "select TF ops",
which a phone runs only with the large Flex delegate linked in), `convert`
raises `FlexOpError` naming each op and the Keras layer it came from.

`verify(model, tflite_model, data)` runs the Keras model and the `.tflite` in
the LiteRT interpreter (`ai_edge_litert`, XNNPACK on) on the same data and
returns a `VerificationReport`: errors, cosine similarity, top-1 agreement, the
op inventory (op x dtype), builtin-only, int8 end to end, GPU-delegate
compatibility from TensorFlow Lite's analyzer, file size and median latency on
1 and 2 threads.

Where each part lives: `conversion` (`convert`, Flex-op reporting),
`calibration` (representative data), `saved_model` (the SavedModel
exporter), `mixed_precision` (float32 copies), `inspection` (the
flatbuffer: op inventory, int8 coverage, degenerate scales, GPU delegate),
`interpreter` (`run`, `measure_latency`, the crash probe) and `verification`
(`verify` and its report). Import from `keras_attention.tflite`.
"""

from keras_attention.tflite._common import (
    IMAGE_EXTENSIONS,
    QUANTIZATIONS,
    FlexOpError,
    InvalidTFLiteModelError,
    TFLiteConversionError,
)
from keras_attention.tflite.conversion import convert
from keras_attention.tflite.inspection import (
    DEGENERATE_SCALE,
    GPU_DELEGATE_OPS,
    degenerate_activations,
    float_ops,
    gpu_compatibility,
    gpu_unsupported_ops,
    is_int8_end_to_end,
    load_flatbuffer,
    multiply_adds,
    op_counts,
    op_inventory,
    quantization_kind,
)
from keras_attention.tflite.interpreter import _Runner, measure_latency, run
from keras_attention.tflite.mixed_precision import float32_copy, is_mixed_precision
from keras_attention.tflite.saved_model import export_saved_model
from keras_attention.tflite.verification import VerificationReport, verify

__all__ = [
    "QUANTIZATIONS",
    "IMAGE_EXTENSIONS",
    "TFLiteConversionError",
    "FlexOpError",
    "InvalidTFLiteModelError",
    "is_mixed_precision",
    "float32_copy",
    "export_saved_model",
    "convert",
    "load_flatbuffer",
    "op_inventory",
    "op_counts",
    "float_ops",
    "multiply_adds",
    "is_int8_end_to_end",
    "quantization_kind",
    "DEGENERATE_SCALE",
    "degenerate_activations",
    "GPU_DELEGATE_OPS",
    "gpu_unsupported_ops",
    "gpu_compatibility",
    "run",
    "measure_latency",
    "VerificationReport",
    "verify",
]
