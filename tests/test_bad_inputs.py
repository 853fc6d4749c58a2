"""Bad input gets a clear error naming the layer or function, what it got and what it expects.

Each case has its control: the same call with good input works.
"""

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import keras

FEATURE_LAYERS = {
    "CBAM": lambda: ka.CBAM(reduction=2),
    "ChannelAttention": lambda: ka.ChannelAttention(reduction=2),
    "SqueezeExcitation": lambda: ka.SqueezeExcitation(reduction=2),
    "EfficientChannelAttention": lambda: ka.EfficientChannelAttention(),
    "SpatialAttention": lambda: ka.SpatialAttention(),
    "LightRPNHead": lambda: ka.LightRPNHead(num_anchors=2, filters=4),
}


@pytest.mark.parametrize("name", sorted(FEATURE_LAYERS))
def test_integer_images_are_refused_not_truncated(name):
    images = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 8)).astype("int32")
    with pytest.raises(TypeError, match=f"{name}: expected a floating-point input; got dtype int32"):
        FEATURE_LAYERS[name]()(images)
    out = FEATURE_LAYERS[name]()(images.astype("float32"))  # control
    assert np.all(np.isfinite(np.asarray(out[0] if isinstance(out, list) else out)))


def test_integer_inputs_are_refused_for_two_input_layers():
    c4, c5 = np.zeros((1, 8, 8, 4), "int32"), np.zeros((1, 4, 4, 4), "float32")
    with pytest.raises(TypeError, match="ContextEnhancement: expected a floating-point input; got dtype int32"):
        ka.ContextEnhancement(filters=4)([c4, c5])
    cem, rpn = np.zeros((1, 8, 8, 4), "float32"), np.zeros((1, 8, 8, 4), "int32")
    with pytest.raises(TypeError, match="RPNGuidedSpatialAttention: expected a floating-point input"):
        ka.RPNGuidedSpatialAttention()([cem, rpn])
    with pytest.raises(TypeError, match="SAGMaskHead: expected a floating-point input"):
        ka.SAGMaskHead(num_classes=2, filters=4, num_convs=1)(np.zeros((2, 4, 4, 4), "int32"))


def test_integer_keras_input_is_refused_when_the_model_runs():
    # Keras 3 builds the graph from compute_output_shape (no dtype there), so the check fires on the first
    # call; tf_keras traces call() and refuses while the model is built.
    with pytest.raises(TypeError, match="CBAM: expected a floating-point input; got dtype int32"):
        inputs = keras.Input((8, 8, 8), dtype="int32")
        model = keras.Model(inputs, ka.CBAM(reduction=2)(inputs))
        model(np.ones((1, 8, 8, 8), "int32"))


@pytest.mark.parametrize("pooling", ["max", ("avg", "max")])
def test_squeeze_excitation_refuses_max_pooling(pooling):
    with pytest.raises(ValueError, match=r"SqueezeExcitation: `pooling` is fixed to average pooling.*ChannelAttention"):
        ka.SqueezeExcitation(pooling=pooling)
    assert ka.SqueezeExcitation(pooling="avg").pooling == ("avg",)  # control


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gamma": -2}, "`gamma` must be a positive number"),
        ({"gamma": 0}, "`gamma` must be a positive number"),
        ({"gamma": float("nan")}, "`gamma` must be a positive number"),
        ({"beta": float("inf")}, "`beta` must be a finite number"),
        ({"gamma": "2"}, "`gamma` must be a positive number"),
    ],
)
def test_eca_kernel_rule_constants_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=f"EfficientChannelAttention: {message}"):
        ka.EfficientChannelAttention(**kwargs)
    layer = ka.EfficientChannelAttention(gamma=2, beta=1)  # control: the paper's constants
    layer(np.zeros((1, 4, 4, 64), "float32"))
    assert layer.resolved_kernel_size == 3


