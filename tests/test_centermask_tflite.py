"""SAG-Mask ships to phones: float32 and full-integer int8 TFLite, builtin ops only; RoIAlign too.

Converted with `keras_attention.tflite.convert` and run in the LiteRT
interpreter against Keras. TensorFlow backends only (Keras 3 on TensorFlow,
tf_keras).

- The head (RoI features in, mask logits out) is int8 end to end: CONV_2D,
  the spatial attention's MEAN / REDUCE_MAX / CONCATENATION / LOGISTIC / MUL
  (its 3x3 convolution on a SPACE_TO_DEPTH / DEPTH_TO_SPACE grid),
  TRANSPOSE_CONV and its RELU.
- RoIAlign converts with builtin ops only (GATHER, FLOOR, CAST, comparisons,
  SELECT, SUM, RESHAPE, ...) and matches Keras in float32. Under full-integer
  quantization it still converts and runs, but its coordinate arithmetic stays
  in float (QUANTIZE/DEQUANTIZE around it): box coordinates and bilinear
  weights have no useful int8 form.
"""

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import keras

pytestmark = pytest.mark.tensorflow_backends(reason="TFLite conversion")

HEAD_OPS = {
    "CONV_2D",
    "TRANSPOSE_CONV",
    "RELU",
    "MEAN",
    "REDUCE_MAX",
    "CONCATENATION",
    "LOGISTIC",
    "MUL",
    "SPACE_TO_DEPTH",
    "DEPTH_TO_SPACE",
}
ROI_OPS = {"GATHER", "FLOOR", "CAST", "SUM", "RESHAPE", "SELECT_V2", "MUL", "ADD"}


