"""Running a `.tflite` in the LiteRT interpreter: `run`, `measure_latency`, and the crash probe."""

import os
import statistics
import tempfile
import warnings

import numpy as np

from keras_attention import _compat
from keras_attention._deploy import median_call_ms, samples_from_arrays
from keras_attention.tflite._common import (
    InvalidTFLiteModelError,
    _first_lines,
    _layer_for_scope,
    _natural_key,
    _scope_of,
)
from keras_attention.tflite.inspection import DEGENERATE_SCALE, degenerate_activations, load_flatbuffer, op_inventory


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


def _interpreter(data, num_threads=None):
    """The LiteRT interpreter on `data`, tensors allocated, XNNPACK on (as on a phone by default)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "keras_attention.tflite needs the LiteRT interpreter: pip install 'keras-vision-attention[litert]' "
            "(ai-edge-litert)."
        ) from error
    try:
        interpreter = Interpreter(
            model_content=data, num_threads=num_threads, experimental_op_resolver_type=OpResolverType.AUTO
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        flex = sorted({op["op"] for op in op_inventory(data) if op["op"].startswith("Flex")})
        if flex:  # Keras' `model.export(format="litert")` allows them by default
            raise InvalidTFLiteModelError(
                f"keras_attention.tflite: this model uses Flex (select TensorFlow) ops {flex}, which the LiteRT "
                "interpreter runs only with the Flex delegate linked in (as a phone app would need too). "
                "keras_attention.tflite.convert refuses them and names the Keras layer each comes from."
            ) from None
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
            signatures = _compat.interpreter_signatures(self.interpreter)
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
            return any(op["op_name"] == "DELEGATE" for op in _compat.interpreter_ops(self.interpreter))
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


def run(tflite_model, data):
    """Runs a `.tflite` model on `data` (an array (N, ...) or a list, one per input), one sample at a time.

    Returns a list with one float32 array (N, ...) per model output (int8
    outputs dequantized).
    """
    flatbuffer = load_flatbuffer(tflite_model)
    _refuse_if_it_crashes(flatbuffer, InvalidTFLiteModelError)
    runner = _Runner(flatbuffer)
    samples = samples_from_arrays(data, len(runner.input_details), "keras_attention.tflite.run")
    per_sample = [runner(sample) for sample in samples]
    return [np.concatenate([outputs[i] for outputs in per_sample], axis=0) for i in range(len(per_sample[0]))]


def measure_latency(tflite_model, threads=(1, 2), runs=30, warmup=3, sample=None, seed=0):
    """Median `invoke()` time in milliseconds with the LiteRT interpreter (XNNPACK on).

    Args:
        tflite_model: bytes or a path; or a dict `{name: bytes or path}` of
            models to compare, timed interleaved (A B C A B C ...: the
            machine's drift spreads over all of them, so ratios from one call
            are fair).
        threads: thread counts to time.
        runs: timed invocations per thread count (the median is reported).
        warmup: untimed invocations first.
        sample: one input sample, a list with one (1, ...) array per input
            (every model of a dict gets it); default: standard-normal data of
            each model's input shape (unknown sizes need a sample).
        seed: seed of the default sample.

    Returns:
        `{threads: median_ms}`; for a dict, `{name: {threads: median_ms}}`.
    """
    models = tflite_model if isinstance(tflite_model, dict) else {None: tflite_model}
    flatbuffers = {}
    for name, model in models.items():
        flatbuffers[name] = load_flatbuffer(model)
        _refuse_if_it_crashes(flatbuffers[name], InvalidTFLiteModelError)
    results = {name: {} for name in models}
    for n in threads:
        runners = {name: _Runner(data, num_threads=n) for name, data in flatbuffers.items()}
        for runner in runners.values():
            runner.set_inputs(sample if sample is not None else _default_sample(runner, seed))
            for _ in range(warmup):
                runner.interpreter.invoke()
        times = {name: [] for name in models}
        for _ in range(runs):
            for name, runner in runners.items():
                times[name].append(median_call_ms(runner.interpreter.invoke, 1, 0))
        for name in models:
            results[name][n] = statistics.median(times[name])
    return results if isinstance(tflite_model, dict) else results[None]


def _default_sample(runner, seed):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=tuple(int(s) for s in d["shape"])) * 64).astype("float32") for d in runner.input_details]
