"""SAGMaskHead: CenterMask's SAG-Mask, checked against a NumPy forward pass and the architecture."""

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import keras
from tests.kit import reference_centermask as ref
from tests.kit.harness import build_model, run_layer_test, to_numpy


def _np(variable):
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, "float64")


def head_reference(layer, x):
    """NumPy SAG-Mask with the layer's weights, in the layer's data format, 4-D or 5-D input."""
    x = np.asarray(x, "float64")
    five = x.ndim == 5
    if layer.data_format == "channels_first":
        x = np.moveaxis(x, -3, -1)
    lead = x.shape[:-3]
    rois = x.reshape((-1,) + x.shape[-3:])
    out = ref.sag_mask_head(
        rois,
        [_np(c.kernel) for c in layer.convs],
        [_np(c.bias) for c in layer.convs],
        _np(layer.attention.conv.kernel) if layer.use_attention else None,
        _np(layer.deconv.kernel),
        _np(layer.deconv.bias),
        _np(layer.predictor.kernel),
        _np(layer.predictor.bias),
    )
    out = out.reshape(lead + out.shape[1:])
    if layer.data_format == "channels_first":
        out = np.moveaxis(out, -1, -3)
    assert out.ndim == (5 if five else 4)
    return out


def architecture_params(channels, num_classes, filters=256, num_convs=4, class_agnostic=False, attention=True):
    """Parameters of SAG-Mask counted from the architecture (CenterMask Fig. 3 / official code)."""
    outputs = 1 if class_agnostic else num_classes
    convs = (channels * 9 * filters + filters) + (num_convs - 1) * (filters * 9 * filters + filters)
    sam = 2 * 3 * 3 * 1 if attention else 0  # 3x3 conv, [mean; max] -> 1 map, no bias, no BN
    deconv = filters * 2 * 2 * filters + filters  # 2x2 transposed conv, stride 2
    predictor = filters * outputs + outputs  # 1x1 conv to the mask logits
    return convs + sam + deconv + predictor


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_battery_5d(data_format, tmp_path):
    shape = (2, 3, 14, 14, 4) if data_format == "channels_last" else (2, 3, 4, 14, 14)
    out = (2, 3, 28, 28, 5) if data_format == "channels_last" else (2, 3, 5, 28, 28)
    dynamic = (None, None, None, None, 4) if data_format == "channels_last" else (None, None, 4, None, None)
    run_layer_test(
        ka.SAGMaskHead,
        dict(num_classes=5, filters=8, num_convs=2, data_format=data_format),
        shape,
        expected_output_shape=out,
        tmp_path=tmp_path,
        dynamic_input_shape=dynamic,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_classes=3),
        dict(num_classes=4, class_agnostic=True),
        dict(num_classes=2, use_attention=False),
        dict(num_classes=1, num_convs=1),
    ],
)
def test_battery_flattened_rois(kwargs, tmp_path):
    kwargs = {"filters": 8, "num_convs": 2, **kwargs}
    k = 1 if kwargs.get("class_agnostic") else kwargs["num_classes"]
    run_layer_test(
        ka.SAGMaskHead,
        kwargs,
        (6, 14, 14, 5),
        expected_output_shape=(6, 28, 28, k),
        tmp_path=tmp_path,
        run_dtype_policies=False,
    )


