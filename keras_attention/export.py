"""ONNX and OpenVINO: Keras' own exporters, made safe, and each file proven in its own runtime.

`export_onnx(model, path)` and `export_openvino(model, path)` call Keras'
`model.export(path, format=...)` and add what a file that ships needs: it
appears whole or not at all; a model never called is called once (Keras
refuses it otherwise); a mixed-precision model is exported as its float32 copy
(Keras' ONNX exporter needs float32); a missing tool is an error naming the
extra to install; a backend that cannot export says so and names the way out;
and an ONNX file must pass `onnx.checker`.

`verify(model, path, data)` runs the Keras model and the exported file in the
file's own runtime (onnxruntime; OpenVINO on the CPU in float32) on the same
data and returns an `ExportReport` with the fields of TFLite's
`VerificationReport` that apply: max error, cosine similarity, top-1
agreement, the op inventory, size and median latency per thread count. For a
`.tflite` file, ours or Keras' `model.export(format="litert")`, use
`keras_attention.tflite.verify`, which reports Flex ops by name.

What each backend exports (Keras 3.15.1, tested here):

| backend | ONNX | OpenVINO |
| --- | --- | --- |
| TensorFlow | yes (tf2onnx), batch size free | yes |
| PyTorch | yes (torch.onnx), batch size 1 unless `batch_size` is given | yes |
| JAX | yes (jax2onnx, `[jax-onnx]`); RoIAlign needs `batch_size` | no: Keras hands it an `XlaCallModule` |

tf_keras has no `model.export(format=...)`: use `tflite.convert`, or save the
model and export it under Keras 3.

Example:
>>> inputs = keras.Input((16, 16, 8))
>>> model = keras.Model(inputs, ka.CBAM(reduction=2)(inputs))
>>> path = export_onnx(model, os.path.join(tempfile.mkdtemp(), "cbam.onnx"))
>>> data = np.random.default_rng(0).normal(size=(4, 16, 16, 8)).astype("float32")
>>> verify(model, path, data, latency_runs=0).max_abs_error < 1e-5
True
"""

import dataclasses
import os
import re
import shutil
import tempfile
from collections import Counter

import numpy as np

from keras_attention import _compat, _io
from keras_attention._checks import check_int
from keras_attention._deploy import (
    ReportAccess,
    keras_outputs,
    load_model_path,
    median_call_ms,
    output_agreement,
    samples_from_arrays,
)
from keras_attention._optional import first_line, require
from keras_attention.backend import BACKEND, IS_LEGACY, all_layers, float32_copy, is_mixed_precision, keras, plain_graph

FORMATS = {".onnx": "onnx", ".xml": "openvino"}


class InvalidExportedModelError(ValueError):
    """A file given as an exported model cannot be loaded by its runtime, or fails its format's checker."""


def _exportable(model, caller, batch_size):
    """`model` made ready for Keras' exporters: Keras 3, float32, called once."""
    if IS_LEGACY:
        raise RuntimeError(
            f"{caller}: tf_keras has no model.export(format=...). Use keras_attention.tflite.convert, or save "
            "the model and export it under Keras 3 (unset TF_USE_LEGACY_KERAS)."
        )
    if not isinstance(model, keras.Model):
        raise TypeError(f"{caller}: expected a keras.Model; got {type(model).__name__}.")
    check_int(caller, "batch_size", batch_size, note=" (a fixed batch size) or None", allow_none=True)
    if is_mixed_precision(model):
        model = float32_copy(model, caller)
    if not _compat.has_been_called(model):
        shapes = [tuple(t.shape) for t in model.inputs]
        if any(None in shape[1:] for shape in shapes):
            raise ValueError(
                f"{caller}: Keras exports only a model that has been called; this one was not and its input "
                f"shapes {shapes} have unknown sizes. Call it once on a batch of real inputs first."
            )
        zeros = [np.zeros((batch_size or 1,) + shape[1:], t.dtype) for t, shape in zip(model.inputs, shapes)]
        model(zeros if len(zeros) > 1 else zeros[0], training=False)
    return model


def _input_signature(model, batch_size):
    if batch_size is None:
        return None

    def spec(tensor):
        return keras.InputSpec(shape=(batch_size,) + tuple(tensor.shape)[1:], dtype=tensor.dtype)

    structure = getattr(model, "_inputs_struct", None)
    if structure is not None:  # as Keras signs a functional model: one argument, its whole input structure
        return [keras.tree.map_structure(spec, structure)]
    return [spec(t) for t in model.inputs]


