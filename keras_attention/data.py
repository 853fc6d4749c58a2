"""Embedded data: nothing here downloads.

`digits()` is scikit-learn's 8x8 handwritten digits (1,797 real images shipped
inside the scikit-learn wheel), resized for convolutional backbones.
"""

import numpy as np


def resize_bilinear(images, size):
    """Bilinear resize of (N, H, W, C) float images to (N, size, size, C), half-pixel centres."""
    images = np.asarray(images, dtype="float32")
    _, h, w, _ = images.shape

    def axis_weights(n_in):
        coords = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(coords).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (coords - lo).astype("float32")

    y0, y1, wy = axis_weights(h)
    x0, x1, wx = axis_weights(w)
    rows = images[:, y0] * (1 - wy)[None, :, None, None] + images[:, y1] * wy[None, :, None, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


def digits(size=32, channels=1, test_fraction=0.25, seed=0):
    """scikit-learn's digits as image tensors, split into train and test sets.

    Args:
        size: output height and width (the originals are 8x8), bilinear.
        channels: 1 (grey) or 3 (grey repeated, for ImageNet-style backbones).
        test_fraction: share of the 1,797 images held out, stratified by class.
        seed: the split's random seed.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: float32 images in [0, 255],
        channels_last, and int32 labels 0-9.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "keras_attention.data.digits() needs scikit-learn: pip install 'keras-vision-attention[demo]'"
        ) from error
    if channels not in (1, 3):
        raise ValueError(f"digits: `channels` must be 1 or 3; got {channels!r}.")
    bunch = load_digits()
    images = (bunch.images.astype("float32") * (255.0 / 16.0))[..., None]
    if size != 8:
        images = resize_bilinear(images, size)
    if channels == 3:
        images = np.repeat(images, 3, axis=-1)
    labels = bunch.target.astype("int32")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test[members[: int(round(test_fraction * len(members)))]] = True
    return (images[~test], labels[~test]), (images[test], labels[test])
