"""The SAG-Mask loss and its 28x28 targets, against NumPy."""

import numpy as np
import pytest

from keras_attention import data, losses
from keras_attention.backend import keras
from tests.kit import reference_centermask as ref
from tests.kit.harness import to_numpy


def _bce(logits, targets):
    logits = np.asarray(logits, "float64")
    return np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))


def test_crop_mask_targets_is_aligned_roi_align_of_the_mask():
    d = data.shapes(num_images=6, seed=3)
    soft = losses.crop_mask_targets(d["masks"], d["boxes"], threshold=None)
    hard = losses.crop_mask_targets(d["masks"], d["boxes"])
    assert soft.shape == hard.shape == (6, 3, 28, 28) and hard.dtype == np.float32
    for i in range(6):
        for j in range(d["num_shapes"][i]):
            # Detectron2's BitMasks.crop_and_resize: aligned RoIAlign with adaptive sampling (ratio 0).
            expected = ref.roi_align_one(d["masks"][i, j][..., None].astype(float), d["boxes"][i, j], 1.0, 28, 0)
            np.testing.assert_allclose(soft[i, j], expected[..., 0], atol=1e-6)
            np.testing.assert_array_equal(hard[i, j], (expected[..., 0] >= 0.5).astype("float32"))
    valid = d["classes"] >= 0
    assert 0.4 < hard[valid].mean() < 1.0  # shapes fill part of their box


def test_crop_mask_targets_box_partly_outside_reads_background():
    mask = np.ones((1, 16, 16), "uint8")
    out = losses.crop_mask_targets(mask, np.array([[-16.0, 0.0, 16.0, 16.0]]), size=4, threshold=None)
    # The top half lies above the image: 8 sample rows per bin (adaptive: ceil(32 / 4)), all beyond
    # one pixel from the border read 0; in bin 1 the row at y = -0.5 lies within one pixel and reads
    # the border row, as Detectron2 does: 1/8.
    np.testing.assert_allclose(out[0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[0, 1], 0.125, atol=1e-6)
    np.testing.assert_allclose(out[0, 2:], 1.0, atol=1e-6)
    hard = losses.crop_mask_targets(mask, np.array([[-16.0, 0.0, 16.0, 16.0]]), size=4)
    np.testing.assert_array_equal(hard[0], [[0] * 4, [0] * 4, [1] * 4, [1] * 4])


def test_crop_mask_targets_bad_inputs():
    masks = np.zeros((2, 8, 8))
    with pytest.raises(ValueError, match=r"boxes must have shape \(\.\.\., 4\)"):
        losses.crop_mask_targets(masks, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"y2 < y1 or x2 < x1, the first at index \(1,\)"):
        losses.crop_mask_targets(masks, np.array([[0, 0, 4, 4], [5, 0, 2, 4]]))
    with pytest.raises(ValueError, match="same leading shape"):
        losses.crop_mask_targets(masks, np.zeros((3, 4)))


def _case(seed=0, num_classes=3):
    rng = np.random.default_rng(seed)
    targets = (rng.uniform(size=(2, 4, 28, 28)) > 0.5).astype("float32")
    logits = rng.normal(0, 3, size=(2, 4, 28, 28, num_classes)).astype("float32")
    classes = rng.integers(0, num_classes, size=(2, 4)).astype("int32")
    classes[0, 1] = classes[1, 3] = -1  # padding / negative RoIs
    return targets, logits, classes


def test_mask_loss_is_bce_on_the_ground_truth_channel_of_positives():
    targets, logits, classes = _case()
    got = float(to_numpy(losses.mask_loss(targets, logits, classes)))
    positive = classes >= 0
    selected = np.take_along_axis(logits, np.maximum(classes, 0)[..., None, None, None], axis=-1)[..., 0]
    expected = _bce(selected[positive], targets[positive]).mean()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Changing other channels or ignored RoIs changes nothing.
    other = logits.copy()
    other[0, 1] = 100.0
    wrong = (np.maximum(classes, 0) + 1) % 3
    np.put_along_axis(other, wrong[..., None, None, None] + np.zeros((1, 1, 28, 28, 1), int), -50.0, axis=-1)
    np.testing.assert_allclose(float(to_numpy(losses.mask_loss(targets, other, classes))), expected, rtol=1e-5)


def test_mask_loss_class_agnostic_and_no_positives():
    targets, logits, classes = _case(1, num_classes=1)
    positive = classes >= 0
    expected = _bce(logits[..., 0][positive], targets[positive]).mean()
    np.testing.assert_allclose(float(to_numpy(losses.mask_loss(targets, logits, classes))), expected, rtol=1e-5)
    none = np.full_like(classes, -1)
    assert float(to_numpy(losses.mask_loss(targets, logits, none))) == 0.0


def test_keras_mask_loss_equals_the_function_and_trains():
    targets, logits, classes = _case(2)
    encoded = losses.encode_mask_targets(targets, classes, 3)
    assert encoded.shape == (2, 4, 28, 28, 3)
    assert np.all(encoded[0, 1] == -1) and np.all(encoded[1, 3] == -1)
    expected = float(to_numpy(losses.mask_loss(targets, logits, classes)))
    np.testing.assert_allclose(float(to_numpy(losses.MaskLoss()(encoded, logits))), expected, rtol=1e-5)
    # As a compiled loss: a tiny model of the logits learns the targets.
    inputs = keras.Input((4, 28, 28, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(keras.optimizers.Adam(0.05), loss=losses.MaskLoss(), jit_compile=True)
    history = model.fit(logits, encoded, epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    revived = keras.losses.deserialize(keras.losses.serialize(losses.MaskLoss()))
    assert isinstance(revived, losses.MaskLoss)


def test_keras_mask_loss_names_both_shapes():
    logits = np.zeros((2, 4, 28, 28, 3), "float32")
    targets = np.zeros((2, 4, 14, 14, 3), "float32")  # cropped at 14 for a 28x28 head
    with pytest.raises(
        ValueError,
        match=r"MaskLoss: y_true must have the shape of y_pred.*got y_true "
        r"\(2, 4, 14, 14, 3\) and y_pred \(2, 4, 28, 28, 3\).*crop_mask_targets",
    ):
        losses.MaskLoss()(targets, logits)
    with pytest.raises(ValueError, match=r"got y_true \(2, 4, 28, 28\) and y_pred \(2, 4, 28, 28, 3\)"):
        losses.MaskLoss()(targets[..., :1].repeat(2, 2).repeat(2, 3)[..., 0], logits)


def test_encode_mask_targets_bad_inputs():
    with pytest.raises(ValueError, match="same leading shape"):
        losses.encode_mask_targets(np.zeros((2, 3, 28, 28)), np.zeros((2, 4), int), 3)
    with pytest.raises(ValueError, match="classes must be < num_classes"):
        losses.encode_mask_targets(np.zeros((1, 28, 28)), np.array([3]), 3)
    with pytest.raises(ValueError, match="encode_mask_targets: classes must be integers.*got dtype float64"):
        losses.encode_mask_targets(np.zeros((1, 28, 28)), np.array([1.5]), 3)
    with pytest.raises(ValueError, match="encode_mask_targets: `num_classes` must be an integer >= 1; got 0"):
        losses.encode_mask_targets(np.zeros((1, 28, 28)), np.array([0]), 0)
    assert losses.encode_mask_targets(np.zeros((1, 28, 28)), np.array([2]), 3).shape == (1, 28, 28, 3)  # control
