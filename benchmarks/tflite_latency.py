"""Median latency of .tflite models with the LiteRT interpreter (XNNPACK on), 1 and 2 threads.

    python benchmarks/tflite_latency.py                       # MobileNetV2 vs + CBAM, 224x224
    python benchmarks/tflite_latency.py --size 96 --runs 50   # smaller
    python benchmarks/tflite_latency.py --ablation            # which part of CBAM costs what
    python benchmarks/tflite_latency.py a.tflite b.tflite     # any models

Invocations of the compared models are interleaved (A B A B ...), so the ratio
taken from one run is fair on a noisy host. Prints a markdown table and writes
JSON (default `benchmarks/results/tflite_latency.json`).

The question (issue 9): the CBAM paper says CBAM costs almost nothing
(ResNet50: 3.858 -> 3.864 GFLOPs). On the phone runtime, int8 MobileNetV2 +
CBAM (`attach(where="residual")`, 10 blocks) should cost at most 10% more
latency than plain int8 MobileNetV2 at 224x224, 1 thread (float32: 5%).
`--ablation` times CBAM's parts separately: channel gate only, spatial gate
only, spatial gate on the channel mean only (`pooling=("avg",)`), and channel
gate with average pooling only, to find what costs the difference.
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = os.path.join(ROOT, "tflite")  # the kit's reference_models.py (tflite/ is not a package)
for _path in (ROOT, KIT):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from benchmarks._common import machine_info, markdown_table, write_json  # noqa: E402

DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "tflite_latency.json")


def interleaved_latency(models, threads=(1, 2), runs=50, warmup=5):
    """`{name: {threads: median_ms}}` for `.tflite` models (bytes or paths), invocations interleaved
    (`tflite.measure_latency` with a dict)."""
    from keras_attention import tflite

    return tflite.measure_latency(models, threads, runs, warmup)


def latency_table(results, sizes=None, baseline=None):
    """Markdown rows: model, size, median ms per thread count, ratio to `baseline`."""
    threads = sorted({n for r in results.values() for n in r})
    headers = (
        ["model"] + (["size (KiB)"] if sizes else []) + [f"{n} thread{'s' if n > 1 else ''} (ms)" for n in threads]
    )
    if baseline:
        headers += [f"x {baseline} ({n}t)" for n in threads]
    rows = []
    for name, r in results.items():
        row = [name] + ([f"{sizes[name] / 1024:.0f}"] if sizes else []) + [f"{r[n]:.3f}" for n in threads]
        if baseline:
            row += [f"{r[n] / results[baseline][n]:.3f}" for n in threads]
        rows.append(row)
    return headers, rows


def _variants(size, ablation, alpha):
    """Keras models to compare: plain MobileNetV2, + CBAM, and with --ablation CBAM's parts."""
    from reference_models import mobilenet_v2

    models = {
        "mobilenetv2": mobilenet_v2(size, alpha=alpha),
        "mobilenetv2_cbam": mobilenet_v2(size, cbam=True, alpha=alpha, preserve_outputs=False),
    }
    if ablation:
        from reference_models import _rescaled

        import keras_attention as ka
        from keras_attention.backend import keras

        def attached(attention, **kwargs):
            base = keras.applications.MobileNetV2(
                input_shape=(size, size, 3),
                alpha=alpha,
                weights=None,
                include_top=True,
                classes=10,
                classifier_activation=None,
            )
            return _rescaled(ka.attach(base, attention, where="residual", preserve_outputs=False, **kwargs), size)

        models["+channel(avg,max)"] = attached("channel", reduction=16)
        models["+channel(avg)=SE"] = attached("channel", reduction=16, pooling=("avg",))
        models["+spatial(avg,max)"] = attached("spatial")
        models["+spatial(avg)"] = attached("spatial", pooling=("avg",))
        models["+cbam(spatial avg)"] = attached("cbam", reduction=16, spatial_pooling=("avg",))
    return models


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tflite_files", nargs="*", help="compare these .tflite files instead of building models")
    parser.add_argument("--size", type=int, default=224, help="input size of the built models (224)")
    parser.add_argument(
        "--alpha", type=float, default=0.35, help="MobileNetV2 width multiplier (0.35; 1.0 is Keras' default)"
    )
    parser.add_argument("--quantizations", default="int8,float32", help="comma-separated (int8,float32)")
    parser.add_argument("--runs", type=int, default=50, help="timed rounds per thread count (50)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--ablation", action="store_true", help="also time CBAM's parts")
    parser.add_argument("--json", default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    threads = tuple(int(t) for t in args.threads.split(","))

    from keras_attention import tflite

    payload = {"machine": machine_info(), "runs": args.runs, "threads": list(threads), "results": {}}
    if args.tflite_files:
        models = {os.path.basename(p): tflite.load_flatbuffer(p) for p in args.tflite_files}
        results = interleaved_latency(models, threads, args.runs)
        headers, rows = latency_table(results, {k: len(v) for k, v in models.items()}, next(iter(models)))
        print(markdown_table(headers, rows))
        payload["results"]["files"] = results
        write_json(args.json, payload)
        return payload

    keras_models = _variants(args.size, args.ablation, args.alpha)
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 255, size=(16, args.size, args.size, 3)).astype("float32")
    for quantization in args.quantizations.split(","):
        flatbuffers = {}
        for name, model in keras_models.items():
            start = time.time()
            flatbuffers[name] = tflite.convert(
                model, quantization, representative_data=calibration, calibration_steps=16
            )
            print(f"converted {name} ({quantization}) in {time.time() - start:.1f}s", flush=True)
        results = interleaved_latency(flatbuffers, threads, args.runs)
        print(f"\n{quantization}, {args.size}x{args.size}, LiteRT + XNNPACK, median of {args.runs} interleaved runs")
        headers, rows = latency_table(results, {k: len(v) for k, v in flatbuffers.items()}, "mobilenetv2")
        print(markdown_table(headers, rows) + "\n")
        ops = {name: dict(tflite.op_counts(fb)) for name, fb in flatbuffers.items()}
        payload["results"][quantization] = {
            name: {
                "latency_ms": {str(n): v for n, v in results[name].items()},
                "size_bytes": len(flatbuffers[name]),
                "ratio_to_plain": {str(n): results[name][n] / results["mobilenetv2"][n] for n in threads},
                "ops": {f"{op} [{dtype}]": count for (op, dtype), count in sorted(ops[name].items())},
            }
            for name in flatbuffers
        }
        extra = Counter_diff(ops["mobilenetv2_cbam"], ops["mobilenetv2"])
        print("ops CBAM adds: " + ", ".join(f"{count} x {op} [{dtype}]" for (op, dtype), count in extra.items()))
        payload["results"][quantization]["cbam_extra_ops"] = {f"{op} [{d}]": c for (op, d), c in extra.items()}
    payload["size"] = args.size
    write_json(args.json, payload)
    return payload


def Counter_diff(a, b):  # noqa: N802 - reads as a noun in the caller
    """Op counts in `a` beyond those in `b`."""
    return {key: a[key] - b.get(key, 0) for key in sorted(a) if a[key] > b.get(key, 0)}


if __name__ == "__main__":
    main()
