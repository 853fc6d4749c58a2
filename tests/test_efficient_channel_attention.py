import pytest

import keras_attention as ka
from tests.kit import reference as ref
from tests.kit.harness import run_layer_test
from tests.kit.layer_reference import reference_output


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_battery(data_format, tmp_path):
    shape = (2, 5, 6, 64) if data_format == "channels_last" else (2, 64, 5, 6)
    run_layer_test(
        ka.EfficientChannelAttention,
        dict(data_format=data_format),
        shape,
        reference_fn=reference_output,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("channels, expected", [(16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_adaptive_kernel_size(channels, expected):
    assert ref.eca_kernel_size(channels) == expected
    layer = ka.EfficientChannelAttention()
    layer.build((None, 2, 2, channels))
    assert layer.resolved_kernel_size == expected
    assert tuple(layer.conv.kernel.shape) == (1, expected, 1, 1)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=5), dict(gate="hard_sigmoid"), dict(start_as_identity=True)])
def test_options_match_reference(kwargs):
    run_layer_test(
        ka.EfficientChannelAttention,
        kwargs,
        (2, 4, 4, 12),
        reference_fn=reference_output,
        run_training=False,
        run_dtype_policies=False,
    )


def test_bad_kernel_size():
    with pytest.raises(ValueError, match="EfficientChannelAttention: `kernel_size` must be a positive odd"):
        ka.EfficientChannelAttention(kernel_size=4)
