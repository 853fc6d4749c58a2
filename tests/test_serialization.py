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
from tests.harness import to_numpy
from tests.layer_reference import randomize_weights

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


def _reload_elsewhere(fmt, path, expected_path):
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "_reload_in_fresh_process.py"), fmt, str(path), str(expected_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0 and "RELOAD_OK" in result.stdout, result.stdout + result.stderr[-3000:]


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
    outputs = [to_numpy(o).astype("float32") for o in model(inputs, training=False)]
    expected_path = tmp_path / "expected.npz"
    np.savez(expected_path, inputs=inputs, **{f"out{i:02d}": o for i, o in enumerate(outputs)})
    for fmt, name in _formats():
        path = tmp_path / name
        if fmt == "savedmodel":
            model.export(str(path), verbose=False)
        else:
            model.save(str(path))
        _reload_elsewhere(fmt, path, expected_path)


def test_saved_config_names_the_package():
    """Layers are registered under `keras_attention>`, which is what safe loading looks up."""
    config = keras.layers.serialize(ka.CBAM())
    name = config.get("registered_name") or config["class_name"]
    assert name == "keras_attention>CBAM", config
