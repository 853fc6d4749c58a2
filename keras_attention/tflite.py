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
"""

import contextlib
import dataclasses
import io
import os
import re
import shutil
import statistics
import tempfile
import time
import warnings
from collections import Counter

import numpy as np

from keras_attention import backend
from keras_attention._io import check_destination, write_bytes
from keras_attention.backend import IS_LEGACY, all_layers, keras

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
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


# --------------------------------------------------------------------------- helpers


def _tf():
    import tensorflow as tf

    return tf


def _to_numpy(t):
    if hasattr(t, "numpy"):
        return np.asarray(t.numpy())
    return np.asarray(t)


def _flatten(structure):
    """Flattens nested lists/tuples/dicts (dicts by sorted key, as tf.nest does)."""
    if isinstance(structure, dict):
        return [leaf for key in sorted(structure) for leaf in _flatten(structure[key])]
    if isinstance(structure, (list, tuple)):
        return [leaf for item in structure for leaf in _flatten(item)]
    return [structure]


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
    for attribute in ("_inputs_struct", "_nested_inputs"):
        structure = getattr(model, attribute, None)
        if structure is not None:
            return structure
    return _model_inputs(model)


def _pack_inputs(model, args):
    tf = _tf()
    structure = _input_structure(model)
    if not isinstance(structure, (list, tuple, dict)):
        return args[0]
    return tf.nest.pack_sequence_as(structure, list(args))


def _dtype_name(dtype):
    name = getattr(dtype, "name", dtype)
    return str(name)


# ---------------------------------------------------------------- mixed precision


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


# ---------------------------------------------------------------------- export


def _input_specs(model, batch_size):
    tf = _tf()
    specs = []
    for i, tensor in enumerate(_model_inputs(model)):
        shape = list(tensor.shape)
        shape[0] = batch_size
        specs.append(tf.TensorSpec(shape, _dtype_name(tensor.dtype), name=f"input_{i}"))
    return specs


def _serving_function(model):
    tf = _tf()

    def serve(*args):
        outputs = model(_pack_inputs(model, args), training=False)
        return {
            f"output_{i}": tf.cast(o, "float32") if _dtype_name(o.dtype) in ("float16", "bfloat16") else o
            for i, o in enumerate(tf.nest.flatten(outputs))
        }

    return serve


def export_saved_model(model, directory, batch_size=1):
    """Writes `model` as a SavedModel with one `serving_default` signature.

    Inputs are named `input_0, input_1, ...` (in `model.inputs` order) with the
    batch fixed to `batch_size` (None keeps it free); outputs are
    `output_0, output_1, ...` in flattened output order. Keras 3 goes through
    `keras.export.ExportArchive`; tf_keras through `tf.saved_model.save` of a
    module that tracks the model's variables.
    """
    tf = _tf()
    specs = _input_specs(model, batch_size)
    serve = _serving_function(model)
    if IS_LEGACY:
        module = tf.Module()
        module.model_variables = list(model.variables)
        function = tf.function(serve, input_signature=specs)
        tf.saved_model.save(module, directory, signatures={"serving_default": function.get_concrete_function()})
    else:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve, input_signature=specs)
        archive.write_out(directory, verbose=False)
    return directory


# ------------------------------------------------------------ representative data


def _load_image_directory(directory, shape, limit):
    tf = _tf()
    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(
            f"keras_attention.tflite: representative_data directory {directory!r} holds no images "
            f"(looked for {', '.join(IMAGE_EXTENSIONS)})."
        )
    height, width, channels = shape[1], shape[2], shape[3]
    images = []
    for name in names[:limit]:
        raw = tf.io.read_file(os.path.join(directory, name))
        image = tf.io.decode_image(raw, channels=channels if channels in (1, 3, 4) else 0, expand_animations=False)
        image = tf.cast(image, "float32")
        if height is not None and width is not None:
            image = tf.image.resize(image, (height, width))
        images.append(image.numpy()[None])
    return images


def _as_sample_lists(data, specs, limit, what):
    """Turns array / list of arrays / tf.data.Dataset / directory into per-sample input lists."""
    tf = _tf()
    n_inputs = len(specs)
    ranks = [len(s.shape) for s in specs]

    def split(arrays):
        arrays = [np.asarray(_to_numpy(a)) for a in arrays]
        if len(arrays) != n_inputs:
            raise ValueError(
                f"keras_attention.tflite: {what} has {len(arrays)} input arrays; the model has {n_inputs} inputs."
            )
        batched = []
        for array, rank, spec in zip(arrays, ranks, specs):
            if array.ndim == rank - 1:
                array = array[None]
            if array.ndim != rank:
                raise ValueError(
                    f"keras_attention.tflite: {what} has shape {array.shape}; the model input "
                    f"{spec.name} expects rank {rank} (batch first), e.g. {tuple(spec.shape)}."
                )
            expected = tuple(spec.shape)[1:]
            if any(e is not None and e != a for e, a in zip(expected, array.shape[1:])):
                raise ValueError(
                    f"keras_attention.tflite: {what} has samples of shape {array.shape[1:]}; the model input "
                    f"{spec.name} expects {expected}."
                )
            if not np.issubdtype(array.dtype, np.number):
                raise ValueError(f"keras_attention.tflite: {what} must be numeric; got dtype {array.dtype}.")
            if not len(array):
                raise ValueError(f"keras_attention.tflite: {what} is empty; expected ~100 typical inputs.")
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                raise ValueError(
                    f"keras_attention.tflite: {what} holds {int(np.sum(~np.isfinite(array)))} NaN or infinite "
                    "values; calibration ranges from them would be meaningless."
                )
            batched.append(array)
        count = batched[0].shape[0]
        return [[b[i : i + 1] for b in batched] for i in range(count)]

    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.isdir(path):
            raise ValueError(f"keras_attention.tflite: {what} {path!r} is not a directory of images.")
        if n_inputs != 1 or ranks[0] != 4:
            raise ValueError(
                "keras_attention.tflite: a directory of images can only calibrate a model with one 4-D image input."
            )
        return [[image] for image in _load_image_directory(path, tuple(specs[0].shape), limit)]
    if isinstance(data, tf.data.Dataset):
        samples = []
        for element in data:
            if isinstance(element, dict):
                element = [element[k] for k in sorted(element)]
            if isinstance(element, (list, tuple)):
                first = element[0]
                if isinstance(first, (list, tuple, dict)):
                    element = list(first.values()) if isinstance(first, dict) else list(first)
                elif n_inputs == 1:
                    element = [first]  # (x, y) or (x, y, sample_weight)
                else:
                    element = list(element[:n_inputs])
            else:
                element = [element]
            samples.extend(split(element))
            if len(samples) >= limit:
                break
        if not samples:
            raise ValueError(f"keras_attention.tflite: {what} (a tf.data.Dataset) is empty.")
        return samples[:limit]
    if isinstance(data, (list, tuple)) and n_inputs > 1:
        return split(list(data))[:limit]
    samples = split([data])
    if not samples:
        raise ValueError(f"keras_attention.tflite: {what} is empty.")
    return samples[:limit]


# ------------------------------------------------------------------- convert


def convert(
    model,
    quantization="float32",
    representative_data=None,
    int8_io=False,
    path=None,
    batch_size=1,
    calibration_steps=100,
    quantizer="auto",
):
    """Converts a Keras model to a TFLite flatbuffer with builtin ops only.

    Args:
        model: a Keras 3 model on the TensorFlow backend, or a tf_keras model,
            with defined inputs (functional, or Sequential with an Input).
            Mixed-precision models are rebuilt in float32 first. Also a path:
            a `.keras`/`.h5` file (loaded after `import keras_attention`) or a
            SavedModel directory (its `serving_default` signature is converted
            as it is; `batch_size` does not apply, and a Flex-op error can name
            only the TensorFlow scope).
        quantization: "float32", "float16" (float16 weights), "dynamic"
            (dynamic-range: int8 weights, float activations) or "int8"
            (full-integer; needs `representative_data`).
        representative_data: calibration data for "int8": a NumPy array
            (N, ...) (or a list of arrays, one per input), a `tf.data.Dataset`
            (batched or not; `(x, y)` elements are fine: x is used), or a
            directory of images (resized to the model's input size, values in
            [0, 255] — put the preprocessing inside the model). Ignored by the
            other modes.
        int8_io: with "int8", make the model's inputs and outputs int8 too
            (quantize on the host with the input tensor's scale/zero point).
        path: when given, the flatbuffer is also written to this file.
        batch_size: the batch dimension of the converted model (1, what phones
            run; None keeps it dynamic, which adds shape ops).
        calibration_steps: at most this many samples are used for calibration.
        quantizer: which of the converter's two int8 quantizers to use:
            "mlir" (TensorFlow's default), "legacy"
            (`experimental_new_quantizer=False`), or "auto": both, keeping the
            int8-end-to-end model whose outputs on (up to 32 of) the
            calibration samples are closer to the float model's. Why: TF
            2.21's MLIR quantizer gives a tensor read by REDUCE_MAX the range
            of the max's *output*, so a signed feature map (CBAM on a residual
            branch, after the last BN) is clipped at its smallest calibrated
            maximum: the demo's MobileNetV2 + CBAM drops to 32 % int8 accuracy
            with it, 87.5 % with legacy (Keras 89.8 %); on post-ReLU maps the
            MLIR quantizer is the more accurate one.

    Returns:
        The `.tflite` flatbuffer as `bytes`.

    Raises:
        RuntimeError: on a backend other than TensorFlow (JAX).
        ValueError: unknown quantization; "int8" without representative data;
            `int8_io` without "int8".
        FlexOpError: the model needs TensorFlow ops with no TFLite builtin;
            the message names each op and the Keras layer it came from.
        TFLiteConversionError: any other conversion failure.
    """
    backend.require_tensorflow("keras_attention.tflite.convert")
    tf = _tf()
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"keras_attention.tflite.convert: unknown quantization {quantization!r}; expected one of "
            f"{list(QUANTIZATIONS)}."
        )
    if quantizer not in ("auto", "legacy", "mlir"):
        raise ValueError(
            f"keras_attention.tflite.convert: unknown quantizer {quantizer!r}; expected 'auto', 'legacy' or 'mlir'."
        )
    if int8_io and quantization != "int8":
        raise ValueError(
            f"keras_attention.tflite.convert: int8_io=True needs quantization='int8'; got {quantization!r}."
        )
    if not isinstance(model, (str, os.PathLike)) and not hasattr(model, "inputs"):
        raise TypeError(
            f"keras_attention.tflite.convert: expected a Keras model, a .keras/.h5 file or a "
            f"SavedModel directory; got {type(model).__name__}."
        )
    if path is not None:  # before minutes of conversion
        check_destination(path, "keras_attention.tflite.convert")
    saved_model = None
    if isinstance(model, (str, os.PathLike)):
        model, saved_model = _load_model_path(model)
    qat = saved_model is None and _is_convertible_qat_model(model, quantization)
    if not qat and quantization == "int8" and representative_data is None:
        raise ValueError(
            "keras_attention.tflite.convert: quantization='int8' (full-integer) needs "
            "representative_data to calibrate the activation ranges: a NumPy array of ~100 typical "
            "inputs, a tf.data.Dataset, or a directory of images (a Keras 3 QAT model from "
            "keras_attention.quantization.quantize_model needs none). Without data use "
            "quantization='dynamic' (int8 weights, float activations)."
        )
    if saved_model is None and is_mixed_precision(model):
        model = float32_copy(model)
    specs = _saved_model_specs(saved_model) if saved_model is not None else _input_specs(model, batch_size)
    samples = None
    if quantization == "int8" and not qat:
        samples = _as_sample_lists(representative_data, specs, calibration_steps, "representative_data")

    workdir = tempfile.mkdtemp(prefix="keras_attention_tflite_")
    try:
        if saved_model is None:
            saved_model = export_saved_model(model, os.path.join(workdir, "saved_model"), batch_size)

        def make_converter(select_tf_ops=False, legacy_quantizer=quantizer != "mlir"):
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=["serving_default"])
            if quantization == "float16":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            elif quantization == "dynamic":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            elif quantization == "int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.experimental_new_quantizer = not legacy_quantizer
                if int8_io:
                    converter.inference_input_type = tf.int8
                    converter.inference_output_type = tf.int8
                if samples is None:  # a QAT model: the FakeQuant ops carry every range
                    return converter

                def representative_dataset():
                    for sample in samples:
                        yield {
                            spec.name: np.asarray(x, dtype=spec.dtype.as_numpy_dtype) for x, spec in zip(sample, specs)
                        }

                converter.representative_dataset = representative_dataset
            if select_tf_ops:
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
            elif quantization == "int8":
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            else:
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            return converter

        try:
            with warnings.catch_warnings():
                # The converter's calibrator uses the deprecated tf.lite.Interpreter internally.
                warnings.simplefilter("ignore", UserWarning)
                flatbuffer = make_converter(legacy_quantizer=quantizer == "legacy").convert()
                if quantization == "int8" and quantizer == "auto" and samples is not None:
                    flatbuffer = _closer_of_two_quantizers(flatbuffer, make_converter, saved_model, samples)
        except Exception as error:  # noqa: BLE001 - converter errors have several types
            flex = _flex_ops_from_error(error)
            if flex is None and "select tf ops" not in str(error).lower():
                raise TFLiteConversionError(
                    f"keras_attention.tflite.convert: the TFLite converter failed ({quantization}): "
                    f"{_first_lines(str(error), 12)}"
                ) from error
            if not flex or any(layer_path is None for _, layer_path in flex):
                flex = _flex_ops_by_reconverting(make_converter) or flex or []
            raise _flex_error(model, flex, quantization) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    flatbuffer = bytes(flatbuffer)
    custom = [op for op in op_inventory(flatbuffer) if not op["builtin"]]
    if custom:
        raise _flex_error(
            model, [(op["op"], _scope_of(op["outputs"][0]) if op["outputs"] else None) for op in custom], quantization
        )
    _refuse_if_it_crashes(flatbuffer, TFLiteConversionError, model, warn=True)
    if path is not None:
        write_bytes(path, flatbuffer, "keras_attention.tflite.convert")
    return flatbuffer


def _is_convertible_qat_model(model, quantization):
    """True for a Keras 3 QAT model, which converts to int8 only and only once its ranges are set (else an error)."""
    # Imported here: keras_attention.quantization imports this module.
    from keras_attention.quantization import is_qat_model

    if not is_qat_model(model):  # always False under tf_keras, whose QAT models are tfmot's
        return False
    from keras_attention.quantization import uncalibrated

    if quantization != "int8":
        raise ValueError(
            f"keras_attention.tflite.convert: {model.name!r} is a QAT model (it holds fake-quantization "
            f"ranges), which converts to quantization='int8' only; got {quantization!r}. Convert the float "
            "model for float32/float16/dynamic files."
        )
    empty = uncalibrated(model)
    if empty:
        raise ValueError(
            f"keras_attention.tflite.convert: {len(empty)} quantization ranges of QAT model {model.name!r} were "
            f"never set (e.g. {empty[0]}): train it with fit() first, or call "
            "keras_attention.quantization.calibrate(model, data)."
        )
    return True


def _closer_of_two_quantizers(mlir_model, make_converter, saved_model, samples, count=32):
    """The MLIR quantizer's int8 model or the legacy one's, whichever is closer to the float model.

    Both are run in the interpreter on the first `count` calibration samples
    and compared with the float SavedModel by squared error over all outputs.
    A model that leaves a float op or has collapsed activation ranges (which
    can crash XNNPACK in this process) is not a candidate; when neither is one
    (or the legacy conversion fails), the MLIR model stands.
    """
    mlir_model = bytes(mlir_model)
    try:
        legacy_model = bytes(make_converter(legacy_quantizer=True).convert())
    except Exception:  # noqa: BLE001 - the MLIR model stands
        return mlir_model
    candidates = [m for m in (mlir_model, legacy_model) if is_int8_end_to_end(m) and not degenerate_activations(m)]
    if len(candidates) < 2:
        return candidates[0] if candidates else mlir_model
    subset = samples[:count]
    arrays = [np.concatenate([sample[i] for sample in subset], axis=0) for i in range(len(subset[0]))]
    expected = _keras_outputs(_SavedModelCallable(saved_model), arrays, batch_size=1)
    outputs = [run(m, arrays) for m in candidates]
    if any([a.shape for a in actual] != [e.shape for e in expected] for actual in outputs):
        return mlir_model
    errors = [sum(float(np.sum((a - e) ** 2)) for a, e in zip(actual, expected)) for actual in outputs]
    return candidates[int(np.argmin(errors))]


def _load_model_path(path):
    """(keras_model, None) for a .keras/.h5 file, (None, directory) for a SavedModel directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(
                f"keras_attention.tflite: {path!r} is a directory but not a SavedModel (no saved_model.pb)."
            )
        return None, path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"keras_attention.tflite: no model at {path!r}.")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise ValueError(
            f"keras_attention.tflite: cannot tell what {path!r} is: give a Keras model, a .keras/.h5 file "
            "or a SavedModel directory."
        )
    _check_model_file(path)
    import keras_attention  # noqa: F401 - registers the layers for safe loading

    return keras.models.load_model(path), None


