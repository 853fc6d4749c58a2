"""Export a CBAM model to TFLite in all four modes and prove each file in LiteRT.

Trains the quickstart CNN (three CBAM blocks) on scikit-learn's digits, or
loads your `.keras` file, then converts it to float32, float16, dynamic-range
and full-integer int8 `.tflite` files with `keras_attention.tflite.convert`.
Each file is run in the LiteRT interpreter (`ai-edge-litert`) on held-out
images by `tflite.verify` and the example prints one table: size, error
against Keras, top-1 agreement, test accuracy, builtin ops only, int8 end to
end, latency. A mode that fails its check makes the script exit non-zero.

    python examples/export_tflite.py [--model m.keras] [--out DIR] [--fast]
    TF_USE_LEGACY_KERAS=1 python examples/export_tflite.py   # the same with tf_keras

TensorFlow backend only (the TFLite converter is TensorFlow's).
"""

import argparse
import json
import os
import tempfile

import numpy as np
from _shared import build_model, compile_model  # noqa: E402

from keras_attention import tflite  # noqa: E402
from keras_attention.backend import BACKEND, IS_LEGACY, keras  # noqa: E402
from keras_attention.data import digits  # noqa: E402

MODES = ("float32", "float16", "dynamic", "int8")
# What each mode must reach against the Keras model on held-out digits.
MIN_COSINE = {"float32": 0.99999, "float16": 0.999, "dynamic": 0.99, "int8": 0.98}


def trained_model(x_train, y_train, epochs):
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(), 2e-3, jit_compile=False)
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=2)
    return model


def export_all(model, x_calibration, x_test, y_test, out, latency_runs):
    rows = []
    for mode in MODES:
        path = os.path.join(out, f"model_{mode}.tflite")
        tflite.convert(model, quantization=mode, representative_data=x_calibration, path=path)
        report = tflite.verify(model, path, x_test, latency_runs=latency_runs, threads=(1,), analyze_gpu=False)
        predictions = np.argmax(tflite.run(path, x_test)[0], axis=-1)
        rows.append(
            {
                "mode": mode,
                "file": path,
                "size_kib": report.size_bytes / 1024,
                "max_abs_error": report.max_abs_error,
                "min_cosine": report.min_cosine_similarity,
                "top1_agreement": report.top1_agreement,
                "accuracy": float(np.mean(predictions == y_test)),
                "builtin_only": report.all_builtin,
                "int8_end_to_end": report.int8_end_to_end,
                "latency_ms": report.latency_ms.get(1) if report.latency_ms else None,
            }
        )
    return rows


def print_table(rows, keras_accuracy):
    print(f"\nKeras test accuracy: {keras_accuracy:.4f}")
    header = (
        "| mode | size (KiB) | max abs error | min cosine | top-1 agreement | accuracy | builtin only "
        "| int8 end to end | latency 1 thread (ms) |"
    )
    print(header)
    print("|" + " --- |" * header.count(" | ") + " --- |")
    for r in rows:
        latency = f"{r['latency_ms']:.3f}" if r["latency_ms"] else "-"
        print(
            f"| {r['mode']} | {r['size_kib']:.1f} | {r['max_abs_error']:.2e} | {r['min_cosine']:.5f} "
            f"| {r['top1_agreement']:.3f} | {r['accuracy']:.4f} | {r['builtin_only']} | {r['int8_end_to_end']} "
            f"| {latency} |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a .keras file taking (32, 32, 1) digits (default: train one)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--fast", action="store_true", help="train 2 epochs on a subset, fewer test images")
    parser.add_argument("--out", default=None, help="where to write the .tflite files (default: a temp dir)")
    args = parser.parse_args(argv)
    if BACKEND != "tensorflow":
        raise SystemExit(f"export_tflite.py needs the TensorFlow backend (KERAS_BACKEND=tensorflow); got {BACKEND}.")

    (x_train, y_train), (x_test, y_test) = digits(size=32)
    epochs = args.epochs
    if args.fast:
        x_train, y_train, x_test, y_test, epochs = x_train[:512], y_train[:512], x_test[:64], y_test[:64], 2
    mode = "tf_keras" if IS_LEGACY else f"Keras {keras.__version__}"
    if args.model:
        model = keras.models.load_model(args.model, safe_mode=True)
        print(f"Loaded {args.model} ({mode})")
    else:
        print(f"Training the quickstart CNN with CBAM for {epochs} epochs ({mode})")
        model = trained_model(x_train, y_train, epochs)
    keras_accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=-1) == y_test))

    out = args.out or tempfile.mkdtemp(prefix="keras_attention_export_")
    os.makedirs(out, exist_ok=True)
    rows = export_all(model, x_train[:200], x_test, y_test, out, latency_runs=0 if args.fast else 50)
    print_table(rows, keras_accuracy)
    with open(os.path.join(out, "export.json"), "w") as f:
        json.dump({"keras_accuracy": keras_accuracy, "modes": rows}, f, indent=2)

    failures = [
        f"{r['mode']}: min cosine {r['min_cosine']:.5f} < {MIN_COSINE[r['mode']]}"
        for r in rows
        if r["min_cosine"] < MIN_COSINE[r["mode"]]
    ]
    failures += [f"{r['mode']}: needs non-builtin ops" for r in rows if not r["builtin_only"]]
    failures += ["int8: not int8 end to end" for r in rows if r["mode"] == "int8" and not r["int8_end_to_end"]]
    if failures:
        raise SystemExit("export check failed: " + "; ".join(failures))
    print(f"\nwrote {', '.join(os.path.basename(r['file']) for r in rows)} and export.json to {out}")
    return rows


if __name__ == "__main__":
    main()
