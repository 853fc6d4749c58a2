"""Mixed-precision models rebuilt under float32 for conversion (also used by QAT)."""

from keras_attention import backend
from keras_attention.backend import all_layers, keras
from keras_attention.tflite._common import TFLiteConversionError


def is_mixed_precision(model):
    """True when any layer of `model` computes in float16 or bfloat16."""
    for layer in [model] + all_layers(model):
        compute = getattr(layer, "compute_dtype", None)
        if compute in ("float16", "bfloat16"):
            return True
    return False


def _float32_config(config):
    """`config` with every mixed-precision dtype policy replaced by float32."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "dtype" and _is_mixed_policy(value):
                out[key] = "float32"
            else:
                out[key] = _float32_config(value)
        return out
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    return config


def _is_mixed_policy(value):
    if isinstance(value, str):
        return value.startswith("mixed_") or value in ("float16", "bfloat16")
    if isinstance(value, dict) and "Policy" in str(value.get("class_name", "")):
        name = (value.get("config") or {}).get("name", "")
        return str(name).startswith("mixed_") or name in ("float16", "bfloat16")
    return False


def float32_copy(model):
    """A float32 copy of a mixed-precision model, with the same weights and layer names.

    Each layer is rebuilt from its config with every mixed policy replaced by
    float32 (under a float32 global policy), then the weights are copied. The
    variables of a mixed-precision model are float32 already, so nothing is
    lost; the TFLite model then computes in float32 (use
    `quantization="float16"` to store float16 weights).
    """
    previous = backend.global_dtype_policy_name()

    def clone_layer(layer):
        return layer.__class__.from_config(_float32_config(layer.get_config()))

    backend.set_global_dtype_policy("float32")
    try:
        try:
            clone = keras.models.clone_model(model, clone_function=clone_layer)
        except Exception as error:  # noqa: BLE001 - re-raised with advice
            raise TFLiteConversionError(
                "keras_attention.tflite: could not rebuild the mixed-precision model in float32 "
                f"({type(error).__name__}: {error}). Rebuild it yourself under "
                "keras.mixed_precision.set_global_policy('float32'), copy the weights with "
                "set_weights(), and convert that model."
            ) from error
    finally:
        backend.set_global_dtype_policy(previous)
    clone.set_weights(model.get_weights())
    return clone