def _check_model_file(path):
    """A clear error for an empty, truncated or foreign file (Keras reports some of them as "File not found")."""
    import zipfile

    size = os.path.getsize(path)
    if path.endswith(".keras"):
        ok = size > 0 and zipfile.is_zipfile(path)
        expected = "a .keras file is a zip archive"
    else:
        with open(path, "rb") as handle:
            ok = handle.read(8) == b"\x89HDF\r\n\x1a\n"
        expected = "an .h5 file starts with the HDF5 signature"
    if not ok:
        raise ValueError(
            f"keras_attention.tflite: {path!r} ({size} bytes) is not a readable Keras model file: "
            f"{expected}; it is empty, truncated or something else."
        )


def _saved_model_signature(directory):
    tf = _tf()
    loaded = tf.saved_model.load(directory)
    if "serving_default" not in loaded.signatures:
        raise ValueError(
            f"keras_attention.tflite: the SavedModel at {directory!r} has no 'serving_default' signature "
            f"(it has {sorted(loaded.signatures)})."
        )
    return loaded, loaded.signatures["serving_default"]


def _saved_model_specs(directory):
    """The serving signature's input specs, ordered by name (input_0, input_1, ...)."""
    _, signature = _saved_model_signature(directory)
    specs = signature.structured_input_signature[1]
    return [
        specs[name] if specs[name].name == name else _renamed(specs[name], name)
        for name in sorted(specs, key=_natural_key)
    ]


