"""MobileNetV2 with Coordinate Attention, built so that the authors' checkpoint loads into it exactly.

The architecture of `mbv2_ca.py` (houqb/CoordAttention): torchvision's
MobileNetV2 with a `CoordAtt(hidden, hidden)` block (hidden width
`max(8, hidden // 32)`, biases, BatchNorm, h_swish) inside every inverted
residual with expansion 6, after the depthwise convolution's ReLU6 and before
the projection. Layers are named after the source's modules, dots as
underscores (`features.2.conv.6` is the CoordinateAttention layer
`features_2_conv_6`), as in `keras_attention.models.resnet`; strided
convolutions pad (k - 1) / 2 on every side as PyTorch does (an explicit
`ZeroPadding2D` and a "valid" convolution); BatchNorm has PyTorch's epsilon.
"""

from keras_attention._checks import check_int
from keras_attention.backend import image_data_format, keras
from keras_attention.layers import _validation as v
from keras_attention.layers._widths import make_divisible
from keras_attention.layers.coord import CoordinateAttention
from keras_attention.models._common import POOLINGS, check_weights, input_shape_of
from keras_attention.models.checkpoints import load_checkpoint

# t (expansion), c (output channels), n (blocks), s (first stride): mbv2_ca.py's cfgs.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class _Builder:
    def __init__(self, data_format):
        self.df = data_format
        self.axis = -1 if data_format == "channels_last" else 1

    def conv(self, x, filters, kernel_size, name, strides=1, depthwise=False):
        if strides > 1:  # PyTorch's symmetric padding of a strided 3x3 convolution
            x = keras.layers.ZeroPadding2D(kernel_size // 2, data_format=self.df, name=f"{name}_pad")(x)
        padding = "valid" if strides > 1 else "same"
        if depthwise:
            layer = keras.layers.DepthwiseConv2D(
                kernel_size, strides, padding, data_format=self.df, use_bias=False, name=name
            )
        else:
            layer = keras.layers.Conv2D(
                filters, kernel_size, strides, padding, data_format=self.df, use_bias=False, name=name
            )
        return layer(x)

    def bn(self, x, name):
        return keras.layers.BatchNormalization(axis=self.axis, momentum=0.9, epsilon=1e-5, name=name)(x)

    def relu6(self, x, name):
        return keras.layers.ReLU(6.0, name=name)(x)

    def conv_bn_relu6(self, x, filters, kernel_size, prefix, strides=1, first=0, depthwise=False):
        """conv, BatchNorm, ReLU6 as modules `first`, `first + 1`, `first + 2` of the Sequential `prefix`."""
        x = self.conv(x, filters, kernel_size, f"{prefix}_{first}", strides, depthwise)
        return self.relu6(self.bn(x, f"{prefix}_{first + 1}"), f"{prefix}_{first + 2}")

    def inverted_residual(self, x, inputs, outputs, strides, expansion, name):
        hidden = round(inputs * expansion)
        prefix = f"{name}_conv"
        y = x
        if expansion == 1:
            y = self.conv_bn_relu6(y, hidden, 3, prefix, strides, 0, depthwise=True)
            y = self.bn(self.conv(y, outputs, 1, f"{prefix}_3"), f"{prefix}_4")
        else:
            y = self.conv_bn_relu6(y, hidden, 1, prefix, 1, 0)
            y = self.conv_bn_relu6(y, hidden, 3, prefix, strides, 3, depthwise=True)
            y = CoordinateAttention(reduction=32, min_channels=8, data_format=self.df, name=f"{prefix}_6")(y)
            y = self.bn(self.conv(y, outputs, 1, f"{prefix}_7"), f"{prefix}_8")
        if strides == 1 and inputs == outputs:
            return keras.layers.Add(name=f"{name}_add")([x, y])
        return y

    def features(self, x, alpha):
        divisor = 4 if alpha == 0.1 else 8
        channels = make_divisible(32 * alpha, divisor, round_limit=0.9)
        x = self.conv_bn_relu6(x, channels, 3, "features_0", strides=2)
        index = 1
        for expansion, filters, count, first_stride in SETTINGS:
            outputs = make_divisible(filters * alpha, divisor, round_limit=0.9)
            for i in range(count):
                x = self.inverted_residual(
                    x, channels, outputs, first_stride if i == 0 else 1, expansion, f"features_{index}"
                )
                channels, index = outputs, index + 1
        last = make_divisible(1280 * alpha, divisor, round_limit=0.9) if alpha > 1.0 else 1280
        return self.conv_bn_relu6(x, last, 1, "conv")


def mobilenetv2_ca(
    include_top=True,
    weights=None,
    input_shape=None,
    alpha=1.0,
    pooling=None,
    classes=1000,
    dropout=0.1,
    classifier_activation="softmax",
    data_format=None,
    name=None,
):
    """MobileNetV2 with Coordinate Attention (Hou, Zhou & Feng, CVPR 2021), the authors' `mbv2_ca.py`.

    Source: github.com/houqb/CoordAttention (`mbv2_ca.py`, `coordatt.py`).
    Published weights: `mbv2_ca.pth` in that repository (MobileNetV2 1.0 +
    CA, 74.3 % ImageNet top-1 as published, against 72.3 % without CA). The
    file's classifier is keyed `classifier.weight` where `mbv2_ca.py` says
    `classifier.1.weight`; both load.

    Args:
        include_top: the classifier (`global_pool`, Dropout `classifier_0`,
            Dense `classifier_1`) on top.
        weights: `None` (random initialisation) or the path of a checkpoint
            file you downloaded (`mbv2_ca.pth`; reading it needs torch). Every
            tensor is accounted for (`keras_attention.models.load_checkpoint`).
        input_shape: `(height, width, 3)` (channels_last) or `(3, height,
            width)`; default 224 x 224 with the top, any size without it.
        alpha: the width multiplier (`width_mult`); the checkpoint is 1.0.
        pooling: without the top: `None`, `"avg"` or `"max"`.
        classes: outputs of the classifier (1000 for the ImageNet checkpoint).
        dropout: the classifier's dropout rate (0.1 as in `mbv2_ca.py`).
        classifier_activation: "softmax", or `None` for the logits.
        data_format: "channels_last" or "channels_first"; default: Keras'
            global image data format.
        name: the model's name.

    Input: RGB images as torchvision trains them:
        `keras.applications.imagenet_utils.preprocess_input(x, mode="torch")`.

    Returns:
        A functional `keras.Model` whose layer names are the checkpoint's
        module paths with dots as underscores.

    Example:
    >>> model = mobilenetv2_ca(include_top=False, input_shape=(64, 64, 3), pooling="avg")
    >>> model.output_shape
    (None, 1280)
    """
    caller = "keras_attention.models.mobilenetv2_ca"
    check_weights(caller, "mobilenetv2_ca", weights)
    data_format = v.normalize_data_format(caller, data_format or image_data_format())
    if pooling not in POOLINGS:
        raise ValueError(f"{caller}: `pooling` must be one of {POOLINGS}; got {pooling!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 4:
        raise ValueError(f"{caller}: `alpha` (the width multiplier) must be a number in (0, 4]; got {alpha!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"{caller}: `dropout` must be a rate in [0, 1); got {dropout!r}.")
    classes = check_int(caller, "classes", classes)
    inputs = keras.Input(input_shape_of(caller, input_shape, include_top, data_format), name="input")
    x = _Builder(data_format).features(inputs, alpha)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="global_pool")(x)
        x = keras.layers.Dropout(dropout, name="classifier_0")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="classifier_1")(x)
    elif pooling:
        pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        x = pool(data_format=data_format, name="global_pool")(x)
    model = keras.Model(inputs, x, name=name or "mobilenetv2_ca")
    if weights is not None:
        load_checkpoint(model, weights)
    return model