def _trained_like_weights(layer, seed):
    """Kernels ~ N(0, 1/fan_in), small biases: activations stay O(1) through the head."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        shape = tuple(w.shape)
        if len(shape) == 4:
            fan_in = shape[0] * shape[1] * (shape[3] if "deconv" in (getattr(w, "path", None) or w.name) else shape[2])
            w.assign((rng.normal(size=shape) / np.sqrt(fan_in)).astype("float32"))
        else:
            w.assign(rng.normal(0.0, 0.1, size=shape).astype("float32"))


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(num_classes=5), (2, 3, 14, 14, 6)),
        (dict(num_classes=5, data_format="channels_first"), (2, 3, 6, 14, 14)),
        (dict(num_classes=3), (7, 14, 14, 6)),
        (dict(num_classes=4, class_agnostic=True), (2, 2, 14, 14, 6)),
        (dict(num_classes=2, use_attention=False), (4, 14, 14, 6)),
        (dict(num_classes=2, num_convs=1), (2, 2, 7, 9, 6)),
    ],
)
def test_matches_numpy_reference(kwargs, shape):
    layer = ka.SAGMaskHead(filters=16, num_convs=kwargs.pop("num_convs", 4), **kwargs)
    model = build_model(layer, [shape])
    _trained_like_weights(layer, seed=len(shape))
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    expected = head_reference(layer, x)
    np.testing.assert_allclose(to_numpy(model(x)), expected, atol=1e-5 * max(1.0, np.abs(expected).max()), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(class_agnostic=True), dict(use_attention=False), dict(filters=64, num_convs=2)]
)
def test_parameter_count_equals_architecture(kwargs):
    channels, num_classes = 256, 80
    layer = ka.SAGMaskHead(num_classes, **kwargs)
    build_model(layer, [(1, 14, 14, channels)])
    expected = architecture_params(
        channels,
        num_classes,
        kwargs.get("filters", 256),
        kwargs.get("num_convs", 4),
        kwargs.get("class_agnostic", False),
        kwargs.get("use_attention", True),
    )
    assert layer.count_params() == expected
    if not kwargs:  # CenterMask on COCO: 256-channel RoIs, 80 classes
        assert expected == 4 * (256 * 9 * 256 + 256) + 18 + (256 * 4 * 256 + 256) + (256 * 80 + 80) == 2_643_298


def test_structure_and_initialisation_follow_centermask():
    layer = ka.SAGMaskHead(80)
    build_model(layer, [(1, 14, 14, 256)])
    sam = layer.attention
    assert isinstance(sam, ka.SpatialAttention)
    assert (sam.kernel_size, sam.use_batchnorm, sam.use_bias, sam.gate, sam.pooling) == (
        3,
        False,
        False,
        "sigmoid",
        ("avg", "max"),
    )
    assert len(layer.convs) == 4 and all(c.kernel_size == (3, 3) for c in layer.convs)
    assert layer.deconv.kernel_size == (2, 2) and layer.deconv.strides == (2, 2)
    predictor = _np(layer.predictor.kernel)
    assert predictor.shape == (1, 1, 256, 80)
    assert abs(predictor.std() - 0.001) < 1e-4 and not _np(layer.predictor.bias).any()
    # He normal over fan-out (c2_msra_fill): std sqrt(2 / (9 * 256)) for the 3x3 convs.
    assert abs(_np(layer.convs[1].kernel).std() - np.sqrt(2 / (9 * 256))) < 2e-3


def test_attention_map_is_the_gate():
    layer = ka.SAGMaskHead(3, filters=8, num_convs=1)
    x = np.random.default_rng(0).normal(size=(2, 3, 14, 14, 4)).astype("float32")
    layer(x)
    gate = to_numpy(layer.attention_map(x))
    assert gate.shape == (2, 3, 14, 14) and np.all((gate > 0) & (gate < 1))
    conv = _np(layer.convs[0].kernel)
    features = np.maximum(ref.conv2d_same(x.reshape(6, 14, 14, 4), conv) + _np(layer.convs[0].bias), 0)
    descriptors = np.concatenate([features.mean(-1, keepdims=True), features.max(-1, keepdims=True)], -1)
    expected = 1 / (1 + np.exp(-ref.conv2d_same(descriptors, _np(layer.attention.conv.kernel))[..., 0]))
    np.testing.assert_allclose(gate.reshape(6, 14, 14), expected, atol=1e-5)
    with pytest.raises(ValueError, match="use_attention=False"):
        plain = ka.SAGMaskHead(3, filters=8, use_attention=False)
        plain(x)
        plain.attention_map(x)


@pytest.mark.keras3_tensorflow(reason="Keras 3 model.export")
def test_saved_model_export(tmp_path):
    import tensorflow as tf

    model = build_model(ka.SAGMaskHead(3, filters=8, num_convs=2), [(None, 4, 14, 14, 6)])
    x = np.random.default_rng(1).normal(size=(2, 4, 14, 14, 6)).astype("float32")
    model.export(str(tmp_path / "sm"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))  # keep a reference: it owns the variables
    served = loaded.serve(x)
    np.testing.assert_allclose(np.asarray(served), to_numpy(model(x)), atol=1e-6)


@pytest.mark.tf_keras_only(reason="tf_keras saves SavedModel directories and .h5 itself")
@pytest.mark.parametrize("fmt", ["savedmodel", "h5"])
def test_tf_keras_saved_model_and_h5(fmt, tmp_path):
    model = build_model(ka.SAGMaskHead(3, filters=8, num_convs=2), [(None, 4, 14, 14, 6)])
    x = np.random.default_rng(2).normal(size=(2, 4, 14, 14, 6)).astype("float32")
    path = str(tmp_path / ("model" if fmt == "savedmodel" else "model.h5"))
    model.save(path, save_format="tf" if fmt == "savedmodel" else "h5")
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(to_numpy(reloaded(x)), to_numpy(model(x)), atol=1e-6)


def test_bad_arguments():
    for bad in (0, -2, 1.5, True, None):
        with pytest.raises(ValueError, match="SAGMaskHead: `num_classes` must be an integer >= 1"):
            ka.SAGMaskHead(bad)
    with pytest.raises(ValueError, match="`filters` must be an integer >= 1"):
        ka.SAGMaskHead(3, filters=0)
    with pytest.raises(ValueError, match="`num_convs` must be an integer >= 0"):
        ka.SAGMaskHead(3, num_convs=-1)
    with pytest.raises(ValueError, match=r"expected RoI features .* got shape \(None, 14, 14\)"):
        ka.SAGMaskHead(3).build((None, 14, 14))
    with pytest.raises(ValueError, match="channel dimension must be known"):
        ka.SAGMaskHead(3).build((None, 14, 14, None))


@pytest.mark.slow
@pytest.mark.no_jax(reason="a training run, done in the TensorFlow modes; JAX runs the layer tests")
def test_small_sag_mask_learns_masks():
    """examples/sag_mask.py, small: held-out mask IoU well above the all-foreground baseline."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "sag_mask.py")
    spec = importlib.util.spec_from_file_location("sag_mask_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results, baseline, _ = example.run(
        epochs=12, num_images=512, num_test=64, filters=16, num_convs=2, width=16, variants=(True,)
    )
    iou = results[True]["iou"]
    print(f"held-out mask IoU {iou:.3f}, all-foreground baseline {baseline:.3f}")
    assert 0.5 < baseline < 0.75  # circles fill pi/4 of their box, triangles about half
    assert iou > baseline + 0.15, (iou, baseline)
