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


def test_digits_rejects_bad_channels():
    with pytest.raises(ValueError, match="digits: `channels` must be 1 or 3"):
        data.digits(channels=2)
