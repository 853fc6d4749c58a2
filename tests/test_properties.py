"""Property tests: random shapes and options keep shape, stay finite and match NumPy."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import keras_attention as ka
from tests.kit.harness import to_numpy
from tests.kit.layer_reference import randomize_weights, reference_output

shapes = st.tuples(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40), st.integers(1, 64))
data_formats = st.sampled_from(["channels_last", "channels_first"])
gates = st.sampled_from(["sigmoid", "hard_sigmoid"])
poolings = st.sampled_from([("avg", "max"), ("avg",), ("max",)])


def _check(layer, shape, data_format, seed):
    b, h, w, c = shape
    full = (b, h, w, c) if data_format == "channels_last" else (b, c, h, w)
    x = np.random.default_rng(seed).normal(size=full).astype("float32") * 3
    layer.build(full)
    randomize_weights(layer, seed)
    y = to_numpy(layer(x))
    assert y.shape == full
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, reference_output(layer, x), rtol=1e-4, atol=1e-4)


@given(shapes, data_formats, gates, poolings, st.integers(1, 8), st.booleans(), st.integers(0, 99))
def test_channel_attention(shape, data_format, gate, pooling, min_channels, use_bias, seed):
    layer = ka.ChannelAttention(
        reduction=4, min_channels=min_channels, pooling=pooling, use_bias=use_bias, gate=gate, data_format=data_format
    )
    _check(layer, shape, data_format, seed)


@given(shapes, data_formats, gates, poolings, st.sampled_from([1, 3, 5, 7]), st.booleans(), st.integers(0, 99))
def test_spatial_attention(shape, data_format, gate, pooling, kernel_size, use_batchnorm, seed):
    layer = ka.SpatialAttention(kernel_size, use_batchnorm, pooling, gate=gate, data_format=data_format)
    _check(layer, shape, data_format, seed)


@given(
    shapes,
    data_formats,
    st.sampled_from(["channel_first", "spatial_first", "parallel"]),
    st.booleans(),
    st.integers(0, 99),
)
def test_cbam(shape, data_format, arrangement, start_as_identity, seed):
    layer = ka.CBAM(
        reduction=2,
        min_channels=1,
        arrangement=arrangement,
        start_as_identity=start_as_identity,
        data_format=data_format,
    )
    _check(layer, shape, data_format, seed)


@given(shapes, data_formats, gates, st.integers(0, 99))
def test_eca_and_se(shape, data_format, gate, seed):
    _check(ka.EfficientChannelAttention(gate=gate, data_format=data_format), shape, data_format, seed)
    _check(
        ka.SqueezeExcitation(reduction=2, min_channels=1, gate=gate, data_format=data_format), shape, data_format, seed
    )
