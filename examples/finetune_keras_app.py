"""Fine-tune a Keras Applications backbone with CBAM attached.

The transfer-learning recipe with attention:

1. take a pretrained backbone (`keras.applications.MobileNetV2(weights="imagenet")`);
2. `ka.attach(backbone, "cbam")`: CBAM on every residual branch, starting as
   the identity, so the network still computes exactly what it was trained to;
3. `ka.freeze_backbone(backbone)`: train only the attention layers and the new
   head (frozen BatchNorm runs in inference mode);
4. `ka.unfreeze(backbone)`: fine-tune everything with a small learning rate,
   BatchNorm still frozen, as Keras recommends;
5. save as `.keras`, reload with `safe_mode=True`, check the predictions.

Data: scikit-learn's digits (no download), resized to 96x96 RGB.

    python examples/finetune_keras_app.py [--fast] [--weights imagenet] [--alpha 0.35] [--out DIR]

`--weights imagenet` downloads the ImageNet weights (needs network access;
MobileNetV2 has them for alpha 0.35, 0.5, 0.75, 1.0, 1.3, 1.4 at 96, 128, 160,
192 or 224 pixels). The default `--weights none` needs no network: the
backbone keeps its random weights and only its BatchNorm statistics are
calibrated on the digits (one forward pass), a stand-in for pretraining
without which a frozen random network's activations fade to nothing.
"""

import argparse
import os
import tempfile
import time

import numpy as np

import keras_attention as ka
from keras_attention.backend import BACKEND, IS_LEGACY, keras
from keras_attention.data import digits

SIZE = 96


def build_classifier(backbone, head):
    """Pixels in [0, 255] -> MobileNetV2's [-1, 1] -> backbone -> `head` (shared layers)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(inputs)
    x = backbone(x)
    for layer in head:
        x = layer(x)
    return keras.Model(inputs, x, name=f"{backbone.name}_classifier")


def compile_model(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def fit(model, data, epochs, label):
    (x_train, y_train), (x_test, y_test) = data
    start = time.time()
    history = model.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=epochs,
        validation_data=(x_test, y_test),
        verbose=0,
    )
    accuracies = [float(a) for a in history.history["val_accuracy"]]
    print(
        f"{label}: {epochs} epochs in {time.time() - start:.1f}s, test accuracy per epoch "
        + " ".join(f"{a:.3f}" for a in accuracies)
    )
    return accuracies


def calibrate_batchnorm(backbone, x):
    """Sets every BatchNorm's moving statistics to those of `x` (one forward pass in training mode)."""
    batchnorms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in batchnorms]
    for layer in batchnorms:
        layer.momentum = 0.0
    backbone(x, training=True)
    for layer, momentum in zip(batchnorms, momenta):
        layer.momentum = momentum


def predict(model, x):
    return np.asarray(model.predict(x, batch_size=128, verbose=0))


def run(weights=None, alpha=0.35, fast=False, out=None, seed=0):
    """Runs the recipe and returns its figures (used by the tests too)."""
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = digits(size=SIZE, channels=3)
    if fast:
        x_train, y_train = x_train[:480], y_train[:480]
    data = (x_train, y_train), (x_test, y_test)
    head_epochs, tune_epochs = (3, 4) if fast else (6, 10)
    # A random backbone needs a larger fine-tuning step than a pretrained one.
    tune_rate = 1e-3 if weights is None else 1e-4
    results = {}

    backbone = keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3),
        alpha=alpha,
        include_top=False,
        weights=weights,
    )
    head = [keras.layers.GlobalAveragePooling2D(name="head_pool"), keras.layers.Dense(10, name="head_logits")]
    plain = build_classifier(backbone, head)
    if weights is None:
        calibrate_batchnorm(backbone, plain.get_layer("to_unit_range")(x_train[:256]))

    # 2. Attention on every residual branch; the new network computes exactly the old function.
    attached = ka.attach(backbone, "cbam", where="residual", reduction=16)
    model = build_classifier(attached, head)  # the head's layers (and weights) are shared
    inserted = ka.backbones.attention_layers(attached)
    print(
        f"attached {len(inserted)} CBAM blocks ({inserted[0].name}, ...): "
        f"{plain.count_params():,} -> {model.count_params():,} parameters"
    )
    before, after = predict(plain, x_test), predict(model, x_test)
    change = float(np.abs(before - after).max() / np.abs(before).max())
    results["max_relative_change_at_insertion"] = change
    print(
        f"largest logit change at insertion: {change:.1e} of the largest logit "
        f"(float rounding: the compiled graphs differ)"
    )

    # 3. Frozen backbone: only attention and head learn; BatchNorm in inference mode.
    ka.freeze_backbone(attached)
    compile_model(model, 3e-3)
    results["frozen"] = fit(model, data, head_epochs, "attention + head, backbone frozen")

    # 4. Everything (BatchNorm excepted) with a small learning rate.
    ka.unfreeze(attached)
    compile_model(model, tune_rate)
    results["finetune"] = fit(model, data, tune_epochs, "fine-tuning, BatchNorm frozen")

    # 5. Save, reload safely, compare.
    out = out or tempfile.mkdtemp(prefix="keras_attention_finetune_")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "finetuned.keras")
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    results["identical_after_reload"] = bool(np.array_equal(predict(model, x_test), predict(reloaded, x_test)))
    results["accuracy"] = results["finetune"][-1]
    print(f"test accuracy: {results['accuracy']:.4f}")
    print(f"saved {path}; reloaded with safe_mode=True, identical predictions: {results['identical_after_reload']}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="none", help='"none" (default, no network) or "imagenet"')
    parser.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width multiplier")
    parser.add_argument("--fast", action="store_true", help="a subset and fewer epochs (under a minute)")
    parser.add_argument("--out", default=None, help="where to write finetuned.keras (default: a temp dir)")
    args = parser.parse_args(argv)
    weights = None if args.weights.lower() == "none" else args.weights
    mode = "tf_keras" if IS_LEGACY else f"Keras {keras.__version__} on {BACKEND}"
    print(f"MobileNetV2 (alpha {args.alpha}, {SIZE}x{SIZE}, weights={weights}) + CBAM on digits, {mode}")
    results = run(weights=weights, alpha=args.alpha, fast=args.fast, out=args.out)
    if not results["identical_after_reload"]:
        raise SystemExit("reloaded model differs")
    return results


if __name__ == "__main__":
    main()
