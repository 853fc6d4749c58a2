"""Saved models reload in a fresh Python process with identical outputs.

`safe_mode=True`, no `custom_objects`: `import keras_attention` is all the
reloading process does. Formats per Keras: Keras 3 `.keras` (+ `model.export`
SavedModel on TensorFlow); tf_keras `.keras`, SavedModel directory and `.h5`.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import BACKEND, IS_LEGACY, keras
from tests.kit.harness import to_numpy
from tests.kit.layer_reference import randomize_weights

HERE = os.path.dirname(os.path.abspath(__file__))


def every_layer_model():
    """One model holding every public attention layer and their main options, both data formats."""
    inputs = keras.Input((12, 10, 32))
    channels_first = keras.layers.Permute((3, 1, 2))(inputs)
    branches = [
        ka.CBAM(reduction=8)(inputs),
        ka.CBAM(reduction=8, arrangement="parallel", use_batchnorm=True, gate="hard_sigmoid")(inputs),
        ka.CBAM(reduction=8, arrangement="spatial_first", start_as_identity=True)(inputs),
        ka.ChannelAttention(reduction=4, pooling="max", use_bias=False)(inputs),
        ka.SpatialAttention(kernel_size=3, use_batchnorm=True, pooling=("avg",))(inputs),
        ka.SqueezeExcitation(reduction=4)(inputs),
        ka.EfficientChannelAttention()(inputs),
        ka.CBAM(reduction=8, data_format="channels_first")(channels_first),
        ka.EfficientChannelAttention(kernel_size=5, data_format="channels_first")(channels_first),
    ]
    model = keras.Model(inputs, branches)
    for layer in model.layers:
        if layer.weights:
            randomize_weights(layer, seed=len(layer.name))
    return model


def save_expected(path, inputs, outputs, **extra):
    """The npz `_reload_in_fresh_process.py` reads: inputs `in00`..., outputs `out00`..., extras."""
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    np.savez(
        path,
        **{f"in{i:02d}": x for i, x in enumerate(inputs)},
        **{f"out{i:02d}": to_numpy(o).astype("float32") for i, o in enumerate(outputs)},
        **extra,
    )
    return path


def reload_elsewhere(*fmt_path_expected):
    """Runs `_reload_in_fresh_process.py` on (format, path, expected.npz) triples; returns its stdout."""
    root = os.path.dirname(HERE)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "kit", "_reload_in_fresh_process.py"), *map(str, fmt_path_expected)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0 and "RELOAD_OK" in result.stdout, result.stdout + result.stderr[-3000:]
    return result.stdout


def _formats():
    if IS_LEGACY:
        return [("keras", "model.keras"), ("tf_keras_savedmodel", "saved_model_dir"), ("h5", "model.h5")]
    formats = [("keras", "model.keras")]
    if BACKEND == "tensorflow":
        formats.append(("savedmodel", "exported"))
    return formats


@pytest.mark.slow
def test_reload_in_fresh_process(tmp_path):
    model = every_layer_model()
    inputs = np.random.default_rng(0).normal(size=(3, 12, 10, 32)).astype("float32")
    expected_path = save_expected(tmp_path / "expected.npz", inputs, model(inputs, training=False))
    args = []
    for fmt, name in _formats():
        path = tmp_path / name
        if fmt == "savedmodel":
            model.export(str(path), verbose=False)
        else:
            model.save(str(path))
        args += [fmt, path, expected_path]
    reload_elsewhere(*args)


@pytest.mark.slow
def test_centermask_parts_reload_in_a_fresh_process(tmp_path):
    """RoIAlign feeding SAGMaskHead, compiled with MaskLoss: outputs and the reloaded loss are the same."""
    from keras_attention.losses import MaskLoss, encode_mask_targets

    features, boxes = keras.Input((16, 16, 8)), keras.Input((3, 4))
    rois = ka.RoIAlign(output_size=7, strides=4)([features, boxes])
    model = keras.Model([features, boxes], ka.SAGMaskHead(3, filters=8, num_convs=1)(rois))
    for layer in model.layers:
        if layer.weights:
            randomize_weights(layer, seed=5)
    model.compile(loss=MaskLoss())
    rng = np.random.default_rng(0)
    x = [
        rng.normal(size=(2, 16, 16, 8)).astype("float32"),
        np.array([[[2, 3, 40, 50], [0, 0, 63, 63], [10.5, 20.25, 30, 33]]] * 2, "float32"),
    ]
    outputs = model(x, training=False)
    y_true = encode_mask_targets(rng.uniform(size=(2, 3, 14, 14)), np.array([[0, 2, -1], [1, 1, 0]]), 3)
    loss = float(to_numpy(MaskLoss()(y_true, outputs)))
    model.save(str(tmp_path / "centermask.keras"))
    expected = save_expected(tmp_path / "expected.npz", x, outputs, y_true=y_true, loss=loss)
    assert "LOSS_OK MaskLoss" in reload_elsewhere("keras", tmp_path / "centermask.keras", expected)


def test_saved_config_names_the_package():
    """Layers are registered under `keras_attention>`, which is what safe loading looks up."""
    config = keras.layers.serialize(ka.CBAM())
    name = config.get("registered_name") or config["class_name"]
    assert name == "keras_attention>CBAM", config
