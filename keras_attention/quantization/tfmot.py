"""Quantization-aware training (QAT) with tensorflow-model-optimization.

Post-training int8 squeezes every attention gate into TFLite's fixed sigmoid
scale (1/256) and calibrates the data-dependent ranges of the pooled
descriptors once, after training. QAT simulates that int8 arithmetic while
the model is fine-tuned, so the weights learn to live with it.

    TF_USE_LEGACY_KERAS=1 python train.py         # tfmot works only on tf_keras

    from keras_attention import quantization
    qat = quantization.quantize_model(model)      # float model -> QAT model
    qat.compile(...); qat.fit(...)                # fine-tune a few epochs
    tflite_int8 = keras_attention.tflite.convert(qat, "int8", representative_data=x)

`quantize_model` wraps every keras_attention layer in tfmot's
`QuantizeWrapperV2` with a `QuantizeConfig` of ours (one per public layer)
and leaves the standard Keras layers to tfmot's default 8-bit scheme. Our
configs run the layer's own forward pass, the one Keras 3 QAT runs: they give
each of its named int8 points (pooled descriptors, convolution outputs, the
gate's logits, products and sums; `layers/_quantization.py`) a tfmot
quantizer with its own range variables, and the layer fake-quantizes its
kernels per output channel (symmetric, narrow range) and the sigmoid's output
to TFLite's fixed scale 1/256, zero point -128, as TFLite computes them. The
converter then produces a model that is int8 from input to output, attention
included.

BatchNormalization *inside* our layers (SpatialAttention's optional BN,
RPNGuidedSpatialAttention's, LightRPNHead's) is folded into the preceding
convolution with its moving statistics, and those statistics stay frozen
during QAT (its gamma and beta still train): the int8 model computes exactly
the folded convolution QAT trained.

Helpers:
* `quantize_model(model)`: the QAT copy of a whole functional/Sequential model.
* `quantize_annotate_layer(layer)`, `quantize_annotate_model(model)`,
  `quantize_apply(model)`: tfmot's annotate-then-apply flow, with our configs,
  for quantizing only part of a model.
* `quantize_scope()`, `load_qat_model(path)`, `save_qat_model(model, path)`:
  saving and loading. `.h5` and SavedModel directories round-trip; `.keras`
  does not (tfmot's quantize layers do not reload from it) and is refused with
  a clear error instead of writing a file that cannot be read back.
* `float32_model(model)`: the float32 copy of a mixed-precision model (tfmot
  fails on mixed_float16; `quantize_model` calls this itself).
* `quantize_config_for(layer)` and the config classes
  (`CBAMQuantizeConfig`, ...; created on first use).

Everything here needs `TF_USE_LEGACY_KERAS=1` (tf_keras): tfmot 0.8.1 does not
support Keras 3. Under Keras 3 every entry point raises a `RuntimeError` that
says what to set. tensorflow_model_optimization is imported lazily: importing
it sets `TF_USE_LEGACY_KERAS=1` as a side effect, so importing it at
`import keras_attention` time would make the active Keras depend on import
order.
"""

import os

from keras_attention import backend
from keras_attention._io import atomic_path
from keras_attention.backend import is_mixed_precision, keras
from keras_attention.quantization.tfmot_configs import (  # noqa: F401 - re-exported
    _FEATURE,
    CONFIG_NAMES,
    NOT_QUANTIZED,
    UnsupportedLayerError,
    _quantized_class,
    _require,
    _require_tf_keras,
    quantize_config_for,
    quantize_scope,
    supported_layers,
)
from keras_attention.quantization.tfmot_weights import load_keras3_weights  # noqa: F401 - re-exported

__all__ = [
    "quantize_model",
    "quantize_annotate_layer",
    "quantize_annotate_model",
    "quantize_apply",
    "quantize_scope",
    "quantize_config_for",
    "load_qat_model",
    "save_qat_model",
    "float32_model",
    "is_mixed_precision",
    "supported_layers",
    "load_keras3_weights",
    "UnsupportedLayerError",
]  # the *QuantizeConfig classes are attributes too, created on first access (they need tfmot)


def __getattr__(name):  # PEP 562: the config classes exist once tfmot is imported
    from keras_attention.quantization import tfmot_configs

    return getattr(tfmot_configs, name)


# --------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------


