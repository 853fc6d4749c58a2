import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import keras
from tests.kit.harness import build_model, random_inputs, run_layer_test, to_numpy
from tests.kit.reference_thundernet import rpn_output


def _out_shapes(data_format, batch, h, w, filters, anchors):
    channels = (filters, anchors, 4 * anchors)
    if data_format == "channels_last":
        return [(batch, h, w, c) for c in channels]
    return [(batch, c, h, w) for c in channels]


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_battery(data_format, tmp_path):
    shape = (2, 9, 11, 8) if data_format == "channels_last" else (2, 8, 9, 11)
    dynamic = (None, None, None, 8) if data_format == "channels_last" else (None, 8, None, None)
    run_layer_test(
        ka.LightRPNHead,
        dict(num_anchors=3, filters=16, data_format=data_format),
        shape,
        expected_output_shape=_out_shapes(data_format, 2, 9, 11, 16, 3),
        reference_fn=rpn_output,
        tmp_path=tmp_path,
        dynamic_input_shape=dynamic,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_anchors=1, filters=4),
        dict(num_anchors=2, kernel_size=3, filters=8),
        dict(num_anchors=5, kernel_size=1, filters=6),
    ],
)
def test_options_match_reference(kwargs):
    run_layer_test(
        ka.LightRPNHead,
        kwargs,
        (2, 7, 6, 5),
        expected_output_shape=_out_shapes("channels_last", 2, 7, 6, kwargs["filters"], kwargs["num_anchors"]),
        reference_fn=rpn_output,
        run_training=False,
        run_dtype_policies=False,
    )


def test_thundernet_configuration_and_parameter_count():
    """245-channel CEM map in, 256 RPN channels, 25 anchors (5 scales x 5 ratios) as in the paper."""
    layer = ka.LightRPNHead(num_anchors=25)
    assert (layer.filters, layer.kernel_size) == (256, 5)
    model = build_model(layer, [(1, 20, 20, 245)])
    assert [tuple(o.shape) for o in model.outputs] == [(None, 20, 20, 256), (None, 20, 20, 25), (None, 20, 20, 100)]
    c, f, a = 245, 256, 25
    depthwise = 5 * 5 * c + 2 * c  # no bias; BN gamma and beta
    pointwise = c * f + 2 * f  # no bias; BN gamma and beta
    heads = (f * a + a) + (f * 4 * a + 4 * a)
    assert layer.count_params() == depthwise + pointwise + heads + 2 * c + 2 * f  # + BN moving stats
    assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == depthwise + pointwise + heads
    assert layer.depthwise.use_bias is False and layer.pointwise.use_bias is False
    names = [w.path if hasattr(w, "path") else w.name for w in layer.weights]
    assert len(set(names)) == len(names), names


def test_heads_start_small_and_features_are_non_negative():
    layer = ka.LightRPNHead(num_anchors=4, filters=32)
    model = build_model(layer, [(2, 10, 10, 16)])
    features, objectness, deltas = (to_numpy(o) for o in model(random_inputs([(2, 10, 10, 16)])[0]))
    assert features.min() >= 0.0  # ReLU
    assert np.abs(objectness).max() < 0.5 and np.abs(deltas).max() < 0.5  # normal(std=0.01) heads, zero bias
    np.testing.assert_array_equal(to_numpy(layer.objectness.bias), 0.0)


def test_batchnorm_uses_batch_statistics_when_training():
    layer = ka.LightRPNHead(num_anchors=1, filters=8)
    model = build_model(layer, [(4, 6, 6, 3)])
    x = random_inputs([(4, 6, 6, 3)], scale=5.0)[0] + 3.0
    train = to_numpy(model(x, training=True)[0])
    infer = to_numpy(model(x, training=False)[0])
    assert not np.allclose(train, infer)
    assert layer.depthwise_bn.momentum == pytest.approx(0.9) and layer.depthwise_bn.epsilon == pytest.approx(1e-5)


@pytest.mark.parametrize("arg, value", [("num_anchors", 0), ("num_anchors", 2.5), ("filters", 0), ("filters", None)])
def test_bad_counts(arg, value):
    kwargs = dict(num_anchors=3)
    kwargs[arg] = value
    with pytest.raises(ValueError, match=f"LightRPNHead: `{arg}` must be an integer >= 1"):
        ka.LightRPNHead(**kwargs)


def test_bad_kernel_size_and_inputs():
    with pytest.raises(ValueError, match="LightRPNHead: `kernel_size` must be a positive odd integer"):
        ka.LightRPNHead(3, kernel_size=4)
    with pytest.raises(ValueError, match="LightRPNHead: expected one 4-D feature map; got 2 inputs"):
        ka.LightRPNHead(3)([keras.Input((8, 8, 4)), keras.Input((8, 8, 4))])
    with pytest.raises(ValueError, match="LightRPNHead: expected a 4-D input"):
        ka.LightRPNHead(3)(keras.Input((8, 4)))
    with pytest.raises(ValueError, match="LightRPNHead: the channel dimension"):
        ka.LightRPNHead(3).build((None, 8, 8, None))


def test_two_head_losses_are_logged_once_each_when_the_outputs_are_named():
    """Keras names a layer's outputs after the layer: two losses on objectness and deltas share one log entry
    on Keras 3 (the total still sums both). Named outputs (the docstring's way) log each head's loss."""
    from keras_attention.backend import IS_LEGACY

    inputs = keras.Input((8, 8, 16))
    _, objectness, deltas = ka.LightRPNHead(num_anchors=3, filters=8, name="rpn")(inputs)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4, 8, 8, 16)).astype("float32")
    y = [5 * rng.uniform(size=(4, 8, 8, 3)).astype("float32"), rng.uniform(size=(4, 8, 8, 12)).astype("float32")]
    unnamed = keras.Model(inputs, [objectness, deltas])
    unnamed.compile(loss=["mse", "mae"])
    logs = unnamed.evaluate(x, y, return_dict=True, verbose=0)
    predicted = unnamed.predict(x, verbose=0)
    mse, mae = np.mean((predicted[0] - y[0]) ** 2), np.mean(np.abs(predicted[1] - y[1]))
    np.testing.assert_allclose(logs["loss"], mse + mae, rtol=1e-4)  # both losses are trained on
    if not IS_LEGACY:  # Keras 3: one entry for the two heads (Keras' naming, documented)
        assert sorted(logs) == ["loss", "rpn_loss"]
    named = keras.Model(
        inputs, [keras.layers.Identity(name="objectness")(objectness), keras.layers.Identity(name="deltas")(deltas)]
    )
    named.compile(loss=["mse", "mae"])
    logs = named.evaluate(x, y, return_dict=True, verbose=0)
    assert sorted(logs) == ["deltas_loss", "loss", "objectness_loss"]
    np.testing.assert_allclose([logs["objectness_loss"], logs["deltas_loss"]], [mse, mae], rtol=1e-4)
    assert "keras.layers.Identity" in ka.LightRPNHead.__doc__ and "light_rpn_head_loss" in ka.LightRPNHead.__doc__
