import pytest

import keras_attention as ka
from tests.kit import reference as ref
from tests.kit.harness import run_layer_test


def se_reference(layer, x):
    """SE (Hu et al.): x * sigmoid(W2 relu(W1 avgpool(x) + b1) + b2)."""
    w1 = layer.mlp_reduce.kernel.numpy()[0, 0]
    w2 = layer.mlp_expand.kernel.numpy()[0, 0]
    x_last = ref.to_channels_last(x.astype("float64"), layer.data_format)
    squeezed = x_last.mean(axis=(1, 2))
    hidden = ref.np.maximum(squeezed @ w1 + layer.mlp_reduce.bias.numpy(), 0)
    excitation = ref.sigmoid(hidden @ w2 + layer.mlp_expand.bias.numpy())
    return ref.from_channels_last(x_last * excitation[:, None, None, :], layer.data_format)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_battery(data_format, tmp_path):
    shape = (2, 5, 6, 24) if data_format == "channels_last" else (2, 24, 5, 6)
    run_layer_test(
        ka.SqueezeExcitation,
        dict(reduction=4, data_format=data_format),
        shape,
        reference_fn=se_reference,
        tmp_path=tmp_path,
    )


def test_average_pooling_only():
    layer = ka.SqueezeExcitation()
    assert layer.pooling == ("avg",)
    assert "pooling" not in layer.get_config()


def test_reduction_too_large():
    with pytest.raises(ValueError, match="SqueezeExcitation: reduction=32 is larger than the 16 input channels"):
        ka.SqueezeExcitation(reduction=32).build((None, 4, 4, 16))


def timm_make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
    """timm's `make_divisible`, written from its published definition: SE-ResNet's hidden width."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


def test_timm_hidden_width_through_hidden_channels(tmp_path):
    """C = 144: timm's SE has make_divisible(144 / 16, 8) = 16 hidden units, floor(C / r) cannot say 16."""
    hidden = timm_make_divisible(144 / 16)
    assert hidden == 16 and 144 // 16 == 9  # control: no reduction ratio gives it
    layer, _ = run_layer_test(
        ka.SqueezeExcitation, dict(hidden_channels=hidden), (2, 4, 5, 144), reference_fn=se_reference, tmp_path=tmp_path
    )
    assert tuple(layer.mlp_reduce.kernel.shape) == (1, 1, 144, 16)
    assert layer.get_config()["hidden_channels"] == 16 and layer.get_config()["reduction"] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_channels=8, reduction=4), r"hidden_channels=8, reduction=4\)"),
        (dict(hidden_channels=8, min_channels=4), r"hidden_channels=8, min_channels=4\)"),
        (dict(hidden_channels=0), r"`hidden_channels` must be an integer >= 1; got 0"),
        (dict(hidden_channels=2.5), r"`hidden_channels` must be an integer >= 1; got 2.5"),
    ],
)
def test_hidden_channels_excludes_the_ratio_and_must_be_a_width(kwargs, message):
    for cls in (ka.SqueezeExcitation, ka.ChannelAttention, ka.CBAM):
        with pytest.raises(ValueError, match=rf"^{cls.__name__}: .*{message}"):
            cls(**kwargs)
    assert ka.ChannelAttention(hidden_channels=8).reduction is None  # control: alone it is fine
    assert ka.ChannelAttention().reduction == 16  # and the paper's ratio stays the default
