"""Forward and forward+backward time of CBAM and its parts, beside PyTorch and a copy.

Each engine runs in its own process (the Keras layers on TensorFlow, on JAX and
on Keras 3's PyTorch backend — "keras-torch" —, and a PyTorch CBAM written from
the formula — "torch"), times its
variants with repetitions interleaved against a NumPy copy of the same tensor
(the memory floor), and reports medians as multiples of that copy. Before
timing, every engine's output is checked against the NumPy reference of the
paper's formula with the same weights.

    python benchmarks/layer_speed.py                 # all engines that are installed
    python benchmarks/layer_speed.py --fast          # tiny shapes, few reps (CI smoke run)
    python benchmarks/layer_speed.py --engines jax,torch   # e.g. on a GPU box without TensorFlow

Writes benchmarks/results/layer_speed.json (or --out).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import interleaved_medians, machine_info, print_table, random_array, write_json  # noqa: E402

SHAPES = [(8, 56, 56, 256), (8, 28, 28, 512), (32, 14, 14, 1024)]
FAST_SHAPES = [(2, 16, 16, 64)]
LAYERS = os.environ.get("BENCH_LAYERS", "cbam,channel,spatial").split(",")
REDUCTION, KERNEL = 16, 7


def reference_weights(channels):
    """The one set of weights every engine loads (channels_last conv layouts)."""
    hidden = channels // REDUCTION
    rng = np.random.default_rng(channels)
    return {
        "w1": rng.normal(0, channels**-0.5, (channels, hidden)).astype("float32"),
        "b1": rng.normal(0, 0.1, hidden).astype("float32"),
        "w2": rng.normal(0, hidden**-0.5, (hidden, channels)).astype("float32"),
        "b2": rng.normal(0, 0.1, channels).astype("float32"),
        "k": rng.normal(0, 0.1, (KERNEL, KERNEL, 2, 1)).astype("float32"),
    }


def numpy_reference(layer, x, w):
    from tests.kit import reference as ref

    x = x.astype("float64")
    channel = lambda t: t * ref.channel_gate(t, w["w1"], w["b1"], w["w2"], w["b2"])  # noqa: E731
    spatial = lambda t: t * ref.spatial_gate(t, w["k"])  # noqa: E731
    return {"cbam": lambda t: spatial(channel(t)), "channel": channel, "spatial": spatial}[layer](x)


def check(layer, output, x, w):
    expected = numpy_reference(layer, x, w)
    error = float(np.abs(np.asarray(output, dtype="float64") - expected).max())
    assert error < 1e-4 * max(1.0, np.abs(expected).max()), f"{layer}: max error {error}"
    return error


# --------------------------------------------------------------------------- engines


def keras_layer(name, channels, w):
    import keras_attention as ka

    layer = {
        "cbam": lambda: ka.CBAM(REDUCTION, KERNEL),
        "channel": lambda: ka.ChannelAttention(REDUCTION),
        "spatial": lambda: ka.SpatialAttention(KERNEL),
    }[name]()
    layer.build((None, None, None, channels))
    ca = layer.channel_attention if name == "cbam" else layer if name == "channel" else None
    sa = layer.spatial_attention if name == "cbam" else layer if name == "spatial" else None
    if ca is not None:
        ca.mlp_reduce.set_weights([w["w1"][None, None], w["b1"]])
        ca.mlp_expand.set_weights([w["w2"][None, None], w["b2"]])
    if sa is not None:
        sa.conv.set_weights([w["k"]])
    return layer


def run_tensorflow(shapes, reps):
    import tensorflow as tf

    results = []
    for shape in shapes:
        x_np, g_np = random_array(shape, 0), random_array(shape, 1)
        x, g = tf.constant(x_np), tf.constant(g_np)
        for name in LAYERS:
            w = reference_weights(shape[-1])
            layer = keras_layer(name, shape[-1], w)
            error = check(name, layer(x[:1]).numpy(), x_np[:1], w)
            variables = layer.trainable_variables

            def fwd_bwd(x):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x)
                return tape.gradient(y, [x] + variables, output_gradients=g)

            fwd = lambda x: layer(x)  # noqa: E731
            candidates = {
                "copy": lambda: np.copy(x_np),
                "fwd eager": lambda: fwd(x),
                "fwd tf.function": _tf_call(tf.function(fwd), x),
                "fwd XLA": _tf_call(tf.function(fwd, jit_compile=True), x),
                "fwd+bwd eager": lambda: fwd_bwd(x),
                "fwd+bwd tf.function": _tf_call(tf.function(fwd_bwd), x),
                "fwd+bwd XLA": _tf_call(tf.function(fwd_bwd, jit_compile=True), x),
            }
            results.append(_record("tensorflow", shape, name, error, interleaved_medians(candidates, reps)))
    return results


def _tf_call(fn, x):
    # TensorFlow on CPU runs eagerly-called functions synchronously: the call is the
    # whole cost. `.numpy()` would add a copy of the output to NumPy (1-1.6x the
    # floor measured), which the JAX and PyTorch timings do not pay.
    return lambda: fn(x)


def run_jax(shapes, reps):
    import jax

    results = []
    for shape in shapes:
        x_np, g_np = random_array(shape, 0), random_array(shape, 1)
        x, g = jax.device_put(x_np), jax.device_put(g_np)
        for name in LAYERS:
            w = reference_weights(shape[-1])
            layer = keras_layer(name, shape[-1], w)
            trainable = [v.value for v in layer.trainable_variables]
            frozen = [v.value for v in layer.non_trainable_variables]

            def forward(params, x):
                return layer.stateless_call(params, frozen, x)[0]

            fwd = jax.jit(forward)
            fwd_bwd = jax.jit(lambda params, x: jax.vjp(forward, params, x)[1](g))
            error = check(name, np.asarray(fwd(trainable, x[:1])), x_np[:1], w)
            candidates = {
                "copy": lambda: np.copy(x_np),
                "fwd jax.jit": lambda: fwd(trainable, x).block_until_ready(),
                "fwd+bwd jax.jit": lambda: jax.block_until_ready(fwd_bwd(trainable, x)),
            }
            results.append(_record("jax", shape, name, error, interleaved_medians(candidates, reps)))
    return results


def run_torch(shapes, reps):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    class TorchCBAM(torch.nn.Module):
        """CBAM from the paper's formula (official-code layout: Linear MLP with biases, 7x7 conv, no bias)."""

        def __init__(self, name, w):
            super().__init__()
            self.name = name
            self.fc1 = torch.nn.Linear(*w["w1"].shape)
            self.fc2 = torch.nn.Linear(*w["w2"].shape)
            self.conv = torch.nn.Conv2d(2, 1, KERNEL, padding=KERNEL // 2, bias=False)
            with torch.no_grad():
                self.fc1.weight.copy_(torch.from_numpy(w["w1"].T))
                self.fc1.bias.copy_(torch.from_numpy(w["b1"]))
                self.fc2.weight.copy_(torch.from_numpy(w["w2"].T))
                self.fc2.bias.copy_(torch.from_numpy(w["b2"]))
                self.conv.weight.copy_(torch.from_numpy(w["k"].transpose(3, 2, 0, 1).copy()))

        def channel(self, x):
            mlp = lambda p: self.fc2(torch.relu(self.fc1(p)))  # noqa: E731
            gate = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))
            return x * gate[:, :, None, None]

        def spatial(self, x):
            maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
            return x * torch.sigmoid(self.conv(maps))

        def forward(self, x):
            if self.name == "channel":
                return self.channel(x)
            if self.name == "spatial":
                return self.spatial(x)
            return self.spatial(self.channel(x))

    results = []
    for shape in shapes:
        x_np, g_np = random_array(shape, 0), random_array(shape, 1)
        # NHWC data seen as NCHW in channels_last memory format: the same bytes as the Keras input.
        to_torch = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).to(device)  # noqa: E731
        x, g = to_torch(x_np), to_torch(g_np)
        for name in LAYERS:
            w = reference_weights(shape[-1])
            module = TorchCBAM(name, w).to(device)
            with torch.no_grad():
                error = check(name, module(x[:1]).permute(0, 2, 3, 1).cpu().numpy(), x_np[:1], w)
            candidates = _torch_candidates(module, x_np, x, g, sync)
            results.append(_record("torch", shape, name, error, interleaved_medians(candidates, reps)))
    return results


