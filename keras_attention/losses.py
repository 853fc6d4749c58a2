"""The SAG-Mask training loss and the 28x28 mask targets it is computed against.

As CenterMask (and Mask R-CNN in Detectron2) trains its mask head: per-pixel
binary cross-entropy with logits, on the mask channel of each RoI's
ground-truth class only, averaged over the pixels of the positive RoIs; the
targets are the full-image instance masks cropped and resized to 28x28 by the
RoI's box (RoIAlign with `aligned=True` on the mask, thresholded at 0.5).

Two ways to use it:
- `mask_loss(targets, logits, classes)`: a function of backend tensors, for a
  custom training step.
- `MaskLoss()` with `model.compile(loss=...)`: the class is folded into the
  targets by `encode_mask_targets(targets, classes, num_classes)`, which puts
  the target in the ground-truth channel and -1 ("ignore") everywhere else.
"""

import numpy as np

from keras_attention._checks import check_int
from keras_attention.backend import keras, ops, register

IGNORE = -1.0


def _check_boxes(name, boxes):
    boxes = np.asarray(boxes, dtype="float64")
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name}: boxes must have shape (..., 4) as (y1, x1, y2, x2); got {boxes.shape}.")
    if not np.all(np.isfinite(boxes)):
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(boxes))[0][:-1])
        raise ValueError(f"{name}: boxes must be finite; got {boxes[first].tolist()} at index {first}.")
    bad = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}: {int(bad.sum())} box(es) have y2 < y1 or x2 < x1, the first at index {first}: "
            f"{boxes[first].tolist()}; boxes are (y1, x1, y2, x2)."
        )
    return boxes


def _aligned_axis(start, length, bins, size):
    """Adaptive aligned-RoIAlign sampling on one axis: (bins, grid) indices and weights."""
    grid = max(int(np.ceil(length / bins)), 1)  # Detectron2's sampling_ratio=0
    points = start - 0.5 + (np.arange(bins * grid) + 0.5) * length / (bins * grid)
    valid = ((points >= -1.0) & (points <= size)).astype("float64")
    points = np.maximum(points, 0.0)
    low = np.floor(points).astype(int)
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    frac = np.where(at_end, 0.0, points - low)
    return (
        low.reshape(bins, grid),
        high.reshape(bins, grid),
        ((1 - frac) * valid).reshape(bins, grid),
        (frac * valid).reshape(bins, grid),
    )


def crop_mask_targets(masks, boxes, size=28, threshold=0.5):
    """28x28 mask targets: each full-image instance mask cropped and resized by its box.

    Detectron2's `BitMasks.crop_and_resize`: RoIAlign (`aligned=True`, adaptive
    sampling, `ceil(box size / size)` points per bin and axis) of the binary mask
    over the box, then `>= threshold`. Boxes are `(y1, x1, y2, x2)` in image
    pixels (pixel `i` covers `[i, i+1)`), as `data.shapes()` and `RoIAlign` use.
    Parts of a box outside the image read as background. Zero-area boxes (e.g.
    all-zero padding) give all-zero targets, as Detectron2's RoIAlign (no
    sampling points in an empty box); they are ignored by the loss when their
    class is -1.

    Args:
        masks: `(..., H, W)` binary (or [0, 1]) full-image masks, one per box.
        boxes: `(..., 4)` boxes, the same leading shape as `masks`.
        size: the target's side (28 for a 14x14 RoIAlign and SAG-Mask).
        threshold: binarisation threshold; `None` keeps the soft values.

    Returns:
        float32 `(..., size, size)` targets in {0, 1}.

    Raises:
        ValueError: boxes not `(..., 4)`, a box with `y2 < y1` or `x2 < x1`, or
            masks and boxes with different leading shapes.
    """
    name = "crop_mask_targets"
    size = check_int(name, "size", size, note=" (28 in Mask R-CNN)")
    boxes = _check_boxes(name, boxes)
    masks = np.asarray(masks, dtype="float64")
    if masks.ndim < 2 or masks.shape[:-2] != boxes.shape[:-1]:
        raise ValueError(
            f"{name}: masks (..., H, W) and boxes (..., 4) must have the same leading shape; got "
            f"masks {masks.shape} and boxes {boxes.shape}."
        )
    height, width = masks.shape[-2:]
    flat_masks = masks.reshape((-1, height, width))
    flat_boxes = boxes.reshape((-1, 4))
    out = np.zeros((len(flat_boxes), size, size), "float64")
    for i, ((y1, x1, y2, x2), mask) in enumerate(zip(flat_boxes, flat_masks)):
        if y2 == y1 or x2 == x1:
            continue  # an empty box has no sampling points: 0, as Detectron2
        yl, yh, wyl, wyh = _aligned_axis(y1, y2 - y1, size, height)
        xl, xh, wxl, wxh = _aligned_axis(x1, x2 - x1, size, width)
        value = 0.0
        for rows, wy in ((yl, wyl), (yh, wyh)):
            for cols, wx in ((xl, wxl), (xh, wxh)):
                # mask[rows[b, g], cols[c, k]] weighted, averaged over g and k.
                picked = mask[rows[:, :, None, None], cols[None, None, :, :]]
                value = value + picked * wy[:, :, None, None] * wx[None, None, :, :]
        out[i] = value.mean(axis=(1, 3))
    if threshold is not None:
        out = (out >= threshold).astype("float64")
    return out.reshape(boxes.shape[:-1] + (size, size)).astype("float32")


