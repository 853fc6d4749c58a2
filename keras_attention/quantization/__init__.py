"""Quantization-aware training (QAT): int8 TFLite files that keep the model's accuracy.

Keras 3 (TensorFlow, JAX or PyTorch backend) — the path to lead with:

    from keras_attention import quantization, tflite
    qat = quantization.quantize_model(model)      # float model -> QAT model (same weights)
    qat.compile(...); qat.fit(...)                # fine-tune a few epochs (jit_compile=True works)
    qat.save("qat.keras")                         # reloads with safe_mode=True after import keras_attention
    tflite.convert(qat, "int8")                   # on TensorFlow; no representative data needed

Built on `keras.quantizers.fake_quant_with_min_max_vars`; see `keras3.py` for
what each layer becomes and `quantizers.py` for the int8 scheme (TFLite's).

tf_keras (`TF_USE_LEGACY_KERAS=1`) with tensorflow-model-optimization: the same
`quantize_model` name takes the tfmot path (`tfmot.py`), with its annotate/apply
helpers, `save_qat_model`/`load_qat_model` and `load_keras3_weights`.
"""

from keras_attention import backend
from keras_attention.quantization import tfmot as _tfmot
from keras_attention.quantization.tfmot import (  # noqa: F401 - the tf_keras API, unchanged
    UnsupportedLayerError,
    float32_model,
    is_mixed_precision,
    load_keras3_weights,
    load_qat_model,
    quantize_annotate_layer,
    quantize_annotate_model,
    quantize_apply,
    quantize_config_for,
    quantize_scope,
    save_qat_model,
)

if not backend.IS_LEGACY:
    # Imported here so `import keras_attention` registers the QAT layers: a QAT .keras file then
    # reloads with safe_mode=True.
    from keras_attention.layers.quantizers import ActivationQuantizer  # noqa: F401
    from keras_attention.quantization import keras3 as _keras3
    from keras_attention.quantization.keras3 import calibrate, is_qat_model, uncalibrated  # noqa: F401
    from keras_attention.quantization.layers import (  # noqa: F401
        QuantizedActivation,
        QuantizedBatchNormalization,
        QuantizedConv,
        QuantizedNormalization,
        QuantizedRescaling,
    )
else:

    def is_qat_model(model):  # noqa: D103 - tf_keras QAT models are tfmot's
        return False


def quantize_model(model, **kwargs):
    """The QAT copy of `model`: Keras 3 natively (`keras3.quantize_model`), tf_keras through tfmot."""
    if backend.IS_LEGACY:
        return _tfmot.quantize_model(model, **kwargs)
    return _keras3.quantize_model(model, **kwargs)


def supported_layers():
    """The keras_attention layer classes the active path's `quantize_model` covers."""
    if backend.IS_LEGACY:
        return _tfmot.supported_layers()
    from keras_attention import layers

    return tuple(
        cls for cls in vars(layers).values() if isinstance(cls, type) and issubclass(cls, _keras3.QuantizationPoints)
    )


def __getattr__(name):  # the tfmot QuantizeConfig classes, created on first access (they need tfmot)
    return getattr(_tfmot, name)
