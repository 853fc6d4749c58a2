"""What several examples share: the quickstart's digits CNN and its training, saving and timing steps.

Each example runs as a script (`python examples/NAME.py`), whose folder Python puts first on
`sys.path`, so `from _shared import ...` finds this module without any path set-up.
"""

import argparse
import os
import tempfile

import numpy as np

import keras_attention as ka
from keras_attention import tflite
from keras_attention.backend import keras
from keras_attention.data import digits


def build_model(num_classes=10):
    """The quickstart's CNN: three conv + CBAM + pooling stages on 32x32 grey digits, raw pixels in."""
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = ka.CBAM(reduction=8, kernel_size=7)(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="cnn_cbam")


def compile_model(model, learning_rate, eager=False, jit_compile=None):
    """Adam on logits (from_logits=True) with accuracy; `eager` for a few smoke steps, where tracing a
    large training graph costs more than the steps; `jit_compile` None leaves it to Keras (each Keras
    has its own default)."""
    xla = {} if jit_compile is None else {"jit_compile": jit_compile}
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        run_eagerly=eager,
        **xla,
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
    """--epochs, --fast and --out, described by the example's docstring."""
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


def tflite_accuracy(flatbuffer, x, y):
    """Top-1 accuracy of a .tflite in the LiteRT interpreter."""
    logits = tflite.run(flatbuffer, x)[0]
    return float(np.mean(logits.argmax(axis=1) == y))
