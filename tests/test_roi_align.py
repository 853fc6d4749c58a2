"""RoIAlign equals an independent NumPy RoIAlign (Detectron2, aligned=True) and CenterMask's level rule."""

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import BACKEND, keras, set_global_dtype_policy
from keras_attention.layers.roi_align import assign_levels_by_ratio
from tests.kit import reference_centermask as ref
from tests.kit.harness import dtype_name, to_numpy


def _random_boxes(rng, batch, num, image_h, image_w, outside=8.0, max_size=None):
    """Boxes anywhere from `outside` pixels beyond the image border, of random sizes."""
    max_size = max_size or max(image_h, image_w)
    y1 = rng.uniform(-outside, image_h + outside / 2, size=(batch, num))
    x1 = rng.uniform(-outside, image_w + outside / 2, size=(batch, num))
    h = rng.uniform(0.5, max_size, size=(batch, num))
    w = rng.uniform(0.5, max_size, size=(batch, num))
    return np.stack([y1, x1, y1 + h, x1 + w], axis=-1).astype("float32")


def _border_boxes(image_h, image_w):
    """Boxes touching, straddling and leaving each border, whole-image, and degenerate ones."""
    return np.array(
        [
            [0, 0, image_h, image_w],  # the whole image
            [-5, -7, 6, 9],  # top-left corner, partly outside
            [image_h - 6, image_w - 4, image_h + 9, image_w + 3],  # bottom-right, partly outside
            [image_h + 20, 3, image_h + 40, 10],  # wholly below the image: zeros
            [-30, -30, -10, -12],  # wholly above-left: zeros
            [2.5, 3.25, 2.5, 9.0],  # zero height
            [4.0, 4.0, 4.0, 4.0],  # a point
            [0, 0, 0, 0],  # padding
            [0, 0, 1, 1],  # one image pixel
        ],
        "float32",
    )


def _call(layer, features, boxes):
    return to_numpy(layer([features, boxes]))


@pytest.mark.parametrize(
    "output_size, sampling_ratio, aligned",
    [(14, 2, True), (7, 1, True), (5, 3, True), ((4, 6), 2, True), (7, 2, False)],
)
def test_single_level_matches_numpy(output_size, sampling_ratio, aligned):
    rng = np.random.default_rng(0)
    stride = 4
    features = rng.normal(size=(2, 9, 13, 5)).astype("float32")
    image_h, image_w = 9 * stride, 13 * stride
    boxes = _random_boxes(rng, 2, 7, image_h, image_w)
    boxes[1, :] = _border_boxes(image_h, image_w)[:7]
    layer = ka.RoIAlign(output_size=output_size, sampling_ratio=sampling_ratio, aligned=aligned, strides=stride)
    expected = ref.roi_align([features], boxes, [stride], output_size, sampling_ratio, aligned)
    np.testing.assert_allclose(_call(layer, features, boxes), expected, atol=1e-5, rtol=0)


def test_borders_and_degenerate_boxes_match_numpy():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(1, 10, 12, 3)).astype("float32")
    boxes = _border_boxes(80, 96)[None]  # stride 8
    layer = ka.RoIAlign(output_size=14, sampling_ratio=2, strides=8)
    out = _call(layer, features, boxes)
    np.testing.assert_allclose(out, ref.roi_align([features], boxes, [8]), atol=1e-5, rtol=0)
    # Wholly outside (further than one feature pixel): exactly zero, as Detectron2.
    assert np.all(out[0, 3] == 0) and np.all(out[0, 4] == 0)
    # Zero-area boxes: every bin is the bilinear value at the box's (clamped) point or line.
    point = ref.bilinear(features[0].astype("float64"), 4.0 / 8 - 0.5, 4.0 / 8 - 0.5)
    np.testing.assert_allclose(out[0, 6], np.broadcast_to(point, out[0, 6].shape), atol=1e-6)
    np.testing.assert_allclose(out[0, 7], np.broadcast_to(features[0, 0, 0], out[0, 7].shape), atol=1e-6)
    assert np.all(np.isfinite(out))