def _torch_candidates(module, x_np, x, g, sync):
    """The timed calls of a torch module (a Keras layer on PyTorch is one): eager and torch.compile'd,
    forward and forward+backward, beside a copy of the input. torch.compile of the call is what
    `compile(jit_compile=True)` does on Keras' PyTorch backend."""
    import torch

    compiled = torch.compile(module)
    xg = x.clone().requires_grad_(True)

    def fwd(fn):
        def call():
            with torch.no_grad():
                fn(x)
            sync()

        return call

    def fwd_bwd(fn):
        def call():
            module.zero_grad(set_to_none=True)
            xg.grad = None
            fn(xg).backward(g)
            sync()

        return call

    return {
        "copy": lambda: np.copy(x_np),
        "fwd eager": fwd(module),
        "fwd torch.compile": fwd(compiled),
        "fwd+bwd eager": fwd_bwd(module),
        "fwd+bwd torch.compile": fwd_bwd(compiled),
    }


def run_keras_torch(shapes, reps):
    """The package's Keras layers on Keras 3's PyTorch backend (channels_last, as in the other Keras engines)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    results = []
    for shape in shapes:
        x_np, g_np = random_array(shape, 0), random_array(shape, 1)
        x, g = torch.from_numpy(x_np).to(device), torch.from_numpy(g_np).to(device)
        for name in LAYERS:
            w = reference_weights(shape[-1])
            layer = keras_layer(name, shape[-1], w)
            with torch.no_grad():
                error = check(name, layer(x[:1]).cpu().numpy(), x_np[:1], w)
            candidates = _torch_candidates(layer, x_np, x, g, sync)
            results.append(_record("keras-torch", shape, name, error, interleaved_medians(candidates, reps)))
    return results


def _record(engine, shape, layer, error, medians):
    copy = medians.pop("copy")
    return {
        "engine": engine,
        "shape": list(shape),
        "layer": layer,
        "max_error_vs_numpy": error,
        "copy_ms": copy * 1e3,
        "ms": {k: v * 1e3 for k, v in medians.items()},
        "x_copy": {k: v / copy for k, v in medians.items()},
    }


ENGINES = {"tensorflow": run_tensorflow, "jax": run_jax, "torch": run_torch, "keras-torch": run_keras_torch}
ENGINE_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "keras-torch": "torch"}
KERAS_BACKENDS = {"jax": "jax", "keras-torch": "torch"}  # the others run Keras on TensorFlow


def _run_engine_in_subprocess(engine, args):
    env = dict(os.environ, KERAS_BACKEND=KERAS_BACKENDS.get(engine, "tensorflow"))
    env.pop("TF_USE_LEGACY_KERAS", None)
    command = [sys.executable, os.path.abspath(__file__), "--engine-worker", engine, "--reps", str(args.reps)]
    if args.fast:
        command.append("--fast")
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{engine} engine failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="tensorflow,jax,torch,keras-torch")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "layer_speed.json"))
    parser.add_argument("--engine-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = FAST_SHAPES if args.fast else SHAPES
    if args.fast:
        args.reps = min(args.reps, 3)
    if args.engine_worker:
        print(json.dumps(ENGINES[args.engine_worker](shapes, args.reps)))
        return None

    results, skipped = [], []
    for engine in args.engines.split(","):
        if importlib.util.find_spec(ENGINE_MODULES[engine]) is None:
            skipped.append(engine)
            continue
        print(f"timing {engine} ...", flush=True)
        results += _run_engine_in_subprocess(engine, args)
    rows = []
    for r in results:
        for variant, ratio in r["x_copy"].items():
            rows.append(
                [
                    r["engine"],
                    "x".join(map(str, r["shape"])),
                    r["layer"],
                    variant,
                    f"{r['ms'][variant]:.2f}",
                    f"{ratio:.2f}x",
                ]
            )
    print_table(["engine", "shape (NHWC)", "layer", "variant", "median ms", "x copy"], rows)
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}")
    write_json(args.out, {"machine": machine_info(), "reps": args.reps, "results": results, "skipped": skipped})
    return results


if __name__ == "__main__":
    main()