def float32_model(model):
    """A float32 copy of a mixed-precision model (same layer names and weights).

    tfmot's QAT fails under mixed_float16; this is `backend.float32_copy`
    (each layer rebuilt from its config in float32, weights copied). A model
    that is float32 already is returned as it is.
    """
    _require_tf_keras("float32_model")
    if not is_mixed_precision(model):
        return model
    return backend.float32_copy(model, "keras_attention.quantization.float32_model")


# --------------------------------------------------------------------------
# Annotate / apply
# --------------------------------------------------------------------------


def quantize_annotate_layer(layer, quantize_config=None):
    """tfmot's `quantize_annotate_layer`, choosing our QuantizeConfig for our layers.

    For a keras_attention layer the config defaults to `quantize_config_for(layer)`;
    for a standard Keras layer to tfmot's default 8-bit scheme. Use it on the
    layers to quantize when building a model, then `quantize_apply(model)`.
    """
    tfmot = _require("quantize_annotate_layer")
    if quantize_config is None:
        quantize_config = quantize_config_for(layer)
    return tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=quantize_config)


def _check_graph_model(model, what):
    if not isinstance(model, keras.Model):
        raise ValueError(f"{_FEATURE}.{what}: expected a tf_keras Model; got {type(model).__name__}.")
    if not isinstance(model, keras.Sequential) and not getattr(model, "_is_graph_network", False):
        raise ValueError(
            f"{_FEATURE}.{what}: {model.name!r} is a subclassed model; tfmot quantizes only functional "
            "and Sequential models. Rebuild it with the functional API."
        )
    if not model.built:
        raise ValueError(f"{_FEATURE}.{what}: {model.name!r} is not built; give it an Input first.")


def quantize_annotate_model(model):
    """Annotates every layer of a functional/Sequential model for `quantize_apply`.

    keras_attention layers get our QuantizeConfigs, other layers tfmot's
    default scheme (`quantize_apply` raises `UnsupportedLayerError` for layers
    neither supports; to quantize only part of a model, annotate those layers
    yourself with `quantize_annotate_layer`).
    """
    tfmot = _require("quantize_annotate_model")
    _check_graph_model(model, "quantize_annotate_model")
    qk = tfmot.quantization.keras
    for layer in model.layers:
        if isinstance(layer, _wrapper_class()):
            raise ValueError(
                f"{_FEATURE}: model {model.name!r} is already quantization-aware (layer {layer.name!r} is a "
                "QuantizeWrapper); quantize the float model."
            )
        if type(layer).__name__ in NOT_QUANTIZED and _quantized_class(layer) is None:
            raise UnsupportedLayerError(
                f"{_FEATURE}: layer {layer.name!r} ({type(layer).__name__}) is not quantized: "
                f"{NOT_QUANTIZED[type(layer).__name__]}"
            )
        if isinstance(layer, keras.Model):
            raise UnsupportedLayerError(
                f"{_FEATURE}: model {model.name!r} contains the nested model {layer.name!r}; tfmot cannot "
                "quantize nested models. Flatten it, e.g. keras.Model(inner.input, head(inner.output))."
            )

    def annotate(layer):
        if isinstance(layer, (keras.layers.InputLayer, _annotate_class())):
            return layer
        return qk.quantize_annotate_layer(layer, quantize_config=quantize_config_for(layer))

    return keras.models.clone_model(model, clone_function=annotate)


def _wrapper_class():
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

    return QuantizeWrapper


def _annotate_class():
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import QuantizeAnnotate

    return QuantizeAnnotate


def quantize_apply(model):
    """tfmot's `quantize_apply` inside `quantize_scope()`: the annotated model made QAT-ready."""
    tfmot = _require("quantize_apply")
    with quantize_scope():
        try:
            return tfmot.quantization.keras.quantize_apply(model)
        except RuntimeError as error:
            if "is not supported" not in str(error):
                raise
            raise UnsupportedLayerError(
                f"{_FEATURE}: {error} Replace the layer by a supported one (e.g. apply a Rescaling "
                "layer's preprocessing outside the model), or quantize only part of the model: "
                "annotate the layers to quantize with quantize_annotate_layer() and call quantize_apply()."
            ) from error


