import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import keras
from tests.kit.harness import build_model, random_inputs, run_layer_test, to_numpy
from tests.kit.layer_reference import reference_output


@pytest.mark.parametrize("arrangement", ["channel_first", "spatial_first", "parallel"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_battery(arrangement, data_format, tmp_path):
    shape = (2, 10, 12, 32) if data_format == "channels_last" else (2, 32, 10, 12)
    dynamic = (None, None, None, 32) if data_format == "channels_last" else (None, 32, None, None)
    run_layer_test(
        ka.CBAM,
        dict(reduction=8, arrangement=arrangement, data_format=data_format),
        shape,
        reference_fn=reference_output,
        tmp_path=tmp_path,
        dynamic_input_shape=dynamic,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(use_batchnorm=True, kernel_size=3),
        dict(pooling="avg", spatial_pooling="avg"),
        dict(gate="hard_sigmoid", use_bias=False),
        dict(start_as_identity=True, arrangement="parallel"),
    ],
)
def test_options_match_reference(kwargs):
    run_layer_test(
        ka.CBAM,
        dict(dict(reduction=4), **kwargs),
        (2, 7, 7, 16),
        reference_fn=reference_output,
        run_training=False,
        run_dtype_policies=False,
    )


def _small_cnn(attention):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = attention(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_paper_initialisation_trains_with_xla_and_every_weight_gets_gradient():
    """Default (paper) initialisation: loss falls under jit_compile and every CBAM weight moves."""
    # Fixed initial weights, and 8 hidden units: with post-ReLU inputs each hidden unit of the shared
    # MLP is dead for every input with probability ~1/2, so all of 4 units are dead (and the MLP gets
    # no gradient, correctly) at ~6% of random initialisations.
    keras.utils.set_random_seed(0)
    attention = ka.CBAM(reduction=2)
    model = _small_cnn(attention)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16, 16, 3)).astype("float32")
    y = (x[:, :8].mean(axis=(1, 2, 3)) > 0).astype("int32") + (x[:, :, :8].mean(axis=(1, 2, 3)) > 0)
    before = [np.array(w.numpy()) for w in attention.trainable_weights]
    model.compile(
        keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True
    )
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=16, epochs=8, verbose=0)
    assert model.evaluate(x, y, verbose=0) < first
    after = [w.numpy() for w in attention.trainable_weights]
    assert len(before) == 5  # MLP kernels and biases, spatial conv kernel
    assert all(not np.array_equal(b, a) for b, a in zip(before, after))


def test_start_as_identity_leaves_a_trained_network_unchanged():
    plain = _small_cnn(lambda x: x)
    with_cbam = _small_cnn(ka.CBAM(reduction=4, start_as_identity=True))
    with_cbam.set_weights(plain.get_weights()[:2] + with_cbam.get_weights()[2:-2] + plain.get_weights()[2:])
    x = random_inputs([(4, 16, 16, 3)], scale=2.0)[0]
    np.testing.assert_allclose(to_numpy(with_cbam(x)), to_numpy(plain(x)), rtol=1e-5, atol=1e-5)


def test_bad_arguments_name_the_block():
    with pytest.raises(ValueError, match="CBAM: unknown `arrangement` 'serial'"):
        ka.CBAM(arrangement="serial")
    with pytest.raises(ValueError, match="CBAM: ChannelAttention: reduction=16 is larger than the 8 input"):
        ka.CBAM().build((None, 4, 4, 8))
    with pytest.raises(ValueError, match="CBAM: expected a 4-D input"):
        ka.CBAM().build((None, 4, 8))


def test_mixed_precision_large_activations_stay_finite():
    """~1e3 over a 112x112 map: the float16 channel sum (1.25e7) would overflow; ours pools in float32."""
    from keras_attention.backend import set_global_dtype_policy

    keras.utils.set_random_seed(0)
    x = (1000.0 + np.random.default_rng(0).uniform(-50, 50, size=(1, 112, 112, 16))).astype("float32")
    reference = build_model(ka.CBAM(reduction=4), [x.shape])
    # The same small spatial kernel on every backend: with a backend's own random one, a pixel whose
    # logit sits near 0 turns float16's rounding of F' (0.5 at 1000) into a 10% gate change.
    kernel = reference.layers[-1].spatial_attention.conv.kernel
    kernel.assign(np.random.default_rng(1).normal(0.0, 0.01, size=tuple(kernel.shape)).astype("float32"))
    expected = to_numpy(reference(x))
    set_global_dtype_policy("mixed_float16")
    try:
        model = build_model(ka.CBAM(reduction=4), [x.shape])
        model.set_weights(reference.get_weights())
        out = to_numpy(model(x)).astype("float32")
    finally:
        set_global_dtype_policy("float32")
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max())


def test_hidden_channels_reaches_the_channel_mlp_and_the_config():
    """timm's CbamModule width max(1, int(C / r + 0.5)): 72 channels, r = 16 -> 5, where floor (the official
    code's rounding) gives 4."""
    block = ka.CBAM(hidden_channels=int(72 / 16 + 0.5))
    block.build((None, 8, 8, 72))
    assert tuple(block.channel_attention.mlp_reduce.kernel.shape) == (1, 1, 72, 5)
    clone = ka.CBAM.from_config(block.get_config())
    clone.build((None, 8, 8, 72))
    assert tuple(clone.channel_attention.mlp_reduce.kernel.shape) == (1, 1, 72, 5)
    assert tuple(ka.CBAM().channel_attention.hidden_width(72) for _ in [0]) == (4,)  # control: the ratio floors