def export_onnx(model, path, batch_size=None, opset=None):
    """Writes `model` as an ONNX file with Keras' exporter, checks it, and returns the path.

    Args:
        model: a Keras 3 model (any backend but JAX without `jax2onnx`).
        path: the `.onnx` file to write (atomically).
        batch_size: a fixed batch size; None keeps it free (TensorFlow, JAX
            but with RoIAlign), or 1 (PyTorch, whose exporter fixes every
            unknown size to 1). `verify` runs such a file in batches of it.
        opset: the ONNX opset; None: the exporter's default.

    Raises:
        ImportError: `onnx` or the backend's converter (tf2onnx, jax2onnx)
            is missing (the error names the extra to install).
        RuntimeError: tf_keras.
        ValueError: a `batch_size` that is not a positive int, or RoIAlign
            on JAX without a fixed `batch_size`.
        InvalidExportedModelError: the written file fails `onnx.checker`.
    """
    caller = "keras_attention.export.export_onnx"
    require("onnx", caller)
    if BACKEND == "tensorflow":
        require("tf2onnx", caller)
    elif BACKEND == "jax":
        try:
            require("jax2onnx", caller)
        except ImportError as error:
            raise ImportError(
                f"{error} Keras exports ONNX on the JAX backend through `jax2onnx`; install it in an environment "
                "without the [qat] extra (jax2onnx needs absl-py 2, tfmot pins 1.x). Or save the model (.keras) "
                "and export it with KERAS_BACKEND=tensorflow or torch: the file loads there with the same weights."
            ) from None
    model = _exportable(model, caller, batch_size)
    if BACKEND == "jax" and batch_size is None:
        _refuse_free_batch_roi_align(model, caller)
    with _io.atomic_path(path, caller) as temporary, plain_graph():
        model.export(
            temporary,
            format="onnx",
            verbose=False,
            input_signature=_input_signature(model, batch_size),
            opset_version=opset,
        )
        _check_onnx(temporary, caller, shown=path)
    return os.fspath(path)


def _refuse_free_batch_roi_align(model, caller):
    """jax2onnx writes a reshape only to sizes it can take from an input's axes; RoIAlign's B*N boxes are not."""
    from keras_attention.layers import RoIAlign
    from keras_attention.layers.roi_align import free_batch_onnx_message

    names = [layer.name for layer in all_layers(model) if isinstance(layer, RoIAlign)]
    if names:
        raise ValueError(f"{caller}: {free_batch_onnx_message(names)}")


def _check_onnx(path, caller, shown=None):
    onnx = require("onnx", caller)
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as error:  # noqa: BLE001 - onnx raises several error types (checker, protobuf decode)
        raise InvalidExportedModelError(
            f"{caller}: {os.fspath(shown or path)!r} is not a valid ONNX model (onnx.checker: {first_line(error)})."
        ) from None


def export_openvino(model, path, batch_size=None):
    """Writes `model` as OpenVINO IR (`path` = the `.xml`, and the `.bin` beside it); returns the `.xml` path.

    Both files are written into a temporary folder first; the `.bin` is moved
    into place before the `.xml`, so a reader never finds an `.xml` without its weights.

    Raises:
        ValueError: `path` does not end in `.xml`.
        ImportError: `openvino` is missing.
        RuntimeError: tf_keras or the JAX backend.
    """
    caller = "keras_attention.export.export_openvino"
    path = os.fspath(path)
    if not path.endswith(".xml"):
        raise ValueError(f"{caller}: OpenVINO IR is an .xml file with a .bin beside it; got {path!r}.")
    if BACKEND == "jax":  # before importing openvino: refused whether it is installed or not
        raise RuntimeError(
            f"{caller}: on the JAX backend Keras hands OpenVINO an XlaCallModule op it cannot convert. Save the "
            "model (.keras) and export it with KERAS_BACKEND=tensorflow or torch."
        )
    require("openvino", caller)
    model = _exportable(model, caller, batch_size)
    _io.check_destination(path, caller)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".openvino.", suffix=".partial", dir=directory)
    try:
        staged = os.path.join(staging, os.path.basename(path))
        model.export(staged, format="openvino", verbose=False, input_signature=_input_signature(model, batch_size))
        os.replace(staged[:-4] + ".bin", path[:-4] + ".bin")
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


# ----------------------------------------------------------------------------- runtimes

_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
}