def test_attach_twice_is_refused_clearly():
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35)
    once = ka.attach(backbone, "cbam")
    with pytest.raises(ValueError, match=r"attach: 'mobilenetv2_0.35_32' already has 10 attention layer\(s\)"):
        ka.attach(once, "se")
    assert not any(layer.name.endswith("_cbam_cbam") for layer in once.layers)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_shapes": 6, "max_shapes": 6}, r"could place only \d+ of min_shapes=6"),
        ({"num_images": -1}, "`num_images` must be an integer >= 1; got -1"),
        ({"image_size": 64.5}, "`image_size` must be an integer >= 1; got 64.5"),
    ],
)
def test_shapes_never_returns_fewer_shapes_than_asked(kwargs, message):
    from keras_attention.data import shapes

    with pytest.raises(ValueError, match=f"shapes: {message}"):
        shapes(**{"num_images": 4, "image_size": 40, "max_radius": 12.0, **kwargs})
    data = shapes(num_images=4, image_size=64, min_shapes=3, max_shapes=3)  # control
    assert (data["num_shapes"] == 3).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"test_fraction": 1.5}, "`test_fraction` must be a number strictly between 0 and 1"),
        ({"test_fraction": 0}, "`test_fraction` must be a number strictly between 0 and 1"),
        ({"size": 0}, "`size` must be an integer >= 1; got 0"),
    ],
)
def test_digits_arguments_are_checked(kwargs, message):
    from keras_attention.data import digits

    with pytest.raises(ValueError, match=f"digits: {message}"):
        digits(**kwargs)
    (x_train, _), (x_test, _) = digits(size=8, test_fraction=0.5)  # control
    assert len(x_train) > 0 and len(x_test) > 0


def _mask_inputs(num_rois=3, size=4, k=2):
    rng = np.random.default_rng(0)
    targets = rng.uniform(0, 1, (2, num_rois, size, size)).astype("float32")
    logits = rng.normal(size=(2, num_rois, size, size, k)).astype("float32")
    return targets, logits, np.array([[0, 1, -1], [1, 0, 0]], "int32")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, lg, c: (t[:, :1], lg, c), r"targets must be \(\.\.\., S, S\) = \(2, 3, 4, 4\).*got \(2, 1, 4, 4\)"),
        (lambda t, lg, c: (t, lg, c[:, :2]), r"classes must be \(\.\.\.\) = \(2, 3\).*got \(2, 2\)"),
        (lambda t, lg, c: (t, lg, c.astype("float32") + 0.5), "classes must be integers.*got dtype float32"),
        (lambda t, lg, c: (t, lg, np.where(c == 1, 2, c)), r"classes must be < K = 2 \(the logits' channels\); got 2"),
    ],
)
def test_mask_loss_refuses_what_it_would_silently_misread(change, message):
    from keras_attention.losses import mask_loss

    good = _mask_inputs()
    with pytest.raises(ValueError, match=f"mask_loss: {message}"):
        mask_loss(*change(*good))
    assert np.isfinite(float(np.asarray(mask_loss(*good))))  # control


def test_mask_loss_on_tensors_makes_a_class_out_of_range_loud():
    """Tensor classes are not read back to the host (a sync per step); a class >= K gives NaN, not a zero logit."""
    from keras_attention.backend import ops
    from keras_attention.losses import mask_loss
    from tests.kit.harness import to_numpy

    targets, logits, classes = _mask_inputs()
    bad = ops.convert_to_tensor(np.where(classes == 1, 2, classes))
    assert np.isnan(float(to_numpy(mask_loss(targets, logits, bad))))
    good = ops.convert_to_tensor(classes)  # control: the same tensors with classes in range
    assert np.isfinite(float(to_numpy(mask_loss(targets, logits, good))))


@pytest.mark.parametrize(
    "case, message",
    [
        ("batch", "features and boxes must have the same batch size"),
        ("coarse_first", "feature levels must go from fine to coarse"),
        ("wrong_strides", r"level 1 has height 8, but strides 4 -> 16 put it at about 4"),
        ("decreasing_strides", "`strides` must increase"),
    ],
)
def test_roi_align_refuses_inputs_it_would_misread(case, message):
    rng = np.random.default_rng(0)
    fine, coarse = rng.normal(size=(2, 16, 16, 3)).astype("float32"), rng.normal(size=(2, 8, 8, 3)).astype("float32")
    boxes = np.tile(np.array([[[0, 0, 32, 32]]], "float32"), (2, 1, 1))
    call = {
        "batch": lambda: ka.RoIAlign(output_size=2, strides=4)([fine, boxes[:1]]),
        "coarse_first": lambda: ka.RoIAlign(output_size=2, strides=(4, 8))([[coarse, fine], boxes]),
        "wrong_strides": lambda: ka.RoIAlign(output_size=2, strides=(4, 16))([[fine, coarse], boxes]),
        "decreasing_strides": lambda: ka.RoIAlign(output_size=2, strides=(8, 4))([[fine, coarse], boxes]),
    }[case]
    with pytest.raises(ValueError, match=f"RoIAlign: {message}"):
        call()
    out = ka.RoIAlign(output_size=2, strides=(4, 8))([[fine, coarse], boxes])  # control
    assert tuple(out.shape) == (2, 1, 2, 2, 3)