def _renamed(spec, name):
    return _tf().TensorSpec(spec.shape, spec.dtype, name=name)


def _first_lines(text, count):
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[:count]) + ("\n..." if len(lines) > count else "")


def _flex_ops_from_error(error):
    """[(op, scope_path_or_None)] from a ConverterError's structured errors, or None."""
    found = []
    for item in getattr(error, "errors", None) or []:
        message = str(getattr(item, "error_message", ""))
        code = str(getattr(item, "error_code", ""))
        is_flex = "FLEX" in code.upper() or "NEEDS_FLEX_OPS" in str(item) or "flex op" in message
        if not is_flex:
            continue
        op = str(item.operator.name) if item.HasField("operator") else ""
        op = op[3:] if op.startswith("tf.") else op
        scope = None
        if item.HasField("location"):
            for call in item.location.call:
                name = str(call.name)
                if "/" in name:
                    scope = name.split("@")[0]
                    break
            if scope is None and item.location.name:
                scope = str(item.location.name).split("@")[0]
        found.append((op or "?", scope))
    if not found:
        match = re.search(r"TF Select ops:\s*([^\n]+)", str(error))
        if match is None:
            return None
        found = [(name.strip(), None) for name in match.group(1).split(",") if name.strip()]
    unique = []
    for entry in found:
        if entry not in unique:
            unique.append(entry)
    return unique