def encode_mask_targets(targets, classes, num_classes):
    """Per-class targets for `MaskLoss`: the target in the class's channel, -1 elsewhere.

    Args:
        targets: `(..., S, S)` targets in [0, 1] (from `crop_mask_targets`).
        classes: `(...)` integer ground-truth classes; -1 (or any negative) marks
            a padding or negative RoI, whose every channel becomes -1 (ignored).
        num_classes: the head's output channels (1 for a class-agnostic head:
            every positive RoI then uses channel 0).

    Returns:
        float32 `(..., S, S, num_classes)` NumPy array.
    """
    targets = np.asarray(targets, "float32")
    classes = np.asarray(classes)
    if targets.shape[:-2] != classes.shape:
        raise ValueError(
            f"encode_mask_targets: targets (..., S, S) and classes (...) must have the same leading "
            f"shape; got {targets.shape} and {classes.shape}."
        )
    num_classes = check_int("encode_mask_targets", "num_classes", num_classes)
    if classes.dtype.kind not in "iu":
        raise ValueError(
            f"encode_mask_targets: classes must be integers (negative: ignored RoI); got dtype {classes.dtype}."
        )
    if num_classes > 1 and (classes >= num_classes).any():
        raise ValueError(f"encode_mask_targets: classes must be < num_classes ({num_classes}); got {classes.max()}.")
    channel = np.where(classes >= 0, 0 if num_classes == 1 else classes, -1)
    onehot = channel[..., None] == np.arange(num_classes)  # (..., K)
    return np.where(onehot[..., None, None, :], targets[..., None], IGNORE).astype("float32")


def _bce_with_logits(labels, logits):
    # max(x, 0) - x * z + log(1 + exp(-|x|)): the numerically stable form.
    return ops.maximum(logits, 0.0) - logits * labels + ops.log(1.0 + ops.exp(-ops.abs(logits)))


def mask_loss(targets, logits, classes):
    """Per-pixel binary cross-entropy on each RoI's ground-truth class channel, positives only.

    Args:
        targets: `(..., S, S)` mask targets in [0, 1] (`crop_mask_targets`).
        logits: `(..., S, S, K)` mask logits (`SAGMaskHead`, channels_last); with
            `K == 1` (class-agnostic) channel 0 is used for every class.
        classes: `(...)` integer ground-truth classes; RoIs with a negative class
            (padding, background proposals) are left out.

    Returns:
        Scalar float32: the mean over all pixels of all positive RoIs (0 when
        there are none, with gradient 0), as Detectron2's `mask_rcnn_loss`.

    Raises:
        ValueError: shapes that do not line up (no broadcasting: one target per
            RoI), non-integer classes, or (for NumPy classes) a class >= K.
            Tensor classes are not copied to the host to check them: a class
            >= K makes the loss NaN instead of reading a zero logit.
    """
    _check_mask_loss_inputs(targets, logits, classes)
    logits = ops.cast(logits, "float32")
    targets = ops.cast(targets, "float32")
    classes = ops.cast(classes, "int32")
    num_outputs = logits.shape[-1]
    positive = ops.cast(classes >= 0, "float32")
    if num_outputs == 1:
        selected = logits[..., 0]
    else:
        onehot = ops.one_hot(ops.maximum(classes, 0), num_outputs)  # (..., K); all zero for a class >= K
        selected = ops.sum(logits * onehot[..., None, None, :], axis=-1)
        # A class >= K (not checked on tensors) makes its RoI's loss NaN rather than read a zero logit.
        selected = selected + ops.where(classes < num_outputs, 0.0, float("nan"))[..., None, None]
    per_pixel = _bce_with_logits(targets, selected)  # (..., S, S)
    weight = positive[..., None, None] * ops.ones_like(per_pixel)
    return ops.sum(per_pixel * weight) / ops.maximum(ops.sum(weight), 1.0)


