"""Group normalization written as the ops an int8 TFLite file runs (MEAN, SUB, MUL, RSQRT)."""

from keras_attention.backend import mean, ops

# The int8 tensors inside `group_norm`, after the caller's prefix.
GROUP_NORM_POINTS = ("centered", "squared", "variance", "variance_eps", "inverse_std", "normalized", "scaled", "output")


def group_norm(layer, x, gamma, beta, groups, epsilon, prefix, training=None):
    """GroupNorm of a (batch, L, 1, C) tensor: statistics over L and each group of C // groups channels.

    PyTorch's `nn.GroupNorm(groups, C)` on the (batch, C, L) view; with
    `groups=1` it is timm's `GroupNorm1`, and on a (batch, 1, 1, C) tensor it is
    a LayerNorm over channels (timm's `LayerNorm2d` at one position). Each
    intermediate is an int8 point of `layer` named `prefix + GROUP_NORM_POINTS[i]`
    (Keras' GroupNormalization would convert to ops without them).
    """
    point = lambda name, y: layer.at_point(prefix + name, y)  # noqa: E731
    channels = x.shape[-1]
    grouped = ops.reshape(x, (-1, ops.shape(x)[1], groups, channels // groups))
    centered = point("centered", grouped - mean(grouped, axis=(1, 3), keepdims=True))
    squared = point("squared", centered * centered)
    variance = point("variance", mean(squared, axis=(1, 3), keepdims=True))
    variance_eps = point("variance_eps", variance + epsilon)
    if layer.quantizing and training is True:
        # A fake-quantized variance can round to 0, where rsqrt's gradient is infinite (NaN once the
        # range's zero gradient multiplies it): train on max(v, eps), with v's gradient. Inference graphs,
        # which the converter reads, keep the plain op; an int8 RSQRT of 0 saturates to its range.
        variance_eps = variance_eps + ops.stop_gradient(ops.maximum(variance_eps, epsilon) - variance_eps)
    inverse_std = point("inverse_std", ops.rsqrt(variance_eps))
    normalized = point("normalized", ops.reshape(centered * inverse_std, (-1, ops.shape(x)[1], 1, channels)))
    # Under QAT the affine parameters are int8 constants too (per tensor): the MUL and ADD take no float operand.
    quantize = layer.kernel_quantizer()
    gamma, beta = quantize(ops.cast(gamma, x.dtype)), quantize(ops.cast(beta, x.dtype))
    return point("output", point("scaled", normalized * gamma) + beta)
