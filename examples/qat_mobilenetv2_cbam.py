"""Quantization-aware training: MobileNetV2 + CBAM, float vs post-training int8 vs QAT int8.

MobileNetV2 (alpha 0.35, 96x96, no pretrained weights: nothing is downloaded)
gets a CBAM block on every residual branch with `keras_attention.backbones.attach`,
is trained in float on scikit-learn's digits (real 8x8 scans, upsampled), and
is then quantized two ways:

1. post-training int8: `tflite.convert(model, "int8", representative_data=...)`;
2. QAT: `quantization.quantize_model(model)`, fine-tuned a few epochs with the
   int8 arithmetic simulated, then converted to int8 and checked with
   `tflite.verify` (op inventory, int8 end to end, Keras-vs-LiteRT agreement).
   Under Keras 3 that is the package's own QAT (`fake_quant_with_min_max_vars`,
   ranges calibrated on the representative images first; no representative
   data at conversion); with TF_USE_LEGACY_KERAS=1 it is tfmot's.

It prints the accuracy table (float Keras, both int8 models in the LiteRT
interpreter, and, without --fast, post-training int8 with the CBAM blocks left
in float, which shows how much of its loss the attention causes) and writes the float and QAT models
(`.keras`, or `.h5` under tf_keras), the two `.tflite` files and `results.json` to --out.

    python examples/qat_mobilenetv2_cbam.py [--fast] [--out DIR]                        # Keras 3 QAT
    TF_USE_LEGACY_KERAS=1 python examples/qat_mobilenetv2_cbam.py [--fast] [--out DIR]  # tfmot

Same model, data, seed and epochs on both paths. The two Keras modes train
different float models from the same seed; `--float-weights DIR/float_weights.npz`
(written by every run) starts from another run's float model instead, so the QAT
paths can be compared on the very same weights.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
from _shared import compile_model, tflite_accuracy

from keras_attention import quantization, tflite
from keras_attention.backbones import attach, attention_layers
from keras_attention.backend import IS_LEGACY, keras
from keras_attention.data import digits


def build_model(size=96, alpha=0.35, num_classes=10):
    """MobileNetV2 with CBAM on its residual branches and a 10-way head (logits)."""
    backbone = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=None)
    # Keras' MobileNetV2 uses BatchNorm momentum 0.999, tuned for ImageNet's
    # million images; a few hundred steps on digits need faster statistics.
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    backbone = attach(backbone, "cbam", where="residual")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone.output)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(backbone.input, outputs, name="mobilenetv2_cbam")


def preprocess(images):
    """[0, 255] -> [-1, 1], MobileNetV2's input range (done outside the model:
    tfmot cannot quantize a Rescaling layer)."""
    return images / 127.5 - 1.0


def post_training_int8(model, calibration, x_test, y_test, path):
    """(accuracy, note, flatbuffer) of post-training int8 in LiteRT.

    `tflite.convert` refuses a model whose calibration leaves an activation
    with a near-zero scale (e.g. a dead unit) when XNNPACK crashes on it; the
    accuracy is then measured with LiteRT's reference kernels (no XNNPACK),
    and the note says so.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        flatbuffer = tflite.convert(model, "int8", representative_data=calibration, path=path)
        return tflite_accuracy(flatbuffer, x_test, y_test), "", flatbuffer
    except tflite.TFLiteConversionError as error:
        if "never varied" not in str(error):
            raise
        note = "XNNPACK crashes on it (a zero-scale tensor); measured with LiteRT's reference kernels"
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[None].astype("float32")] for sample in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    flatbuffer = converter.convert()
    with open(path, "wb") as handle:
        handle.write(flatbuffer)
    interpreter = Interpreter(
        model_content=flatbuffer, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    predictions = []
    for sample in x_test:
        interpreter.set_tensor(inp["index"], sample[None].astype("float32"))
        interpreter.invoke()
        predictions.append(int(interpreter.get_tensor(out["index"])[0].argmax()))
    return float(np.mean(np.asarray(predictions) == y_test)), note, flatbuffer


def post_training_int8_attention_in_float(model, ptq_flatbuffer, calibration, x_test, y_test):
    """Post-training int8 accuracy with every op of the CBAM blocks kept in float
    (TFLite's selective quantization): how much of the PTQ loss the attention causes."""
    import tensorflow as tf

    scopes = [f"/{layer.name}/" for layer in attention_layers(model)]
    names = sorted(
        {
            name
            for op in tflite.op_inventory(ptq_flatbuffer)
            for name in op["outputs"]
            if any(scope in name for scope in scopes)
        }
    )
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def representative():
        for sample in calibration:
            yield [sample[None].astype("float32")]

    converter.representative_dataset = representative
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=representative,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=names),
    )
    return tflite_accuracy(debugger.get_nondebug_quantized_model(), x_test, y_test)


