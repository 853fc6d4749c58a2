import numpy as np
import pytest

import keras_attention as ka
from tests.kit.harness import build_model, random_inputs, run_layer_test, to_numpy
from tests.kit.layer_reference import reference_output


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_battery(data_format, tmp_path):
    shape = (2, 9, 7, 32) if data_format == "channels_last" else (2, 32, 9, 7)
    dynamic = (None, None, None, 32) if data_format == "channels_last" else (None, 32, None, None)
    run_layer_test(
        ka.ChannelAttention,
        dict(reduction=8, data_format=data_format),
        shape,
        reference_fn=reference_output,
        tmp_path=tmp_path,
        dynamic_input_shape=dynamic,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(pooling=("avg",)),
        dict(pooling="max"),
        dict(use_bias=False),
        dict(gate="hard_sigmoid"),
        dict(reduction=64, min_channels=4),
        dict(start_as_identity=True),
        dict(start_as_identity=True, use_bias=False),
    ],
)
def test_options_match_reference(kwargs):
    run_layer_test(
        ka.ChannelAttention,
        dict(dict(reduction=4), **kwargs),
        (2, 6, 5, 16),
        reference_fn=reference_output,
        run_training=False,
        run_dtype_policies=False,
    )


def test_hidden_width_follows_official_code():
    layer = ka.ChannelAttention(reduction=16)
    layer.build((None, 8, 8, 72))
    assert tuple(layer.mlp_reduce.kernel.shape) == (1, 1, 72, 4)  # floor(72 / 16), no minimum
    layer = ka.ChannelAttention(reduction=16, min_channels=8)
    layer.build((None, 8, 8, 72))
    assert tuple(layer.mlp_reduce.kernel.shape) == (1, 1, 72, 8)


@pytest.mark.parametrize("use_bias", [True, False])
def test_start_as_identity_is_exact(use_bias):
    layer = ka.ChannelAttention(reduction=4, use_bias=use_bias, start_as_identity=True)
    model = build_model(layer, [(3, 10, 10, 16)])
    x = random_inputs([(3, 10, 10, 16)], scale=5.0)[0]
    np.testing.assert_allclose(to_numpy(model(x)), x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, shape, message",
    [
        (dict(), (2, 8, 8), "expected a 4-D input"),
        (dict(), (2, 4, 4, 4, 8), "expected a 4-D input"),
        (dict(reduction=16), (2, 4, 4, 8), "reduction=16 is larger than the 8 input channels"),
    ],
)
def test_bad_input_shapes(kwargs, shape, message):
    layer = ka.ChannelAttention(**kwargs)
    with pytest.raises(ValueError, match=f"ChannelAttention: {message}"):
        layer.build(shape)


def test_unknown_channels():
    with pytest.raises(ValueError, match="ChannelAttention: the channel dimension of the input must be known"):
        ka.ChannelAttention().build((None, 8, 8, None))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(gate="relu"), "unknown `gate` 'relu'"),
        (dict(pooling=("avg", "lse")), "unknown `pooling` 'lse'"),
        (dict(pooling=()), "`pooling` must be a non-empty selection"),
        (dict(reduction=0), "`reduction` must be an integer >= 1"),
        (dict(data_format="NHWC"), "unknown `data_format` 'NHWC'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"ChannelAttention: {message}"):
        ka.ChannelAttention(**kwargs)
