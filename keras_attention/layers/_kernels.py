"""Kernel choices: other formulations of the same layers for one runtime each.

Every function here computes exactly what the plain Keras layer computes, with
the same weights, so a model saved, reloaded, exported or quantized sees the
plain layers; only how the arithmetic is laid out differs. Which one a call
takes is decided here, by `spatial_conv_path` and `takes_fused_cbam`:

- `shifted_sum_conv`: SpatialAttention's (and CBAM's) k x k convolution while
  traced for XLA (`jit_compile=True` on TensorFlow, Keras 3 or tf_keras; `jax.jit`):
  a 1 x k convolution to k channels and k shifted slices, because XLA's CPU
  convolution emitter is slow for 2 -> 1 channels.
- `same_conv_to_one_channel` (space-to-depth): the same convolution in any other
  TensorFlow graph (SavedModel, TFLite conversion, `tf.function`) when H and W
  divide by 4 or 2. LiteRT's XNNPACK runs the plain 2 -> 1 convolution in 89 us,
  this one in 7 us (int8, 56x56).
- `fused_cbam`: a CBAM in the paper's configuration traced for XLA on
  TensorFlow, not under QAT. Autodiff of the layer graph stores and re-reads
  full-size intermediates.
- The plain layers: everything else (eager calls, JAX without jit, PyTorch).

XLA's CPU backend (TensorFlow 2.21), measured on 8x56x56x256 as multiples of a
NumPy copy: a reduction over H x W of a plain input 0.4-0.5x, of a fused
expression 6-7x; a reduction over channels 1.6x, as a matrix-vector product
0.5x; a 2 -> 1-channel 7x7 convolution 2-3.6x, as shifted sums 0.3x. The XLA
formulations below follow from these numbers.

Space-to-depth: spatial attention convolves a map with 1-2 channels to one
channel, which runtimes run as a matrix product with one output column,
wasting most of the hardware. Rearranged into s x s blocks (SPACE_TO_DEPTH),
the same convolution is a ceil(k/s)-ish x ceil(k/s) convolution from s*s*n to
s*s channels whose kernel holds the original weights (and zeros), followed by
DEPTH_TO_SPACE. Exact up to float rounding. The ops are TensorFlow's: this path
exists for TFLite files and plain TensorFlow graphs, where it is no slower.
"""

import functools

import numpy as np

from keras_attention.backend import BACKEND, accumulation_dtype, custom_gradient, mean, ops, xla_compiling

XLA = "xla"
SPACE_TO_DEPTH = "space_to_depth"


def spatial_conv_path(descriptors):
    """How to run spatial attention's k x k convolution of `descriptors` (B, H, W, n).

    `XLA` (shifted sums) while traced for XLA; `(SPACE_TO_DEPTH, s)` in other
    TensorFlow graphs when H and W divide by s = 4 or 2; None for the plain
    convolution.
    """
    if xla_compiling(descriptors):
        return XLA
    s = BACKEND == "tensorflow" and block_size(descriptors.shape[1], descriptors.shape[2])
    return (SPACE_TO_DEPTH, s) if s else None


def takes_fused_cbam(block, inputs):
    """Whether `block(inputs)` runs as `fused_cbam`: traced for XLA, not quantized, `can_fuse_cbam`."""
    return not block.quantizing and xla_compiling(inputs) and can_fuse_cbam(block, inputs)


def shifted_sum_conv(maps, kernel, bias=None):
    """'Same' k x k convolution of a map with few channels to one output channel, for XLA.

    XLA's CPU convolution emitter is slow for 2 -> 1 channels (about 6x slower
    than this on a 56x56 map). Here a 1 x k convolution gives each row offset
    i of the kernel its own output channel (n -> k channels, which XLA runs
    well), and the k row-shifted slices of those channels are summed. The
    former k*k*n shifted, scaled views (98 slices for 7x7x2) ran as fast but
    cost XLA 3 s of compilation per layer on the CPU; this costs 0.1 s.
    maps: (B, H, W, n) channels_last; kernel: (k, k, n, 1).
    """
    # Cast: under mixed precision Keras autocasts variables read in call().
    out = _row_conv(maps, ops.cast(kernel, maps.dtype))
    return out if bias is None else out + ops.cast(bias, maps.dtype)


def _row_conv(maps, kernel):
    """'Same' convolution of maps (B, H, W, n) with kernel (k, k, n, m): a 1 x k convolution to k*m
    channels (channel i*m + o: row i of the kernel), then the sum of the k row-shifted slices."""
    k, m, height = kernel.shape[0], kernel.shape[3], maps.shape[1]
    r = k // 2
    padded = ops.pad(maps, ((0, 0), (r, r), (r, r), (0, 0)))
    # row_kernel[0, j, c, i*m + o] = kernel[i, j, c, o]
    row_kernel = ops.reshape(ops.transpose(kernel, (1, 2, 0, 3)), (1, k, kernel.shape[2], k * m))
    rows = ops.conv(padded, row_kernel, padding="valid")  # (B, H + 2r, W, k*m)
    out = None
    for i in range(k):
        term = rows[:, i : i + height, :, i * m : (i + 1) * m]
        out = term if out is None else out + term
    return out