def save_float_weights(model, path):
    """Per layer (tf_keras orders a model's weights trainable-first, Keras 3 layer by layer)."""
    np.savez(path, **{f"{layer.name}/{i}": w for layer in model.layers for i, w in enumerate(layer.get_weights())})


def load_float_weights(model, path):
    with np.load(path) as saved:
        for layer in model.layers:
            weights = [
                saved[f"{layer.name}/{i}"]
                for i in range(len(layer.get_weights()))
                if f"{layer.name}/{i}" in saved.files
            ]
            if len(weights) != len(layer.get_weights()):
                raise SystemExit(f"--float-weights {path}: no weights for layer {layer.name!r} of this model.")
            layer.set_weights(weights)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=3, help="QAT fine-tuning epochs")
    parser.add_argument("--size", type=int, default=96, help="input height and width")
    parser.add_argument("--calibration", type=int, default=200, help="representative samples for int8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--float-weights",
        default=None,
        help="float_weights.npz of an earlier run (either Keras mode): skip float training",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="a smoke run: 32x32, a subset, 1 float + 1 QAT epoch, run eagerly (accuracy meaningless)",
    )
    parser.add_argument("--out", default=None, help="output directory (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.fast:
        args.epochs, args.qat_epochs, args.size, args.calibration = 1, 1, 32, 8
    out = args.out or tempfile.mkdtemp(prefix="qat_mobilenetv2_cbam_")
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    (x_train, y_train), (x_test, y_test) = digits(size=args.size, channels=3)
    x_train, x_test = preprocess(x_train), preprocess(x_test)
    if args.fast:
        x_train, y_train, x_test, y_test = x_train[:128], y_train[:128], x_test[:32], y_test[:32]
    calibration = x_train[: args.calibration]
    print(f"digits: {len(x_train)} train / {len(x_test)} test images, {args.size}x{args.size}x3")

    # 1. Float training (cosine learning-rate decay, so the float model settles).
    model = build_model(args.size)
    n_cbam = sum(1 for layer in model.layers if type(layer).__name__ == "CBAM")
    print(f"MobileNetV2 (alpha 0.35) + {n_cbam} CBAM blocks, {model.count_params():,} parameters")
    batch = 32
    steps = max(1, args.epochs * -(-len(x_train) // batch))
    compile_model(model, keras.optimizers.schedules.CosineDecay(3e-3, steps), eager=args.fast)
    start = time.time()
    if args.float_weights:  # the other Keras mode's float model: both QAT paths start from the same weights
        load_float_weights(model, args.float_weights)
    else:
        model.fit(x_train, y_train, epochs=args.epochs, batch_size=batch, verbose=2 if not args.fast else 0)
    float_accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    print(f"float training: {time.time() - start:.0f} s, test accuracy {float_accuracy:.4f}")
    model.save(os.path.join(out, "float_model.h5" if IS_LEGACY else "float_model.keras"))
    save_float_weights(model, os.path.join(out, "float_weights.npz"))

    # 2. Post-training int8.
    start = time.time()
    ptq_accuracy, ptq_note, ptq = post_training_int8(
        model, calibration, x_test, y_test, os.path.join(out, "ptq_int8.tflite")
    )
    if ptq_note:
        print(f"post-training int8: {ptq_note}")
    # Where the loss comes from (skipped by --fast): the same, CBAM blocks left in float.
    ptq_attention_float = (
        None if args.fast else post_training_int8_attention_in_float(model, ptq, calibration, x_test, y_test)
    )
    print(f"post-training int8: {time.time() - start:.0f} s")

    # 3. Quantization-aware training, then int8.
    start = time.time()
    qat_model = quantization.quantize_model(model)
    if not IS_LEGACY:  # ranges from data before the first step (tfmot's start at [-6, 6])
        quantization.calibrate(qat_model, calibration)
    print(f"quantize_model: {time.time() - start:.0f} s")
    compile_model(qat_model, 1e-4, eager=args.fast)
    qat_model.fit(x_train, y_train, epochs=args.qat_epochs, batch_size=batch, verbose=2 if not args.fast else 0)
    qat_keras_accuracy = None if args.fast else float(qat_model.evaluate(x_test, y_test, verbose=0)[1])
    print(
        f"QAT fine-tuning: {time.time() - start:.0f} s"
        + ("" if qat_keras_accuracy is None else f", Keras (fake-quant) accuracy {qat_keras_accuracy:.4f}")
    )
    if IS_LEGACY:
        quantization.save_qat_model(qat_model, os.path.join(out, "qat_model.h5"))
    else:
        qat_model.save(os.path.join(out, "qat_model.keras"))
    start = time.time()
    # Keras 3 QAT models carry their ranges; tfmot's path still calibrates with representative data.
    qat = tflite.convert(
        qat_model,
        "int8",
        representative_data=calibration if IS_LEGACY else None,
        path=os.path.join(out, "qat_int8.tflite"),
    )
    qat_accuracy = tflite_accuracy(qat, x_test, y_test)
    report = tflite.verify(qat_model, qat, x_test[:32], latency_runs=0 if args.fast else 20, analyze_gpu=not args.fast)
    print(f"int8 conversion and verification: {time.time() - start:.0f} s")
    print(report)

    rows = [
        ("float (Keras)", float_accuracy),
        ("post-training int8 (LiteRT" + (", reference kernels*" if ptq_note else "") + ")", ptq_accuracy),
        ("QAT int8 (LiteRT)", qat_accuracy),
    ]
    if ptq_attention_float is not None:
        rows.insert(2, ("post-training int8, CBAM blocks left in float (LiteRT)", ptq_attention_float))
    print(f"\nTest accuracy on digits ({len(x_test)} images):")
    print("| model | accuracy |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {100 * value:.2f} % |")
    if ptq_note:
        print(f"* {ptq_note}")
    print(f"QAT int8 int8 end to end: {report.int8_end_to_end}; builtin ops only: {report.all_builtin}")

    results = dict(
        qat="tfmot (tf_keras)" if IS_LEGACY else "Keras 3 (keras_attention.quantization)",
        fast=args.fast,
        size=args.size,
        epochs=args.epochs,
        qat_epochs=args.qat_epochs,
        train_images=int(len(x_train)),
        test_images=int(len(x_test)),
        float_accuracy=float_accuracy,
        ptq_int8_accuracy=ptq_accuracy,
        ptq_note=ptq_note,
        ptq_int8_cbam_float_accuracy=ptq_attention_float,
        qat_keras_accuracy=qat_keras_accuracy,
        qat_int8_accuracy=qat_accuracy,
        qat_int8_end_to_end=bool(report.int8_end_to_end),
        qat_all_builtin=bool(report.all_builtin),
        qat_float_ops=report.float_ops,
        qat_top1_agreement=report.top1_agreement,
        qat_ops={f"{op['op']} [{op['dtype']}]": op["count"] for op in report.ops},
        qat_size_bytes=report.size_bytes,
        qat_latency_ms=report.to_dict()["latency_ms"],
    )
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
