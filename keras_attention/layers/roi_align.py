"""RoIAlign (He et al., Mask R-CNN) with Detectron2's `aligned=True`, and CenterMask's level assignment.

Written with backend ops only (gathers, comparisons, reshapes), with a sampling
grid whose size is fixed by the layer's arguments, so it runs on TensorFlow and
JAX, compiles with XLA, and converts to TFLite with builtin ops only.
"""

import numpy as np

from keras_attention.backend import BACKEND, keras, ops, register
from keras_attention.layers import _validation as v

#: Boxes whose area is below this (in squared image pixels) count as this small
#: in the level assignment (a zero-area box goes to the finest level).
_MIN_BOX_AREA = 1e-6


def free_batch_onnx_message(names):
    """Why RoIAlign on JAX exports to ONNX only with a fixed batch size (export_onnx and the layer say it)."""
    return (
        f"on the JAX backend, RoIAlign ({', '.join(names)}) exports to ONNX only with a fixed batch size: "
        "jax2onnx cannot write its reshape of batch x boxes rows for a free batch size. Pass batch_size= "
        "(keras_attention.export.export_onnx; with Keras' model.export(format='onnx'), an input_signature of "
        "a fixed batch size), or export with KERAS_BACKEND=tensorflow, where the batch size stays free."
    )


def _check_traced_batch(layer_name, size):
    """On JAX, `size` (the length of arange(0, batch)) must be an int or a JAX symbolic dimension.

    jax2onnx traces a free batch size so that `arange(0, batch)` has a length of
    its own kind (`_DynamicDimSentinel`), which JAX's shape arithmetic then fails
    on ("no attribute 'rmax'"). jax.export / jax2tf (Keras' SavedModel export)
    give a symbolic dimension, which works.
    """
    if BACKEND != "jax" or size is None or isinstance(size, (int, np.integer)):
        return
    from jax import export as jax_export

    if not jax_export.is_symbolic_dim(size):
        raise ValueError(f"RoIAlign {layer_name!r}: {free_batch_onnx_message([layer_name])}")


def _clamped_boxes(boxes):
    """(y1, x1, y2, x2) float32 with y2 >= y1 and x2 >= x1 (y2 := max(y1, y2))."""
    boxes = ops.cast(boxes, "float32")
    y1, x1, y2, x2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return y1, x1, ops.maximum(y2, y1), ops.maximum(x2, x1)


def assign_levels_by_ratio(boxes, image_area, min_level=3, max_level=5):
    """CenterMask's scale-adaptive RoI assignment (Lee & Park, CVPR 2020, Eq. 2).

    `k = ceil(k_max - log2(A_img / A_box))`, clamped to `[min_level, max_level]`
    (`k_max = max_level`): a box covering more than half the image goes to the
    coarsest level, each halving of its area one level finer.

    The formula is evaluated exactly, without a floating-point logarithm:
    `ceil(k_max - log2 r) >= j` holds iff `r < 2 ** (k_max - j + 1)`, so the level
    is `min_level` plus the number of `m` in `1 .. max_level - min_level` with
    `A_img < 2**m * A_box` (a multiplication by a power of two is exact). A box
    exactly a quarter of the image goes to `k_max - 2`, not one level off. The
    official code's `eps` (float64 epsilon added to the ratio) changes nothing in
    float32. Boxes with `y2 < y1` (or `x2 < x1`) count as zero-area; zero-area
    boxes go to `min_level`.

    Args:
        boxes: `(..., 4)` boxes `(y1, x1, y2, x2)` in image pixels.
        image_area: the input image's area in pixels (a number or a scalar tensor).
        min_level, max_level: the available levels (3 and 5: P3-P5 in CenterMask).

    Returns:
        int32 tensor `boxes.shape[:-1]` of levels in `[min_level, max_level]`.
    """
    if max_level < min_level:
        raise ValueError(f"assign_levels_by_ratio: max_level ({max_level}) < min_level ({min_level}).")
    y1, x1, y2, x2 = _clamped_boxes(boxes)
    box_area = ops.maximum((y2 - y1) * (x2 - x1), _MIN_BOX_AREA)
    image_area = ops.cast(image_area, "float32")
    level = ops.zeros_like(box_area)
    for m in range(1, max_level - min_level + 1):
        level = level + ops.cast(image_area < box_area * float(2**m), "float32")
    return ops.cast(level, "int32") + min_level