def _flex_ops_by_reconverting(make_converter):
    """Converts again with select TF ops allowed and reads each Flex op's output tensor name."""
    try:
        flatbuffer = make_converter(select_tf_ops=True).convert()
    except Exception:  # noqa: BLE001
        return None
    found = []
    for op in op_inventory(bytes(flatbuffer)):
        if op["builtin"]:
            continue
        name = op["op"][4:] if op["op"].startswith("Flex") else op["op"]
        entry = (name, _scope_of(op["outputs"][0]) if op["outputs"] else None)
        if entry not in found:
            found.append(entry)
    return found


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


def _flex_error(model, flex, quantization):
    described = []
    for op, scope in flex:
        described.append((op, _layer_for_scope(model, scope) or (f"TF scope '{scope}'" if scope else None)))
    lines = []
    for op, layer in described:
        lines.append(
            f"  - TensorFlow op {op} in layer {layer}" if layer else f"  - TensorFlow op {op} (layer not identified)"
        )
    ops = ", ".join(sorted({op for op, _ in described}))
    message = (
        f"keras_attention.tflite.convert: the model needs TensorFlow ops that have no TFLite builtin "
        f"({ops}); conversion ({quantization}) allows builtin ops only, because Flex/select-TF ops "
        "need the large Flex delegate on the phone and never run on GPU/NPU delegates:\n"
        + "\n".join(lines)
        + "\nRewrite that layer with ops that have TFLite builtins (keras.ops on convolutions, "
        "reductions, element-wise math, reshape/concat), or keep it out of the exported model."
    )
    return FlexOpError(message, described)


# ------------------------------------------------------------ reading .tflite


def load_flatbuffer(tflite_model):
    """The bytes of a `.tflite` model given as bytes or a path, checked to be a readable TFLite flatbuffer.

    Raises:
        FileNotFoundError: no file at the path.
        InvalidTFLiteModelError: not a TFLite flatbuffer, or corrupt/truncated.
    """
    source = "the given bytes"
    if isinstance(tflite_model, (str, os.PathLike)):
        source = os.fspath(tflite_model)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"keras_attention.tflite: no .tflite file at {source!r}.")
        with open(source, "rb") as handle:
            data = handle.read()
    elif isinstance(tflite_model, (bytes, bytearray, memoryview)):
        data = bytes(tflite_model)
    else:
        raise TypeError(
            "keras_attention.tflite: expected the .tflite model as bytes or a file path; got "
            f"{type(tflite_model).__name__}."
        )
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise InvalidTFLiteModelError(
            f"keras_attention.tflite: {source} ({len(data)} bytes) is not a TFLite model: a .tflite "
            f"flatbuffer carries the identifier {_TFLITE_IDENTIFIER!r} at bytes 4-8, found "
            f"{data[4:8]!r}. It is corrupt or truncated, or not a .tflite file; convert the model again."
        )
    try:
        _walk(data)
    except Exception as error:  # noqa: BLE001 - any parse failure means a damaged file
        raise InvalidTFLiteModelError(
            f"keras_attention.tflite: {source} ({len(data)} bytes) starts like a TFLite model but is "
            f"corrupt or truncated ({type(error).__name__}: {error}); convert the model again."
        ) from error
    return data


def _walk(data):
    """Touches every table the tools here read; raises on a damaged flatbuffer."""
    model = _schema().Model.GetRootAsModel(data, 0)
    if model.Version() != 3:
        raise ValueError(f"schema version {model.Version()}, expected 3")
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()
            indices = [op.Inputs(i) for i in range(op.InputsLength())]
            indices += [op.Outputs(i) for i in range(op.OutputsLength())]
            for t in indices:
                if t >= 0:
                    tensor = graph.Tensors(int(t))
                    tensor.Type()
                    tensor.Name()
                    if tensor.Buffer() >= model.BuffersLength():
                        raise ValueError(f"tensor {t} points past the buffer table")


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - litert missing
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _enum_names(enum_class):
    return {
        value: name for name, value in vars(enum_class).items() if not name.startswith("_") and isinstance(value, int)
    }


def _parse(data):
    """(model, type_names, op_names) of a checked flatbuffer."""
    schema = _schema()
    return schema.Model.GetRootAsModel(data, 0), _enum_names(schema.TensorType), _enum_names(schema.BuiltinOperator)


def _is_constant(model, tensor):
    index = tensor.Buffer()
    if index <= 0 or index >= model.BuffersLength():
        return False
    buffer = model.Buffers(index)
    return buffer.DataLength() > 0 or buffer.Offset() > 1


