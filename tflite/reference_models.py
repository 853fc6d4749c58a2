"""The reference models of the TFLite kit, and a short training run for honest int8 numbers.

Each builder returns a Keras model that takes images in [0, 255] (the
preprocessing is inside the model, so a phone app feeds raw pixels):

* `mobilenet_v2(size, cbam=False)`: Keras Applications' MobileNetV2
  (alpha 0.35, `weights=None`, 10 classes); with `cbam=True`, CBAM on the
  residual branch of each of its 10 residual blocks, through
  `keras_attention.attach(where="residual")`.
* `sag_mask_head()`: CenterMask's SAG-Mask head on 14x14 RoI features.
* `thundernet_block()`: ThunderNet's CEM + light RPN + SAM on C4/C5 maps.
"""

import numpy as np

import keras_attention as ka
from keras_attention.backend import keras

ALPHA = 0.35
NUM_CLASSES = 10


def _rescaled(base, size):
    """`base` behind a Rescaling that maps [0, 255] to MobileNet's [-1, 1]."""
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_minus1_1")(inputs)
    return keras.Model(inputs, base(x), name=base.name)


def mobilenet_v2(size=96, cbam=False, alpha=ALPHA, classes=NUM_CLASSES, preserve_outputs=True):
    """MobileNetV2 (random init), optionally with CBAM before each of its 10 residual Adds.

    `preserve_outputs=True` starts CBAM as the identity (what `attach` does for
    fine-tuning); the paper's initialisation halves the signal at each gate,
    which a short from-scratch training run on a 10-block network feels.
    """
    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3),
        alpha=alpha,
        weights=None,
        include_top=True,
        classes=classes,
        classifier_activation=None,
    )
    if cbam:
        base = ka.attach(base, "cbam", where="residual", preserve_outputs=preserve_outputs, reduction=16)
        base._name = "mobilenetv2_cbam"  # noqa: SLF001 - a readable name in tables
    else:
        base._name = "mobilenetv2"  # noqa: SLF001
    return _rescaled(base, size)


def sag_mask_head(num_classes=4, filters=64, num_convs=4):
    """CenterMask's SAG-Mask head: (N, 14, 14, filters) RoI features -> (N, 28, 28, num_classes) logits."""
    inputs = keras.Input((14, 14, filters), name="roi_features")
    outputs = ka.SAGMaskHead(num_classes, filters=filters, num_convs=num_convs)(inputs)
    return keras.Model(inputs, outputs, name="sag_mask_head")


def thundernet_block(c4_channels=116, c5_channels=232, size=20, num_anchors=25):
    """ThunderNet CEM + RPN + SAM on SNet-like C4 (size x size) and C5 (size/2) maps (320x320 input)."""
    c4 = keras.Input((size, size, c4_channels), name="c4")
    c5 = keras.Input(((size + 1) // 2, (size + 1) // 2, c5_channels), name="c5")
    cem = ka.ContextEnhancement(filters=245)([c4, c5])
    rpn_features, objectness, deltas = ka.LightRPNHead(num_anchors=num_anchors, filters=256)(cem)
    sam = ka.RPNGuidedSpatialAttention()([cem, rpn_features])
    return keras.Model([c4, c5], [sam, objectness, deltas], name="thundernet_cem_rpn_sam")


NAMES = ("mobilenetv2", "mobilenetv2_cbam", "sag_mask_head", "thundernet_cem_rpn_sam")


def build(name, size=96):
    if name == "mobilenetv2":
        return mobilenet_v2(size)
    if name == "mobilenetv2_cbam":
        return mobilenet_v2(size, cbam=True)
    if name == "sag_mask_head":
        return sag_mask_head()
    if name == "thundernet_cem_rpn_sam":
        return thundernet_block()
    raise ValueError(f"unknown reference model {name!r}")


def digits_rgb(size):
    """scikit-learn's digits as RGB images in [0, 255]: (x_train, y_train), (x_test, y_test)."""
    from keras_attention.data import digits

    return digits(size=size, channels=3)


def train_classifier(model, x, y, epochs=2, batch_size=32, seed=0):
    """A short training run so int8 calibration sees live activations (not fading random ones)."""
    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    return float(history.history["accuracy"][-1])


def random_inputs(model, count, seed=0):
    """Positive, image-like random inputs for the non-classifier models (one array per input)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=(count,) + tuple(t.shape[1:])).astype("float32") for t in model.inputs]
    return arrays[0] if len(arrays) == 1 else arrays
