"""A 'same' k x k convolution to one channel, computed on a space-to-depth grid.

Spatial attention convolves a map with 1-2 channels to one channel. Runtimes
run such a convolution as a matrix product with one output column, which
wastes most of the hardware: LiteRT's XNNPACK took 89 us (int8) for a 7x7
2 -> 1 convolution on 56x56, more than a 1x1 convolution of the 24-channel
block around it. Rearranged into s x s blocks (SPACE_TO_DEPTH), the same
convolution is a ceil(k/s)-ish x ceil(k/s) convolution from s*s*n to s*s
channels whose kernel holds the original weights (and zeros), followed by
DEPTH_TO_SPACE: 7 us for the same result (s = 4). Exact up to float rounding.

TensorFlow only (the ops are TensorFlow's; this path exists for TFLite files
and plain TensorFlow graphs, where it is no slower).
"""

import functools

import numpy as np


def block_size(height, width):
    """The largest of 4 and 2 dividing both sizes; None when neither does or a size is unknown."""
    for s in (4, 2):
        if height is not None and width is not None and height % s == 0 and width % s == 0:
            return s
    return None


@functools.cache
def _kernel_index(k, channels, s):
    """For each weight of the block kernel, its index in the flattened (k, k, n) kernel, or k*k*n (a zero).

    Output phase (a, b) of block (I, J) is fine pixel (sI + a, sJ + b); its tap
    (i, j) reads fine pixel (sI + a + i - r, sJ + b + j - r), which lies in block
    (I + di, J + dj) at phase (ia, jb): one weight per (di, dj, ia, jb, channel, a, b).
    """
    r = k // 2
    reach = -(-r // s)  # ceil(r / s) blocks on each side
    size = 2 * reach + 1
    index = np.full((size, size, s, s, channels, s, s), k * k * channels, "int32")
    for a in range(s):
        for b in range(s):
            for i in range(k):
                for j in range(k):
                    di, ia = divmod(a + i - r, s)
                    dj, jb = divmod(b + j - r, s)
                    for c in range(channels):
                        index[di + reach, dj + reach, ia, jb, c, a, b] = (i * k + j) * channels + c
    return index.reshape(size, size, s * s * channels, s * s)


def same_conv_to_one_channel(maps, kernel, bias=None, s=4, quantize=None):
    """`conv2d(maps, kernel, padding="same") (+ bias)`, through a space-to-depth grid of block `s`.

    maps: (B, H, W, n) with H and W multiples of `s`; kernel: (k, k, n, 1), k odd.
    quantize: applied to the block kernel (QAT's per-tensor fake quantization,
    which gives the original weights the same grid; the TFLite converter then
    sees FakeQuant on the kernel the CONV_2D reads — one on the original kernel,
    before the gather, crashes the TF 2.21 converter).
    """
    import tensorflow as tf

    # Cast: under mixed precision Keras autocasts variables read in call().
    kernel = tf.cast(kernel, maps.dtype)
    k, channels = int(kernel.shape[0]), int(kernel.shape[2])
    flat = tf.concat([tf.reshape(kernel, [-1]), tf.zeros([1], kernel.dtype)], axis=0)
    block_kernel = tf.gather(flat, _kernel_index(k, channels, s))
    if quantize is not None:
        block_kernel = quantize(block_kernel)
    out = tf.nn.conv2d(tf.nn.space_to_depth(maps, s), block_kernel, 1, "SAME")
    if bias is not None:  # added before DEPTH_TO_SPACE, so the converter fuses it into the CONV_2D
        out = out + tf.cast(bias, maps.dtype)
    return tf.nn.depth_to_space(out, s)
