"""What a model's image input expects, where the model says so: raw pixels, or preprocessed ones.

int8 ranges (post-training calibration and Keras 3 QAT's `calibrate`) are set
from the data given, so data preprocessed differently from what the model
sees at run time ruin an int8 file without any error. A model that rescales
its own input (a `Rescaling` or `Normalization` layer before its first
weights) takes raw pixels; one that does not most likely takes preprocessed
ones. Used by `tflite.convert` and `quantization.calibrate`.
"""

import os
import warnings

import numpy as np

_PIXEL_LAYERS = ("Rescaling", "Normalization")


def rescales_pixels(model):
    """True when `model` rescales its input itself (a Rescaling or Normalization layer before its first
    weights, nested models included; QAT's quantizer layers looked through), False when weights come
    first, None when unknown (no Keras model)."""
    if model is None or not hasattr(model, "layers"):
        return None
    for layer in model.layers:
        name = type(layer).__name__
        if name.removeprefix("Quantized") in _PIXEL_LAYERS:  # Keras 3 QAT's QuantizedRescaling too
            return True
        if hasattr(layer, "layers"):  # a nested model: its first weights decide
            return bool(rescales_pixels(layer))
        if layer.weights and "Quantizer" not in name:  # QAT's input quantizer holds only its range
            return False
    return False


def _looks_like_raw_pixels(array):
    """Images (N, H, W, 1/3/4) in [0, 255] reaching past 2: pixel values before any preprocessing."""
    array = np.asarray(array)
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4) or not array.size:
        return False
    return array.min() >= 0 and 2 < array.max() <= 255


def warn_on_mismatched_range(model, batch, caller):
    """Warns when a calibration batch's range contradicts the model's first layers."""
    rescales = rescales_pixels(model)
    batch = np.asarray(batch)
    if rescales is None or not batch.size or not np.issubdtype(batch.dtype, np.number):
        return
    low, high = float(np.min(batch)), float(np.max(batch))
    if rescales and high <= 1.0 + 1e-6 and low >= -1.0 - 1e-6:
        warnings.warn(
            f"{caller}: the calibration data lie in [{low:.3g}, {high:.3g}] but the model rescales its input "
            "itself (a Rescaling/Normalization layer): the data look scaled twice. Pass raw pixels.",
            stacklevel=3,
        )
    elif not rescales and _looks_like_raw_pixels(batch):
        warnings.warn(
            f"{caller}: the calibration data look like raw pixels (values in [{low:.3g}, {high:.3g}]) but the "
            "model has no Rescaling or Normalization before its first weights: if it was trained on "
            "preprocessed images, calibrate on the same preprocessing (int8 ranges from raw pixels ruin the file).",
            stacklevel=3,
        )


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def images_by_folder(directory):
    """{folder name: sorted image paths} of `directory` ("") and each sub-folder (a class), empty ones left out."""
    folders = [""] + sorted(n for n in os.listdir(directory) if os.path.isdir(os.path.join(directory, n)))
    found = {}
    for name in folders:
        folder = os.path.join(directory, name)
        paths = [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.lower().endswith(IMAGE_EXTENSIONS)]
        if paths:
            found[name] = paths
    return found
