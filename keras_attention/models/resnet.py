"""ResNets with CBAM, SE or ECA, built so that published PyTorch checkpoints load into them exactly.

Each builder reproduces its source's architecture in Keras layers named after
the source's modules, dots written as underscores (PyTorch's `layer1.0.conv2`
is the layer `layer1_0_conv2`; Keras on PyTorch refuses dots in names, and
one naming on every backend keeps `.keras` files portable). A checkpoint key
is that module path plus the PyTorch parameter name, and
`keras_attention.models.checkpoints` maps every tensor by that rule.

What differs from Keras Applications' ResNet50 and why:
- The stride of a bottleneck sits in its 3x3 convolution (torchvision's "v1.5",
  which both sources use), not in the first 1x1.
- PyTorch pads a strided convolution or pooling (k - 1) / 2 on every side;
  Keras' "same" pads 0 before and 1 after on even sizes. Strided layers are
  therefore an explicit `ZeroPadding2D` and a "valid" layer.
- BatchNormalization has PyTorch's epsilon 1e-5 (Keras: 1e-3) and momentum 0.9
  (PyTorch's 0.1).
- The official CBAM code pools the last feature map with AvgPool2d(7), the
  global average at the 224 x 224 input it was trained on; here it is a
  global average at any input size.
"""

import dataclasses

