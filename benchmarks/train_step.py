"""Images/s of a full training step, plain backbone vs `attach(..., "cbam")`, with and without XLA.

Also the first step's time: tracing, and with XLA compilation (what `jit_compile=True` costs up front).

For each backbone (ResNet50, MobileNetV2; batch 16, 224x224, weights=None) the
four variants (plain/CBAM x XLA on/off) are compiled in one process and their
steps interleaved, so the CBAM/plain ratio comes from one run. Peak memory is
the peak resident set of a separate process per variant running a few steps.

    python benchmarks/train_step.py                  # both backbones, 224x224, batch 16
    python benchmarks/train_step.py --fast           # 64x64, batch 4, few steps (CI smoke run)
    KERAS_BACKEND=jax python benchmarks/train_step.py --models mobilenetv2

Writes benchmarks/results/train_step.json (or --out).
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import interleaved_medians, machine_info, print_table, write_json  # noqa: E402

BACKBONES = {"resnet50": "ResNet50", "mobilenetv2": "MobileNetV2"}


def build(name, attention, size, xla):
    import keras_attention as ka
    from keras_attention.backend import keras

    model = getattr(keras.applications, BACKBONES[name])(weights=None, input_shape=(size, size, 3), classes=10)
    if attention:
        model = ka.attach(model, "cbam")
    model.compile(
        keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=False), jit_compile=xla
    )
    return model


def variants():
    return [(attention, xla) for attention in (False, True) for xla in (False, True)]


def label(attention, xla):
    return f"{'cbam' if attention else 'plain'}{' XLA' if xla else ''}"


def time_backbone(name, size, batch, steps):
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = np.arange(batch) % 10
    models = {label(a, j): build(name, a, size, j) for a, j in variants()}
    first = {}
    for key, model in models.items():  # the first step traces the graph (and compiles it, with XLA)
        start = time.perf_counter()
        model.train_on_batch(x, y)
        first[key] = time.perf_counter() - start
    candidates = {k: (lambda m=m: m.train_on_batch(x, y)) for k, m in models.items()}
    medians = interleaved_medians(candidates, steps, warmup=2)
    params = {k: int(m.count_params()) for k, m in models.items()}
    return {
        k: {"first_step_s": first[k], "step_s": v, "images_per_s": batch / v, "params": params[k]}
        for k, v in medians.items()
    }


def peak_memory_mb(name, size, batch, attention, xla):
    """Peak RSS of a fresh process that builds one variant and runs three steps."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        f"import sys, resource, numpy as np; sys.path.insert(0, {root!r});"
        "from benchmarks.train_step import build;"
        f"m = build({name!r}, {attention!r}, {size:d}, {xla!r});"
        f"x = np.zeros(({batch:d}, {size:d}, {size:d}, 3), 'float32'); y = np.zeros({batch:d}, 'int32');"
        "[m.train_on_batch(x, y) for _ in range(3)];"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    lines = [line for line in out.stdout.splitlines() if line.startswith("PEAK")]
    if not lines:
        raise RuntimeError(out.stderr[-3000:])
    return int(lines[-1].split()[1]) / 1024.0  # ru_maxrss is in KiB on Linux


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenetv2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory processes")
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "train_step.json"))
    args = parser.parse_args(argv)
    if args.fast:
        args.size, args.batch, args.steps, args.models = 64, 4, 2, "mobilenetv2"
    from keras_attention.backend import BACKEND, IS_LEGACY

    results, rows = {}, []
    for name in args.models.split(","):
        print(f"timing {name} ...", flush=True)
        timing = time_backbone(name, args.size, args.batch, args.steps)
        for attention, xla in variants():
            key = label(attention, xla)
            if not args.no_memory:
                timing[key]["peak_rss_mb"] = peak_memory_mb(name, args.size, args.batch, attention, xla)
        for xla in (False, True):
            plain, cbam = timing[label(False, xla)], timing[label(True, xla)]
            cbam["cbam_over_plain_images_per_s"] = cbam["images_per_s"] / plain["images_per_s"]
        for key, r in timing.items():
            rows.append(
                [
                    name,
                    key,
                    f"{r['first_step_s']:.1f}",
                    f"{r['images_per_s']:.2f}",
                    f"{r['params'] / 1e6:.2f}M",
                    f"{r.get('cbam_over_plain_images_per_s', 1.0):.3f}",
                    f"{r.get('peak_rss_mb', float('nan')):.0f}",
                ]
            )
        results[name] = timing
    print_table(
        ["backbone", "variant", "first step s", "images/s", "params", "x plain (same XLA)", "peak RSS MB"], rows
    )
    write_json(
        args.out,
        {
            "machine": machine_info(),
            "keras": "tf_keras" if IS_LEGACY else BACKEND,
            "size": args.size,
            "batch": args.batch,
            "steps": args.steps,
            "results": results,
        },
    )
    return results


if __name__ == "__main__":
    main()
