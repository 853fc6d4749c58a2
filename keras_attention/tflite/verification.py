"""`verify`: a Keras model and its `.tflite` on the same data, and the report."""

import dataclasses
import os
from collections import Counter

import numpy as np

from keras_attention.tflite._common import InvalidTFLiteModelError, _input_structure, _SavedModelCallable, _to_numpy
from keras_attention.tflite.export import _load_model_path
from keras_attention.tflite.inspection import (
    float_ops,
    gpu_compatibility,
    gpu_unsupported_ops,
    is_int8_end_to_end,
    load_flatbuffer,
    op_inventory,
    quantization_kind,
)
from keras_attention.tflite.interpreter import _refuse_if_it_crashes, _Runner, _samples_from_arrays, measure_latency


class ReportAccess:
    """What the verification reports share: `report["field"]`, `to_dict()` (JSON-ready), and the
    lines of the comparison with Keras (also `keras_attention.export.ExportReport`'s)."""

    def __getitem__(self, key):
        return getattr(self, key)

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["latency_ms"] = {str(k): v for k, v in self.latency_ms.items()}
        return out

    def _agreement_lines(self, runtime):
        top1 = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.4f}"
        return [
            f"  max abs error        {self.max_abs_error:.3g}",
            f"  max rel error        {self.max_rel_error:.3g}  (max |{runtime} - keras| / max |keras|)",
            f"  cosine similarity    {self.cosine_similarity:.6f} (min {self.min_cosine_similarity:.6f})",
            f"  top-1 agreement      {top1}",
        ]

    def _latency_text(self):
        text = ", ".join(f"{k} thread{'s' if int(k) > 1 else ''}: {v:.2f} ms" for k, v in self.latency_ms.items())
        return text or "not measured"


@dataclasses.dataclass
class VerificationReport(ReportAccess):
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

    def op_table(self):
        return Counter({(op["op"], op["dtype"]): op["count"] for op in self.ops})

    def __str__(self):
        gpu = {None: "not analysed", True: "compatible", False: "NOT compatible"}[self.gpu_compatible]
        lines = [
            f"TFLite verification ({self.quantization}, {self.num_samples} samples)",
            *self._agreement_lines("tflite"),
            f"  builtin ops only     {self.all_builtin}" + (f"  custom: {self.custom_ops}" if self.custom_ops else ""),
            f"  int8 end to end      {self.int8_end_to_end}",
            f"  GPU delegate (analyzer) {gpu}" + ("".join(f"\n    {issue}" for issue in self.gpu_issues)),
            f"  ops the GPU delegate lacks {self.gpu_unsupported_ops or 'none'}",
            f"  size                 {self.size_bytes / 1024:.1f} KiB",
            f"  median latency       {self._latency_text()}  (LiteRT, XNNPACK {'on' if self.xnnpack else 'off'})",
            "  ops (op x dtype):",
        ]
        lines += [f"    {op['count']:4d} x {op['op']} [{op['dtype']}]" for op in self.ops]
        return "\n".join(lines)


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


def output_agreement(actual, expected, caller="keras_attention.tflite.verify", runtime="tflite"):
    """How close one runtime's outputs (`actual`) are to Keras' (`expected`): lists of arrays, batch first.

    Returns the `VerificationReport` fields `max_abs_error`, `max_rel_error`
    (`max |actual - expected| / max |expected|`), `cosine_similarity` (per
    sample, mean), `min_cosine_similarity` and `top1_agreement` (for a 2-D
    (N, classes) output: the share of samples whose runtime argmax is a class
    Keras scores highest, ties included; None otherwise).
    """
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            raise ValueError(f"{caller}: output shapes differ: {runtime} {a.shape} vs keras {e.shape}.")
    n = expected[0].shape[0]
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
            # A QAT model's logits sit on an int8 grid and can tie exactly; then any tied class is Keras'
            # top-1, and argmax (which takes the first) would report a flip the runtime did not make.
            chosen = np.take_along_axis(e, a.argmax(axis=1)[:, None], axis=1)[:, 0]
            top1 = float(np.mean(chosen == e.max(axis=1)))
            break
    return dict(
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        cosine_similarity=float(cosines.mean()),
        min_cosine_similarity=float(cosines.min()),
        top1_agreement=top1,
    )


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
        share of samples whose LiteRT argmax is a class Keras scores highest
        (exact ties count, as QAT logits on an int8 grid can tie), for a 2-D
        (N, classes) output (None otherwise).

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
    agreement = output_agreement(actual, expected)
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
        num_samples=arrays[0].shape[0],
        **agreement,
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
