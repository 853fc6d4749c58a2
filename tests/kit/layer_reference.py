"""Runs the NumPy reference of `reference.py` with a built layer's weights."""

import numpy as np

import keras_attention as ka
from tests.kit import reference as ref


def _np(variable):
    return np.asarray(variable.numpy(), dtype="float64")


def _channel_gate(layer, x):
    w1 = _np(layer.mlp_reduce.kernel)[0, 0]
    w2 = _np(layer.mlp_expand.kernel)[0, 0]
    b1 = _np(layer.mlp_reduce.bias) if layer.use_bias else None
    b2 = _np(layer.mlp_expand.bias) if layer.use_bias else None
    scale = 2.0 if layer.start_as_identity else 1.0
    return ref.channel_gate(x, w1, b1, w2, b2, layer.pooling, layer.gate, scale)


def _spatial_gate(layer, x):
    bias = _np(layer.conv.bias) if layer.use_bias else None
    bn = None
    if layer.use_batchnorm:
        b = layer.bn
        bn = (_np(b.gamma), _np(b.beta), _np(b.moving_mean), _np(b.moving_variance), b.epsilon)
    scale = 2.0 if layer.start_as_identity else 1.0
    return ref.spatial_gate(x, _np(layer.conv.kernel), bias, bn, layer.pooling, layer.gate, scale)


def _channel(layer, x):
    return x * _channel_gate(layer, x)


def _spatial(layer, x):
    return x * _spatial_gate(layer, x)


def _eca(layer, x):
    kernel = _np(layer.conv.kernel)[0, :, 0, 0]
    assert len(kernel) == (layer.kernel_size or ref.eca_kernel_size(layer.channels, layer.gamma, layer.beta))
    scale = 2.0 if layer.start_as_identity else 1.0
    return ref.eca(x, kernel, layer.gate, scale)


def _cbam(layer, x):
    ca, sa = layer.channel_attention, layer.spatial_attention
    if layer.arrangement == "channel_first":
        return _spatial(sa, _channel(ca, x))
    if layer.arrangement == "spatial_first":
        return _channel(ca, _spatial(sa, x))
    return x * _channel_gate(ca, x) * _spatial_gate(sa, x)  # parallel: both gates from x


_DISPATCH = [
    (ka.CBAM, _cbam),
    (ka.EfficientChannelAttention, _eca),
    (ka.ChannelAttention, _channel),  # also SqueezeExcitation
    (ka.SpatialAttention, _spatial),
]


def reference_output(layer, x):
    """NumPy output of `layer` (built, inference mode) on `x`, in the layer's data format."""
    x = np.asarray(x, dtype="float64")
    data_format = layer.data_format
    x_last = ref.to_channels_last(x, data_format)
    for cls, fn in _DISPATCH:
        if isinstance(layer, cls):
            return ref.from_channels_last(fn(layer, x_last), data_format)
    raise TypeError(f"no reference for {type(layer).__name__}")


def randomize_weights(layer, seed=0):
    """Gives every variable of `layer` random values (BN variances positive)."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        shape = tuple(variable.shape)
        if "variance" in variable.name:
            value = rng.uniform(0.5, 2.0, shape)
        else:
            value = rng.normal(0.0, 0.5, shape)
        variable.assign(value.astype("float32"))