def _trained_like(layer, seed=0):
    """Kernels ~ N(0, 1/fan_in), small biases: activations neither explode nor fade (int8 needs that)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        shape = tuple(w.shape)
        if len(shape) == 4:
            transposed = "deconv" in (getattr(w, "path", None) or w.name)
            fan_in = shape[0] * shape[1] * (shape[3] if transposed else shape[2])
            w.assign((rng.normal(size=shape) / np.sqrt(fan_in)).astype("float32"))
        else:
            w.assign(rng.normal(0.0, 0.1, size=shape).astype("float32"))


def _rois(rng, n, channels=32, five=False):
    """RoIAlign-like features: non-negative (post-ReLU) backbone activations."""
    shape = (n, 2, 14, 14, channels) if five else (n, 14, 14, channels)
    return (
        np.maximum(rng.normal(size=shape), 0.0) * rng.uniform(0.5, 2.0, size=(n,) + (1,) * (len(shape) - 1))
    ).astype("float32")


def _ops(flatbuffer):
    from keras_attention import tflite

    return tflite.op_inventory(flatbuffer)


@pytest.fixture(scope="module")
def head_model():
    rois = keras.Input((14, 14, 32))
    head = ka.SAGMaskHead(3, filters=32)
    model = keras.Model(rois, head(rois))
    _trained_like(head)
    return model


def test_head_float32_builtin_and_matches_keras(head_model):
    from keras_attention import tflite

    flatbuffer = tflite.convert(head_model, "float32")
    ops = _ops(flatbuffer)
    assert all(op["builtin"] for op in ops)
    # RELU after TRANSPOSE_CONV is fused into it or not, depending on the converter's pattern match.
    assert HEAD_OPS - {"RELU"} <= {op["op"] for op in ops} <= HEAD_OPS
    assert sum(op["op"] == "CONV_2D" for op in ops) == 4 + 1 + 1  # 4 convs, the attention conv, the predictor
    x = _rois(np.random.default_rng(1), 6)
    expected = np.asarray(head_model(x))
    np.testing.assert_allclose(tflite.run(flatbuffer, x)[0], expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-4)


def test_head_int8_end_to_end_and_close_to_keras(head_model):
    from keras_attention import tflite

    rng = np.random.default_rng(2)
    flatbuffer = tflite.convert(head_model, "int8", representative_data=_rois(rng, 48), int8_io=True)
    ops = _ops(flatbuffer)
    assert all(op["builtin"] for op in ops)
    assert tflite.is_int8_end_to_end(flatbuffer), tflite.float_ops(flatbuffer)
    assert {op["op"] for op in ops} <= HEAD_OPS | {"QUANTIZE", "DEQUANTIZE"}
    x = _rois(rng, 8)
    report = tflite.verify(head_model, flatbuffer, x, latency_runs=0, analyze_gpu=False)
    assert report.all_builtin and report.int8_end_to_end
    expected = np.asarray(head_model(x))
    actual = tflite.run(flatbuffer, x)[0]
    spread = expected.max() - expected.min()
    cosine = (actual * expected).sum() / (np.linalg.norm(actual) * np.linalg.norm(expected))
    assert np.abs(actual - expected).mean() < 0.02 * spread, (np.abs(actual - expected).mean(), spread)
    assert cosine > 0.99, cosine
    # The masks themselves (logit > 0) agree on nearly every pixel.
    assert ((actual > 0) == (expected > 0)).mean() > 0.97


def test_head_on_5d_rois_converts(head_model):
    from keras_attention import tflite

    rois = keras.Input((2, 14, 14, 32))
    head = ka.SAGMaskHead(3, filters=32)
    model = keras.Model(rois, head(rois))
    head.set_weights(head_model.get_weights())
    flatbuffer = tflite.convert(model, "float32")
    assert HEAD_OPS - {"RELU"} <= {op["op"] for op in _ops(flatbuffer)} <= HEAD_OPS | {"RESHAPE"}
    x = _rois(np.random.default_rng(3), 3, five=True)
    expected = np.asarray(model(x))
    np.testing.assert_allclose(tflite.run(flatbuffer, x)[0], expected, atol=1e-4 * np.abs(expected).max())


def _boxes(rng, n, num, image):
    y1x1 = rng.uniform(-8, image - 4, size=(n, num, 2))
    boxes = np.concatenate([y1x1, y1x1 + rng.uniform(0, image / 2, size=(n, num, 2))], -1).astype("float32")
    boxes[0, 0] = 0  # padding box
    return boxes


@pytest.mark.parametrize("levels", [1, 2])
def test_roi_align_float32_builtin_and_matches_keras(levels):
    from keras_attention import tflite

    features = [keras.Input((16 // 2**i, 16 // 2**i, 8)) for i in range(levels)]
    boxes = keras.Input((5, 4))
    feats = features if levels > 1 else features[0]
    model = keras.Model([feats, boxes], ka.RoIAlign(14, strides=[4, 8][:levels])([feats, boxes]))
    flatbuffer = tflite.convert(model, "float32")
    ops = _ops(flatbuffer)
    assert all(op["builtin"] for op in ops), [op["op"] for op in ops if not op["builtin"]]
    names = {op["op"] for op in ops}
    assert ROI_OPS <= names and not any(n.startswith("Flex") for n in names)
    rng = np.random.default_rng(4)
    data = [rng.normal(size=(3, 16 // 2**i, 16 // 2**i, 8)).astype("float32") for i in range(levels)]
    data = data + [_boxes(rng, 3, 5, 64)]
    expected = np.asarray(model([data[:-1] if levels > 1 else data[0], data[-1]]))
    np.testing.assert_allclose(tflite.run(flatbuffer, data)[0], expected, atol=1e-5)


def test_roi_align_int8_converts_with_float_coordinates():
    """Reported, not a deployment recipe: full-integer RoIAlign keeps its coordinate math in float."""
    from keras_attention import tflite

    features = keras.Input((16, 16, 8))
    boxes = keras.Input((5, 4))
    model = keras.Model([features, boxes], ka.RoIAlign(14, strides=4)([features, boxes]))
    rng = np.random.default_rng(5)

    def sample(n):
        return [np.maximum(rng.normal(size=(n, 16, 16, 8)), 0).astype("float32"), _boxes(rng, n, 5, 64)]

    flatbuffer = tflite.convert(model, "int8", representative_data=sample(32))
    ops = _ops(flatbuffer)
    assert all(op["builtin"] for op in ops)
    assert not tflite.is_int8_end_to_end(flatbuffer)  # GATHER/CAST/FLOOR on float coordinates
    data = sample(4)
    expected = np.asarray(model(data))
    actual = tflite.run(flatbuffer, data)[0]
    assert np.abs(actual - expected).mean() < 0.05 * np.abs(expected).max()