def op_inventory(tflite_model):
    """Every operator of a `.tflite` model, in execution order.

    Returns a list of dicts: `op` (builtin name, or the custom name such as
    `FlexMatrixDeterminant`), `builtin`, `dtype` (the activation type, e.g.
    "int8" or "float32"; "float32->int8" for a type change such as QUANTIZE;
    "+int8 weights" when constant inputs have another type, as in hybrid ops),
    `subgraph`, `inputs`/`outputs` (runtime tensor dtypes) and `output_names`
    via `outputs`' TF name scopes.
    """
    data = load_flatbuffer(tflite_model)
    model, type_names, op_names = _parse(data)
    ops = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        graph_inputs = set(graph.InputsAsNumpy().tolist()) if graph.InputsLength() else set()
        graph_outputs = set(graph.OutputsAsNumpy().tolist()) if graph.OutputsLength() else set()
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin_code = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = op_names.get(builtin_code, str(builtin_code))
            builtin = name != "CUSTOM"
            if not builtin:
                custom = code.CustomCode()
                name = custom.decode() if isinstance(custom, bytes) else str(custom)
            runtime_in, const_in, in_idx = [], [], []
            for t in op.InputsAsNumpy().tolist() if op.InputsLength() else []:
                if t < 0:
                    continue
                tensor = graph.Tensors(t)
                kind = type_names.get(tensor.Type(), str(tensor.Type())).lower()
                (const_in if _is_constant(model, tensor) else runtime_in).append(kind)
                if not _is_constant(model, tensor):
                    in_idx.append(t)
            out_types, out_names, out_idx = [], [], []
            for t in op.OutputsAsNumpy().tolist() if op.OutputsLength() else []:
                tensor = graph.Tensors(t)
                out_types.append(type_names.get(tensor.Type(), str(tensor.Type())).lower())
                raw = tensor.Name()
                out_names.append(raw.decode() if isinstance(raw, bytes) else str(raw))
                out_idx.append(t)
            first_in = runtime_in[0] if runtime_in else (const_in[0] if const_in else "none")
            first_out = out_types[0] if out_types else first_in
            dtype = first_in if first_in == first_out else f"{first_in}->{first_out}"
            # Weights of another type: int8 (dynamic range) or float16 consumed directly.
            other = sorted({t for t in const_in if t != first_in and t not in ("int32", "int64")})
            if other and name not in ("QUANTIZE", "DEQUANTIZE"):
                dtype += f"+{'/'.join(other)} weights"
            ops.append(
                dict(
                    op=name,
                    builtin=builtin,
                    dtype=dtype,
                    subgraph=s,
                    inputs=runtime_in,
                    constants=const_in,
                    output_types=out_types,
                    outputs=out_names,
                    reads_graph_input=any(t in graph_inputs for t in in_idx),
                    writes_graph_output=any(t in graph_outputs for t in out_idx),
                )
            )
    return ops


def op_counts(tflite_model):
    """`Counter` of `(op, dtype)` over the model's operators."""
    return Counter((op["op"], op["dtype"]) for op in op_inventory(tflite_model))


def float_ops(tflite_model):
    """Operators that touch a float tensor, apart from the QUANTIZE of a graph input
    and the DEQUANTIZE of a graph output (the float interface of an int8 model)."""
    found = []
    for op in op_inventory(tflite_model):
        types = op["inputs"] + op["constants"] + op["output_types"]
        if not any(t in _FLOAT_TYPES for t in types):
            continue
        if op["op"] == "QUANTIZE" and op["reads_graph_input"]:
            continue
        if op["op"] == "DEQUANTIZE" and op["writes_graph_output"]:
            continue
        found.append(op)
    return found


def is_int8_end_to_end(tflite_model):
    """True when every op between input and output computes in int8 (full-integer)."""
    ops = op_inventory(tflite_model)
    has_int8 = any("int8" in op["dtype"] and "weights" not in op["dtype"] for op in ops)
    return has_int8 and not float_ops(tflite_model)


def quantization_kind(tflite_model):
    """Best guess of how a model was converted: float32, float16, dynamic or int8."""
    ops = op_inventory(tflite_model)
    if is_int8_end_to_end(tflite_model):
        return "int8"
    if any("int8 weights" in op["dtype"] for op in ops):
        return "dynamic"
    if any(op["op"] == "DEQUANTIZE" and op["dtype"].startswith("float16") for op in ops):
        return "float16"
    if any(op["dtype"].startswith("int8") for op in ops):
        return "int8 (partly float)"
    return "float32"


# An int8 activation whose calibrated range collapsed to (almost) a point gets a
# scale near 1e-8; the XNNPACK int8 kernels abort the process on such models
# ("double free or corruption"), e.g. a ChannelAttention still at its
# `start_as_identity` initialisation, whose logits are exactly 0 for every input.
DEGENERATE_SCALE = 1e-7


def degenerate_activations(tflite_model):
    """Names of quantized activation tensors whose scale is below `DEGENERATE_SCALE`, or not finite.

    Such a tensor never varied during calibration (constant activations: a
    layer at an identity initialisation, dead units, constant calibration
    data). XNNPACK's int8 kernels can crash the process on them, so `convert`
    and `verify` run such a model once in a child process first: a crash
    becomes a clear error, a model that runs gets a warning.
    """
    data = load_flatbuffer(tflite_model)
    model = _schema().Model.GetRootAsModel(data, 0)
    found = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            quant = tensor.Quantization()
            if quant is None or not quant.ScaleLength() or _is_constant(model, tensor):
                continue
            if tensor.Type() not in (_schema().TensorType.INT8, _schema().TensorType.UINT8, _schema().TensorType.INT16):
                continue
            scales = quant.ScaleAsNumpy()
            if not np.all(np.isfinite(scales)) or float(np.min(scales)) < DEGENERATE_SCALE:
                raw = tensor.Name()
                found.append(raw.decode() if isinstance(raw, bytes) else str(raw))
    return found


