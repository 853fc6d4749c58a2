"""Builds, converts, verifies and times the reference .tflite models; writes the results table.

    python tflite/build_kit.py               # full: 96x96 MobileNetV2s trained 3 epochs on digits
    python tflite/build_kit.py --ci          # CI size: 32x32, 1 epoch of 384 images, float32 + int8, fewer runs
    python tflite/build_kit.py --out DIR --models mobilenetv2,mobilenetv2_cbam --quantizations int8

For every reference model (MobileNetV2 with and without CBAM, the SAG-Mask
head, the ThunderNet CEM+RPN+SAM block) and every quantization (float32, float16, dynamic, int8) it writes
`<model>_<quantization>.tflite`, verifies it against Keras in the LiteRT
interpreter and writes `results.md` and `results.json` to `--out`
(default `tflite/models`).

The MobileNetV2s are trained briefly on scikit-learn's digits (RGB, resized)
before conversion, so the int8 numbers are about live activations (a randomly
initialised deep network's activations fade, and int8 calibration on them
means nothing). The SAG-Mask and ThunderNet blocks are shallow heads measured
on random weights and random inputs (marked so in the table).
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE, os.path.join(ROOT, "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import reference_models as refs  # noqa: E402

from keras_attention import tflite  # noqa: E402
from keras_attention.backend import BACKEND  # noqa: E402

COLUMNS = [
    ("model", "model"),
    ("quantization", "quant"),
    ("size_kib", "size KiB"),
    ("max_abs_error", "max abs err"),
    ("max_rel_error", "max rel err"),
    ("cosine_similarity", "cosine"),
    ("top1_agreement", "top-1 agree"),
    ("latency_1", "1 thread ms"),
    ("latency_2", "2 threads ms"),
    ("num_ops", "ops"),
    ("all_builtin", "builtin"),
    ("int8_end_to_end", "int8 e2e"),
    ("gpu_compatible", "GPU (analyzer)"),
    ("weights", "weights"),
]


def _fmt(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def markdown_table(rows):
    headers = [title for _, title in COLUMNS]
    body = [[_fmt(row.get(key)) for key, _ in COLUMNS] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in body])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", action="store_true", help="CI size: 32x32 inputs, 1 epoch, fewer samples/runs")
    parser.add_argument("--size", type=int, default=None, help="MobileNetV2 input size (96; 32 with --ci)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs on digits (3; 1 with --ci)")
    parser.add_argument("--models", default=None, help="comma-separated subset of the reference models")
    parser.add_argument("--quantizations", default=None, help="comma-separated (all four; float32,int8 with --ci)")
    parser.add_argument("--latency-runs", type=int, default=None, help="timed runs per thread count (50; 10 --ci)")
    parser.add_argument("--out", default=os.path.join(HERE, "models"))
    args = parser.parse_args(argv)
    if BACKEND != "tensorflow":
        sys.exit("build_kit.py needs the TensorFlow backend (KERAS_BACKEND=tensorflow).")
    size = args.size or (32 if args.ci else 96)
    epochs = args.epochs if args.epochs is not None else (1 if args.ci else 3)
    latency_runs = args.latency_runs or (10 if args.ci else 50)
    calibration, held_out = (64, 64) if args.ci else (200, 400)
    quantizations = (args.quantizations or ("float32,int8" if args.ci else ",".join(tflite.QUANTIZATIONS))).split(",")
    os.makedirs(args.out, exist_ok=True)

    names = list(refs.NAMES)
    if args.models:
        wanted = args.models.split(",")
        names = [n for n in names if n in wanted]

    (x_train, y_train), (x_test, _) = refs.digits_rgb(size)
    if args.ci:  # 12 training steps: enough for live activations, which is all int8 calibration needs here
        x_train, y_train = x_train[:384], y_train[:384]
    rows, started = [], time.time()
    for name in names:
        model = refs.build(name, size)
        classifier = name.startswith("mobilenetv2")
        if classifier:
            accuracy = refs.train_classifier(model, x_train, y_train, epochs=epochs)
            print(f"{name}: trained {epochs} epoch(s) on digits {size}x{size}, train accuracy {accuracy:.3f}")
            calibration_data, eval_data = x_train[:calibration], x_test[:held_out]
        else:
            calibration_data = refs.random_inputs(model, calibration, seed=1)
            eval_data = refs.random_inputs(model, min(held_out, 32), seed=2)
        saved_model = os.path.join(args.out, f".{name}_saved_model")
        tflite.export_saved_model(model, saved_model, freeze=True)  # exported once, converted four times
        for quantization in quantizations:
            start = time.time()
            path = os.path.join(args.out, f"{name}_{quantization}.tflite")
            flatbuffer = tflite.convert(saved_model, quantization, representative_data=calibration_data, path=path)
            report = tflite.verify(model, flatbuffer, eval_data, latency_runs=latency_runs)
            row = dict(
                model=name,
                quantization=quantization,
                size_bytes=report.size_bytes,
                size_kib=round(report.size_bytes / 1024, 1),
                max_abs_error=report.max_abs_error,
                max_rel_error=report.max_rel_error,
                cosine_similarity=report.cosine_similarity,
                min_cosine_similarity=report.min_cosine_similarity,
                top1_agreement=report.top1_agreement,
                latency_1=report.latency_ms.get(1),
                latency_2=report.latency_ms.get(2),
                num_ops=sum(op["count"] for op in report.ops),
                all_builtin=report.all_builtin,
                int8_end_to_end=report.int8_end_to_end,
                gpu_compatible=report.gpu_compatible,
                gpu_issues=report.gpu_issues,
                float_ops=report.float_ops,
                ops={f"{op['op']} [{op['dtype']}]": op["count"] for op in report.ops},
                weights="trained (digits)" if classifier else "random",
                file=os.path.basename(path),
            )
            rows.append(row)
            print(
                f"  {name} {quantization}: {row['size_kib']} KiB, cos {row['cosine_similarity']:.5f}, "
                f"{_fmt(row['latency_1'])} ms (1 thread), {time.time() - start:.1f}s",
                flush=True,
            )
        import shutil

        shutil.rmtree(saved_model, ignore_errors=True)

    comparison = {}
    by_key = {(r["model"], r["quantization"]): r for r in rows}
    paired = [q for q in quantizations if ("mobilenetv2", q) in by_key and ("mobilenetv2_cbam", q) in by_key]
    if paired:
        from tflite_latency import interleaved_latency

        for q in paired:
            files = {m: os.path.join(args.out, f"{m}_{q}.tflite") for m in ("mobilenetv2", "mobilenetv2_cbam")}
            timing = interleaved_latency(files, threads=(1, 2), runs=latency_runs)
            comparison[q] = dict(
                latency_ms={m: {str(n): v for n, v in t.items()} for m, t in timing.items()},
                latency_ratio_1_thread=timing["mobilenetv2_cbam"][1] / timing["mobilenetv2"][1],
                latency_ratio_2_threads=timing["mobilenetv2_cbam"][2] / timing["mobilenetv2"][2],
                size_ratio=by_key[("mobilenetv2_cbam", q)]["size_bytes"] / by_key[("mobilenetv2", q)]["size_bytes"],
            )

    table = markdown_table(rows)
    lines = [
        f"Reference models, {size}x{size} MobileNetV2 (alpha {refs.ALPHA}), LiteRT interpreter + XNNPACK, "
        f"median of {latency_runs} runs; errors vs Keras on {held_out if not args.ci else 64} held-out inputs.",
        "",
        table,
        "",
    ]
    if comparison:
        lines += [
            "MobileNetV2 + CBAM vs plain MobileNetV2 (interleaved timing):",
            "",
            "| quantization | latency x (1 thread) | latency x (2 threads) | size x |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {q} | {c['latency_ratio_1_thread']:.3f} | {c['latency_ratio_2_threads']:.3f} | {c['size_ratio']:.3f} |"
            for q, c in comparison.items()
        ]
        lines.append("")
    markdown = "\n".join(lines).rstrip() + "\n"
    print("\n" + markdown)
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write(markdown)
    payload = dict(
        size=size,
        epochs=epochs,
        ci=args.ci,
        latency_runs=latency_runs,
        rows=rows,
        cbam_vs_plain=comparison,
        seconds=round(time.time() - started, 1),
        machine=dict(cpu_count=os.cpu_count(), platform=sys.platform),
    )
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(payload, handle, indent=2, default=float)
    print(f"wrote {os.path.join(args.out, 'results.md')} and results.json")
    return payload


if __name__ == "__main__":
    main()
