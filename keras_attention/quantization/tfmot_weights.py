"""From Keras 3 to tf_keras: a Keras 3 model's weights loaded into the same architecture under tf_keras."""

import os
import tempfile
import zipfile

from keras_attention.quantization.tfmot_configs import _FEATURE, _require_tf_keras


def _snake_case(name):
    """Keras' `to_snake_case` (the same in Keras 3 and tf_keras)."""
    import re

    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _weight_file_keys(model):
    """Where each layer of `model` lives in a `.weights.h5` file, for the layers with weights.

    Both Kerases address a model's layers by class name and position, not by
    `layer.name` ("conv2d", "conv2d_1", "cbam", ...), so the layer *names* need
    not match between the two builds; the classes and their order must.
    """
    used, keys = {}, {}
    for layer in model.layers:
        key = _snake_case(type(layer).__name__)
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        if layer.weights:
            keys[key] = layer.name
    return keys


def _h5_keys_with_variables(weights_path):
    import h5py

    keys = set()
    with h5py.File(weights_path, "r") as handle:
        layers = handle.get("layers")
        if layers is None:
            raise ValueError(f"{_FEATURE}: {weights_path!r} has no 'layers' group; is it a Keras 3 weights file?")
        for key, group in layers.items():
            found = []
            group.visititems(
                lambda name, item, out=found: out.append(name) if name.split("/")[-2:-1] == ["vars"] else None
            )
            if found:
                keys.add(key)
    return keys


def load_keras3_weights(model, path):
    """Loads weights saved by Keras 3 into the same architecture rebuilt under tf_keras.

    tf_keras cannot read a Keras 3 `.keras` file's architecture (its config
    names Keras 3 modules), but both Kerases write weights in the same layout:
    build the model again under `TF_USE_LEGACY_KERAS=1` with the same code
    (keras_attention's layers and `keras.applications` exist in both Kerases),
    load the weights with this function, then quantize it.

    Args:
        model: the tf_keras model, built, with the same layers in the same
            order as the Keras 3 one (layer names may differ: the file
            addresses layers by class and position).
        path: a Keras 3 `.keras` file (its `model.weights.h5` is used) or a
            `.weights.h5` file from Keras 3's `model.save_weights()`.

    Returns:
        `model`, with the weights loaded.

    Raises:
        ValueError: the file's layers with weights differ from the model's
            (another architecture, or layers in another order), named; or
            the file is not a Keras 3 weights file.
    """
    _require_tf_keras("load_keras3_weights")
    path = os.fspath(path)
    with tempfile.TemporaryDirectory(prefix="keras_attention_weights_") as directory:
        weights = path
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "model.weights.h5" not in archive.namelist():
                    raise ValueError(f"{_FEATURE}: {path!r} is a zip file without model.weights.h5; not a .keras file.")
                archive.extract("model.weights.h5", directory)
            weights = os.path.join(directory, "model.weights.h5")
        elif not path.endswith(".weights.h5"):
            raise ValueError(
                f"{_FEATURE}.load_keras3_weights: expected a Keras 3 .keras file or a .weights.h5 file; got {path!r}."
            )
        in_file = _h5_keys_with_variables(weights)
        in_model = _weight_file_keys(model)
        if in_file != set(in_model):
            only_file = ", ".join(sorted(in_file - set(in_model))) or "none"
            only_model = ", ".join(f"{key} (layer {in_model[key]!r})" for key in sorted(set(in_model) - in_file))
            raise ValueError(
                f"{_FEATURE}.load_keras3_weights: {path!r} does not hold the weights of model {model.name!r}. "
                f"Layers with weights only in the file: {only_file}; only in the model: {only_model or 'none'} "
                "(both Kerases address layers by class and position, not by name). Rebuild the model with "
                "the same code that built the Keras 3 one."
            )
        model.load_weights(weights)
    return model
