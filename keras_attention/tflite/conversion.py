"""`convert`: a Keras model to a `.tflite` flatbuffer with builtin ops only."""

import os
import re
import tempfile
import warnings

import numpy as np

from keras_attention import backend
from keras_attention._deploy import keras_outputs, load_model_path
from keras_attention._inputs import warn_on_mismatched_range
from keras_attention._io import check_destination, write_bytes
from keras_attention.layers.quantizers import is_qat_model, uncalibrated
from keras_attention.tflite._common import (
    QUANTIZATIONS,
    FlexOpError,
    TFLiteConversionError,
    _first_lines,
    _layer_for_scope,
    _SavedModelCallable,
    _scope_of,
    _tf,
)
from keras_attention.tflite.calibration import _as_sample_lists, check_folder_calibration
from keras_attention.tflite.inspection import degenerate_activations, is_int8_end_to_end, op_inventory
from keras_attention.tflite.interpreter import _refuse_if_it_crashes, run
from keras_attention.tflite.mixed_precision import float32_copy, is_mixed_precision
from keras_attention.tflite.saved_model import _input_specs, export_saved_model, saved_model_input_specs


def convert(
    model,
    quantization="float32",
    representative_data=None,
    int8_io=False,
    path=None,
    batch_size=1,
    calibration_steps=100,
    quantizer="auto",
    preprocess=None,
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
            folder of images, directly or in one sub-folder per class (resized
            to the model's input size, values in [0, 255], then `preprocess`).
            A folder calibrates only a model that rescales its own input (a
            `Rescaling`/`Normalization` layer before its first weights) or
            with `preprocess` given: raw pixels for a model that expects
            preprocessed ones would ruin every int8 range silently. Arrays
            whose range contradicts the model's first layers (raw 0-255
            pixels without an in-model `Rescaling`, or [0, 1] data with one)
            get a warning. Ignored by the other modes.
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
        preprocess: for a folder of images, a function from the float32
            batch `(N, H, W, C)` of raw pixels (0-255) to what the model takes
            (e.g. `lambda images: images / 255`, or
            `keras.applications.mobilenet_v2.preprocess_input`); pass
            `lambda images: images` for a model trained on raw pixels.

    Returns:
        The `.tflite` flatbuffer as `bytes`.

    The converter's C++ log lines (`fully_quantize: ...`, absl's `I0000 ...`)
    reach stderr: they are written to file descriptor 2, which a library call
    cannot safely take from the whole process (docs/tflite.md); the
    `keras-attention convert` command hides them.

    Raises:
        RuntimeError: on a backend other than TensorFlow (JAX).
        ValueError: unknown quantization; "int8" without representative data;
            `int8_io` without "int8".
        FlexOpError: the model needs TensorFlow ops with no TFLite builtin;
            the message names each op and the Keras layer it came from.
        TFLiteConversionError: any other conversion failure.
    """
    backend.require_tensorflow("keras_attention.tflite.convert")
    _check_arguments(model, quantization, int8_io, path, quantizer)
    if preprocess is not None and not callable(preprocess):
        raise TypeError(
            "keras_attention.tflite.convert: preprocess must be a function of a batch of images (or None); "
            f"got {type(preprocess).__name__}."
        )
    saved_model = None
    if isinstance(model, (str, os.PathLike)):
        model, saved_model = load_model_path(model, "keras_attention.tflite.convert")
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
    specs = saved_model_input_specs(saved_model) if saved_model is not None else _input_specs(model, batch_size)
    samples = None
    if quantization == "int8" and not qat:
        is_path = isinstance(representative_data, (str, os.PathLike))
        if is_path and os.path.isdir(representative_data):
            check_folder_calibration(model, os.fspath(representative_data), preprocess)
        samples = _as_sample_lists(representative_data, specs, calibration_steps, "representative_data", preprocess)
        if not is_path and len(samples[0]) == 1:
            batch = np.concatenate([sample[0] for sample in samples[:32]])
            warn_on_mismatched_range(model, batch, "keras_attention.tflite.convert")

    with tempfile.TemporaryDirectory(prefix="keras_attention_tflite_", ignore_cleanup_errors=True) as workdir:
        if saved_model is None:
            saved_model = export_saved_model(model, os.path.join(workdir, "saved_model"), batch_size, freeze=True)
        make_converter = _ConverterFactory(saved_model, quantization, int8_io, specs, samples, quantizer)
        flatbuffer = _convert_builtins_only(make_converter, model, quantization, quantizer, samples, saved_model)
    _refuse_if_it_crashes(flatbuffer, TFLiteConversionError, model, warn=True)
    if path is not None:
        write_bytes(path, flatbuffer, "keras_attention.tflite.convert")
    return flatbuffer


def _check_arguments(model, quantization, int8_io, path, quantizer):
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


class _ConverterFactory:
    """Fresh `TFLiteConverter`s for one SavedModel and one quantization mode.

    Called as `make_converter(select_tf_ops=False, legacy_quantizer=...)`: the
    Flex-op diagnosis asks for one that allows select TF ops, and "auto" int8
    asks for both quantizers.
    """

    def __init__(self, saved_model, quantization, int8_io, specs, samples, quantizer):
        self.saved_model, self.quantization, self.int8_io = saved_model, quantization, int8_io
        self.specs, self.samples, self.default_legacy = specs, samples, quantizer != "mlir"

    def __call__(self, select_tf_ops=False, legacy_quantizer=None):
        tf = _tf()
        converter = tf.lite.TFLiteConverter.from_saved_model(self.saved_model, signature_keys=["serving_default"])
        if self.quantization != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if self.quantization == "int8":
            converter.experimental_new_quantizer = not (
                self.default_legacy if legacy_quantizer is None else legacy_quantizer
            )
            if self.int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
            if self.samples is None:  # a QAT model: the FakeQuant ops carry every range
                return converter
            converter.representative_dataset = self._representative_dataset
        if select_tf_ops:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        elif self.quantization == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter

    def _representative_dataset(self):
        for sample in self.samples:
            yield {spec.name: np.asarray(x, dtype=spec.dtype.as_numpy_dtype) for x, spec in zip(sample, self.specs)}


def _convert_builtins_only(make_converter, model, quantization, quantizer, samples, saved_model):
    """The flatbuffer, or `FlexOpError` naming each op without a builtin and its layer."""
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
    flatbuffer = bytes(flatbuffer)
    custom = [op for op in op_inventory(flatbuffer) if not op["builtin"]]
    if custom:
        raise _flex_error(
            model, [(op["op"], _scope_of(op["outputs"][0]) if op["outputs"] else None) for op in custom], quantization
        )
    return flatbuffer


def _is_convertible_qat_model(model, quantization):
    """True for a Keras 3 QAT model, which converts to int8 only and only once its ranges are set (else an error)."""
    if not is_qat_model(model):  # always False under tf_keras, whose QAT models are tfmot's
        return False
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
    expected = keras_outputs(_SavedModelCallable(saved_model), arrays, batch_size=1)
    outputs = [run(m, arrays) for m in candidates]
    if any([a.shape for a in actual] != [e.shape for e in expected] for actual in outputs):
        return mlir_model
    errors = [sum(float(np.sum((a - e) ** 2)) for a, e in zip(actual, expected)) for actual in outputs]
    return candidates[int(np.argmin(errors))]


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
