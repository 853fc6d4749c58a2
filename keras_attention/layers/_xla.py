"""Formulations XLA compiles better than the plain Keras layers.

Used only while tracing for XLA (`backend.xla_compiling`); they compute the
same function with the same weights, so eager calls, SavedModel/TFLite export
and QAT keep the plain layers (one CONV_2D in a .tflite file).
"""

from keras_attention.backend import ops


def shifted_sum_conv(maps, kernel, bias=None):
    """'Same' k x k convolution of a map with few channels to one output channel.

    XLA's CPU convolution emitter is slow for 2 -> 1 channels (about 6x slower
    than this on a 56x56 map); a sum of k*k*n shifted, scaled views is a single
    fused elementwise loop. maps: (B, H, W, n) channels_last; kernel: (k, k, n, 1).
    """
    # Cast: under mixed precision Keras autocasts variables read in call().
    kernel = ops.cast(kernel, maps.dtype)
    bias = None if bias is None else ops.cast(bias, maps.dtype)
    k = kernel.shape[0]
    r = k // 2
    padded = ops.pad(maps, ((0, 0), (r, r), (r, r), (0, 0)))
    out = None
    for c in range(kernel.shape[2]):
        plane = padded[..., c:c + 1]
        for i in range(k):
            rows = plane[:, i:(i - 2 * r) or None]
            for j in range(k):
                term = rows[:, :, j:(j - 2 * r) or None] * kernel[i, j, c, 0]
                out = term if out is None else out + term
    return out if bias is None else out + bias
