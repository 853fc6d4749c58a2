"""Quickstart: CBAM in your own Keras model.

A small CNN with a CBAM block, trained with XLA (`jit_compile=True`) on
scikit-learn's digits (shipped with scikit-learn, no download), saved as
`.keras`, reloaded with `safe_mode=True` and no `custom_objects`, and checked.

    python examples/quickstart.py [--epochs 8] [--fast] [--out DIR]
"""

import argparse
import os
import tempfile
import time

import numpy as np

import keras_attention as ka
from keras_attention.backend import BACKEND, IS_LEGACY, keras
from keras_attention.data import digits


def build_model(num_classes=10):
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = ka.CBAM(reduction=8, kernel_size=7)(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="cnn_cbam")


def compile_for_digits(model, jit_compile=True):
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def save_and_reload(model, x_test, out=None, prefix="keras_attention_quickstart_"):
    """Saves `model` as .keras, reloads it with safe_mode=True; True when the predictions are identical."""
    out = out or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    same = np.array_equal(np.asarray(model.predict(x_test, verbose=0)), np.asarray(reloaded.predict(x_test, verbose=0)))
    print(f"saved {path}; reloaded with safe_mode=True, identical predictions: {same}")
    return same


def parse_arguments(doc, argv, epochs):
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--fast", action="store_true", help="1 epoch on a subset (a smoke run)")
    parser.add_argument("--out", default=None, help="where to write model.keras (default: a temp dir)")
    return parser.parse_args(argv)


def digits_for(args):
    """Digits at 32x32 and the epoch count; with --fast a subset and one epoch."""
    (x_train, y_train), (x_test, y_test) = digits(size=32)
    if args.fast:
        return (x_train[:256], y_train[:256]), (x_test[:128], y_test[:128]), 1
    return (x_train, y_train), (x_test, y_test), args.epochs


def main(argv=None):
    args = parse_arguments(__doc__, argv, epochs=12)

    (x_train, y_train), (x_test, y_test), epochs = digits_for(args)
    keras.utils.set_random_seed(0)
    model = compile_for_digits(build_model())
    mode = "tf_keras" if IS_LEGACY else f"Keras {keras.__version__} on {BACKEND}"
    print(f"Training {model.name} ({model.count_params():,} parameters) with XLA, {mode}")
    start = time.time()
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, validation_data=(x_test, y_test), verbose=2)
    print(f"trained in {time.time() - start:.1f}s")
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)

    print(f"test accuracy: {accuracy:.4f}")
    if not save_and_reload(model, x_test, args.out):
        raise SystemExit("reloaded model differs")
    return accuracy


if __name__ == "__main__":
    main()
