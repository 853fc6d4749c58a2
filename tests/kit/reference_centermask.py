"""Independent NumPy references for RoIAlign, CenterMask's level assignment and SAG-Mask.

Written from Detectron2's CPU kernel (`ROIAlign_forward_cpu`, `aligned=True`)
and the CenterMask paper, one scalar at a time, in float64: nothing is shared
with the layers' vectorised code.
"""

import math
import sys

import numpy as np


def bilinear(feature, y, x):
    """Detectron2's `bilinear_interpolate` on a (H, W, C) map at one point."""
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * feature[y_low, x_low]
        + hy * lx * feature[y_low, x_high]
        + ly * hx * feature[y_high, x_low]
        + ly * lx * feature[y_high, x_high]
    )


def roi_align_one(feature, box, spatial_scale, output_size, sampling_ratio, aligned=True):
    """One box (y1, x1, y2, x2) on one (H, W, C) map -> (out_h, out_w, C)."""
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    y1, x1, y2, x2 = [float(c) for c in box]
    offset = 0.5 if aligned else 0.0
    start_y, start_x = y1 * spatial_scale - offset, x1 * spatial_scale - offset
    end_y, end_x = y2 * spatial_scale - offset, x2 * spatial_scale - offset
    roi_h, roi_w = end_y - start_y, end_x - start_x
    if not aligned:
        roi_h, roi_w = max(roi_h, 1.0), max(roi_w, 1.0)
    bin_h, bin_w = roi_h / out_h, roi_w / out_w
    grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / out_h))
    grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / out_w))
    count = max(grid_h * grid_w, 1)
    out = np.zeros((out_h, out_w, feature.shape[-1]))
    for ph in range(out_h):
        for pw in range(out_w):
            total = np.zeros(feature.shape[-1])
            for iy in range(grid_h):
                y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    total += bilinear(feature, y, x)
            out[ph, pw] = total / count
    return out


def level_by_ratio(box, image_area, min_level, max_level):
    """CenterMask Eq. 2 as the official code writes it (float64, with its eps)."""
    y1, x1, y2, x2 = [float(c) for c in box]
    area = max(y2 - y1, 0.0) * max(x2 - x1, 0.0)
    with np.errstate(divide="ignore"):
        ratio = image_area / area if area > 0 else np.inf
    level = math.ceil(max_level - math.log2(ratio + sys.float_info.epsilon)) if np.isfinite(ratio) else -np.inf
    return int(min(max(level, min_level), max_level))


def roi_align(levels, boxes, strides, output_size=14, sampling_ratio=2, aligned=True, image_area=None):
    """levels: list of (B, H, W, C) maps (finest first); boxes (B, N, 4) -> (B, N, S, S, C)."""
    levels = [np.asarray(f, "float64") for f in levels]
    boxes = np.asarray(boxes, "float64")
    b, n = boxes.shape[:2]
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    out = np.zeros((b, n) + size + (levels[0].shape[-1],))
    if image_area is None:
        image_area = levels[0].shape[1] * levels[0].shape[2] * strides[0] ** 2
    for i in range(b):
        for j in range(n):
            box = boxes[i, j].copy()
            box[2], box[3] = max(box[2], box[0]), max(box[3], box[1])
            k = 0 if len(levels) == 1 else level_by_ratio(box, image_area, 0, len(levels) - 1)
            out[i, j] = roi_align_one(levels[k][i], box, 1.0 / strides[k], size, sampling_ratio, aligned)
    return out


def sag_mask_head(
    rois, conv_kernels, conv_biases, sam_kernel, deconv_kernel, deconv_bias, predictor_kernel, predictor_bias
):
    """SAG-Mask on (R, 14, 14, C) RoI features with the given weights -> (R, 28, 28, K) logits.

    Keras kernel layouts: conv (kh, kw, in, out); transposed conv (kh, kw, out, in).
    """
    x = np.asarray(rois, "float64")
    for kernel, bias in zip(conv_kernels, conv_biases):
        x = np.maximum(conv2d_same(x, kernel) + bias, 0.0)
    if sam_kernel is not None:
        descriptors = np.concatenate([x.mean(-1, keepdims=True), x.max(-1, keepdims=True)], axis=-1)
        gate = 1.0 / (1.0 + np.exp(-conv2d_same(descriptors, sam_kernel)))
        x = x * gate
    r, h, w, _ = x.shape
    up = np.zeros((r, 2 * h, 2 * w, deconv_kernel.shape[2]))
    for dy in range(2):
        for dx in range(2):
            up[:, dy::2, dx::2] = x @ deconv_kernel[dy, dx].T
    up = np.maximum(up + deconv_bias, 0.0)
    return up @ predictor_kernel[0, 0] + predictor_bias


def conv2d_same(x, kernel):
    """Stride-1 'same' convolution (cross-correlation) of (R, H, W, Cin) with (k, k, Cin, Cout)."""
    k = kernel.shape[0]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for dy in range(k):
        for dx in range(k):
            out += padded[:, dy : dy + h, dx : dx + w] @ kernel[dy, dx]
    return out
