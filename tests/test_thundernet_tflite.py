"""The CEM -> LightRPNHead -> SAM graph ships to phones: float32 and full-integer int8 TFLite.

Converted with `keras_attention.tflite.convert` (builtin ops only; no Flex /
select TF ops) and run in the LiteRT interpreter against Keras. TensorFlow
backends only (Keras 3 on TensorFlow, tf_keras).
"""

import numpy as np
import pytest

from tests.kit.layer_reference import randomize_weights
from tests.kit.reference_thundernet import thundernet_graph

pytestmark = pytest.mark.tensorflow_backends(reason="TFLite conversion")

# The converted graph: seven 1x1/depthwise convolutions (BatchNorm folded into them), the global
# MEAN, nearest x2 upsampling as RESHAPE + TILE (+ STRIDED_SLICE cropping odd sizes), the two
# ADDs of the CEM (the global context broadcast), and SAM's LOGISTIC and MUL. Nothing else.
REQUIRED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "LOGISTIC", "MUL"}
ALLOWED_OPS = REQUIRED_OPS | {"RESHAPE", "TILE", "STRIDED_SLICE", "QUANTIZE", "DEQUANTIZE"}


def _features(rng, n, c4_shape, c5_shape):
    """Backbone-like inputs: non-negative (post-ReLU), a few strong activations."""
    c4 = np.maximum(rng.normal(size=(n,) + c4_shape), 0.0) * rng.uniform(0.5, 2.0, size=(n, 1, 1, 1))
    c5 = np.maximum(rng.normal(size=(n,) + c5_shape), 0.0) * rng.uniform(0.5, 2.0, size=(n, 1, 1, 1))
    return [c4.astype("float32"), c5.astype("float32")]


def _graph(c4_shape, c5_shape, per_channel=True):
    model, layers = thundernet_graph(
        c4_shape=c4_shape, c5_shape=c5_shape, channels=245, filters=256, num_anchors=5, per_channel=per_channel
    )
    rng = np.random.default_rng(0)
    for layer in layers.values():
        randomize_weights(layer, seed=len(layer.name))
        # Trained-like scales: kernels ~ 1/sqrt(fan-in), so activations neither explode nor fade.
        for w in layer.weights:
            if "kernel" in w.name:
                depthwise = "depthwise" in (getattr(w, "path", None) or w.name)
                fan_in = int(np.prod(w.shape[:2])) if depthwise else int(np.prod(w.shape[:-1]))
                w.assign((rng.normal(size=w.shape) / np.sqrt(fan_in)).astype("float32"))
    return model


def _ops(flatbuffer):
    from keras_attention import tflite

    return tflite.op_inventory(flatbuffer)


def _by_channels(outputs):
    return {o.shape[-1]: o for o in outputs}


@pytest.fixture(
    scope="module",
    params=[
        ((20, 20, 32), (10, 10, 64), True),
        ((21, 21, 32), (11, 11, 64), True),
        ((20, 20, 32), (10, 10, 64), False),
    ],
    ids=["even-20x20", "odd-21x21", "shared-gate"],
)
def converted(request):
    from keras_attention import tflite

    c4_shape, c5_shape, per_channel = request.param
    model = _graph(c4_shape, c5_shape, per_channel)
    rng = np.random.default_rng(1)
    calibration = _features(rng, 32, c4_shape, c5_shape)
    test = _features(rng, 6, c4_shape, c5_shape)
    float_model = tflite.convert(model, "float32")
    int8_model = tflite.convert(model, "int8", representative_data=calibration, int8_io=True)
    return model, test, float_model, int8_model


def test_float32_builtin_ops_only_and_matches_keras(converted):
    from keras_attention import tflite

    model, test, float_model, _ = converted
    ops = _ops(float_model)
    assert all(op["builtin"] for op in ops), [op["op"] for op in ops if not op["builtin"]]
    names = {op["op"] for op in ops}
    assert not any(n.startswith("Flex") for n in names)
    assert REQUIRED_OPS <= names <= ALLOWED_OPS, names
    assert sum(op["op"] == "CONV_2D" for op in ops) == 7
    expected = _by_channels([np.asarray(o) for o in model(test, training=False)])
    actual = _by_channels(tflite.run(float_model, test))
    assert sorted(actual) == sorted(expected) == [5, 20, 245]  # objectness, box deltas, SAM
    for channels, e in expected.items():
        scale = np.abs(e).max()
        np.testing.assert_allclose(
            actual[channels], e, atol=1e-4 * max(1.0, scale), rtol=1e-4, err_msg=f"{channels}-channel output"
        )


def test_int8_full_integer_builtin_ops_and_close_to_keras(converted):
    from keras_attention import tflite

    model, test, _, int8_model = converted
    ops = _ops(int8_model)
    assert all(op["builtin"] for op in ops), [op["op"] for op in ops if not op["builtin"]]
    assert tflite.is_int8_end_to_end(int8_model), tflite.float_ops(int8_model)
    assert not tflite.float_ops(int8_model)
    assert {op["op"] for op in ops} <= ALLOWED_OPS
    report = tflite.verify(model, int8_model, test, latency_runs=0, analyze_gpu=False)
    assert report.all_builtin and report.int8_end_to_end
    expected = _by_channels([np.asarray(o) for o in model(test, training=False)])
    actual = _by_channels(tflite.run(int8_model, test))
    for channels, e in expected.items():
        a = actual[channels]
        error = np.abs(a - e)
        spread = e.max() - e.min()
        cosine = (a * e).sum() / (np.linalg.norm(a) * np.linalg.norm(e))
        # int8: one quantization step is spread / 255; allow a few steps of accumulated error.
        assert error.mean() < 0.01 * spread, (channels, error.mean(), spread)
        assert cosine > 0.995, (channels, cosine)