def _refuse_if_it_crashes(data, error, model=None, warn=False):
    """Before running a model with degenerate activation scales in this process, runs it once in a
    child process: a crash there becomes `error`; a model that runs gets a warning when `warn`."""
    degenerate = degenerate_activations(data)
    if not degenerate:
        return
    crash = _crashes_interpreter(data)
    if crash:
        raise error(_degenerate_message(degenerate, model, crash))
    if warn:
        warnings.warn(_degenerate_message(degenerate, model), stacklevel=3)


def _crashes_interpreter(data):
    """Runs the model once with XNNPACK in a child process; a description of the crash, or None."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        "it = Interpreter(model_path=sys.argv[1], num_threads=1)\n"
        "it.allocate_tensors()\n"
        "for d in it.get_input_details():\n"
        "    it.set_tensor(d['index'], np.zeros(d['shape'], d['dtype']))\n"
        "it.invoke()\n"
    )
    with tempfile.TemporaryDirectory(prefix="keras_attention_probe_") as directory:
        path = os.path.join(directory, "model.tflite")
        with open(path, "wb") as handle:
            handle.write(data)
        result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=600)
    if result.returncode == 0:
        return None
    tail = [line for line in (result.stderr or "").splitlines() if line.strip() and not line.startswith("INFO")]
    how = f"signal {-result.returncode}" if result.returncode < 0 else f"exit code {result.returncode}"
    return f"the LiteRT interpreter (XNNPACK) crashed on it ({how}{': ' + tail[-1] if tail else ''})"


def _degenerate_message(names, model=None, crash=None):
    layers = []
    for name in names:
        layer = _layer_for_scope(model, _scope_of(name)) if model is not None else None
        layers.append(f"  - {name.split(';')[0]}" + (f" (layer {layer})" if layer else ""))
    return (
        "keras_attention.tflite: int8 calibration found activations that never varied (their "
        f"quantization scale is below {DEGENERATE_SCALE:g} or not a number); "
        + (f"{crash}. " if crash else "such int8 models can crash the XNNPACK kernels and their numbers mean little. ")
        + "Tensors:\n"
        + "\n".join(layers[:10])
        + ("\n  ..." if len(layers) > 10 else "")
        + "\nThis happens with attention still at its identity initialisation "
        "(start_as_identity / attach(preserve_outputs=True)) whose logits are 0 for every input, with "
        "dead units, or with constant calibration data. Train the model first (int8 is only meaningful "
        "on trained weights) and calibrate on real inputs."
    )


# Builtin ops TensorFlow Lite's GPU delegate has a kernel for (the op list of
# tensorflow/lite/tools/versioning/gpu_compatibility.cc). The analyzer's own
# GPU check in TF 2.21 / ai-edge-litert 2.3 passes every model we tried, even
# TOPK_V2 or a CAST to int64 that this list lacks, so `verify` reports both.
GPU_DELEGATE_OPS = frozenset(
    """
ABS ADD ADD_N ATAN2 AVERAGE_POOL_2D BATCH_MATMUL CAST CEIL CONCATENATION CONV_2D COS CUMSUM DENSIFY
DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP FLOOR
FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GELU GREATER GREATER_EQUAL HARD_SWISH LEAKY_RELU LESS LESS_EQUAL
LOG LOGICAL_AND LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL ONE_HOT PACK PAD
PADV2 POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN REDUCE_PROD RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR
RESIZE_NEAREST_NEIGHBOR RSQRT SELECT SELECT_V2 SIGN SIN SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SPLIT_V SQRT
SQUARE SQUARED_DIFFERENCE STABLEHLO_CLAMP STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE TRANSPOSE_CONV
""".split()
)


def gpu_unsupported_ops(tflite_model):
    """Ops of the model that TensorFlow Lite's GPU delegate has no kernel for (sorted, unique)."""
    return sorted({op["op"] for op in op_inventory(tflite_model) if op["op"] not in GPU_DELEGATE_OPS})


def gpu_compatibility(tflite_model):
    """What TensorFlow Lite's analyzer says about the GPU delegate.

    Returns `(compatible, issues, text)`: the analyzer's verdict, its
    "GPU COMPATIBILITY WARNING" lines, and its whole printed report.
    """
    tf = _tf()
    data = load_flatbuffer(tflite_model)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        tf.lite.experimental.Analyzer.analyze(model_content=data, gpu_compatibility=True)
    text = buffer.getvalue()
    issues = [line.strip() for line in text.splitlines() if "GPU COMPATIBILITY WARNING" in line]
    compatible = "looks compatible with GPU delegate" in text and not issues
    return compatible, issues, text


# -------------------------------------------------------------- interpreter


