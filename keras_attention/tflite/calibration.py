"""Representative (calibration) data for int8: arrays, tf.data, or a folder of images."""

import os

import numpy as np

from keras_attention.tflite._common import IMAGE_EXTENSIONS, _tf, _to_numpy


def _load_image_directory(directory, shape, limit):
    tf = _tf()
    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(
            f"keras_attention.tflite: representative_data directory {directory!r} holds no images "
            f"(looked for {', '.join(IMAGE_EXTENSIONS)})."
        )
    height, width, channels = shape[1], shape[2], shape[3]
    images = []
    for name in names[:limit]:
        raw = tf.io.read_file(os.path.join(directory, name))
        image = tf.io.decode_image(raw, channels=channels if channels in (1, 3, 4) else 0, expand_animations=False)
        image = tf.cast(image, "float32")
        if height is not None and width is not None:
            image = tf.image.resize(image, (height, width))
        images.append(image.numpy()[None])
    return images


def _checked_samples(arrays, specs, what):
    """Per-sample input lists from one array per model input, each checked against its input spec."""
    n_inputs = len(specs)
    ranks = [len(s.shape) for s in specs]
    arrays = [np.asarray(_to_numpy(a)) for a in arrays]
    if len(arrays) != n_inputs:
        raise ValueError(
            f"keras_attention.tflite: {what} has {len(arrays)} input arrays; the model has {n_inputs} inputs."
        )
    batched = []
    for array, rank, spec in zip(arrays, ranks, specs):
        if array.ndim == rank - 1:
            array = array[None]
        if array.ndim != rank:
            raise ValueError(
                f"keras_attention.tflite: {what} has shape {array.shape}; the model input "
                f"{spec.name} expects rank {rank} (batch first), e.g. {tuple(spec.shape)}."
            )
        expected = tuple(spec.shape)[1:]
        if any(e is not None and e != a for e, a in zip(expected, array.shape[1:])):
            raise ValueError(
                f"keras_attention.tflite: {what} has samples of shape {array.shape[1:]}; the model input "
                f"{spec.name} expects {expected}."
            )
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"keras_attention.tflite: {what} must be numeric; got dtype {array.dtype}.")
        if not len(array):
            raise ValueError(f"keras_attention.tflite: {what} is empty; expected ~100 typical inputs.")
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            raise ValueError(
                f"keras_attention.tflite: {what} holds {int(np.sum(~np.isfinite(array)))} NaN or infinite "
                "values; calibration ranges from them would be meaningless."
            )
        batched.append(array)
    count = batched[0].shape[0]
    return [[b[i : i + 1] for b in batched] for i in range(count)]


def _model_inputs_of(element, n_inputs):
    """The model inputs in one element of a tf.data.Dataset: x of (x, y[, w]), a dict's values by key, ..."""
    if isinstance(element, dict):
        element = [element[k] for k in sorted(element)]
    if not isinstance(element, (list, tuple)):
        return [element]
    first = element[0]
    if isinstance(first, (list, tuple, dict)):
        return list(first.values()) if isinstance(first, dict) else list(first)
    if n_inputs == 1:
        return [first]  # (x, y) or (x, y, sample_weight)
    return list(element[:n_inputs])


def _as_sample_lists(data, specs, limit, what):
    """Turns array / list of arrays / tf.data.Dataset / directory into per-sample input lists."""
    tf = _tf()
    n_inputs = len(specs)

    def split(arrays):
        return _checked_samples(arrays, specs, what)

    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.isdir(path):
            raise ValueError(f"keras_attention.tflite: {what} {path!r} is not a directory of images.")
        if n_inputs != 1 or len(specs[0].shape) != 4:
            raise ValueError(
                "keras_attention.tflite: a directory of images can only calibrate a model with one 4-D image input."
            )
        return [[image] for image in _load_image_directory(path, tuple(specs[0].shape), limit)]
    if isinstance(data, tf.data.Dataset):
        samples = []
        for element in data:
            samples.extend(split(_model_inputs_of(element, n_inputs)))
            if len(samples) >= limit:
                break
        if not samples:
            raise ValueError(f"keras_attention.tflite: {what} (a tf.data.Dataset) is empty.")
        return samples[:limit]
    if isinstance(data, (list, tuple)) and n_inputs > 1:
        return split(list(data))[:limit]
    samples = split([data])
    if not samples:
        raise ValueError(f"keras_attention.tflite: {what} is empty.")
    return samples[:limit]