def _channel_reduce(maps, reduce, combine, slices=8):
    """`reduce` over the last axis: first `combine` `slices` equal slices elementwise.

    TensorFlow's XLA CPU backend reduces the minor axis of a fused expression at
    1.5-2x a copy; an elementwise max (or sum) of 8 channel slices, then a
    reduction over C / 8, measured 0.6-1.0x on CBAM's shapes.
    """
    channels = maps.shape[-1]
    if channels % slices:
        return reduce(maps, axis=-1)
    width = channels // slices
    combined = maps[..., :width]
    for i in range(1, slices):
        combined = combine(combined, maps[..., i * width : (i + 1) * width])
    return reduce(combined, axis=-1)


def _shifted_sum_conv_grads(maps, kernel, upstream):
    """Gradients of `shifted_sum_conv(maps, kernel)` for maps and kernel, each one convolution.

    maps: (B, H, W, n); kernel: (k, k, n, 1); upstream: (B, H, W, 1). The maps'
    gradient is the 'same' convolution of upstream with the kernel turned by
    180 degrees (1 -> n channels); the kernel's, sum over b, h, w of
    padded_maps[b, h + i, w + j, c] * upstream[b, h, w], is a 'valid'
    convolution with the batch as channels and upstream as a H x W kernel.
    """
    k = kernel.shape[0]
    r = k // 2
    turned = ops.transpose(ops.flip(ops.flip(kernel, axis=0), axis=1), (0, 1, 3, 2))  # (k, k, 1, n)
    grad_maps = _row_conv(upstream, turned)
    padded_maps = ops.pad(maps, ((0, 0), (r, r), (r, r), (0, 0)))
    by_channel = ops.transpose(padded_maps, (3, 1, 2, 0))  # (n, H + 2r, W + 2r, B)
    upstream_kernel = ops.transpose(upstream, (1, 2, 0, 3))  # (H, W, B, 1)
    grad_kernel = ops.conv(by_channel, upstream_kernel, padding="valid")  # (n, k, k, 1)
    return grad_maps, ops.transpose(grad_kernel, (1, 2, 0, 3))


def can_fuse_cbam(block, inputs):
    """Whether `fused_cbam` computes this CBAM block: the paper's configuration, static sizes.

    TensorFlow only: JAX's XLA (jax 0.10) compiles the plain layers better than
    this formulation (measured 1.2-1.3x faster on 8x56x56x256, forward and backward).
    """
    ca, sa = block.channel_attention, block.spatial_attention
    return (
        BACKEND == "tensorflow"
        and block.arrangement == "channel_first"
        and block.data_format == "channels_last"
        and tuple(ca.pooling) == ("avg", "max")
        and tuple(sa.pooling) == ("avg", "max")
        and ca.gate == sa.gate == "sigmoid"
        and not sa.use_batchnorm
        and None not in tuple(inputs.shape)[1:]
    )


