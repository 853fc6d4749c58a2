"""Argument and shape checks shared by the attention layers, and their layout helpers.

Every error names the layer, what it got and what it expects.
"""

from keras_attention._checks import check_int, is_int  # noqa: F401 - check_int re-exported for the layers
from keras_attention.backend import image_data_format, keras, ops

GATES = ("sigmoid", "hard_sigmoid")
POOLINGS = ("avg", "max", "avg_max")  # avg_max: (avg + max) / 2, timm's light CBAM; alone


def check_choice(layer_name, arg, value, allowed):
    if value not in allowed:
        raise ValueError(f"{layer_name}: unknown `{arg}` {value!r}; expected one of {list(allowed)}.")
    return value


def check_hidden_channels(layer_name, hidden_channels, **width_rules):
    """`hidden_channels` (None or an int >= 1), refused together with any of the width rules it replaces.

    `width_rules` are the layer's other width arguments as given (`reduction=...`,
    `min_channels=...`, `divisor=...`); None means not given.
    """
    hidden_channels = check_int(layer_name, "hidden_channels", hidden_channels, allow_none=True)
    given = {k: x for k, x in width_rules.items() if x is not None}
    if hidden_channels is not None and given:
        names = [f"`{k}`" for k in width_rules]
        excluded = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        raise ValueError(
            f"{layer_name}: `hidden_channels` sets the hidden width itself; it excludes {excluded} "
            f"(got hidden_channels={hidden_channels!r}, {', '.join(f'{k}={x!r}' for k, x in given.items())})."
        )
    return hidden_channels


def normalize_pooling(layer_name, pooling):
    if isinstance(pooling, str):
        pooling = (pooling,)
    pooling = tuple(pooling)
    if not pooling or len(set(pooling)) != len(pooling):
        raise ValueError(
            f"{layer_name}: `pooling` must be a non-empty selection of {list(POOLINGS)} "
            f"without repeats; got {pooling!r}."
        )
    for kind in pooling:
        check_choice(layer_name, "pooling", kind, POOLINGS)
    if "avg_max" in pooling and len(pooling) > 1:
        raise ValueError(
            f"{layer_name}: `pooling` 'avg_max' (the mean of average and max pooling) stands alone; "
            f"got {pooling!r}. Use ('avg', 'max') for the two descriptors side by side."
        )
    return pooling


# What Keras' base Layer (Keras 3 or tf_keras) takes besides a layer's own arguments.
BASE_LAYER_KWARGS = frozenset(
    {
        "name",
        "dtype",
        "trainable",
        "autocast",
        "dynamic",
        "input_shape",
        "batch_input_shape",
        "batch_size",
        "input_dim",
        "weights",
        "activity_regularizer",
    }
)


def check_layer_kwargs(layer, kwargs):
    """An unknown keyword (a typo such as `reductoin`) named with the layer's own arguments.

    Keras 3 would say "Unrecognized keyword arguments", tf_keras only "Keyword
    argument not understood"; neither lists what the layer takes.
    """
    import inspect

    unknown = sorted(set(kwargs) - BASE_LAYER_KWARGS)
    if unknown:
        name = type(layer).__name__
        own = [p for p in inspect.signature(type(layer).__init__).parameters if p not in ("self", "kwargs")]
        raise TypeError(
            f"{name}: unknown keyword argument(s) {unknown}; {name} takes {own} and Keras' layer "
            "arguments (name, dtype, trainable)."
        )
    return kwargs


def check_floating(layer_name, inputs):
    """Attention multiplies by a gate in (0, 1): an integer input would truncate it to 0 everywhere."""
    for x in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        dtype = getattr(x, "dtype", None)
        name = getattr(dtype, "name", None) or str(dtype)
        if dtype is not None and not ("float" in name or name == "bfloat16"):
            raise TypeError(
                f"{layer_name}: expected a floating-point input; got dtype {name}. Cast it first "
                "(e.g. keras.layers.Rescaling(1 / 255) or ops.cast(x, 'float32')): with integers the "
                "gate in (0, 1) would be truncated to 0."
            )


def normalize_data_format(layer_name, data_format):
    data_format = data_format or image_data_format()
    return check_choice(layer_name, "data_format", data_format, ("channels_last", "channels_first"))


def check_odd_kernel_size(layer_name, kernel_size):
    if not is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"{layer_name}: `kernel_size` must be a positive odd integer (so the map keeps "
            f"its size with 'same' padding); got {kernel_size!r}."
        )
    return int(kernel_size)


def channels_of(layer_name, input_shape, data_format):
    """Checks a 4-D feature-map shape and returns its (known) channel count."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        expected = (
            "(batch, height, width, channels)" if data_format == "channels_last" else "(batch, channels, height, width)"
        )
        raise ValueError(
            f"{layer_name}: expected a 4-D input {expected} ({data_format}); "
            f"got shape {input_shape} of rank {len(input_shape)}."
        )
    channels = input_shape[-1] if data_format == "channels_last" else input_shape[1]
    if channels is None:
        raise ValueError(
            f"{layer_name}: the channel dimension of the input must be known when the layer "
            f"is built ({data_format}); got shape {input_shape}."
        )
    return int(channels)


def feature_map_spec(data_format, channels=None):
    """The `InputSpec` Keras' convolution layers set in build(): a 4-D input with `channels` channels.

    Keras then checks every later call and names the layer ("expected axis -1 of
    input shape to have value 16"), where a wrong channel count would otherwise
    fail inside a matrix product. `channels=None` for layers whose weights do not
    depend on it.
    """
    axes = None if channels is None else {-1 if data_format == "channels_last" else 1: channels}
    return keras.layers.InputSpec(ndim=4, axes=axes)


def _no_point(suffix, x):
    return x


def _no_fixed_range(x, kind):
    return x


def apply_gate(logits, gate, scale, point=_no_point, fixed_range=_no_fixed_range):
    """The gate non-linearity, times `scale` (2 when the layer starts as the identity).

    hard_sigmoid is relu6(x + 3) / 6 (Keras' and PyTorch's definition) written as the
    ops TFLite runs. `point(suffix, x)` and `fixed_range(x, kind)` mark the tensors
    QAT quantizes (suffixes "_relu6", "" and "_scaled"); by default they mark nothing.
    """
    if gate == "sigmoid":
        gated = fixed_range(ops.sigmoid(logits), "sigmoid")
    else:
        gated = point("", point("_relu6", ops.relu6(logits + 3.0)) * (1.0 / 6.0))
    return point("_scaled", gated * scale) if scale != 1.0 else gated


def to_channels_last(x, data_format):
    """A 4-D tensor in `data_format` as channels_last."""
    return x if data_format == "channels_last" else ops.transpose(x, (0, 2, 3, 1))


def from_channels_last(x, data_format):
    """A channels_last 4-D tensor back in `data_format`."""
    return x if data_format == "channels_last" else ops.transpose(x, (0, 3, 1, 2))
