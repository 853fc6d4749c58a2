import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import keras
from tests.kit.harness import build_model, random_inputs, run_layer_test, to_numpy
from tests.kit.layer_reference import randomize_weights
from tests.kit.reference_thundernet import cem_output, nearest_up2_to


def _shapes(data_format, h4, w4, c4=8, c5=12, batch=2):
    h5, w5 = -(-h4 // 2), -(-w4 // 2)
    if data_format == "channels_last":
        return [(batch, h4, w4, c4), (batch, h5, w5, c5)]
    return [(batch, c4, h4, w4), (batch, c5, h5, w5)]


def _dynamic(data_format, c4=8, c5=12):
    if data_format == "channels_last":
        return [(None, None, None, c4), (None, None, None, c5)]
    return [(None, c4, None, None), (None, c5, None, None)]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_battery(data_format, tmp_path):
    shapes = _shapes(data_format, 10, 12)
    out = (2, 10, 12, 16) if data_format == "channels_last" else (2, 16, 10, 12)
    run_layer_test(
        ka.ContextEnhancement,
        dict(filters=16, data_format=data_format),
        shapes,
        expected_output_shape=out,
        reference_fn=cem_output,
        tmp_path=tmp_path,
        dynamic_input_shape=_dynamic(data_format),
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("h4, w4", [(20, 20), (21, 21), (21, 20), (20, 21), (1, 1), (2, 3)])
def test_sizes_match_reference(h4, w4, data_format):
    """Even and odd C4 sizes: C5 of ceil(H4/2) is upsampled x2 and cropped to C4's size."""
    shapes = _shapes(data_format, h4, w4)
    out = (2, h4, w4, 16) if data_format == "channels_last" else (2, 16, h4, w4)
    run_layer_test(
        ka.ContextEnhancement,
        dict(filters=16, data_format=data_format),
        shapes,
        expected_output_shape=out,
        reference_fn=cem_output,
        run_training=False,
        run_dtype_policies=False,
    )


def test_default_is_thundernet_245_channels():
    layer = ka.ContextEnhancement()
    assert layer.filters == 245
    model = build_model(layer, [(1, 20, 20, 96), (1, 10, 10, 192)])
    assert tuple(model.outputs[0].shape) == (None, 20, 20, 245)
    # Three 1x1 convs with bias, no BatchNorm: (96 + 192 + 192) * 245 + 3 * 245 parameters.
    assert layer.count_params() == (96 + 192 + 192) * 245 + 3 * 245
    names = sorted(w.path if hasattr(w, "path") else w.name for w in layer.weights)
    assert len(set(names)) == 6, names  # unique (tf_keras .h5 saving needs it)
    assert all(n.split("/")[-2] in ("c4_lateral", "c5_lateral", "global_context") for n in names), names


def test_odd_size_crop_keeps_top_left_alignment():
    """C4 pixel (i, j) receives C5 pixel (i // 2, j // 2): the crop drops the last row/column."""
    x = np.arange(11 * 11, dtype="float64").reshape(1, 11, 11, 1)
    up = nearest_up2_to(x, 21, 21)
    assert up.shape == (1, 21, 21, 1)
    assert up[0, 20, 20, 0] == x[0, 10, 10, 0] and up[0, 19, 19, 0] == x[0, 9, 9, 0]
    # The layer with identity-like weights shows the same thing: only the C5 branch, kernel 1.
    layer = ka.ContextEnhancement(filters=1)
    model = build_model(layer, [(1, 21, 21, 1), (1, 11, 11, 1)])
    layer.c4_lateral.kernel.assign(np.zeros((1, 1, 1, 1), "float32"))
    layer.c5_lateral.kernel.assign(np.ones((1, 1, 1, 1), "float32"))
    layer.global_context.kernel.assign(np.zeros((1, 1, 1, 1), "float32"))
    out = to_numpy(model([np.zeros((1, 21, 21, 1), "float32"), x.astype("float32")]))
    np.testing.assert_array_equal(out, up)


@pytest.mark.parametrize("h4, w4", [(21, 21), (20, 20), (13, 8)])
def test_unknown_spatial_size_under_jit_matches_reference(h4, w4):
    """Built on (None, None, C) inputs; odd sizes are handled when the sizes are only known at run time."""
    layer = ka.ContextEnhancement(filters=8)
    model = build_model(layer, _dynamic("channels_last"))
    randomize_weights(layer, seed=1)
    inputs = random_inputs(_shapes("channels_last", h4, w4), seed=2)
    expected = cem_output(layer, *inputs)
    np.testing.assert_allclose(to_numpy(model(inputs)), expected, atol=1e-5, rtol=1e-5)
    model.compile(loss="mse", jit_compile=True)
    np.testing.assert_allclose(model.predict(inputs, verbose=0), expected, atol=1e-5, rtol=1e-5)


def test_global_context_is_broadcast_over_the_map():
    """A constant-per-image C5 contribution: with C4 and C5 lateral kernels 0, the output is spatially constant."""
    layer = ka.ContextEnhancement(filters=4)
    model = build_model(layer, [(2, 6, 6, 3), (2, 3, 3, 5)])
    randomize_weights(layer, seed=0)
    layer.c4_lateral.kernel.assign(np.zeros((1, 1, 3, 4), "float32"))
    layer.c5_lateral.kernel.assign(np.zeros((1, 1, 5, 4), "float32"))
    c4, c5 = random_inputs([(2, 6, 6, 3), (2, 3, 3, 5)])
    out = to_numpy(model([c4, c5]))
    np.testing.assert_allclose(out, np.broadcast_to(out[:, :1, :1], out.shape), atol=1e-6)
    assert not np.allclose(out[0], out[1])  # but it depends on the image


def test_not_a_pair():
    with pytest.raises(
        ValueError,
        match=r"ContextEnhancement: expected a list of two 4-D feature maps \[C4, C5\]; "
        r"got a single input of shape \(None, 8, 8, 3\)",
    ):
        ka.ContextEnhancement(4)(keras.Input((8, 8, 3)))
    with pytest.raises(ValueError, match="ContextEnhancement: expected a list of two 4-D feature maps.*got 3 inputs"):
        ka.ContextEnhancement(4)([keras.Input((8, 8, 3)), keras.Input((4, 4, 3)), keras.Input((2, 2, 3))])
    with pytest.raises(ValueError, match=r"ContextEnhancement \(C5\): expected a 4-D input"):
        ka.ContextEnhancement(4)([keras.Input((8, 8, 3)), keras.Input((4, 3))])


@pytest.mark.parametrize("c5_size", [(8, 8), (16, 16), (8, 4), (4, 8)])
def test_c5_not_coarser_than_c4(c5_size):
    with pytest.raises(ValueError, match="ContextEnhancement: C5 must be coarser than C4"):
        ka.ContextEnhancement(4)([keras.Input((8, 8, 3)), keras.Input(c5_size + (3,))])


@pytest.mark.parametrize("c5_size", [(2, 2), (3, 4), (4, 4), (5, 5)])
def test_c5_not_at_half_resolution(c5_size):
    with pytest.raises(ValueError, match=r"ContextEnhancement: C5 must be at half C4's resolution, ceil\("):
        ka.ContextEnhancement(4)([keras.Input((8, 9, 3)), keras.Input(c5_size + (3,))])


def test_channels_first_sizes_are_checked_on_their_axes():
    with pytest.raises(ValueError, match="C5 must be coarser than C4"):
        ka.ContextEnhancement(4, data_format="channels_first")([keras.Input((3, 8, 8)), keras.Input((3, 8, 8))])
    out = ka.ContextEnhancement(4, data_format="channels_first")([keras.Input((3, 9, 8)), keras.Input((6, 5, 4))])
    assert tuple(out.shape) == (None, 4, 9, 8)


def test_mismatched_batch_and_eager_sizes():
    layer = ka.ContextEnhancement(4)
    with pytest.raises(ValueError, match="ContextEnhancement: C4 and C5 must have the same batch size; got 2"):
        layer([np.zeros((2, 8, 8, 3), "float32"), np.zeros((3, 4, 4, 3), "float32")])
    # Built on unknown sizes, a bad pair is still caught when the sizes are known (eager call).
    model = build_model(ka.ContextEnhancement(4), _dynamic("channels_last", 3, 3))
    with pytest.raises(ValueError, match="C5 must be at half C4's resolution"):
        model([np.zeros((1, 8, 8, 3), "float32"), np.zeros((1, 3, 3, 3), "float32")])


def test_bad_arguments():
    with pytest.raises(ValueError, match="ContextEnhancement: `filters` must be an integer >= 1; got 0"):
        ka.ContextEnhancement(0)
    with pytest.raises(ValueError, match="ContextEnhancement: unknown `data_format` 'nhwc'"):
        ka.ContextEnhancement(data_format="nhwc")
    with pytest.raises(ValueError, match=r"ContextEnhancement \(C4\): the channel dimension"):
        ka.ContextEnhancement(4).build([(None, 8, 8, None), (None, 4, 4, 3)])


def test_channels_is_a_deprecated_alias_of_filters():
    """0.1 called the output width `channels`; calls and saved configs that use it still work, with a warning."""
    with pytest.warns(DeprecationWarning, match="ContextEnhancement: `channels` is deprecated.*use `filters`"):
        layer = ka.ContextEnhancement(channels=12)
    assert layer.filters == 12 and "channels" not in layer.get_config()
    old_config = {k: v for k, v in ka.ContextEnhancement(12).get_config().items() if k != "filters"}
    old_config["channels"] = 12  # what a 0.1 .keras file holds
    with pytest.warns(DeprecationWarning):
        assert ka.ContextEnhancement.from_config(old_config).filters == 12
