"""Shared by the TFLite modules: the errors, TensorFlow on demand, a model's inputs, tensor names to layers."""

import re

from keras_attention import _compat
from keras_attention._inputs import IMAGE_EXTENSIONS  # noqa: F401 - public as tflite.IMAGE_EXTENSIONS
from keras_attention.backend import all_layers

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")


_FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")


_TFLITE_IDENTIFIER = b"TFL3"


class TFLiteConversionError(RuntimeError):
    """The TFLite converter failed for a reason other than a missing builtin op."""


class FlexOpError(TFLiteConversionError):
    """The model needs TensorFlow ops with no TFLite builtin (Flex / select TF ops).

    Attributes:
        ops: list of `(tf_op_name, layer_description)` pairs, e.g.
            `("MatrixDeterminant", "'my_det' (Det)")`; the layer is `None` when
            it could not be traced back.
    """

    def __init__(self, message, ops):
        super().__init__(message)
        self.ops = list(ops)


class InvalidTFLiteModelError(ValueError):
    """The bytes or file given as a `.tflite` model are not a usable TFLite model."""


def _tf():
    import tensorflow as tf

    return tf


def _model_inputs(model):
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            "keras_attention.tflite: the model has no defined inputs. Build it with keras.Input "
            "(functional or Sequential with an Input) or call it once on data before converting."
        )
    return list(inputs)


def _input_structure(model):
    if isinstance(model, _SavedModelCallable):
        return model.inputs
    structure = _compat.nested_inputs(model, None)
    return structure if structure is not None else _model_inputs(model)


def _pack_inputs(model, args):
    tf = _tf()
    structure = _input_structure(model)
    if not isinstance(structure, (list, tuple, dict)):
        return args[0]
    return tf.nest.pack_sequence_as(structure, list(args))


def _dtype_name(dtype):
    name = getattr(dtype, "name", dtype)
    return str(name)


def _saved_model_signature(directory):
    tf = _tf()
    loaded = tf.saved_model.load(directory)
    if "serving_default" not in loaded.signatures:
        raise ValueError(
            f"keras_attention.tflite: the SavedModel at {directory!r} has no 'serving_default' signature "
            f"(it has {sorted(loaded.signatures)})."
        )
    return loaded, loaded.signatures["serving_default"]


def _first_lines(text, count):
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[:count]) + ("\n..." if len(lines) > count else "")


def _scope_of(tensor_name):
    return tensor_name.split(";")[0].split(":")[0] if tensor_name else None


def _layer_for_scope(model, scope):
    """'outer' > 'inner' (Class) description of the Keras layer a TF name scope belongs to."""
    if not scope or model is None:
        return None
    layers = all_layers(model)
    by_name = {}
    for layer in layers:
        by_name.setdefault(layer.name, layer)
    names = sorted(by_name, key=len, reverse=True)
    chain = []
    for component in scope.split("/"):
        for name in names:
            # Keras 3 scopes are the layer name plus "_1"-style suffixes.
            if component == name or re.fullmatch(re.escape(name) + r"(_\d+)+", component):
                if name != model.name:
                    chain.append(by_name[name])
                break
    if not chain:
        return None
    path = " > ".join(f"'{layer.name}'" for layer in chain)
    return (
        f"{path} ({type(chain[-1]).__name__})"
        if len(chain) == 1
        else f"{path} ({' > '.join(type(layer).__name__ for layer in chain)})"
    )


def _natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class _SavedModelCallable:
    """Calls a SavedModel's serving signature like a Keras model on a list of inputs."""

    def __init__(self, directory):
        self._loaded, self._signature = _saved_model_signature(directory)
        specs = self._signature.structured_input_signature[1]
        self._names = sorted(specs, key=_natural_key)
        self._dtypes = [specs[n].dtype for n in self._names]
        self.inputs = self._names

    def __call__(self, inputs, training=False):
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        tf = _tf()
        outputs = self._signature(**{n: tf.cast(x, d) for n, x, d in zip(self._names, inputs, self._dtypes)})
        return [outputs[k] for k in sorted(outputs, key=_natural_key)]