def fused_cbam(inputs, block):
    """CBAM (channel gate, then spatial gate) as one function with a hand-written gradient.

    Autodiff of the layer graph stores and re-reads full-size intermediates
    (`F'`, the gated map, the max masks) and differentiates TensorFlow's
    reductions op by op, which XLA's CPU backend turns into reductions of fused
    expressions over H x W (6-15x a copy each). Here the forward pass never
    stores `F'`, and the backward pass writes every sum over H x W as a batched
    matrix product. Ties of either max split the gradient equally, as
    TensorFlow, JAX and PyTorch do. Computes in `accumulation_dtype` (float32, or
    float64 in a float64 model); returns `inputs.dtype`.

    Long because the forward pass and its gradient share their intermediates
    (pooled descriptors, gates, argmax masks) through one custom-gradient
    closure; split into functions, each would recompute or pass a dozen tensors.
    """
    ca, sa = block.channel_attention, block.spatial_attention
    scale = ca.gate_scale
    channels = inputs.shape[-1]
    hidden = ca.mlp_reduce.kernel.shape[-1]
    dtype = accumulation_dtype(block)
    weights = [
        ops.reshape(ops.cast(ca.mlp_reduce.kernel, dtype), (channels, hidden)),
        ops.cast(ca.mlp_reduce.bias, dtype) if ca.use_bias else ops.zeros((hidden,), dtype),
        ops.reshape(ops.cast(ca.mlp_expand.kernel, dtype), (hidden, channels)),
        ops.cast(ca.mlp_expand.bias, dtype) if ca.use_bias else ops.zeros((channels,), dtype),
        ops.cast(sa.conv.kernel, dtype),
        ops.cast(sa.conv.bias, dtype) if sa.use_bias else ops.zeros((1,), dtype),
    ]

    @custom_gradient
    def cbam(x, w1, b1, w2, b2, kernel, bias):
        """Long: the forward pass, then `grad` over the same intermediates (see above)."""
        # (B, H*W, C) views: XLA's CPU backend runs sums over H*W as batched
        # matrix products far faster than as reductions of fused expressions.
        height, width = x.shape[1], x.shape[2]
        size = height * width
        xf = ops.reshape(ops.cast(x, dtype), (-1, size, channels))
        avg, peak = mean(xf, axis=1), ops.max(xf, axis=1)
        pre_avg, pre_max = ops.matmul(avg, w1) + b1, ops.matmul(peak, w1) + b1
        hidden_sum = ops.relu(pre_avg) + ops.relu(pre_max)
        channel_sigmoid = ops.sigmoid(ops.matmul(hidden_sum, w2) + 2.0 * b2)
        channel_gate = scale * channel_sigmoid
        row_gate = channel_gate[:, None, :]
        gated = xf * row_gate
        channel_mean = ops.matmul(xf, (channel_gate / channels)[:, :, None])
        channel_max = _channel_reduce(gated, ops.max, ops.maximum)[..., None]
        maps = ops.reshape(ops.concatenate([channel_mean, channel_max], axis=-1), (-1, height, width, 2))
        spatial_sigmoid = ops.sigmoid(shifted_sum_conv(maps, kernel, bias))
        spatial_gate = ops.reshape(scale * spatial_sigmoid, (-1, size, 1))
        out = ops.reshape(ops.cast(gated * spatial_gate, x.dtype), ops.shape(x))

        def grad(*args, upstream=None, variables=None):
            upstream = ops.reshape(ops.cast(args[0] if upstream is None else upstream, dtype), (-1, size, channels))
            upstream_x = upstream * xf
            # Spatial gate: d/d(gate) = sum_c upstream * F', then the sigmoid and the conv.
            grad_gate_s = ops.reshape(ops.matmul(upstream_x, channel_gate[:, :, None]), (-1, height, width))
            grad_logits = grad_gate_s[..., None] * scale * spatial_sigmoid * (1.0 - spatial_sigmoid)
            grad_maps, grad_kernel = _shifted_sum_conv_grads(maps, kernel, grad_logits)
            grad_maps = ops.reshape(grad_maps, (-1, size, 2))
            at_channel_max = ops.cast(ops.equal(gated, channel_max), dtype)
            grad_max_c = grad_maps[..., 1:] / _channel_reduce(at_channel_max, ops.sum, ops.add)[..., None]
            grad_mean_c = grad_maps[..., :1] / channels
            # grad wrt F' = upstream * M_s + grad_mean_c + at_channel_max * grad_max_c;
            # its sum over H*W times F, as three matrix products:
            row = lambda column: ops.transpose(column, (0, 2, 1))  # noqa: E731
            grad_channel_gate = (
                ops.matmul(row(spatial_gate), upstream_x)
                + ops.matmul(row(grad_mean_c), xf)
                + ops.matmul(row(grad_max_c), at_channel_max * xf)
            )[:, 0]
            grad_z = grad_channel_gate * scale * channel_sigmoid * (1.0 - channel_sigmoid)
            grad_hidden = ops.matmul(grad_z, ops.transpose(w2))
            grad_pre_avg = grad_hidden * ops.cast(pre_avg > 0, dtype)
            grad_pre_max = grad_hidden * ops.cast(pre_max > 0, dtype)
            at_peak = ops.cast(ops.equal(xf, peak[:, None, :]), dtype)
            ties_hw = ops.matmul(ops.ones_like(row(spatial_gate)), at_peak)
            grad_gated = upstream * spatial_gate + grad_mean_c + at_channel_max * grad_max_c
            grad_x = (
                grad_gated * row_gate
                + ops.matmul(grad_pre_avg, ops.transpose(w1))[:, None, :] / size
                + at_peak * ops.matmul(grad_pre_max, ops.transpose(w1))[:, None, :] / ties_hw
            )
            grads = (
                ops.reshape(ops.cast(grad_x, x.dtype), ops.shape(x)),
                ops.matmul(ops.transpose(avg), grad_pre_avg) + ops.matmul(ops.transpose(peak), grad_pre_max),
                ops.sum(grad_pre_avg + grad_pre_max, axis=0),
                ops.matmul(ops.transpose(hidden_sum), grad_z),
                2.0 * ops.sum(grad_z, axis=0),
                grad_kernel,
                ops.sum(grad_logits, axis=(0, 1, 2)),
            )
            return (grads, []) if variables is not None else grads

        return out, grad

    return cbam(inputs, *weights)


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