def _interpreter(data, num_threads=None, xnnpack=True):
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "keras_attention.tflite needs the LiteRT interpreter: pip install 'keras-vision-attention[litert]' "
            "(ai-edge-litert)."
        ) from error
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = Interpreter(model_content=data, num_threads=num_threads, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise InvalidTFLiteModelError(
            f"keras_attention.tflite: the LiteRT interpreter cannot load this model: {_first_lines(str(error), 6)}"
        ) from error
    return interpreter


class _Runner:
    """Runs a `.tflite` model sample by sample, quantizing int8 inputs/outputs as needed.

    Inputs and outputs are ordered by the signature's names (`input_0`, ...,
    `output_0`, ... for models from `convert`), else by the interpreter's order.
    """

    def __init__(self, data, num_threads=None):
        self.interpreter = _interpreter(data, num_threads)
        inputs = {d["index"]: d for d in self.interpreter.get_input_details()}
        outputs = {d["index"]: d for d in self.interpreter.get_output_details()}
        self.input_details = list(inputs.values())
        self.output_details = list(outputs.values())
        try:
            signatures = self.interpreter._get_full_signature_list()
        except Exception:  # noqa: BLE001 - private API; fall back to the interpreter's order
            signatures = {}
        if len(signatures) == 1:
            signature = next(iter(signatures.values()))
            in_map, out_map = signature.get("inputs", {}), signature.get("outputs", {})
            if set(in_map.values()) == set(inputs) and set(out_map.values()) == set(outputs):
                self.input_details = [inputs[in_map[n]] for n in sorted(in_map, key=_natural_key)]
                self.output_details = [outputs[out_map[n]] for n in sorted(out_map, key=_natural_key)]

    def xnnpack_applied(self):
        try:
            return any(op["op_name"] == "DELEGATE" for op in self.interpreter._get_ops_details())
        except Exception:  # noqa: BLE001 - private API
            return None

    @staticmethod
    def _quantize(x, detail):
        dtype = detail["dtype"]
        x = np.asarray(x)
        if np.issubdtype(dtype, np.integer) and np.issubdtype(x.dtype, np.floating):
            scale, zero = detail["quantization"]
            if scale:
                info = np.iinfo(dtype)
                return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    @staticmethod
    def _dequantize(y, detail):
        scale, zero = detail["quantization"]
        if np.issubdtype(np.asarray(y).dtype, np.integer) and scale:
            return (y.astype("float32") - zero) * scale
        return np.asarray(y, dtype="float32")

    def set_inputs(self, sample):
        """Places one sample (one array per input) in the input tensors."""
        sample = [self._quantize(x, d) for x, d in zip(sample, self.input_details)]
        current = {d["index"]: tuple(d["shape"]) for d in self.interpreter.get_input_details()}
        resized = False
        for x, d in zip(sample, self.input_details):
            if current.get(d["index"]) != x.shape:
                self.interpreter.resize_tensor_input(d["index"], x.shape)
                resized = True
        if resized:
            self.interpreter.allocate_tensors()
        for x, d in zip(sample, self.input_details):
            self.interpreter.set_tensor(d["index"], x)

    def __call__(self, sample):
        self.set_inputs(sample)
        self.interpreter.invoke()
        return [self._dequantize(self.interpreter.get_tensor(d["index"]), d) for d in self.output_details]


def _natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def run(tflite_model, data):
    """Runs a `.tflite` model on `data` (an array (N, ...) or a list, one per input), one sample at a time.

    Returns a list with one float32 array (N, ...) per model output (int8
    outputs dequantized).
    """
    flatbuffer = load_flatbuffer(tflite_model)
    _refuse_if_it_crashes(flatbuffer, InvalidTFLiteModelError)
    runner = _Runner(flatbuffer)
    samples = _samples_from_arrays(data, len(runner.input_details))
    per_sample = [runner(sample) for sample in samples]
    return [np.concatenate([outputs[i] for outputs in per_sample], axis=0) for i in range(len(per_sample[0]))]


def _samples_from_arrays(data, n_inputs):
    arrays = list(data) if isinstance(data, (list, tuple)) else [data]
    arrays = [
        np.asarray(_to_numpy(a), dtype="float32")
        if np.issubdtype(np.asarray(_to_numpy(a)).dtype, np.floating)
        else np.asarray(_to_numpy(a))
        for a in arrays
    ]
    if len(arrays) != n_inputs:
        raise ValueError(f"keras_attention.tflite: got {len(arrays)} input arrays; the model has {n_inputs} inputs.")
    counts = {a.shape[0] if a.ndim else 0 for a in arrays}
    if counts == {0}:
        raise ValueError("keras_attention.tflite: got no samples (an empty array); expected (N, ...) with N >= 1.")
    if len(counts) > 1:
        raise ValueError(
            f"keras_attention.tflite: the input arrays hold different numbers of samples "
            f"({[a.shape[0] for a in arrays]}); expected the same N for every input."
        )
    return [[a[i : i + 1] for a in arrays] for i in range(arrays[0].shape[0])]


def measure_latency(tflite_model, threads=(1, 2), runs=30, warmup=3, sample=None, seed=0):
    """Median `invoke()` time in milliseconds with the LiteRT interpreter (XNNPACK on).

    Args:
        tflite_model: bytes or a path.
        threads: thread counts to time.
        runs: timed invocations per thread count (the median is reported).
        warmup: untimed invocations first.
        sample: one input sample, a list with one (1, ...) array per input;
            default: standard-normal data of the input shape (unknown sizes
            need a sample).
        seed: seed of the default sample.

    Returns:
        `{threads: median_ms}`.
    """
    data = load_flatbuffer(tflite_model)
    _refuse_if_it_crashes(data, InvalidTFLiteModelError)
    results = {}
    for n in threads:
        runner = _Runner(data, num_threads=n)
        if sample is None:
            rng = np.random.default_rng(seed)
            sample = []
            for d in runner.input_details:
                shape = tuple(int(s) for s in d["shape"])
                sample.append((rng.normal(size=shape) * 64).astype("float32"))
        runner.set_inputs(sample)
        invoke = runner.interpreter.invoke
        for _ in range(warmup):
            invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            invoke()
            times.append((time.perf_counter() - start) * 1e3)
        results[n] = statistics.median(times)
    return results


# ------------------------------------------------------------------ verify


@dataclasses.dataclass
class VerificationReport:
    """What `verify` measured; `report["max_abs_error"]` and `report.to_dict()` also work."""

    quantization: str
    num_samples: int
    max_abs_error: float
    max_rel_error: float
    cosine_similarity: float
    min_cosine_similarity: float
    top1_agreement: float
    ops: list
    all_builtin: bool
    custom_ops: list
    int8_end_to_end: bool
    float_ops: list
    gpu_compatible: bool
    gpu_issues: list
    gpu_unsupported_ops: list
    size_bytes: int
    latency_ms: dict
    xnnpack: bool

    def __getitem__(self, key):
        return getattr(self, key)

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["latency_ms"] = {str(k): v for k, v in self.latency_ms.items()}
        return out

    def op_table(self):
        return Counter({(op["op"], op["dtype"]): op["count"] for op in self.ops})

    def __str__(self):
        latency = ", ".join(f"{k} thread{'s' if int(k) > 1 else ''}: {v:.2f} ms" for k, v in self.latency_ms.items())
        top1 = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.4f}"
        lines = [
            f"TFLite verification ({self.quantization}, {self.num_samples} samples)",
            f"  max abs error        {self.max_abs_error:.3g}",
            f"  max rel error        {self.max_rel_error:.3g}  (max |tflite - keras| / max |keras|)",
            f"  cosine similarity    {self.cosine_similarity:.6f} (min {self.min_cosine_similarity:.6f})",
            f"  top-1 agreement      {top1}",
            f"  builtin ops only     {self.all_builtin}" + (f"  custom: {self.custom_ops}" if self.custom_ops else ""),
            f"  int8 end to end      {self.int8_end_to_end}",
            f"  GPU delegate (analyzer) {'compatible' if self.gpu_compatible else 'NOT compatible'}"
            + ("".join(f"\n    {issue}" for issue in self.gpu_issues)),
            f"  ops the GPU delegate lacks {self.gpu_unsupported_ops or 'none'}",
            f"  size                 {self.size_bytes / 1024:.1f} KiB",
            f"  median latency       {latency}  (LiteRT, XNNPACK {'on' if self.xnnpack else 'off'})",
            "  ops (op x dtype):",
        ]
        lines += [f"    {op['count']:4d} x {op['op']} [{op['dtype']}]" for op in self.ops]
        return "\n".join(lines)


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


