"""Embedded data: nothing here downloads.

`digits()` is scikit-learn's 8x8 handwritten digits (1,797 real images shipped
inside the scikit-learn wheel), resized for convolutional backbones.
`shapes()` is generated: deterministic synthetic images of circles, squares and
triangles with their classes, boxes and instance masks, for detection and masks.
"""

import numpy as np

from keras_attention._checks import check_int


def resize_bilinear(images, size):
    """Bilinear resize of (N, H, W, C) float images to (N, size, size, C), half-pixel centres."""
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4 or 0 in images.shape[1:3]:
        hint = " (one image: add the batch axis, images[None])" if images.ndim == 3 else ""
        raise ValueError(
            f"resize_bilinear: `images` must be a batch (N, H, W, C) with H, W >= 1; got shape {images.shape}{hint}."
        )
    size = check_int("resize_bilinear", "size", size, note=" (the output height and width)")
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
    check_int("digits", "size", size)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(
            f"digits: `test_fraction` must be a number strictly between 0 and 1 (a share of the "
            f"images held out); got {test_fraction!r}."
        )
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


SHAPE_CLASSES = ("circle", "square", "triangle")


def _polygon_mask(ys, xs, vertices):
    """Pixels (centres ys, xs) inside a convex polygon given counter- or clockwise."""
    inside_pos = np.ones(ys.shape, bool)
    inside_neg = np.ones(ys.shape, bool)
    n = len(vertices)
    for i in range(n):
        (y0, x0), (y1, x1) = vertices[i], vertices[(i + 1) % n]
        cross = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
        inside_pos &= cross >= 0
        inside_neg &= cross <= 0
    return inside_pos | inside_neg


