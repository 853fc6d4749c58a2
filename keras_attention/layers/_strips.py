"""What the strip attentions share (coord, scoord, ela, strip): strip pooling, and timm's optional skip."""

from keras_attention.backend import accumulation_dtype, mean, ops


def strip_means(layer, inputs):
    """The row and column means of `inputs` as (batch, H, 1, C) and (batch, W, 1, C), in `accumulation_dtype`.

    Both strips are channels_last with the pooled positions along axis 1, so one
    (k, 1) convolution runs along either; they are the int8 points "pooled_h"
    and "pooled_w".
    """
    x = ops.cast(inputs, accumulation_dtype(layer))
    if layer.data_format == "channels_last":
        rows = mean(x, axis=2, keepdims=True)
        columns = ops.transpose(mean(x, axis=1, keepdims=True), (0, 2, 1, 3))
    else:
        rows = ops.expand_dims(ops.transpose(mean(x, axis=3), (0, 2, 1)), 2)
        columns = ops.expand_dims(ops.transpose(mean(x, axis=2), (0, 2, 1)), 2)
    return layer.at_point("pooled_h", rows), layer.at_point("pooled_w", columns)


def strips_to_input_layout(along_h, along_w, data_format):
    """Two strips from `strip_means`' layout to tensors that broadcast against the input.

    channels_last: (batch, H, 1, C) and (batch, 1, W, C); channels_first:
    (batch, C, H, 1) and (batch, C, 1, W).
    """
    if data_format == "channels_last":
        return along_h, ops.transpose(along_w, (0, 2, 1, 3))
    return ops.transpose(along_h, (0, 3, 1, 2)), ops.transpose(along_w, (0, 3, 2, 1))


def refuse_identity_with_residual(layer):
    """`start_as_identity` and `residual` (timm's `has_skip`) together are refused, with why."""
    if layer.residual and layer.start_as_identity:
        raise ValueError(
            f"{type(layer).__name__}: `start_as_identity=True` excludes `residual=True`: the output x * gate + x "
            "is x only for a gate of 0, which a sigmoid never reaches. Use one or the other."
        )


def residual_points(layer):
    """The int8 points of `residual_output`."""
    return [*(["gated"] if layer.residual else []), "output"]


def residual_output(layer, out, inputs):
    """The layer's output: the gated map `out`, plus `inputs` when `layer.residual`."""
    if layer.residual:
        out = layer.at_point("gated", out) + inputs
    return layer.at_point("output", out)