class _OnnxRuntime:
    """An onnxruntime session on the CPU."""

    def __init__(self, path, threads=None):
        ort = require("onnxruntime", "keras_attention.export.verify")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the verdict is ours
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise InvalidExportedModelError(
                f"keras_attention.export.verify: onnxruntime cannot load {path!r}: {first_line(error)}"
            ) from None
        self.runtime = f"onnxruntime {ort.__version__}"
        self.path = path
        self.inputs = self.session.get_inputs()
        self.input_names = [i.name for i in self.inputs]
        self.fixed_batch = next((i.shape[0] for i in self.inputs if i.shape and isinstance(i.shape[0], int)), None)

    def __call__(self, arrays):
        feed = {i.name: a.astype(_ONNX_DTYPES.get(i.type, a.dtype)) for i, a in zip(self.inputs, arrays)}
        try:
            return self.session.run(None, feed)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise InvalidExportedModelError(
                f"keras_attention.export.verify: onnxruntime loads {self.path!r} but cannot run it: {first_line(error)}"
            ) from None

    @staticmethod
    def ops(path):
        onnx = require("onnx", "keras_attention.export.verify")
        graph = onnx.load(path).graph
        counts = Counter()

        def walk(graph):
            for node in graph.node:
                domain = "" if node.domain in ("", "ai.onnx") else node.domain + "."
                counts[domain + node.op_type] += 1
                for attribute in node.attribute:
                    for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                        walk(sub)

        walk(graph)
        return counts


class _OpenVinoRuntime:
    """An OpenVINO model compiled for the CPU in float32.

    OpenVINO's CPU plugin computes in bfloat16 by default on CPUs with bf16
    units (AVX512_BF16, AMX): 1.9e-3 errors on a CBAM model here, against 3e-7
    in float32. Verification compares float32 with float32.
    """

    def __init__(self, path, threads=None):
        ov = require("openvino", "keras_attention.export.verify")
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        try:
            self.model = core.read_model(path)
            self.compiled = core.compile_model(self.model, "CPU", config)
        except Exception as error:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
            raise InvalidExportedModelError(
                f"keras_attention.export.verify: OpenVINO cannot load {path!r}: {first_line(error)}"
            ) from None
        self.runtime = f"OpenVINO {ov.__version__.split('-')[0]} (CPU, f32)"
        self.outputs = _keras_outputs_of(self.compiled.outputs)
        self.input_names = [next(iter(port.get_names()), f"input_{i}") for i, port in enumerate(self.compiled.inputs)]
        self.fixed_batch = next(
            (
                port.get_partial_shape()[0].get_length()
                for port in self.compiled.inputs
                if port.get_partial_shape().rank.get_length() and port.get_partial_shape()[0].is_static
            ),
            None,
        )

    def __call__(self, arrays):
        result = self.compiled([np.ascontiguousarray(a) for a in arrays])
        return [result[port] for port in self.outputs]

    @staticmethod
    def ops(path):
        ov = require("openvino", "keras_attention.export.verify")
        skip = {"Parameter", "Result", "Constant"}
        return Counter(
            op.get_type_name() for op in ov.Core().read_model(path).get_ordered_ops() if op.get_type_name() not in skip
        )


def _keras_outputs_of(ports):
    """The model's outputs among OpenVINO's results.

    From a TensorFlow graph OpenVINO also keeps what nothing consumes (an unused
    head output, shape arithmetic) as results; the model's own outputs are the
    graph's `Identity`, `Identity_1`, ... tensors, in that order.
    """
    numbered = {}
    for port in ports:
        for name in port.get_names():
            match = re.fullmatch(r"Identity(?:_(\d+))?:0", name)
            if match:
                numbered[int(match.group(1) or 0)] = port
    return [numbered[k] for k in sorted(numbered)] if numbered else list(ports)


_RUNTIMES = {"onnx": _OnnxRuntime, "openvino": _OpenVinoRuntime}


# ----------------------------------------------------------------------------- verification


@dataclasses.dataclass
class ExportReport(ReportAccess):
    """What `verify` measured; `report["max_abs_error"]` and `report.to_dict()` also work."""

    format: str
    runtime: str
    num_samples: int
    max_abs_error: float
    max_rel_error: float
    cosine_similarity: float
    min_cosine_similarity: float
    top1_agreement: float
    ops: dict
    size_bytes: int
    latency_ms: dict

    def __str__(self):
        lines = [
            f"{self.format} verification ({self.runtime}, {self.num_samples} samples)",
            *self._agreement_lines(self.format),
            f"  size                 {self.size_bytes / 1024:.1f} KiB",
            f"  median latency       {self._latency_text()}",
            "  ops:",
        ]
        lines += [f"    {count:4d} x {op}" for op, count in sorted(self.ops.items())]
        return "\n".join(lines)