def test_image_size_maps_boxes_like_strides():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(2, 8, 10, 4)).astype("float32")
    boxes = _random_boxes(rng, 2, 5, 64, 80)
    by_stride = _call(ka.RoIAlign(strides=8), features, boxes)
    by_size = _call(ka.RoIAlign(image_size=(64, 80)), features, boxes)
    np.testing.assert_allclose(by_size, by_stride, atol=1e-6)
    # A non-integer ratio: 10 rows for a 75-pixel-high image, 10 columns for 75 pixels.
    boxes = _random_boxes(rng, 2, 5, 75, 75)
    features = rng.normal(size=(2, 10, 10, 4)).astype("float32")
    out = _call(ka.RoIAlign(output_size=6, image_size=75), features, boxes)
    expected = np.stack(
        [np.stack([ref.roi_align_one(features[b], boxes[b, n], 10 / 75, 6, 2) for n in range(5)]) for b in range(2)]
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_multi_level_matches_numpy_and_uses_every_level():
    rng = np.random.default_rng(3)
    strides = (8, 16, 32)
    levels = [rng.normal(size=(2, 128 // s, 96 // s, 6)).astype("float32") for s in strides]
    # Areas spread from tiny to the whole image (128 x 96), so all three levels are used.
    boxes = _random_boxes(rng, 2, 12, 128, 96, outside=4, max_size=128)
    boxes[0, :3] = [[0, 0, 128, 96], [10, 10, 74, 58], [3, 3, 8, 9]]
    layer = ka.RoIAlign(output_size=7, sampling_ratio=2, strides=strides)
    out = _call(layer, levels, boxes)
    np.testing.assert_allclose(out, ref.roi_align(levels, boxes, strides, 7, 2), atol=1e-5, rtol=0)
    used = {ref.level_by_ratio(b, 128 * 96, 3, 5) for b in boxes.reshape(-1, 4)}
    assert used == {3, 4, 5}
    # With image_size the image area (and the mapping) come from it.
    by_size = _call(ka.RoIAlign(output_size=7, image_size=(128, 96)), levels, boxes)
    np.testing.assert_allclose(by_size, out, atol=1e-6)


def test_level_assignment_equals_the_formula():
    rng = np.random.default_rng(4)
    image_area = 800.0 * 1216.0
    sides = np.exp(rng.uniform(np.log(0.5), np.log(1500.0), size=(400, 2)))
    y1, x1 = rng.uniform(0, 800, size=(2, 400))
    boxes = np.stack([y1, x1, y1 + sides[:, 0], x1 + sides[:, 1]], -1).astype("float32")
    # Exact powers of two of the image area sit on the boundaries of ceil(): no off-by-one level.
    exact = np.array(
        [
            [0, 0, 800, 1216],
            [0, 0, 400, 1216],
            [0, 0, 400, 608],
            [0, 0, 200, 608],
            [0, 0, 100, 304],
            [0, 0, 25, 38],
            [0, 0, 0, 10],
            [5, 5, 5, 5],
        ],
        "float32",
    )
    boxes = np.concatenate([boxes, exact])
    got = to_numpy(assign_levels_by_ratio(boxes, image_area, min_level=3, max_level=5)).astype(int)
    expected = [ref.level_by_ratio(b, image_area, 3, 5) for b in boxes]
    np.testing.assert_array_equal(got, expected)
    # Hand-checked: whole image -> P5, half -> P4 (ceil(5 - 1)), a quarter -> P3 (ceil(5 - 2)), smaller -> P3.
    np.testing.assert_array_equal(got[-8:], [5, 4, 3, 3, 3, 3, 3, 3])
    wide = to_numpy(assign_levels_by_ratio(exact, image_area, min_level=2, max_level=6)).astype(int)
    np.testing.assert_array_equal(wide, [6, 5, 4, 3, 2, 2, 2, 2])
    with pytest.raises(ValueError, match="max_level"):
        assign_levels_by_ratio(exact, image_area, min_level=5, max_level=3)


def test_reversed_boxes_are_clamped_to_zero_size():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(1, 8, 8, 2)).astype("float32")
    reversed_boxes = np.array([[[20, 10, 12, 30], [5, 25, 18, 6]]], "float32")
    clamped = np.array([[[20, 10, 20, 30], [5, 25, 18, 25]]], "float32")
    layer = ka.RoIAlign(output_size=4, strides=4)
    np.testing.assert_array_equal(_call(layer, features, reversed_boxes), _call(layer, features, clamped))


def test_no_boxes_gives_empty_output_eager_graph_and_jit():
    rng = np.random.default_rng(6)
    levels = [rng.normal(size=(2, 8, 8, 3)).astype("float32"), rng.normal(size=(2, 4, 4, 3)).astype("float32")]
    empty = np.zeros((2, 0, 4), "float32")
    for features, strides in ((levels[0], 8), (levels, (8, 16))):
        layer = ka.RoIAlign(output_size=5, strides=strides)
        assert _call(layer, features, empty).shape == (2, 0, 5, 5, 3)
        inputs = [
            [keras.Input((None, None, 3)) for _ in levels]
            if isinstance(features, list)
            else keras.Input((None, None, 3)),
            keras.Input((None, 4)),
        ]
        model = keras.Model(inputs, layer(inputs))
        assert model.predict([features, empty], verbose=0).shape == (2, 0, 5, 5, 3)
        if BACKEND == "tensorflow":
            import tensorflow as tf

            jitted = tf.function(lambda f, b: layer([f, b]), jit_compile=True)  # noqa: B023 - called at once
            assert tuple(jitted(features, empty).shape) == (2, 0, 5, 5, 3)


def _model(features_shape, num_boxes, strides, levels=1, **kwargs):
    feats = [keras.Input(features_shape) for _ in range(levels)]
    boxes = keras.Input((num_boxes, 4))
    out = ka.RoIAlign(strides=strides, **kwargs)([feats if levels > 1 else feats[0], boxes])
    return keras.Model([feats if levels > 1 else feats[0], boxes], out)


def test_symbolic_shapes_unknown_sizes_and_channels_first():
    model = _model((None, None, 7), None, (8, 16), levels=2, output_size=14)
    assert tuple(model.outputs[0].shape) == (None, None, 14, 14, 7)
    rng = np.random.default_rng(7)
    f = rng.normal(size=(1, 6, 5, 7)).astype("float32")
    boxes = _random_boxes(rng, 1, 3, 48, 40)
    last = _call(ka.RoIAlign(output_size=3, strides=8), f, boxes)
    first = _call(ka.RoIAlign(output_size=3, strides=8, data_format="channels_first"), f.transpose(0, 3, 1, 2), boxes)
    assert first.shape == (1, 3, 7, 3, 3)
    np.testing.assert_allclose(first.transpose(0, 1, 3, 4, 2), last, atol=1e-6)
    model = _model((7, None, None), 3, 8, output_size=3, data_format="channels_first")
    assert tuple(model.outputs[0].shape) == (None, 3, 7, 3, 3)


def test_config_round_trip_and_keras_file(tmp_path):
    layer = ka.RoIAlign(output_size=(6, 4), sampling_ratio=3, aligned=False, strides=[4, 8], image_size=(32, 48))
    config = layer.get_config()
    clone = ka.RoIAlign.from_config(config)
    assert clone.get_config() == config
    model = _model(
        (None, None, 3), 4, [4, 8], levels=2, output_size=(6, 4), sampling_ratio=3, aligned=False, image_size=(32, 48)
    )
    rng = np.random.default_rng(8)
    inputs = [
        [rng.normal(size=(2, 8, 12, 3)).astype("float32"), rng.normal(size=(2, 4, 6, 3)).astype("float32")],
        _random_boxes(rng, 2, 4, 32, 48),
    ]
    model.save(str(tmp_path / "roi.keras"))
    reloaded = keras.models.load_model(str(tmp_path / "roi.keras"), safe_mode=True)
    np.testing.assert_array_equal(to_numpy(reloaded(inputs)), to_numpy(model(inputs)))


@pytest.mark.keras3_tensorflow(reason="Keras 3 model.export")
def test_saved_model_export(tmp_path):
    import tensorflow as tf

    model = _model((16, 16, 4), 3, 4, output_size=7)
    rng = np.random.default_rng(9)
    inputs = [rng.normal(size=(2, 16, 16, 4)).astype("float32"), _random_boxes(rng, 2, 3, 64, 64)]
    model.export(str(tmp_path / "sm"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "sm")).serve(inputs)
    np.testing.assert_allclose(np.asarray(served), to_numpy(model(inputs)), atol=1e-6)


def test_gradient_reaches_features_under_jit():
    """A conv before RoIAlign trains under compile(jit_compile=True)."""
    images = keras.Input((32, 32, 3))
    boxes = keras.Input((4, 4))
    features = keras.layers.Conv2D(5, 3, strides=4, padding="same", name="backbone")(images)
    out = ka.RoIAlign(output_size=7, strides=4)([features, boxes])
    model = keras.Model([images, boxes], out)
    rng = np.random.default_rng(10)
    x = [rng.normal(size=(4, 32, 32, 3)).astype("float32"), _random_boxes(rng, 4, 4, 32, 32, outside=2, max_size=20)]
    y = rng.normal(size=(4, 4, 7, 7, 5)).astype("float32")
    before = [np.array(w) for w in model.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(not np.array_equal(b, a) for b, a in zip(before, model.get_weights()))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_boxes_in_float32(policy):
    rng = np.random.default_rng(11)
    features = rng.normal(size=(1, 200, 200, 2)).astype("float32")
    # Coordinates around 1000 px: float16 would round them to 0.5-1 px steps.
    boxes = np.array([[[1000.3, 1001.7, 1011.1, 1020.9]]], "float32")
    expected = _call(ka.RoIAlign(output_size=4, strides=8), features, boxes)
    set_global_dtype_policy(policy)
    try:
        layer = ka.RoIAlign(output_size=4, strides=8)
        out = layer([features, boxes])
    finally:
        set_global_dtype_policy("float32")
    compute = policy.split("_")[1]
    assert dtype_name(out) == compute
    # The features' rounding to the compute dtype (relative 2^-11 / 2^-8) is all that may differ.
    tol = (2e-3 if compute == "float16" else 1.5e-2) * np.abs(expected).max()
    np.testing.assert_allclose(to_numpy(out), expected, atol=tol)
    # Control: boxes rounded to the compute dtype (the bug this test is for) miss that tolerance.
    import ml_dtypes

    rounded = boxes.astype(ml_dtypes.bfloat16 if compute == "bfloat16" else "float16").astype("float32")
    assert np.abs(_call(ka.RoIAlign(output_size=4, strides=8), features, rounded) - expected).max() > tol


def test_bad_inputs():
    f = keras.Input((8, 8, 4))
    with pytest.raises(ValueError, match=r"RoIAlign: boxes must have shape \(batch, num_boxes, 4\)"):
        ka.RoIAlign(strides=4)([f, keras.Input((5, 3))])
    with pytest.raises(ValueError, match="same channel count"):
        ka.RoIAlign(strides=(4, 8))([[f, keras.Input((4, 4, 5))], keras.Input((5, 4))])
    with pytest.raises(ValueError, match="2 feature level.* but 3 stride"):
        ka.RoIAlign(strides=(4, 8, 16))([[f, keras.Input((4, 4, 4))], keras.Input((5, 4))])
    with pytest.raises(ValueError, match="pass `strides`"):
        ka.RoIAlign()
    with pytest.raises(ValueError, match="sampling_ratio` 0"):
        ka.RoIAlign(sampling_ratio=0, strides=4)
    with pytest.raises(ValueError, match="`output_size` must be an integer >= 1"):
        ka.RoIAlign(output_size=0, strides=4)
    with pytest.raises(ValueError, match="`strides` must be positive"):
        ka.RoIAlign(strides=(4, -8))
    with pytest.raises(ValueError, match=r"expected inputs \[features, boxes\]"):
        ka.RoIAlign(strides=4)(f)
    with pytest.raises(ValueError, match="channel dimension"):
        ka.RoIAlign(strides=4)([keras.Input((8, 8, None)), keras.Input((5, 4))])