def _pair(layer_name, arg, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{layer_name}: `{arg}` must be an int or a pair (height, width); got {value!r}.")
        return tuple(v.check_int(layer_name, arg, x) for x in value)
    value = v.check_int(layer_name, arg, value)
    return (value, value)


def _is_shape(x):
    return x is None or (isinstance(x, (list, tuple)) and all(d is None or isinstance(d, (int, np.integer)) for d in x))


def _as_tuple(shape):
    if hasattr(shape, "as_list"):  # tf.TensorShape (tf_keras)
        return tuple(shape.as_list()) if shape.rank is not None else None
    return tuple(shape)


@register
class RoIAlign(keras.layers.Layer):
    """RoIAlign with Detectron2's half-pixel alignment, from one or several pyramid levels.

    Each box is divided into `output_size x output_size` bins; in each bin
    `sampling_ratio x sampling_ratio` regularly spaced points are sampled
    bilinearly and averaged, exactly as Detectron2's `ROIAlign(aligned=True)`:
    a box `(y1, x1, y2, x2)` in image pixels (pixel `i` covers `[i, i+1)`) is
    scaled to feature coordinates and shifted by -0.5 so that sample points fall
    on pixel centres.

    Mapping boxes onto feature maps: give `strides` (the feature map's stride in
    image pixels, one per level: `8` or `(8, 16, 32)` for P3-P5), or `image_size`
    (the input image's `(height, width)`; each level's scale is then its size
    divided by the image size, read from the feature map at run time). With both,
    `strides` maps the boxes and `image_size` gives the image area for the level
    assignment.

    Several levels (`inputs = [[P3, P4, P5], boxes]`, finest first): each box is
    pooled from one level chosen by CenterMask's scale-adaptive assignment
    (`assign_levels_by_ratio`), `k = ceil(k_max - log2(A_img / A_box))` clamped
    to the given levels, `k_max` the coarsest. `A_img` is `image_size`'s area,
    or, without `image_size`, the area the finest level covers
    (`H_0 * W_0 * strides[0]**2`). The formula assumes the levels' strides double
    from one to the next, as in a feature pyramid.

    Defined behaviour at the edges (all as Detectron2):
    - no boxes (`num_boxes == 0`): the output has 0 boxes;
    - boxes partly outside the image: sample points in `[-1, 0]` (feature
      pixels) read the border, points further out than one pixel read 0, so a
      bin wholly outside the map is 0;
    - zero-area boxes (`y1 == y2` or `x1 == x2`), including all-zero padding
      boxes: every sample lands on the same line or point, and the output is the
      bilinear value there (finite, but meaningless: mask such boxes out);
    - `y2 < y1` or `x2 < x1`: clamped to `y2 = y1` (`x2 = x1`), i.e. treated as
      a zero-height (zero-width) box at `y1` (`x1`). Detectron2's kernel would
      sample a mirrored box; its boxes are always ordered. The NumPy helper
      `losses.crop_mask_targets` raises a `ValueError` for such boxes instead.

    Args:
        output_size: bins per side (14 for SAG-Mask), an int or `(height, width)`.
        sampling_ratio: sample points per bin and axis (2 in CenterMask); a
            positive int. Detectron2's adaptive `0` is not offered: it makes the
            grid depend on each box's size, which neither XLA nor TFLite allows.
        aligned: Detectron2's `aligned=True` half-pixel shift; `False` gives the
            original Mask R-CNN RoIAlign (no shift, boxes at least one feature
            pixel wide).
        strides: stride of each level in image pixels, an int or a list of ints.
        image_size: the input image's size, an int or `(height, width)`.
        data_format: "channels_last" (features `(batch, H, W, C)`, output
            `(batch, num_boxes, size, size, C)`) or "channels_first" (features
            `(batch, C, H, W)`, output `(batch, num_boxes, C, size, size)`).

    Input shape:
        `[features, boxes]` or `[[level_0, level_1, ...], boxes]`: feature maps
        with the same channel count (spatial size may be unknown) and boxes
        `(batch, num_boxes, 4)` as `(y1, x1, y2, x2)` in image pixels.

    Output shape:
        `(batch, num_boxes, output_size, output_size, channels)` (channels_last),
        in the layer's compute dtype. Sampling runs in float32 and box
        coordinates are never cast to float16 under mixed precision.

    Example:
    >>> features = keras.Input((16, 16, 32))
    >>> boxes = keras.Input((5, 4))
    >>> RoIAlign(output_size=14, sampling_ratio=2, strides=4)([features, boxes]).shape
    (None, 5, 14, 14, 32)
    """

    def __init__(
        self, output_size=14, sampling_ratio=2, aligned=True, strides=None, image_size=None, data_format=None, **kwargs
    ):
        kwargs.setdefault("autocast", False)  # boxes stay float32 under mixed precision
        super().__init__(**v.check_layer_kwargs(self, kwargs))
        name = type(self).__name__
        self.output_size = _pair(name, "output_size", output_size)
        if sampling_ratio == 0:
            raise ValueError(
                f"{name}: `sampling_ratio` 0 (Detectron2's adaptive grid) is not supported: the grid "
                "would depend on each box's size, which XLA and TFLite cannot compile. Use a "
                "positive int (CenterMask uses 2)."
            )
        self.sampling_ratio = v.check_int(name, "sampling_ratio", sampling_ratio)
        self.aligned = bool(aligned)
        if strides is None and image_size is None:
            raise ValueError(
                f"{name}: pass `strides` (e.g. strides=8, or strides=(8, 16, 32) for P3-P5) or "
                "`image_size` (the input image's (height, width)) so that boxes in image pixels can "
                "be mapped onto the feature maps."
            )
        if strides is not None:
            strides = [strides] if not isinstance(strides, (list, tuple)) else list(strides)
            if not strides:
                raise ValueError(f"{name}: `strides` must not be empty.")
            for s in strides:
                if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) or s <= 0:
                    raise ValueError(f"{name}: `strides` must be positive numbers; got {strides!r}.")
            strides = [int(s) if float(s).is_integer() else float(s) for s in strides]
        self.strides = strides
        self.image_size = _pair(name, "image_size", image_size, allow_none=True)
        self.data_format = v.normalize_data_format(name, data_format)

    # ------------------------------------------------------------------ shapes

    def _split_shapes(self, input_shape):
        """Returns ([feature shapes], boxes shape, multi_level) with checks."""
        name = type(self).__name__
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2 or _is_shape(input_shape):
            raise ValueError(
                f"{name}: expected inputs [features, boxes] or [[level_0, level_1, ...], boxes]; "
                f"got input shape {input_shape!r}."
            )
        features, boxes = input_shape
        boxes = _as_tuple(boxes)
        multi = not _is_shape(_as_tuple(features) if hasattr(features, "as_list") else features)
        levels = [_as_tuple(s) for s in features] if multi else [_as_tuple(features)]
        if not levels:
            raise ValueError(f"{name}: the list of feature levels is empty.")
        if boxes is None or len(boxes) != 3 or boxes[-1] != 4:
            raise ValueError(f"{name}: boxes must have shape (batch, num_boxes, 4) as (y1, x1, y2, x2); got {boxes}.")
        channels = [v.channels_of(name, s, self.data_format) for s in levels]
        if len(set(channels)) != 1:
            raise ValueError(
                f"{name}: all feature levels must have the same channel count; got {channels} "
                f"for levels of shapes {levels}."
            )
        if self.strides is not None and len(self.strides) != len(levels):
            raise ValueError(
                f"{name}: got {len(levels)} feature level(s) but {len(self.strides)} stride(s) "
                f"{self.strides}; give one stride per level."
            )
        batches = {s[0] for s in levels + [boxes] if s[0] is not None}
        if len(batches) > 1:
            raise ValueError(
                f"{name}: features and boxes must have the same batch size (boxes of image i sample "
                f"features of image i); got feature levels {levels} and boxes {boxes}."
            )
        self._check_level_order(levels)
        return levels, boxes, channels[0]

    def _check_level_order(self, levels):
        """Levels fine to coarse, and (where sizes are known) at the resolutions `strides` say."""
        name = type(self).__name__
        heights = [s[1] if self.data_format == "channels_last" else s[2] for s in levels]
        if self.strides is not None and any(b <= a for a, b in zip(self.strides, self.strides[1:])):
            raise ValueError(
                f"{name}: `strides` must increase from the finest level to the coarsest; got {self.strides}."
            )
        for i, (a, b) in enumerate(zip(heights, heights[1:])):
            if a is None or b is None:
                continue
            if b > a:
                raise ValueError(
                    f"{name}: feature levels must go from fine to coarse (P3, P4, ...); level {i + 1} "
                    f"has height {b}, more than level {i}'s {a}. Give the levels finest first."
                )
            if self.strides is not None:
                expected = a * self.strides[i] / self.strides[i + 1]
                if abs(b - expected) > 1:
                    raise ValueError(
                        f"{name}: level {i + 1} has height {b}, but strides {self.strides[i]} -> "
                        f"{self.strides[i + 1]} put it at about {expected:g} (level {i} has height {a}); "
                        "the strides do not match the feature maps."
                    )

    def build(self, input_shape):
        levels, _, self.channels = self._split_shapes(input_shape)
        self.num_levels = len(levels)
        self.built = True

    def compute_output_shape(self, input_shape):
        levels, boxes, channels = self._split_shapes(input_shape)
        oh, ow = self.output_size
        if self.data_format == "channels_last":
            return (boxes[0], boxes[1], oh, ow, channels)
        return (boxes[0], boxes[1], channels, oh, ow)

    # ------------------------------------------------------------------ sampling

    def _axis_samples(self, start, length, bins, size):
        """Sample rows (or columns) of each box along one axis.

        start, length: (R,) box start and extent in feature pixels (already
        shifted by the alignment offset). size: the axis length (float32 scalar).
        Returns int32 indices (R, 2 * bins * sr), low and high interleaved, and
        float32 weights (R, 2 * bins * sr), zero for points outside [-1, size].
        """
        sr = self.sampling_ratio
        n = bins * sr
        steps = (np.arange(n, dtype="float32") + 0.5) / n  # (sample + 0.5) / (bins * sr)
        points = start[:, None] + length[:, None] * ops.convert_to_tensor(steps)[None, :]
        valid = ops.cast(ops.logical_and(points >= -1.0, points <= size), "float32")
        points = ops.maximum(points, 0.0)
        low = ops.floor(points)
        at_end = low >= size - 1.0
        last = ops.zeros_like(low) + (size - 1.0)
        low = ops.where(at_end, last, low)
        high = ops.where(at_end, last, low + 1.0)
        frac = ops.where(at_end, ops.zeros_like(points), points - low)
        indices = ops.reshape(ops.stack([low, high], axis=-1), (-1, 2 * n))
        weights = ops.reshape(ops.stack([(1.0 - frac) * valid, frac * valid], axis=-1), (-1, 2 * n))
        return ops.cast(indices, "int32"), weights

    def _level_tables(self, levels, channels):
        """Per level: its sizes (h, w as ints or tensors, and as floats), the scale from image pixels
        to feature pixels, the offset of its rows in the concatenated (sum_l B*H_l*W_l, C) table,
        and its rows."""
        sizes, scales, offsets, tables = [], [], [], []
        offset = 0
        for i, f in enumerate(levels):
            shape = ops.shape(f)
            h = f.shape[1] if f.shape[1] is not None else shape[1]
            w = f.shape[2] if f.shape[2] is not None else shape[2]
            hf, wf = ops.cast(h, "float32"), ops.cast(w, "float32")
            if self.strides is not None:
                sy = sx = ops.cast(1.0 / self.strides[i], "float32")
            else:
                sy, sx = hf / float(self.image_size[0]), wf / float(self.image_size[1])
            sizes.append((h, w, hf, wf))
            scales.append((sy, sx))
            offsets.append(offset)
            tables.append(ops.reshape(f, (shape[0] * h * w, channels)))
            offset = offset + shape[0] * h * w
        return sizes, scales, offsets, tables

    def _box_levels(self, flat_boxes, sizes, num_levels):
        """The pyramid level of each box (FPN's rule, by area relative to the image)."""
        if self.image_size is not None:
            image_area = float(self.image_size[0] * self.image_size[1])
        else:
            h0, w0 = sizes[0][2], sizes[0][3]
            image_area = h0 * w0 * float(self.strides[0]) ** 2
        return assign_levels_by_ratio(flat_boxes, image_area, 0, num_levels - 1)

    def _sampling_table(self, levels, channels, flat_boxes, batch_index):
        """All levels' rows as one table, and per box (or for all boxes, with one level) its level's
        float sizes, scales, row stride, image stride and row offset in that table."""
        sizes, scales, offsets, tables = self._level_tables(levels, channels)
        if len(levels) == 1:
            (h, w, hf, wf), (sy, sx) = sizes[0], scales[0]
            row_stride = ops.cast(w, "int32")
            image_stride = ops.cast(h * w, "int32")
            level_offset = ops.zeros_like(batch_index)
            table = tables[0]
        else:
            level = self._box_levels(flat_boxes, sizes, len(levels))  # (R,)

            def pick(values, dtype):
                return ops.take(ops.stack([ops.cast(x, dtype) for x in values]), level, axis=0)

            hf, wf = pick([s[2] for s in sizes], "float32"), pick([s[3] for s in sizes], "float32")
            sy, sx = pick([s[0] for s in scales], "float32"), pick([s[1] for s in scales], "float32")
            row_stride = pick([s[1] for s in sizes], "int32")
            image_stride = pick([s[0] * s[1] for s in sizes], "int32")
            level_offset = pick(offsets, "int32")
            table = ops.concatenate(tables, axis=0)
        return hf, wf, sy, sx, row_stride, image_stride, level_offset, table

    def call(self, inputs):
        features, boxes = inputs
        levels = list(features) if isinstance(features, (list, tuple)) else [features]
        if self.data_format == "channels_first":
            levels = [ops.transpose(f, (0, 2, 3, 1)) for f in levels]
        levels = [ops.cast(f, "float32") for f in levels]
        boxes = ops.cast(boxes, "float32")
        oh, ow = self.output_size
        sr = self.sampling_ratio
        channels = levels[0].shape[-1]

        batch = ops.shape(boxes)[0]
        num_boxes = ops.shape(boxes)[1]
        rois = batch * num_boxes
        flat_boxes = ops.reshape(boxes, (rois, 4))
        y1, x1, y2, x2 = _clamped_boxes(flat_boxes)
        # arange(0, batch), not arange(batch): jax2onnx's arange needs both ends.
        image_index = ops.arange(0, batch, dtype="int32")
        _check_traced_batch(self.name, image_index.shape[0])
        batch_index = ops.cast(ops.zeros_like(boxes[..., 0]), "int32") + image_index[:, None]
        batch_index = ops.reshape(batch_index, (rois,))

        hf, wf, sy, sx, row_stride, image_stride, level_offset, table = self._sampling_table(
            levels, channels, flat_boxes, batch_index
        )

        def per_roi(x, rank):  # (R,) -> (R, 1, ...), for the multi-level per-box parameters
            return ops.reshape(x, (rois,) + (1,) * (rank - 1)) if len(levels) > 1 else x

        offset = 0.5 if self.aligned else 0.0
        start_y, start_x = y1 * sy - offset, x1 * sx - offset
        height, width = (y2 - y1) * sy, (x2 - x1) * sx
        if not self.aligned:  # the original RoIAlign forces boxes to be at least 1x1
            height, width = ops.maximum(height, 1.0), ops.maximum(width, 1.0)
        rows, row_weights = self._axis_samples(start_y, height, oh, per_roi(hf, 2))  # (R, 2*oh*sr)
        cols, col_weights = self._axis_samples(start_x, width, ow, per_roi(wf, 2))  # (R, 2*ow*sr)

        base = level_offset + batch_index * image_stride
        index = ops.reshape(base, (rois, 1, 1)) + rows[:, :, None] * per_roi(row_stride, 3) + cols[:, None, :]
        px = 2 * ow * sr
        values = ops.take(table, index, axis=0)  # (R, 2 * oh * sr, px, C)
        weights = row_weights[:, :, None, None] * col_weights[:, None, :, None]
        values = values * weights
        # Sum the 2 * sr weighted corners per bin and axis, then average the sr x sr points.
        values = ops.sum(ops.reshape(values, (rois * oh, 2 * sr, px * channels)), axis=1)
        values = ops.sum(ops.reshape(values, (rois * oh * ow, 2 * sr, channels)), axis=1)
        values = values * (1.0 / (sr * sr))
        out = ops.reshape(values, (batch, num_boxes, oh, ow, channels))
        if self.data_format == "channels_first":
            out = ops.transpose(out, (0, 1, 4, 2, 3))
        return ops.cast(out, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            output_size=list(self.output_size),
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
            strides=None if self.strides is None else list(self.strides),
            image_size=None if self.image_size is None else list(self.image_size),
            data_format=self.data_format,
        )
        return config