def _keras_outputs(model, samples_by_input, batch_size=32):
    count = samples_by_input[0].shape[0]
    chunks = []
    for start in range(0, count, batch_size):
        batch = [a[start : start + batch_size] for a in samples_by_input]
        args = _pack_inputs_numpy(model, batch)
        outputs = model(args, training=False)
        chunks.append([_to_numpy(o).astype("float32") for o in _flatten_outputs(outputs)])
    return [np.concatenate([c[i] for c in chunks], axis=0) for i in range(len(chunks[0]))]


def _flatten_outputs(outputs):
    if isinstance(outputs, dict):
        return [outputs[k] for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return [leaf for o in outputs for leaf in _flatten_outputs(o)]
    return [outputs]


def _pack_inputs_numpy(model, arrays):
    structure = _input_structure(model)
    if isinstance(structure, dict):
        keys = sorted(structure)
        return dict(zip(keys, arrays))
    if isinstance(structure, (list, tuple)):
        return list(arrays)
    return arrays[0]


def verify(model, tflite_model, data, latency_runs=20, threads=(1, 2), analyze_gpu=True):
    """Runs `model` (Keras) and `tflite_model` (LiteRT) on `data` and compares them.

    Args:
        model: the Keras model the `.tflite` came from (any mixed precision),
            or a path to it (`.keras`/`.h5` file, or SavedModel directory).
        tflite_model: `.tflite` bytes or a file path.
        data: inputs, a NumPy array (N, ...) or a list of arrays (one per
            model input); float data is fed as-is (int8-input models get it
            quantized with the input's scale and zero point).
        latency_runs: timed runs per thread count (0 skips timing).
        threads: thread counts to time.
        analyze_gpu: run TensorFlow Lite's analyzer for GPU compatibility.

    Returns:
        A `VerificationReport`. Errors compare all outputs, flattened:
        `max_rel_error` is `max |tflite - keras| / max |keras|`; cosine
        similarity is per sample (mean and minimum); `top1_agreement` is the
        share of samples whose argmax agrees, for a 2-D (N, classes) output
        (None otherwise).

    Raises:
        InvalidTFLiteModelError: `tflite_model` is corrupt or not a TFLite model.
        FileNotFoundError: no file at the given path.
    """
    flatbuffer = load_flatbuffer(tflite_model)
    if isinstance(model, (str, os.PathLike)):
        keras_model, saved_model = _load_model_path(model)
        model = keras_model if keras_model is not None else _SavedModelCallable(saved_model)
    inventory = op_inventory(flatbuffer)
    _refuse_if_it_crashes(flatbuffer, InvalidTFLiteModelError, model if hasattr(model, "layers") else None)
    runner = _Runner(flatbuffer)
    samples = _samples_from_arrays(data, len(runner.input_details))
    arrays = [np.concatenate([s[i] for s in samples], axis=0) for i in range(len(samples[0]))]
    expected = _keras_outputs(model, arrays)
    actual_per_sample = [runner(sample) for sample in samples]
    actual = [np.concatenate([a[i] for a in actual_per_sample], axis=0) for i in range(len(actual_per_sample[0]))]
    if len(actual) != len(expected):
        raise ValueError(
            f"keras_attention.tflite.verify: the .tflite model has {len(actual)} outputs, the Keras model "
            f"{len(expected)}; is this the right model?"
        )
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            raise ValueError(
                f"keras_attention.tflite.verify: output shapes differ: tflite {a.shape} vs keras {e.shape}."
            )
    n = arrays[0].shape[0]
    flat_a = np.concatenate([a.reshape(n, -1) for a in actual], axis=1).astype("float64")
    flat_e = np.concatenate([e.reshape(n, -1) for e in expected], axis=1).astype("float64")
    diff = np.abs(flat_a - flat_e)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(flat_e).max()) if flat_e.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    norms = np.linalg.norm(flat_a, axis=1) * np.linalg.norm(flat_e, axis=1)
    dots = (flat_a * flat_e).sum(axis=1)
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), np.where(diff.max(axis=1) == 0, 1.0, 0.0))
    top1 = None
    for a, e in zip(actual, expected):
        if a.ndim == 2 and a.shape[1] > 1:
            top1 = float(np.mean(a.argmax(axis=1) == e.argmax(axis=1)))
            break
    counts = Counter((op["op"], op["dtype"]) for op in inventory)
    ops = [dict(op=op, dtype=dtype, count=count) for (op, dtype), count in counts.items()]
    custom = sorted({op["op"] for op in inventory if not op["builtin"]})
    floats = float_ops(flatbuffer)
    if analyze_gpu:
        compatible, issues, _ = gpu_compatibility(flatbuffer)
    else:
        compatible, issues = None, []
    latency = measure_latency(flatbuffer, threads=threads, runs=latency_runs, sample=samples[0]) if latency_runs else {}
    return VerificationReport(
        quantization=quantization_kind(flatbuffer),
        num_samples=n,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        cosine_similarity=float(cosines.mean()),
        min_cosine_similarity=float(cosines.min()),
        top1_agreement=top1,
        ops=ops,
        all_builtin=not custom,
        custom_ops=custom,
        int8_end_to_end=is_int8_end_to_end(flatbuffer),
        float_ops=[f"{op['op']} [{op['dtype']}]" for op in floats],
        gpu_compatible=compatible,
        gpu_issues=issues,
        gpu_unsupported_ops=gpu_unsupported_ops(flatbuffer),
        size_bytes=len(flatbuffer),
        latency_ms=latency,
        xnnpack=bool(runner.xnnpack_applied()),
    )