def _file_size(path, fmt):
    size = os.path.getsize(path)
    if fmt == "openvino" and os.path.exists(path[:-4] + ".bin"):
        size += os.path.getsize(path[:-4] + ".bin")
    return size


def _run_all(runtime, arrays, caller):
    """Runs every sample: in one batch where the file's batch size is free, else in batches of its size."""
    size = runtime.fixed_batch
    if size is None:
        return [np.asarray(o, "float32") for o in runtime(arrays)]
    count = arrays[0].shape[0]
    if count % size:
        raise ValueError(
            f"{caller}: the file's batch size is fixed at {size} (`batch_size` at export); got {count} samples, "
            f"which is not a multiple of {size}."
        )
    batches = [runtime([a[i : i + size] for a in arrays]) for i in range(0, count, size)]
    return [np.concatenate([np.asarray(o[k], "float32") for o in batches]) for k in range(len(batches[0]))]


def _latency(runtime_cls, path, sample, threads, runs, warmup=3):
    results = {}
    for n in threads:
        runtime = runtime_cls(path, threads=n)
        results[n] = float(median_call_ms(lambda runtime=runtime: runtime(sample), runs, warmup))
    return results


def verify(model, exported, data, latency_runs=20, threads=(1, 2)):
    """Runs `model` (Keras) and an exported file (ONNX or OpenVINO) on `data` and compares them.

    Args:
        model: the Keras model the file came from, or a `.keras`/`.h5` path.
        exported: the `.onnx` file, or the OpenVINO `.xml` (its `.bin` beside it).
        data: a NumPy array (N, ...) or a list of arrays, one per model input.
        latency_runs: timed runs per thread count (0 skips timing).
        threads: thread counts to time.

    Returns:
        An `ExportReport` (errors over all outputs, flattened, as in
        `keras_attention.tflite.verify`).

    Raises:
        ValueError: an unknown file type, or inputs that do not fit the model.
        InvalidExportedModelError: the runtime cannot load the file.
        FileNotFoundError: no file at `exported` (or at `model`, given as a path).
    """
    caller = "keras_attention.export.verify"
    exported = os.fspath(exported)
    fmt = FORMATS.get(os.path.splitext(exported)[1].lower())
    if fmt is None:
        hint = " Use keras_attention.tflite.verify for .tflite files." if exported.endswith(".tflite") else ""
        raise ValueError(f"{caller}: expected an .onnx or an OpenVINO .xml file; got {exported!r}.{hint}")
    if not os.path.isfile(exported):
        raise FileNotFoundError(f"{caller}: no file at {exported!r}.")
    if isinstance(model, (str, os.PathLike)):
        model, saved_model = load_model_path(model, caller)
        if model is None:
            raise ValueError(f"{caller}: needs the Keras model (.keras/.h5); got the SavedModel {saved_model!r}.")
    if fmt == "onnx":
        _check_onnx(exported, caller)  # once: the runtime is opened again per thread count to time it
    runtime = _RUNTIMES[fmt](exported)
    samples = samples_from_arrays(data, len(runtime.input_names), caller)
    arrays = [np.concatenate([s[i] for s in samples]) for i in range(len(samples[0]))]
    expected = keras_outputs(model, arrays)
    actual = _run_all(runtime, arrays, caller)
    if len(actual) != len(expected):
        raise ValueError(
            f"{caller}: the {fmt} file has {len(actual)} outputs, the Keras model {len(expected)}; "
            "is this the right model?"
        )
    agreement = output_agreement(actual, expected, caller=caller, runtime=fmt)
    first = [a[: runtime.fixed_batch or 1] for a in arrays]  # one sample, or the file's fixed batch
    latency = _latency(_RUNTIMES[fmt], exported, first, threads, latency_runs) if latency_runs else {}
    return ExportReport(
        format=fmt,
        runtime=runtime.runtime,
        num_samples=arrays[0].shape[0],
        **agreement,
        ops=dict(_RUNTIMES[fmt].ops(exported)),
        size_bytes=_file_size(exported, fmt),
        latency_ms=latency,
    )