def _check_mask_loss_inputs(targets, logits, classes):
    name = "mask_loss"
    t_shape, l_shape, c_shape = (tuple(getattr(x, "shape", np.shape(x))) for x in (targets, logits, classes))
    if len(l_shape) < 3:
        raise ValueError(f"{name}: logits must be (..., S, S, K); got shape {l_shape}.")

    def same(a, b):
        return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))

    if not same(t_shape, l_shape[:-1]):
        raise ValueError(
            f"{name}: targets must be (..., S, S) = {l_shape[:-1]}, one per RoI of the logits "
            f"{l_shape}; got {t_shape} (targets are not broadcast over RoIs)."
        )
    if not same(c_shape, l_shape[:-3]):
        raise ValueError(
            f"{name}: classes must be (...) = {l_shape[:-3]}, one per RoI of the logits {l_shape}; got {c_shape}."
        )
    dtype = getattr(getattr(classes, "dtype", None), "name", None) or str(getattr(classes, "dtype", ""))
    if "int" not in dtype:
        raise ValueError(f"{name}: classes must be integers (negative: ignored RoI); got dtype {dtype}.")
    # Only host data is read: reading a device tensor would sync every training step (see the NaN above).
    values = np.asarray(classes) if isinstance(classes, (np.ndarray, list, tuple)) else None
    if values is not None and values.size and l_shape[-1] not in (None, 1) and values.max() >= l_shape[-1]:
        raise ValueError(f"{name}: classes must be < K = {l_shape[-1]} (the logits' channels); got {values.max()}.")


def _static_shape(x):
    """The shape as a tuple of ints and None; None when even the rank is unknown."""
    try:
        return tuple(None if d is None else int(d) for d in x.shape)
    except (TypeError, ValueError):  # unknown rank (a TensorShape), or a size no int() reads
        return None


def _check_same_static_shape(y_true, y_pred):
    """MaskLoss: one target per logit; shapes that differ would fail (or broadcast) inside the backend."""
    t_shape, p_shape = _static_shape(y_true), _static_shape(y_pred)
    if t_shape is None or p_shape is None:
        return
    if len(t_shape) != len(p_shape) or any(
        a is not None and b is not None and a != b for a, b in zip(t_shape, p_shape)
    ):
        raise ValueError(
            f"MaskLoss: y_true must have the shape of y_pred, the mask logits (..., S, S, K), one target per "
            f"logit; got y_true {t_shape} and y_pred {p_shape}. Make the targets at the head's size with "
            "crop_mask_targets(masks, boxes, size=S), then encode_mask_targets(targets, classes, K)."
        )


@register
class MaskLoss(keras.losses.Loss):
    """`mask_loss` for `model.compile`: `y_true` from `encode_mask_targets`, `y_pred` the logits.

    `y_true` `(..., S, S, K)` holds the target in each RoI's ground-truth channel
    and -1 (ignored) elsewhere, so the loss is the binary cross-entropy over the
    ground-truth channel of the positive RoIs, averaged over their pixels, the
    same number `mask_loss(targets, logits, classes)` gives. Each batch is one
    mean (Keras' per-sample reduction is bypassed: the loss is already a scalar).
    """

    def __init__(self, name="mask_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        _check_same_static_shape(y_true, y_pred)
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        keep = ops.cast(y_true >= 0.0, "float32")
        per_pixel = _bce_with_logits(ops.maximum(y_true, 0.0), y_pred) * keep
        return ops.sum(per_pixel) / ops.maximum(ops.sum(keep), 1.0)
