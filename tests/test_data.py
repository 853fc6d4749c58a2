import numpy as np
import pytest

from keras_attention import data


def test_digits_split_and_ranges():
    (x_train, y_train), (x_test, y_test) = data.digits(size=16, channels=3)
    assert x_train.shape[1:] == (16, 16, 3) and x_test.shape[1:] == (16, 16, 3)
    assert len(x_train) + len(x_test) == 1797
    assert abs(len(x_test) / 1797 - 0.25) < 0.01
    assert set(np.unique(y_test)) == set(range(10))  # stratified
    assert 0.0 <= x_train.min() and x_train.max() <= 255.0


def test_resize_bilinear_matches_a_hand_computed_case():
    image = np.array([[0.0, 10.0], [20.0, 30.0]], "float32")[None, :, :, None]
    out = data.resize_bilinear(image, 4)[0, :, :, 0]
    # Half-pixel centres: output row/col coordinates -0.25, 0.25, 0.75, 1.25 clipped to [0, 1].
    expected_row = np.array([0.0, 2.5, 7.5, 10.0])
    np.testing.assert_allclose(out[0], expected_row)
    np.testing.assert_allclose(out[:, 0], 2 * expected_row)


def test_resize_bilinear_checks_the_rank_and_size():
    with pytest.raises(
        ValueError,
        match=r"resize_bilinear: `images` must be a batch \(N, H, W, C\).*got shape "
        r"\(8, 8, 1\).*images\[None\]",
    ):
        data.resize_bilinear(np.zeros((8, 8, 1)), 4)
    with pytest.raises(ValueError, match=r"resize_bilinear: `images` must be .*got shape \(2, 0, 8, 1\)"):
        data.resize_bilinear(np.zeros((2, 0, 8, 1)), 4)
    for size in (0, 2.5, (4, 4)):
        with pytest.raises(ValueError, match=r"resize_bilinear: `size` must be an integer >= 1 \(the output"):
            data.resize_bilinear(np.zeros((1, 8, 8, 1)), size)


def test_digits_rejects_bad_channels():
    with pytest.raises(ValueError, match="digits: `channels` must be 1 or 3"):
        data.digits(channels=2)


def test_shapes_arrays_and_determinism():
    d = data.shapes(num_images=20, image_size=48, max_shapes=4, min_radius=5, max_radius=10, seed=7)
    assert d["images"].shape == (20, 48, 48, 3) and d["images"].dtype == np.float32
    assert d["classes"].shape == (20, 4) and d["classes"].dtype == np.int32
    assert d["boxes"].shape == (20, 4, 4) and d["boxes"].dtype == np.float32
    assert d["masks"].shape == (20, 4, 48, 48) and d["masks"].dtype == np.uint8
    assert 0.0 <= d["images"].min() and d["images"].max() <= 255.0
    again = data.shapes(num_images=20, image_size=48, max_shapes=4, min_radius=5, max_radius=10, seed=7)
    assert all(np.array_equal(d[k], again[k]) for k in d)
    other = data.shapes(num_images=20, image_size=48, max_shapes=4, min_radius=5, max_radius=10, seed=8)
    assert not np.array_equal(d["images"], other["images"])
    assert data.shapes(num_images=2, channels=1)["images"].shape == (2, 64, 64, 1)


def test_shapes_boxes_masks_and_classes_agree():
    d = data.shapes(num_images=40, seed=1)
    seen = set()
    for i in range(40):
        n = d["num_shapes"][i]
        assert 1 <= n <= 3
        assert np.all(d["classes"][i, n:] == -1) and not d["masks"][i, n:].any() and not d["boxes"][i, n:].any()
        union = np.zeros((64, 64), int)
        for j in range(n):
            mask = d["masks"][i, j].astype(bool)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            # Tight box in pixel-edge coordinates: (first row, first col, last row + 1, last col + 1).
            np.testing.assert_array_equal(d["boxes"][i, j], [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1])
            seen.add(int(d["classes"][i, j]))
            union += mask
            # The shape is painted brighter than the background inside its mask.
            image = d["images"][i].mean(-1)
            assert image[mask].mean() > image[~union.astype(bool)].mean() + 30
        assert union.max() <= 1  # instances never overlap
    assert seen == {0, 1, 2} and data.SHAPE_CLASSES == ("circle", "square", "triangle")


def test_shapes_fill_distinguishes_classes():
    """Circles fill ~pi/4 of their box, triangles about half: masks are more than boxes."""
    d = data.shapes(num_images=60, seed=2)
    fill = {c: [] for c in range(3)}
    for i in range(60):
        for j in range(d["num_shapes"][i]):
            y1, x1, y2, x2 = d["boxes"][i, j].astype(int)
            fill[int(d["classes"][i, j])].append(d["masks"][i, j, y1:y2, x1:x2].mean())
    assert 0.7 < np.mean(fill[0]) < 0.85
    assert 0.45 < np.mean(fill[2]) < 0.6
    assert 0.5 < np.mean(fill[1]) < 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(channels=2), "`channels` must be 1 or 3"),
        (dict(min_shapes=0), "min_shapes"),
        (dict(min_shapes=4, max_shapes=3), "min_shapes"),
        (dict(max_radius=40), "max_radius"),
    ],
)
def test_shapes_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.shapes(num_images=1, **kwargs)
