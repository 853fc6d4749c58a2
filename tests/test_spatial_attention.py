import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import keras
from tests.kit.harness import build_model, random_inputs, run_layer_test, to_numpy
from tests.kit.layer_reference import reference_output


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_battery(data_format, tmp_path):
    shape = (2, 11, 9, 6) if data_format == "channels_last" else (2, 6, 11, 9)
    dynamic = (None, None, None, 6) if data_format == "channels_last" else (None, 6, None, None)
    run_layer_test(
        ka.SpatialAttention,
        dict(kernel_size=7, use_batchnorm=True, data_format=data_format),
        shape,
        reference_fn=reference_output,
        tmp_path=tmp_path,
        dynamic_input_shape=dynamic,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3),
        dict(kernel_size=1),
        dict(pooling=("avg",)),
        dict(pooling=("max",)),
        dict(use_bias=True),
        dict(gate="hard_sigmoid"),
        dict(start_as_identity=True),
        dict(start_as_identity=True, use_batchnorm=True),
    ],
)
def test_options_match_reference(kwargs):
    run_layer_test(
        ka.SpatialAttention,
        kwargs,
        (2, 8, 10, 5),
        reference_fn=reference_output,
        run_training=False,
        run_dtype_policies=False,
    )


def test_batchnorm_starts_as_official_code():
    """Official CBAM zeroes the BN gamma, so the gate is 0.5 everywhere at first."""
    layer = ka.SpatialAttention(use_batchnorm=True)
    model = build_model(layer, [(2, 8, 8, 4)])
    x = random_inputs([(2, 8, 8, 4)])[0]
    np.testing.assert_allclose(to_numpy(model(x)), 0.5 * x, rtol=1e-6, atol=1e-6)


def test_start_as_identity_is_exact_and_trains():
    layer = ka.SpatialAttention(start_as_identity=True)
    model = build_model(layer, [(2, 12, 12, 8)])
    x = random_inputs([(2, 12, 12, 8)], scale=3.0)[0]
    np.testing.assert_allclose(to_numpy(model(x)), x, rtol=1e-6, atol=1e-6)
    # Away from the identity by training: the target halves the left half of every map.
    target = x * np.where(np.arange(12) < 6, 0.5, 1.0)[None, None, :, None].astype("float32")
    kernel = np.array(layer.conv.kernel.numpy())
    model.compile(keras.optimizers.Adam(0.005), loss="mse")
    history = model.fit(x, target, epochs=20, verbose=0).history["loss"]
    assert history[-1] < 0.7 * history[0], history
    assert not np.array_equal(kernel, layer.conv.kernel.numpy())


@pytest.mark.parametrize("kernel_size", [0, 4, -3, 2.0, True])
def test_bad_kernel_size(kernel_size):
    with pytest.raises(ValueError, match="SpatialAttention: `kernel_size` must be a positive odd integer"):
        ka.SpatialAttention(kernel_size=kernel_size)


def test_bad_rank_and_unknown_channels():
    with pytest.raises(ValueError, match=r"SpatialAttention: expected a 4-D input .* rank 3"):
        ka.SpatialAttention().build((None, 8, 8))
    with pytest.raises(ValueError, match="SpatialAttention: the channel dimension"):
        ka.SpatialAttention(data_format="channels_first").build((None, None, 8, 8))


def test_bad_gate_and_pooling():
    with pytest.raises(ValueError, match="SpatialAttention: unknown `gate` 'tanh'"):
        ka.SpatialAttention(gate="tanh")
    with pytest.raises(ValueError, match="SpatialAttention: unknown `pooling` 'min'"):
        ka.SpatialAttention(pooling=("min",))


@pytest.mark.tensorflow_backends(reason="TensorFlow graphs")
@pytest.mark.parametrize(
    "kernel_size, channels, block", [(7, 2, 4), (7, 2, 2), (3, 2, 2), (3, 1, 4), (5, 1, 4), (1, 2, 2)]
)
def test_space_to_depth_convolution_equals_the_plain_convolution(kernel_size, channels, block):
    """The block-grid form SpatialAttention uses on TensorFlow (12x faster in LiteRT), against NumPy."""
    from keras_attention.layers._kernels import same_conv_to_one_channel
    from tests.kit.reference import conv2d_same

    rng = np.random.default_rng(kernel_size * 10 + block)
    maps = rng.normal(size=(2, 8, 12, channels)).astype("float32")
    kernel = rng.normal(size=(kernel_size, kernel_size, channels, 1)).astype("float32")
    out = to_numpy(same_conv_to_one_channel(maps, kernel, np.float32(0.5), block))
    np.testing.assert_allclose(out, conv2d_same(maps, kernel) + 0.5, rtol=1e-5, atol=1e-5)


@pytest.mark.tensorflow_backends(reason="TFLite conversion")
def test_tflite_file_has_the_block_grid_convolution_with_a_folded_kernel():
    from keras_attention import tflite
    from keras_attention.backend import keras

    x = keras.Input((56, 56, 24))
    model = keras.Model(x, ka.SpatialAttention()(x))
    ops = {op for op, _ in tflite.op_counts(tflite.convert(model, "float32"))}
    assert {"SPACE_TO_DEPTH", "CONV_2D", "DEPTH_TO_SPACE"} <= ops
    assert "GATHER" not in ops  # the block kernel is a constant in the file
