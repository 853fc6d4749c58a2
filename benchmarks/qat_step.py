"""QAT training step vs the float step: Keras 3 QAT (TensorFlow, JAX) and tfmot (tf_keras).

The model is the QAT example's: MobileNetV2 (alpha 0.35, 96x96, weights=None)
with CBAM on its 10 residual branches. Each path runs in its own process (the
Keras mode is fixed at import): the float model and its `quantize_model` copy
are compiled there and their `train_on_batch` steps interleaved, so the
QAT/float ratio comes from one run. The Keras 3 vs tfmot comparison divides
step times of two processes run one after the other on the same machine.

TensorFlow steps run without XLA (what the demo does on a CPU, where compiling
MobileNetV2 costs a minute and runs slower); JAX steps are always compiled.

    python benchmarks/qat_step.py            # 96x96, batch 32
    python benchmarks/qat_step.py --fast     # 32x32, batch 4, few steps (smoke run)

Writes benchmarks/results/qat_step.json (or --out).
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._common import interleaved_medians, machine_info, print_table, write_json  # noqa: E402

# path -> (environment, what runs the QAT step)
PATHS = {
    "tensorflow": ({"KERAS_BACKEND": "tensorflow", "TF_USE_LEGACY_KERAS": "0"}, "Keras 3 QAT"),
    "jax": ({"KERAS_BACKEND": "jax", "TF_USE_LEGACY_KERAS": "0"}, "Keras 3 QAT"),
    "tf_keras": ({"TF_USE_LEGACY_KERAS": "1"}, "tfmot"),
}


def time_steps(size, batch, steps):
    """{"float": s, "qat": s} median step seconds in this process's Keras mode."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))  # as when the example runs: it imports examples/_shared.py
    from qat_mobilenetv2_cbam import build_model

    from keras_attention import quantization
    from keras_attention.backend import BACKEND, IS_LEGACY, keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, batch)
    model = build_model(size)
    qat = quantization.quantize_model(model)
    if not IS_LEGACY:
        quantization.calibrate(qat, x)
    jit = {} if IS_LEGACY else {"jit_compile": BACKEND == "jax"}
    for m in (model, qat):
        m.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True), **jit)
    medians = interleaved_medians(
        {"float": lambda: model.train_on_batch(x, y), "qat": lambda: qat.train_on_batch(x, y)}, steps, warmup=3
    )
    return medians


def run_path(path, size, batch, steps):
    env = dict(os.environ, PYTHONPATH=ROOT, **PATHS[path][0])
    args = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--size",
        str(size),
        "--batch",
        str(batch),
        "--steps",
        str(steps),
    ]
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        raise RuntimeError(f"qat_step ({path}) failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "qat_step.json"))
    args = parser.parse_args(argv)
    if args.fast:
        args.size, args.batch, args.steps = 32, 4, 2
    if args.child:
        print("RESULT " + json.dumps(time_steps(args.size, args.batch, args.steps)))
        return None

    results, rows = {}, []
    for path in args.paths.split(","):
        print(f"timing {path} ...", flush=True)
        results[path] = timing = run_path(path, args.size, args.batch, args.steps)
        timing["qat_over_float"] = timing["qat"] / timing["float"]
        rows.append(
            [
                path,
                PATHS[path][1],
                f"{1e3 * timing['float']:.1f}",
                f"{1e3 * timing['qat']:.1f}",
                f"{timing['qat_over_float']:.2f}",
            ]
        )
    if "tensorflow" in results and "tf_keras" in results:
        results["keras3_qat_over_tfmot_qat"] = results["tensorflow"]["qat"] / results["tf_keras"]["qat"]
        print(f"Keras 3 QAT step / tfmot QAT step (TensorFlow, no XLA): {results['keras3_qat_over_tfmot_qat']:.2f}")
    print_table(["path", "QAT by", "float step ms", "QAT step ms", "QAT / float"], rows)
    write_json(
        args.out,
        {
            "machine": machine_info(),
            "model": "MobileNetV2 0.35 + 10 CBAM",
            "size": args.size,
            "batch": args.batch,
            "steps": args.steps,
            "results": results,
        },
    )
    return results


if __name__ == "__main__":
    main()