def test_crop_mask_targets_empty_boxes_nan_boxes_and_size():
    from keras_attention.losses import crop_mask_targets

    masks = np.ones((2, 8, 8), "float32")
    empty = crop_mask_targets(masks, np.array([[2, 2, 2, 6], [3, 3, 3, 3]], "float32"), size=4)
    assert not empty.any()  # Detectron2: an empty box has no sampling points, so 0 (not the mask value 1)
    assert crop_mask_targets(masks, np.array([[2, 2, 2.5, 6], [3, 3, 4, 4]], "float32"), size=4).all()  # control
    with pytest.raises(ValueError, match=r"crop_mask_targets: boxes must be finite; got \[nan, 0.0, 4.0, 4.0\]"):
        crop_mask_targets(masks, np.array([[np.nan, 0, 4, 4], [0, 0, 4, 4]], "float32"))
    with pytest.raises(ValueError, match="crop_mask_targets: `size` must be an integer >= 1"):
        crop_mask_targets(masks, np.array([[0, 0, 4, 4], [0, 0, 4, 4]], "float32"), size=0)


def _tiny_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize(
    "data, error, message",
    [
        (np.full((4, 8, 8, 3), np.nan, "float32"), ValueError, "representative_data holds 768 NaN or infinite values"),
        (
            np.zeros((4, 16, 16, 3), "float32"),
            ValueError,
            r"representative_data has samples of shape \(16, 16, 3\); the model input .* \(8, 8, 3\)",
        ),
        ("not/a/folder", ValueError, "representative_data 'not/a/folder' is not a directory of images"),
        (np.zeros((0, 8, 8, 3), "float32"), ValueError, "representative_data is empty"),
    ],
)
def test_convert_checks_its_calibration_data(data, error, message):
    from keras_attention import backend, tflite

    if backend.BACKEND != "tensorflow":
        pytest.skip("TFLite conversion needs the TensorFlow backend")
    with pytest.raises(error, match=f"keras_attention.tflite: {message}"):
        tflite.convert(_tiny_model(), "int8", representative_data=data)


def test_convert_names_what_it_got_instead_of_a_model():
    from keras_attention import backend, tflite

    if backend.BACKEND != "tensorflow":
        pytest.skip("TFLite conversion needs the TensorFlow backend")

    with pytest.raises(
        TypeError, match="convert: expected a Keras model, a .keras/.h5 file or a SavedModel directory; got NoneType"
    ):
        tflite.convert(None)


def test_grad_cam_class_out_of_range():
    from keras_attention import backend, visualize

    if backend.BACKEND != "tensorflow":
        pytest.skip("grad_cam uses TensorFlow's GradientTape")
    model, images = _tiny_model(), np.zeros((2, 8, 8, 3), "float32")
    with pytest.raises(ValueError, match=r"grad_cam: `class_index` must be an integer in \[0, 2\].*got 3"):
        visualize.grad_cam(model, images, class_index=3)
    assert visualize.grad_cam(model, images, class_index=2).shape[0] == 2  # control


def test_context_enhancement_says_which_layout_it_assumed():
    c4, c5 = np.zeros((1, 16, 20, 20), "float32"), np.zeros((1, 32, 10, 10), "float32")  # channels_first data
    with pytest.raises(ValueError, match=r"ContextEnhancement: .*as channels_last"):
        ka.ContextEnhancement(filters=4, data_format="channels_last")([c4, c5])
    out = ka.ContextEnhancement(filters=4, data_format="channels_first")([c4, c5])  # control
    assert tuple(out.shape) == (1, 4, 20, 20)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: ka.CBAM(reductoin=4, **kw),
        lambda **kw: ka.ChannelAttention(reductoin=4, **kw),
        lambda **kw: ka.SpatialAttention(kernel=7, **kw),
        lambda **kw: ka.SqueezeExcitation(reductoin=4, **kw),
        lambda **kw: ka.EfficientChannelAttention(kernel=3, **kw),
        lambda **kw: ka.ContextEnhancement(chanels=8, **kw),
        lambda **kw: ka.LightRPNHead(5, filter=8, **kw),
        lambda **kw: ka.RPNGuidedSpatialAttention(gates="sigmoid", **kw),
        lambda **kw: ka.SAGMaskHead(3, filter=8, **kw),
        lambda **kw: ka.RoIAlign(strides=4, outputsize=7, **kw),
    ],
)
def test_an_unknown_keyword_names_the_layer_and_what_it_takes(make):
    with pytest.raises(TypeError, match=r"^\w+: unknown keyword argument\(s\) \['\w+'\]; \w+ takes \[.+\] and Keras"):
        make()
    with pytest.raises(TypeError, match="unknown keyword"):
        make(name="x")  # Keras' own arguments do not hide it
