"""`verify`: a Keras model and its `.tflite` on the same data, and the report."""

import dataclasses
import os
from collections import Counter

import numpy as np

from keras_attention._deploy import ReportAccess, keras_outputs, load_model_path, output_agreement, samples_from_arrays
from keras_attention.tflite._common import InvalidTFLiteModelError, _SavedModelCallable
from keras_attention.tflite.inspection import (
    float_ops,
    gpu_compatibility,
    gpu_unsupported_ops,
    is_int8_end_to_end,
    load_flatbuffer,
    op_inventory,
    quantization_kind,
)
from keras_attention.tflite.interpreter import _refuse_if_it_crashes, _Runner, measure_latency


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
        keras_model, saved_model = load_model_path(model, "keras_attention.tflite.verify")
        model = keras_model if keras_model is not None else _SavedModelCallable(saved_model)
    inventory = op_inventory(flatbuffer)
    _refuse_if_it_crashes(flatbuffer, InvalidTFLiteModelError, model if hasattr(model, "layers") else None)
    runner = _Runner(flatbuffer)
    samples = samples_from_arrays(data, len(runner.input_details), "keras_attention.tflite.verify")
    arrays = [np.concatenate([s[i] for s in samples], axis=0) for i in range(len(samples[0]))]
    expected = keras_outputs(model, arrays)
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
