"""Saved models reload in a fresh Python process with identical outputs.

`safe_mode=True`, no `custom_objects`: `import keras_attention` is all the
reloading process does. Formats per Keras: Keras 3 `.keras` (+ `model.export`
SavedModel on TensorFlow); tf_keras `.keras`, SavedModel directory and `.h5`.
"""

import os

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import BACKEND, IS_LEGACY, keras
from tests.kit.harness import to_numpy
from tests.kit.layer_reference import randomize_weights
from tests.kit.models import every_layer_model
from tests.kit.reload import reload_elsewhere, save_expected

HERE = os.path.dirname(os.path.abspath(__file__))


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