def _shape_mask(kind, cy, cx, radius, angle, size):
    centres = np.arange(size, dtype="float64") + 0.5
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    if kind == 0:  # circle
        return (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
    corners = 4 if kind == 1 else 3
    angles = angle + 2 * np.pi * np.arange(corners) / corners
    vertices = [(cy - radius * np.cos(a), cx + radius * np.sin(a)) for a in angles]
    return _polygon_mask(ys, xs, vertices)


def _check_shapes_arguments(num_images, image_size, max_shapes, min_shapes, min_radius, max_radius, channels):
    if channels not in (1, 3):
        raise ValueError(f"shapes: `channels` must be 1 or 3; got {channels!r}.")
    for arg, value in (
        ("num_images", num_images),
        ("image_size", image_size),
        ("max_shapes", max_shapes),
        ("min_shapes", min_shapes),
    ):
        check_int("shapes", arg, value)
    if not 1 <= min_shapes <= max_shapes:
        raise ValueError(f"shapes: need 1 <= min_shapes <= max_shapes; got {min_shapes}, {max_shapes}.")
    if not 0 < min_radius <= max_radius or 2 * max_radius + 2 > image_size:
        raise ValueError(
            f"shapes: need 0 < min_radius <= max_radius and 2 * max_radius + 2 <= image_size; "
            f"got {min_radius}, {max_radius}, image_size={image_size}."
        )


def _grown_by_one_pixel(mask):
    """The mask dilated by one pixel (8-neighbourhood): shapes keep a pixel of background between them."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= grown[:, :-1]
    grown[:, :-1] |= grown[:, 1:]
    return grown


def shapes(
    num_images=256,
    image_size=64,
    max_shapes=3,
    min_shapes=1,
    min_radius=6.0,
    max_radius=14.0,
    channels=3,
    noise=8.0,
    seed=0,
):
    """Deterministic synthetic images of circles, squares and triangles with boxes and masks.

    Each image has a textured grey background and between `min_shapes` and
    `max_shapes` non-overlapping shapes, each a random colour, size, position and
    (for squares and triangles) rotation. Shapes never overlap, so every instance
    mask is the whole shape. The same arguments always give the same arrays.

    Args:
        num_images: how many images.
        image_size: height and width in pixels.
        max_shapes: the most shapes per image; the per-image arrays are padded to it.
        min_shapes: the fewest shapes per image (at least 1).
        min_radius: smallest circumradius in pixels (the circle's radius; the
            distance from centre to corner for squares and triangles).
        max_radius: largest circumradius in pixels.
        channels: 3 (colour) or 1 (grey).
        noise: standard deviation of the per-pixel Gaussian noise, in [0, 255] units.
        seed: random seed.

    Returns:
        A dict of NumPy arrays. `"images"`: float32 `(N, S, S, channels)` in
        [0, 255], channels_last. `"classes"`: int32 `(N, max_shapes)`: 0 circle,
        1 square, 2 triangle (`SHAPE_CLASSES`); -1 marks padding. `"boxes"`:
        float32 `(N, max_shapes, 4)`: `(y1, x1, y2, x2)` in image pixel
        coordinates, where pixel `(i, j)` covers `[i, i+1) x [j, j+1)`, the
        tight box of the mask (`y2 = last row + 1`); zeros for padding.
        `"masks"`: uint8 `(N, max_shapes, S, S)` instance masks (1 inside the
        shape); zeros for padding. `"num_shapes"`: int32 `(N,)` valid instances
        per image (the first `num_shapes[i]` entries; the rest are padding).

    Example:
        >>> data = shapes(num_images=8, image_size=64)
        >>> data["images"].shape, data["boxes"].shape, data["masks"].shape
        ((8, 64, 64, 3), (8, 3, 4), (8, 3, 64, 64))
    """
    _check_shapes_arguments(num_images, image_size, max_shapes, min_shapes, min_radius, max_radius, channels)
    rng = np.random.default_rng(seed)
    n, s = int(num_images), int(image_size)
    images = np.zeros((n, s, s, 3), "float32")
    classes = np.full((n, max_shapes), -1, "int32")
    boxes = np.zeros((n, max_shapes, 4), "float32")
    masks = np.zeros((n, max_shapes, s, s), "uint8")
    counts = np.zeros((n,), "int32")
    centres = np.arange(s, dtype="float32")
    for i in range(n):
        # Background: a soft grey gradient, so the task is not plain thresholding.
        base = rng.uniform(30, 90)
        gy, gx = rng.uniform(-30, 30, size=2)
        background = base + gy * (centres[:, None] / s - 0.5) + gx * (centres[None, :] / s - 0.5)
        images[i] = background[..., None]
        occupied = np.zeros((s, s), bool)
        wanted = int(rng.integers(min_shapes, max_shapes + 1))
        k = 0
        for _ in range(wanted * 100):
            if k == wanted:
                break
            kind = int(rng.integers(0, 3))
            radius = rng.uniform(min_radius, max_radius)
            cy, cx = rng.uniform(radius + 1, s - radius - 1, size=2)
            angle = rng.uniform(0, 2 * np.pi)
            mask = _shape_mask(kind, cy, cx, radius, angle, s)
            if not mask.any() or (_grown_by_one_pixel(mask) & occupied).any():
                continue
            occupied |= mask
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            boxes[i, k] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
            classes[i, k] = kind
            masks[i, k] = mask
            colour = rng.uniform(120, 255, size=3).astype("float32")
            images[i][mask] = colour
            k += 1
        if k < min_shapes:
            raise ValueError(
                f"shapes: could place only {k} of min_shapes={min_shapes} non-overlapping shapes in image {i} "
                f"({s}x{s}, radius {min_radius}-{max_radius}); lower min_shapes or max_radius, or raise image_size."
            )
        counts[i] = k
    images += rng.normal(0.0, noise, size=images.shape).astype("float32")
    images = np.clip(images, 0, 255)
    if channels == 1:
        images = images.mean(-1, keepdims=True)
    return {"images": images, "classes": classes, "boxes": boxes, "masks": masks, "num_shapes": counts}
