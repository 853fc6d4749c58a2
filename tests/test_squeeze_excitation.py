import pytest

import keras_attention as ka
from tests import reference as ref
from tests.harness import run_layer_test


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