from keras_attention._checks import check_int
from keras_attention.backend import image_data_format, keras
from keras_attention.layers import CBAM, EfficientChannelAttention, SqueezeExcitation
from keras_attention.layers import _validation as v
from keras_attention.layers._widths import make_divisible
from keras_attention.models._common import POOLINGS, check_weights, input_shape_of
from keras_attention.models.checkpoints import load_checkpoint


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One published architecture: what the builder varies between sources."""

    name: str
    blocks: tuple
    attention: str  # "cbam" (official CBAM code), "se" or "eca" (timm)
    deep_stem: bool = False  # timm's "d" variants: three 3x3 convolutions instead of one 7x7
    avg_down: bool = False  # timm's "d" variants: average pooling before the projection shortcut


RECIPES = {
    "resnet50_cbam": Recipe("resnet50_cbam", (3, 4, 6, 3), "cbam"),
    "resnet101_cbam": Recipe("resnet101_cbam", (3, 4, 23, 3), "cbam"),
    "seresnet50": Recipe("seresnet50", (3, 4, 6, 3), "se"),
    "ecaresnet50d": Recipe("ecaresnet50d", (3, 4, 6, 3), "eca", deep_stem=True, avg_down=True),
    "ecaresnet101d": Recipe("ecaresnet101d", (3, 4, 23, 3), "eca", deep_stem=True, avg_down=True),
}


class _Builder:
    """Adds the layers of one model; `df` is its data format, `axis` its channel axis."""

    def __init__(self, recipe, data_format):
        self.recipe = recipe
        self.df = data_format
        self.axis = -1 if data_format == "channels_last" else 1

    def conv(self, x, filters, kernel_size, name, strides=1):
        if strides > 1 and kernel_size > 1:  # PyTorch's symmetric padding, see the module docstring
            x = keras.layers.ZeroPadding2D(kernel_size // 2, data_format=self.df, name=f"{name}_pad")(x)
        padding = "valid" if strides > 1 else "same"
        return keras.layers.Conv2D(
            filters, kernel_size, strides, padding, data_format=self.df, use_bias=False, name=name
        )(x)

    def bn(self, x, name):
        return keras.layers.BatchNormalization(axis=self.axis, momentum=0.9, epsilon=1e-5, name=name)(x)

    def relu(self, x, name):
        return keras.layers.ReLU(name=name)(x)

    def stem(self, x):
        if self.recipe.deep_stem:  # conv1 is an nn.Sequential: conv, bn, relu, conv, bn, relu, conv
            x = self.relu(self.bn(self.conv(x, 32, 3, "conv1_0", strides=2), "conv1_1"), "conv1_2")
            x = self.relu(self.bn(self.conv(x, 32, 3, "conv1_3"), "conv1_4"), "conv1_5")
            x = self.conv(x, 64, 3, "conv1_6")
        else:
            x = self.conv(x, 64, 7, "conv1", strides=2)
        x = self.relu(self.bn(x, "bn1"), "act1")
        # After a ReLU, zero padding is PyTorch's -inf padding of MaxPool2d(3, 2, padding=1).
        x = keras.layers.ZeroPadding2D(1, data_format=self.df, name="maxpool_pad")(x)
        return keras.layers.MaxPooling2D(3, 2, data_format=self.df, name="maxpool")(x)

    def attention(self, x, channels, name):
        kind = self.recipe.attention
        if kind == "cbam":  # official code: MLP with biases, C // 16 hidden, max-then-mean 7x7 conv + BN
            layer = CBAM(
                reduction=16,
                use_bias=True,
                use_batchnorm=True,
                spatial_pooling=("max", "avg"),
                data_format=self.df,
                name=f"{name}_cbam",
            )
        elif kind == "se":  # timm's SEModule: 1x1 convolutions with biases, make_divisible(C / 16, 8) hidden
            layer = SqueezeExcitation(
                hidden_channels=make_divisible(channels / 16), data_format=self.df, name=f"{name}_se"
            )
        else:  # timm's EcaModule: kernel from the channel count (the same rule as the layer's default)
            layer = EfficientChannelAttention(data_format=self.df, name=f"{name}_se")
        return layer(x)

    def shortcut(self, x, filters, strides, name):
        if self.recipe.avg_down:  # AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False), 1x1 conv, BN
            if strides > 1:  # "same" average pooling: a partial last window averages only what it covers
                x = keras.layers.AveragePooling2D(2, strides, "same", data_format=self.df, name=f"{name}_0")(x)
            return self.bn(self.conv(x, filters, 1, f"{name}_1"), f"{name}_2")
        x = keras.layers.Conv2D(filters, 1, strides, data_format=self.df, use_bias=False, name=f"{name}_0")(x)
        return self.bn(x, f"{name}_1")

    def bottleneck(self, x, planes, strides, name, project):
        shortcut = self.shortcut(x, planes * 4, strides, f"{name}_downsample") if project else x
        y = self.relu(self.bn(self.conv(x, planes, 1, f"{name}_conv1"), f"{name}_bn1"), f"{name}_act1")
        y = self.relu(self.bn(self.conv(y, planes, 3, f"{name}_conv2", strides), f"{name}_bn2"), f"{name}_act2")
        y = self.bn(self.conv(y, planes * 4, 1, f"{name}_conv3"), f"{name}_bn3")
        y = self.attention(y, planes * 4, name)
        y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
        return self.relu(y, f"{name}_act3")

    def features(self, x):
        x = self.stem(x)
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), self.recipe.blocks)):
            for index in range(count):
                strides = 2 if stage > 0 and index == 0 else 1
                x = self.bottleneck(x, planes, strides, f"layer{stage + 1}_{index}", project=index == 0)
        return x


def build(
    recipe,
    include_top=True,
    weights=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    data_format=None,
    name=None,
):
    """Builds `recipe` (a `Recipe` or a key of `RECIPES`); the public builders call this."""
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    caller = f"keras_attention.models.{recipe.name}"
    check_weights(caller, recipe.name, weights)
    data_format = v.normalize_data_format(caller, data_format or image_data_format())
    if pooling not in POOLINGS:
        raise ValueError(f"{caller}: `pooling` must be one of {POOLINGS}; got {pooling!r}.")
    classes = check_int(caller, "classes", classes)
    inputs = keras.Input(input_shape_of(caller, input_shape, include_top, data_format), name="input")
    x = _Builder(recipe, data_format).features(inputs)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="global_pool")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="fc")(x)
    elif pooling:
        pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        x = pool(data_format=data_format, name="global_pool")(x)
    model = keras.Model(inputs, x, name=name or recipe.name)
    if weights is not None:
        load_checkpoint(model, weights)
    return model


_DOC = """{summary}

    Source: {source}. Published weights: {weights_note}

    Args:
        include_top: the classifier (`global_pool` + Dense `fc`) on top.
        weights: `None` (random initialisation) or the path of a checkpoint
            file you downloaded: {weights_arg}. Loaded with every tensor
            accounted for (`keras_attention.models.load_checkpoint`); with
            `include_top=False` the checkpoint's `fc` is left out.
        input_shape: `(height, width, 3)` (channels_last) or `(3, height,
            width)`; default 224 x 224 with the top, any size without it.
        pooling: without the top: `None` (the 4-D feature map), `"avg"` or
            `"max"` (global pooling to a vector).
        classes: outputs of `fc` (1000 for the ImageNet checkpoint).
        classifier_activation: activation of `fc` ("softmax" as in Keras
            Applications; `None` gives the checkpoint's logits).
        data_format: "channels_last" or "channels_first"; default: Keras'
            global image data format.
        name: the model's name.

    Input: RGB images normalised as the source trained them:
        `keras.applications.imagenet_utils.preprocess_input(x, mode="torch")`
        (x / 255, then ImageNet mean and standard deviation).

    Returns:
        A functional `keras.Model` whose layer names are the checkpoint's
        module paths with dots as underscores (`layer1_0_conv1` for
        `layer1.0.conv1`): usable with `attach`, QAT and
        TFLite like any Keras model.

    Example:
    >>> model = {fn}(include_top=False, input_shape=(64, 64, 3), pooling="avg")
    >>> model.output_shape
    (None, 2048)
    """


def _public(key, summary, source, weights_note, weights_arg):
    def builder(
        include_top=True,
        weights=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        data_format=None,
        name=None,
    ):
        return build(key, include_top, weights, input_shape, pooling, classes, classifier_activation, data_format, name)

    builder.__name__ = builder.__qualname__ = key
    builder.__doc__ = _DOC.format(
        summary=summary, source=source, weights_note=weights_note, weights_arg=weights_arg, fn=key
    )
    return builder


_OFFICIAL = "the official CBAM code (github.com/Jongchan/attention-module, MODELS/model_resnet.py)"
_OFFICIAL_ARG = (
    "the official `.pth` (a `torch.save` of `{'state_dict': ...}` with `module.` prefixes, or a bare state dict; "
    "needs torch)"
)
_TIMM_ARG = "timm's `model.safetensors` from the Hugging Face Hub, or a `.pth` state dict with timm's names"

resnet50_cbam = _public(
    "resnet50_cbam",
    "ResNet-50 with CBAM after the last BatchNorm of every bottleneck (Woo et al., ECCV 2018).",
    _OFFICIAL,
    "RESNET50_CBAM_new_name_wrap.pth, 77.62 % top-1 on ImageNet (100 epochs), 28.09 M parameters.",
    _OFFICIAL_ARG,
)
resnet101_cbam = _public(
    "resnet101_cbam",
    "ResNet-101 with CBAM in every bottleneck, as ResNet-50 + CBAM.",
    _OFFICIAL,
    "none (the official code builds depth 101, the authors published only ResNet-50 weights).",
    _OFFICIAL_ARG,
)
seresnet50 = _public(
    "seresnet50",
    "SE-ResNet-50: Squeeze-and-Excitation after the last BatchNorm of every bottleneck (Hu et al., CVPR 2018).",
    "timm's `seresnet50` (github.com/huggingface/pytorch-image-models, timm/models/resnet.py)",
    "timm/seresnet50.ra2_in1k and seresnet50.a1_in1k on the Hugging Face Hub.",
    _TIMM_ARG,
)
ecaresnet50d = _public(
    "ecaresnet50d",
    "ECA-ResNet-50-D: ECA in every bottleneck, deep 3x3 stem, average-pool shortcuts (Wang et al., CVPR 2020).",
    "timm's `ecaresnet50d` (timm/models/resnet.py)",
    "timm/ecaresnet50d.miil_in1k on the Hugging Face Hub.",
    _TIMM_ARG,
)
ecaresnet101d = _public(
    "ecaresnet101d",
    "ECA-ResNet-101-D: as ECA-ResNet-50-D with 23 blocks in the third stage.",
    "timm's `ecaresnet101d` (timm/models/resnet.py)",
    "timm/ecaresnet101d.miil_in1k on the Hugging Face Hub.",
    _TIMM_ARG,
)
