"""Start from a published attention checkpoint: ResNet-50 + CBAM -> fine-tune on digits -> QAT int8 -> .tflite.

The official CBAM release (RESNET50_CBAM_new_name_wrap.pth, linked from
github.com/Jongchan/attention-module's README; 77.62 % ImageNet top-1) is read
with `keras_attention.models.resnet50_cbam(weights=PATH)`: every tensor of the
file lands in a named Keras weight, or the load fails naming the keys. The
ImageNet classifier is left out (include_top=False), a 10-way head is added
and the whole network is fine-tuned on scikit-learn's digits (Adam, 3e-4: a
small rate, so the pretrained features are adjusted rather than replaced);
the model then goes through the package's Keras 3 QAT and is converted to an
int8 `.tflite`, verified against the QAT model in LiteRT.

    python examples/pretrained_resnet50_cbam.py --weights RESNET50_CBAM_new_name_wrap.pth [--out DIR]
    python examples/pretrained_resnet50_cbam.py --model seresnet50 --weights model.safetensors   # timm

Nothing is downloaded: pass the file you downloaded. Without --weights the
backbone starts from random weights (the pipeline runs, the accuracy shows no
transfer). --fast is the smoke run the tests use. Keras 3 on TensorFlow (the
int8 converter's backend).
"""

import argparse
import json
import os
import tempfile
import time

from _shared import compile_model, tflite_accuracy  # noqa: E402 - the same steps as the QAT example

from keras_attention import models, quantization, tflite  # noqa: E402
from keras_attention.backend import IS_LEGACY, keras  # noqa: E402
from keras_attention.data import digits  # noqa: E402

BUILDERS = ("resnet50_cbam", "seresnet50", "ecaresnet50d")


def build_model(name, weights, size, num_classes=10):
    """The published backbone (its classifier left out) with a new head of `num_classes` logits."""
    backbone = getattr(models, name)(include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg")
    outputs = keras.layers.Dense(num_classes, name="digits_logits")(backbone.output)
    return keras.Model(backbone.input, outputs, name=f"{name}_digits")


def preprocess(images):
    """[0, 255] RGB -> the sources' input: x / 255, then ImageNet mean and standard deviation."""
    return keras.applications.imagenet_utils.preprocess_input(images.copy(), mode="torch")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=BUILDERS, default="resnet50_cbam")
    parser.add_argument("--weights", default=None, help="the published checkpoint (.pth or .safetensors)")
    parser.add_argument("--size", type=int, default=64, help="input height and width (digits are upsampled)")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="smoke run: 32x32, a subset, 1 + 1 epochs")
    parser.add_argument("--out", default=None, help="output directory (default: a temp dir)")
    args = parser.parse_args(argv)
    if IS_LEGACY:
        raise SystemExit("This example uses the Keras 3 QAT path: run it without TF_USE_LEGACY_KERAS.")
    if args.fast:
        args.size, args.epochs, args.qat_epochs = 32, 1, 1
    out = args.out or tempfile.mkdtemp(prefix="pretrained_resnet50_cbam_")
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    (x_train, y_train), (x_test, y_test) = digits(size=args.size, channels=3)
    x_train, x_test = preprocess(x_train), preprocess(x_test)
    if args.fast:
        x_train, y_train, x_test, y_test = x_train[:96], y_train[:96], x_test[:32], y_test[:32]
    calibration = x_train[:64]

    start = time.time()
    model = build_model(args.model, args.weights, args.size)
    print(
        f"{args.model}: {model.count_params():,} parameters, "
        + (f"backbone from {args.weights}" if args.weights else "random backbone (no --weights)")
        + f" ({time.time() - start:.1f} s)"
    )

    start = time.time()
    compile_model(model, args.learning_rate, eager=args.fast)
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0 if args.fast else 2)
    float_accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    print(f"fine-tuning: {time.time() - start:.0f} s, float test accuracy {float_accuracy:.4f}")
    model.save(os.path.join(out, "float_model.keras"))

    start = time.time()
    qat_model = quantization.quantize_model(model)
    quantization.calibrate(qat_model, calibration)
    compile_model(qat_model, args.learning_rate / 3, eager=args.fast)
    qat_model.fit(x_train, y_train, epochs=args.qat_epochs, batch_size=32, verbose=0 if args.fast else 2)
    qat_model.save(os.path.join(out, "qat_model.keras"))
    print(f"QAT: {time.time() - start:.0f} s")

    start = time.time()
    flatbuffer = tflite.convert(qat_model, "int8", path=os.path.join(out, "model_int8.tflite"))
    int8_accuracy = tflite_accuracy(flatbuffer, x_test, y_test)
    report = tflite.verify(qat_model, flatbuffer, x_test[:32], latency_runs=0 if args.fast else 20, analyze_gpu=False)
    print(f"int8 conversion and verification: {time.time() - start:.0f} s")
    print(report)
    print(f"\nTest accuracy on digits ({len(x_test)} images, {args.size}x{args.size}):")
    print("| model | accuracy |\n| --- | --- |")
    print(f"| float (Keras) | {100 * float_accuracy:.2f} % |")
    print(f"| QAT int8 (LiteRT) | {100 * int8_accuracy:.2f} % |")

    results = dict(
        model=args.model,
        weights=os.path.basename(args.weights) if args.weights else None,
        fast=args.fast,
        size=args.size,
        epochs=args.epochs,
        qat_epochs=args.qat_epochs,
        train_images=int(len(x_train)),
        test_images=int(len(x_test)),
        float_accuracy=float_accuracy,
        qat_int8_accuracy=int8_accuracy,
        int8_end_to_end=bool(report.int8_end_to_end),
        all_builtin=bool(report.all_builtin),
        top1_agreement=report.top1_agreement,
        size_bytes=report.size_bytes,
        latency_ms=report.to_dict()["latency_ms"],
    )
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