def quantize_model(model):
    """A quantization-aware-training copy of a model holding keras_attention layers.

    Args:
        model: a built tf_keras functional or Sequential model (no nested
            models) whose layers are keras_attention layers or layers tfmot's
            default 8-bit scheme supports (Conv2D, DepthwiseConv2D, Dense,
            BatchNormalization, ReLU, Add, pooling, ...). A mixed-precision model
            is copied to float32 first. The model is not modified.

    Returns:
        A new tf_keras model: our layers wrapped with our QuantizeConfigs, the
        others with tfmot's; weights copied. Compile and fine-tune it (a few
        epochs, small learning rate), then convert it with
        `keras_attention.tflite.convert(qat_model, "int8", representative_data=...)`
        for an int8-end-to-end `.tflite`. Save it with `save_qat_model` (`.h5`
        or a SavedModel directory); its `save()` refuses `.keras`.

    Raises:
        RuntimeError: under Keras 3 (set `TF_USE_LEGACY_KERAS=1`).
        UnsupportedLayerError: layers neither we nor tfmot can quantize.
        ValueError: a subclassed or unbuilt model.
    """
    _require("quantize_model")
    _check_graph_model(model, "quantize_model")
    model = float32_model(model)
    qat = quantize_apply(quantize_annotate_model(model))
    _guard_save(qat)
    return qat


# --------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------

_KERAS_V3_ERROR = (
    "{feature}: a QAT model cannot be saved as {path!r}: tfmot's quantize layers do not reload "
    "from the .keras format (their variable counts do not match on load), so the file would be "
    "unusable. Save it as .h5 (`save_qat_model(model, 'model.h5')`) or as a SavedModel directory "
    "(`save_qat_model(model, 'model_dir')`), and reload with `load_qat_model(path)`; or convert it "
    "to TFLite directly."
)


def _is_keras_v3_path(path):
    return str(os.fspath(path)).lower().endswith(".keras")


def save_qat_model(model, path, include_optimizer=True):
    """Saves a QAT model in a format that reloads: `.h5`/`.hdf5` or a SavedModel directory.

    Args:
        model: a model from `quantize_model` / `quantize_apply`.
        path: `*.h5` (HDF5, one file) or a directory (TensorFlow SavedModel).
            `*.keras` raises `ValueError` (tfmot's quantize layers do not
            reload from it) before anything is written.
        include_optimizer: save the optimizer state too.

    Returns:
        The path.
    """
    _require_tf_keras("save_qat_model")
    path = os.fspath(path)
    if _is_keras_v3_path(path):
        raise ValueError(_KERAS_V3_ERROR.format(feature=f"{_FEATURE}.save_qat_model", path=path))
    save = getattr(model, "_ka_unguarded_save", None) or model.save
    save_format = "h5" if path.lower().endswith((".h5", ".hdf5")) else "tf"
    # Whole or not at all: a failed save leaves the previous file or folder as it was.
    with atomic_path(path, f"{_FEATURE}.save_qat_model", allow_directory=save_format == "tf") as temporary:
        save(temporary, save_format=save_format, include_optimizer=include_optimizer)
    return path


def _guard_save(model):
    """Makes `model.save(...)` refuse `.keras` with the clear error (instance attribute)."""
    unguarded = model.save

    def save(filepath, *args, **kwargs):
        if _is_keras_v3_path(filepath) or kwargs.get("save_format") in ("keras", "keras_v3"):
            raise ValueError(_KERAS_V3_ERROR.format(feature=f"{_FEATURE}: model.save", path=os.fspath(filepath)))
        return unguarded(filepath, *args, **kwargs)

    save.__doc__ = unguarded.__doc__
    object.__setattr__(model, "_ka_unguarded_save", unguarded)
    object.__setattr__(model, "save", save)
    return model


def load_qat_model(path, compile=True):  # noqa: A002 - Keras' argument name
    """Loads a QAT model saved by `save_qat_model` (`.h5` or SavedModel directory).

    `.keras` raises `ValueError`. The model's `save()` refuses `.keras` again.
    """
    _require_tf_keras("load_qat_model")
    path = os.fspath(path)
    if _is_keras_v3_path(path):
        raise ValueError(_KERAS_V3_ERROR.format(feature=f"{_FEATURE}.load_qat_model", path=path))

    try:
        with quantize_scope():
            model = keras.models.load_model(path, compile=compile)
    except ValueError as error:
        raise ValueError(
            f"{_FEATURE}.load_qat_model: {path!r} does not load ({error}). A tf_keras QAT file saved by "
            "keras-vision-attention 0.1 holds its layers' quantizer variables under former names and does not "
            "load into today's layers: load the float weights into the float model and call quantize_model again."
        ) from error
    return _guard_save(model)
