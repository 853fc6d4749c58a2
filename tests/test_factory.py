import pytest

import keras_attention as ka


@pytest.mark.parametrize(
    "name, cls",
    [
        ("cbam", ka.CBAM),
        ("channel", ka.ChannelAttention),
        ("spatial", ka.SpatialAttention),
        ("se", ka.SqueezeExcitation),
        ("eca", ka.EfficientChannelAttention),
        ("CBAM", ka.CBAM),
    ],
)
def test_names_map_to_layers(name, cls):
    layer = ka.get_attention(name)
    assert type(layer) is cls


def test_kwargs_are_passed_through():
    layer = ka.get_attention("cbam", reduction=8, kernel_size=3, gate="hard_sigmoid", name="att")
    config = layer.get_config()
    assert (config["reduction"], config["kernel_size"], config["gate"], config["name"]) == (8, 3, "hard_sigmoid", "att")


def test_unknown_name():
    with pytest.raises(ValueError, match=r"get_attention: unknown attention 'bam'; expected one of \['cbam'"):
        ka.get_attention("bam")
