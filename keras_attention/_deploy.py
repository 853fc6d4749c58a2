"""The deployment core: what verifying an exported file needs, whatever its runtime.

Loading a model given as a path, the reference outputs of the Keras model,
the samples to feed, how close a runtime's outputs are to Keras', the
report's shared parts and the latency timer: used by TFLite verification
(`tflite/`), ONNX and OpenVINO verification (`export.py`) and the command
line (`cli.py`), so each behaves, and fails, the same way.
"""

import dataclasses
import os
import statistics
import time

import numpy as np

from keras_attention import _compat
from keras_attention.backend import keras


def to_numpy(t):
    """A NumPy array of a tensor of any backend (a torch tensor that needs grad included)."""
    if hasattr(t, "detach"):  # a torch tensor (Keras 3 on PyTorch): .numpy() refuses one that needs grad
        t = t.detach().cpu()
    if hasattr(t, "numpy"):
        return np.asarray(t.numpy())
    return np.asarray(t)


def load_model_path(path, caller="keras_attention"):
    """(keras_model, None) for a .keras/.h5 file, (None, directory) for a SavedModel directory; clear errors
    naming `caller` for a missing, empty, truncated or foreign file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"{caller}: {path!r} is a directory but not a SavedModel (no saved_model.pb).")
        return None, path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{caller}: no model at {path!r}.")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise ValueError(
            f"{caller}: cannot tell what {path!r} is: give a Keras model, a .keras/.h5 file or a SavedModel directory."
        )
    check_model_file(path, caller)

    return keras.models.load_model(path), None


def check_model_file(path, caller):
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
            f"{caller}: {path!r} ({size} bytes) is not a readable Keras model file: "
            f"{expected}; it is empty, truncated or something else."
        )


def keras_outputs(model, samples_by_input, batch_size=32):
    count = samples_by_input[0].shape[0]
    chunks = []
    for start in range(0, count, batch_size):
        batch = [a[start : start + batch_size] for a in samples_by_input]
        args = _pack_inputs(model, batch)
        outputs = model(args, training=False)
        chunks.append([to_numpy(o).astype("float32") for o in flatten_outputs(outputs)])
    return [np.concatenate([c[i] for c in chunks], axis=0) for i in range(len(chunks[0]))]


def flatten_outputs(outputs):
    if isinstance(outputs, dict):
        return [outputs[k] for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return [leaf for o in outputs for leaf in flatten_outputs(o)]
    return [outputs]


def _pack_inputs(model, arrays):
    structure = _compat.nested_inputs(model, None)
    if structure is None:  # a Sequential, or a SavedModel's serving function: its flat inputs
        structure = list(model.inputs)
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


def samples_from_arrays(data, n_inputs, caller="keras_attention"):
    """Per-sample input lists `[[(1, ...) array per input], ...]` from one array (N, ...) per input,
    float data as float32; the counts checked against the model's inputs and each other."""
    arrays = list(data) if isinstance(data, (list, tuple)) else [data]
    arrays = [to_numpy(a) for a in arrays]
    arrays = [a.astype("float32", copy=False) if np.issubdtype(a.dtype, np.floating) else a for a in arrays]
    if len(arrays) != n_inputs:
        raise ValueError(f"{caller}: got {len(arrays)} input arrays; the model has {n_inputs} inputs.")
    counts = {a.shape[0] if a.ndim else 0 for a in arrays}
    if counts == {0}:
        raise ValueError(f"{caller}: got no samples (an empty array); expected (N, ...) with N >= 1.")
    if len(counts) > 1:
        raise ValueError(
            f"{caller}: the input arrays hold different numbers of samples "
            f"({[a.shape[0] for a in arrays]}); expected the same N for every input."
        )
    return [[a[i : i + 1] for a in arrays] for i in range(arrays[0].shape[0])]


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


def median_call_ms(call, runs, warmup):
    """The median time of `call()` in milliseconds over `runs` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
