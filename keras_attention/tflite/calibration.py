"""Representative (calibration) data for int8: arrays, tf.data, or a folder of images.

A folder holds raw pixels (0-255). Fed to a model whose preprocessing lives
outside it, they calibrate every activation range for inputs the model never
sees, and the int8 file is ruined without an error. So a folder calibrates a
model only when the model rescales its own input (`_inputs.rescales_pixels`)
or a `preprocess` function is given; arrays whose range contradicts the
model's first layers get a warning (`_inputs.warn_on_mismatched_range`).
"""

import os

import numpy as np

from keras_attention._deploy import to_numpy
from keras_attention._inputs import IMAGE_EXTENSIONS, images_by_folder, rescales_pixels
from keras_attention.tflite._common import _tf


def image_files(directory, what="representative_data"):
    """The image files in `directory` and in its sub-folders (one per class), classes interleaved.

    Interleaved (the first file of every folder, then the second, ...), so the
    first `n` files of a class-per-folder layout cover every class.
    """
    groups = list(images_by_folder(directory).values())
    if not groups:
        raise ValueError(
            f"keras_attention.tflite: {what} folder {directory!r} holds no images, neither directly nor in "
            f"sub-folders (looked for {', '.join(IMAGE_EXTENSIONS)})."
        )
    longest = max(len(g) for g in groups)
    return [g[i] for i in range(longest) for g in groups if i < len(g)]


def load_image_folder(directory, shape, limit=None, preprocess=None, what="representative_data"):
    """Images of a folder (and its class sub-folders) as one float32 array, `preprocess` applied.

    Args:
        directory: the folder.
        shape: the model input's shape, `(batch, H, W, C)`; H and W (when
            known) are the size each image is resized to (bilinear), C the
            channels it is decoded with.
        limit: at most this many images (classes interleaved).
        preprocess: None (raw pixels, 0-255) or a function from the float32
            batch `(N, H, W, C)` in 0-255 to the model's input.
        what: the argument's name for error messages.
    """
    tf = _tf()
    height, width, channels = shape[1], shape[2], shape[3]
    images = []
    for path in image_files(directory, what)[:limit]:
        try:
            image = tf.io.decode_image(
                tf.io.read_file(path), channels=channels if channels in (1, 3, 4) else 0, expand_animations=False
            )
        except tf.errors.OpError as error:
            raise ValueError(
                f"keras_attention.tflite: {what}: cannot read image {path!r} ({error.message.splitlines()[0]}); "
                "remove or replace the file."
            ) from None
        image = tf.cast(image, "float32")
        if height is not None and width is not None:
            image = tf.image.resize(image, (height, width))
        elif images and image.shape != images[0].shape:
            raise ValueError(
                f"keras_attention.tflite: {what}: image {path!r} is {tuple(image.shape)}, the first was "
                f"{tuple(images[0].shape)}; the model's input size is unknown, so the images must share one size."
            )
        images.append(image.numpy())
    batch = np.stack(images)
    if preprocess is None:
        return batch
    out = np.asarray(to_numpy(preprocess(batch)))
    if out.shape[0] != batch.shape[0]:
        raise ValueError(
            f"keras_attention.tflite: preprocess returned {out.shape} for {batch.shape} images; expected one "
            "output per image."
        )
    return out.astype("float32") if np.issubdtype(out.dtype, np.floating) else out


def check_folder_calibration(model, directory, preprocess, what="representative_data"):
    """Refuses raw pixels from a folder for a model that does not rescale them itself (see the module doc)."""
    if preprocess is not None or rescales_pixels(model):
        return
    known = "has no Rescaling or Normalization before its first weights" if model is not None else "is a SavedModel"
    raise ValueError(
        f"keras_attention.tflite: {what} is the image folder {directory!r}, read as raw pixels 0-255, and the "
        f"model {known}, so it most likely expects preprocessed inputs: calibrating on raw pixels would set "
        "every int8 range for inputs the model never sees. Pass preprocess= (the function you trained with, "
        "e.g. lambda images: images / 255), put the preprocessing inside the model (keras.layers.Rescaling), "
        "or pass preprocess=lambda images: images if the model really takes raw pixels."
    )


def _checked_samples(arrays, specs, what):
    """Per-sample input lists from one array per model input, each checked against its input spec."""
    n_inputs = len(specs)
    ranks = [len(s.shape) for s in specs]
    arrays = [np.asarray(to_numpy(a)) for a in arrays]
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


def _as_sample_lists(data, specs, limit, what, preprocess=None):
    """Turns array / list of arrays / tf.data.Dataset / directory into per-sample input lists.

    `preprocess` applies to a directory's images only (arrays and datasets are fed as they are).
    """
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
        return split([load_image_folder(path, tuple(specs[0].shape), limit, preprocess, what)])
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
