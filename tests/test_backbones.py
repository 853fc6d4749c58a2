"""`attach()`: attention inside Keras Applications backbones and user-built CNNs.

For every backbone the issue names: the number of inserted layers equals the
number of residual blocks (or stages) counted independently from the
architecture (Add layers, LayerScale layers, DenseNet's concatenations, the
resolutions of the convolutions, and the block counts of the papers), each
inserted layer sits where the CBAM paper puts it (checked by the anchor's
name), the output shape is unchanged, and with `preserve_outputs=True` the
outputs equal the original's to 1e-5 (relative to the output's scale: random
backbones' activations fade), while randomising the inserted layers does change
them, so the comparison can fail.

Keras 3 on TensorFlow runs the whole list (marked slow: building the big
backbones takes minutes on 2 cores); Keras 3 on JAX and tf_keras run a
representative subset.
"""

import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backbones import attention_layers
from keras_attention.backend import BACKEND, IS_LEGACY, keras, ops
from tests.kit.harness import gradients, to_numpy
from tests.kit.models import USER_CNN_RESIDUAL, USER_CNN_STAGES, images, user_cnn

L = keras.layers
KERAS3_TF = not IS_LEGACY and BACKEND == "tensorflow"
REPRESENTATIVE = {"ResNet50", "MobileNetV2", "EfficientNetB0", "ConvNeXtTiny", "user_cnn"}
LEGACY_ONLY = {"RegNetX002", "ResNetRS50"}  # families tf_keras has and Keras 3 dropped


# ----------------------------------------------------------------------------
# Models and independent counts
# ----------------------------------------------------------------------------


def count_add_layers(model):
    return sum(isinstance(layer, L.Add) for layer in model.layers)


def count_operator_adds(model):
    """tf_keras' `x + y` between Keras tensors: a TFOpLambda layer of the `__operators__.add` symbol."""
    return sum(getattr(layer, "symbol", None) == "__operators__.add" for layer in model.layers)


def count_dense_new_features(model):
    """Inputs of a Concatenate computed from another of its inputs (the new features of a dense merge).

    Walks Keras' own graph (each tensor's producing layer and its inbound nodes), not ours.
    """

    def ancestors(layer):
        seen, stack = set(), [layer]
        while stack:
            for node in stack.pop()._inbound_nodes:
                inputs = node.input_tensors
                for t in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
                    producer = t._keras_history[0]
                    if id(producer) not in seen:
                        seen.add(id(producer))
                        stack.append(producer)
        return seen

    count = 0
    for layer in model.layers:
        if isinstance(layer, L.Concatenate):
            sources = [t._keras_history[0] for t in layer.input]
            count += sum(any(s is not t and id(s) in ancestors(t) for s in sources) for t in sources)
    return count


def count_class(name):
    return lambda model: sum(type(layer).__name__ == name for layer in model.layers)


def count_suffix(suffix):
    return lambda model: sum(layer.name.endswith(suffix) for layer in model.layers)


def count_conv_resolutions(model):
    """Stages = distinct spatial sizes the model's convolutions compute at."""
    convs = (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D)
    return len({tuple(layer.output.shape[1:3]) for layer in model.layers if isinstance(layer, convs)})


def count_feature_map_resolutions(model):
    """Stages of a CNN with a squeeze-excitation branch: conv resolutions, convs on pooled 1x1 maps left out."""
    convs = (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D)
    return len(
        {
            tuple(layer.output.shape[1:3])
            for layer in model.layers
            if isinstance(layer, convs) and tuple(layer.input.shape[1:3]) != (1, 1)
        }
    )


def efficientnet_adds(depth_coefficient):
    """EfficientNet's residual blocks: every repeat but the first of each stage (Tan & Le, Table 1)."""
    return sum(math.ceil(depth_coefficient * r) - 1 for r in (1, 2, 2, 3, 3, 4, 1))


class Spec:
    def __init__(
        self, name, where="residual", count=count_add_layers, known=None, anchors=None, size=32, prepare=None, **kwargs
    ):
        self.id = name if where == "residual" else f"{name}-{where}"
        self.name, self.where, self.count, self.known = name, where, count, known
        self.anchors, self.size, self.prepare, self.kwargs = anchors, size, prepare, kwargs

    def build(self):
        if self.name == "user_cnn":
            return user_cnn((self.size, self.size, 3))
        kwargs = dict(weights=None, include_top=False, input_shape=(self.size, self.size, 3))
        kwargs.update(self.kwargs)
        if kwargs["include_top"]:
            kwargs["classifier_activation"] = None  # logits: a softmax would hide faded activations
        model = getattr(keras.applications, self.name)(**kwargs)
        if self.prepare:
            self.prepare(model)
        return model


def trained_layer_scales(model):
    """ConvNeXt starts its LayerScales at 1e-6, which hides the residual branches; trained ones are O(1)."""
    for layer in model.layers:
        if type(layer).__name__ == "LayerScale":
            layer.set_weights([np.ones(w.shape, "float32") for w in layer.get_weights()])


RESNET_V1 = r"^conv\d_block\d+_3_bn_cbam$"
RESNET_V2 = r"^conv\d_block\d+_3_conv_cbam$"
EFFICIENTNET = r"^block\d[a-z]_project_bn_cbam$"
EFFICIENTNET_V2 = r"^block\d[a-z]_project_(bn|activation)_cbam$"
DEPTHS = {"B0": 1.0, "B1": 1.1, "B2": 1.2, "B3": 1.4, "B4": 1.8, "B5": 2.2, "B6": 2.6, "B7": 3.1}

SPECS = [
    Spec("user_cnn", count=lambda m: len(USER_CNN_RESIDUAL), known=3, anchors=[n + "_cbam" for n in USER_CNN_RESIDUAL]),
    Spec(
        "user_cnn",
        where="stages",
        count=count_feature_map_resolutions,
        known=3,
        anchors=[n + "_cbam" for n in USER_CNN_STAGES],
    ),
    Spec("ResNet50", known=16, anchors=RESNET_V1),
    Spec(
        "ResNet50",
        where="stages",
        count=count_conv_resolutions,
        known=5,
        anchors=[
            "conv1_relu_cbam",
            "conv2_block3_out_cbam",
            "conv3_block4_out_cbam",
            "conv4_block6_out_cbam",
            "conv5_block3_out_cbam",
        ],
    ),
    Spec("ResNet101", known=33, anchors=RESNET_V1),
    Spec("ResNet152", known=50, anchors=RESNET_V1, include_top=True),
    Spec("ResNet50V2", known=16, anchors=RESNET_V2, include_top=True),
    Spec("ResNet101V2", known=33, anchors=RESNET_V2),
    Spec("ResNet152V2", known=50, anchors=RESNET_V2),
    Spec(
        "MobileNet",
        where="stages",
        count=count_conv_resolutions,
        known=5,
        anchors=r"^conv_pw_\d+_relu_cbam$",
        include_top=True,
    ),
    Spec("MobileNetV2", known=10, anchors=r"^block_\d+_project_BN_cbam$", alpha=0.35),
    Spec("MobileNetV3Small", known=6, anchors=r"^expanded_conv_\d+_project_bn_cbam$", include_top=True),
    Spec("MobileNetV3Large", known=10, anchors=r"^expanded_conv(_\d+)?_project_bn_cbam$"),
    *[
        Spec(f"EfficientNet{b}", known=efficientnet_adds(d), anchors=EFFICIENTNET, include_top=b in ("B0", "B1"))
        for b, d in DEPTHS.items()
    ],
    Spec("EfficientNetV2B0", known=15, anchors=EFFICIENTNET_V2),
    Spec("EfficientNetV2S", known=35, anchors=EFFICIENTNET_V2),
    Spec(
        "ConvNeXtTiny",
        count=count_class("LayerScale"),
        known=3 + 3 + 9 + 3,
        prepare=trained_layer_scales,
        anchors=r"^convnext_tiny_stage_\d_block_\d+_layer_scale_cbam$",
    ),
    Spec(
        "DenseNet121", count=count_suffix("_concat"), known=6 + 12 + 24 + 16, anchors=r"^conv\d_block\d+_2_conv_cbam$"
    ),
    Spec(
        "DenseNet121",
        where="stages",
        count=count_conv_resolutions,
        known=5,
        anchors=r"^(conv1_relu|conv1/relu|pool\d_conv|relu)_cbam$",
    ),
    Spec(
        "VGG16",
        where="stages",
        count=count_suffix("_pool"),
        known=5,
        include_top=True,
        anchors=[
            "block1_conv2_cbam",
            "block2_conv2_cbam",
            "block3_conv3_cbam",
            "block4_conv3_cbam",
            "block5_conv3_cbam",
        ],
    ),
    Spec("Xception", known=3 + 8 + 1, anchors=r"^(block\d+_pool|block\d+_sepconv3_bn)_cbam$", size=71),
    # The residual sum is keras.applications' own CustomScaleLayer (x + scale * r), not an Add.
    Spec(
        "InceptionResNetV2",
        count=count_class("CustomScaleLayer"),
        known=10 + 20 + 10,
        size=75,
        anchors=r"^block(35|17|8)_\d+_conv_cbam$",
    ),
    # No residual blocks: each cell sums pairs of branches (80 Adds: the deeper input of each) and
    # concatenates those sums with its input (52 new features, counted in Keras' own graph).
    Spec(
        "NASNetMobile",
        count=lambda m: count_add_layers(m) + count_dense_new_features(m),
        known=132,
        anchors=r"^(separable_conv_\d_bn_|add_|normal_add_|normal_(left|right)|reduction_left).*cbam$",
    ),
    # tf_keras only (Keras 3 dropped them). RegNetX-200MF's depths (1, 1, 4, 7); the sum is `x + skip`.
    Spec(
        "RegNetX002",
        count=count_operator_adds,
        known=13,
        anchors=r"^regnetx002_Stage_\d_XBlock_\d_conv_1x1_2_bn_cbam$",
    ),
    Spec("ResNetRS50", known=3 + 4 + 6 + 3, anchors=r"^BlockGroup\d__block_\d__se_se_excite_cbam$"),
]
# Families with no residual or dense merge: where="residual" is refused with a pointer to "stages".
NO_RESIDUAL = {"VGG16": "vgg16", "VGG19": "vgg19", "MobileNet": "mobilenet", "InceptionV3": "inception_v3"}


def applications_families():
    """Every model family of the active Keras' applications: module name -> its constructors."""
    families = {}
    for name in dir(keras.applications):
        constructor = getattr(keras.applications, name)
        if name[:1].isupper() and callable(constructor):
            families.setdefault(constructor.__module__.rsplit(".", 1)[-1], []).append(name)
    return families


def spec_params():
    params = []
    for spec in SPECS:
        marks = []
        if spec.name != "user_cnn":
            marks.append(pytest.mark.slow)
        if spec.name != "user_cnn" and not hasattr(keras.applications, spec.name):
            marks.append(pytest.mark.skip(reason=f"this Keras has no keras.applications.{spec.name}"))
        elif not KERAS3_TF and spec.name not in REPRESENTATIVE | LEGACY_ONLY:
            marks.append(
                pytest.mark.skip(
                    reason="the full backbone list runs under Keras 3 on TensorFlow; JAX and tf_keras run "
                    "a representative subset (ResNet50, MobileNetV2, EfficientNetB0, ConvNeXtTiny, user CNN)"
                )
            )
        params.append(pytest.param(spec, id=spec.id, marks=marks))
    return params


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------


def assert_same_function(new, original, x):
    """Outputs equal to 1e-5 relative to the output's scale."""
    expected, actual = to_numpy(original(x, training=False)), to_numpy(new(x, training=False))
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert np.isfinite(scale) and scale > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)
    return expected, scale


def randomize(layers, seed=1):
    rng = np.random.default_rng(seed)
    for layer in layers:
        layer.set_weights([rng.normal(0, 0.5, size=w.shape).astype("float32") for w in layer.get_weights()])


def check_anchors(inserted, anchors):
    names = [layer.name for layer in inserted]
    if isinstance(anchors, str):
        assert all(re.search(anchors, n) for n in names), [n for n in names if not re.search(anchors, n)]
    else:
        assert sorted(names) == sorted(anchors)


def attention_gradients(model, x):
    """Gradient of a scale-free loss w.r.t. every inserted attention weight, in training mode."""
    variables = [w for layer in attention_layers(model) for w in layer.trainable_weights]
    probe = np.random.default_rng(7).normal(size=tuple(model.output.shape[1:])).astype("float32")

    def loss_fn(outputs):
        return ops.sum(outputs * ops.convert_to_tensor(probe)) / ops.maximum(ops.max(ops.abs(outputs)), 1e-30)

    return variables, gradients(model, x, loss_fn, variables)


# ----------------------------------------------------------------------------
# Every backbone
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", spec_params())
def test_attach_backbone(spec):
    original = spec.build()
    layer_count, weights_before = len(original.layers), [w.numpy().copy() for w in original.weights[:4]]
    model = ka.attach(original, "cbam", where=spec.where)

    inserted = attention_layers(model)
    assert len(inserted) == spec.count(original) == spec.known
    assert all(isinstance(layer, ka.CBAM) and layer.channel_attention.start_as_identity for layer in inserted)
    check_anchors(inserted, spec.anchors)
    assert len(model.layers) == layer_count + len(inserted)
    assert [tuple(o.shape) for o in model.outputs] == [tuple(o.shape) for o in original.outputs]

    x = images(2, spec.size)
    expected, scale = assert_same_function(model, original, x)
    # The comparison can fail: attention away from the identity changes the outputs.
    randomize(inserted)
    changed = to_numpy(model(x, training=False))
    assert np.abs(changed - expected).max() > 1e-3 * scale

    # The original is untouched and shares no variable with the copy.
    assert len(original.layers) == layer_count
    assert not {id(w) for w in original.weights} & {id(w) for w in model.weights}
    for before, w in zip(weights_before, original.weights[:4]):
        np.testing.assert_array_equal(before, w.numpy())
    np.testing.assert_array_equal(to_numpy(original(x, training=False)), expected)


def test_every_applications_family_is_covered():
    """A family the active Keras adds fails here until attach(where="residual") is tested on it."""
    families = applications_families()
    tested = {
        getattr(keras.applications, spec.name).__module__.rsplit(".", 1)[-1]
        for spec in SPECS
        if spec.where == "residual" and hasattr(keras.applications, spec.name)
    }
    assert not set(families) - tested - set(NO_RESIDUAL.values()), families
    assert all(name in families[family] for name, family in NO_RESIDUAL.items())


@pytest.mark.run_once(reason="graph analysis")
@pytest.mark.parametrize("name", sorted(NO_RESIDUAL))
def test_families_without_residual_blocks_are_refused_with_a_pointer(name):
    size = 75 if name == "InceptionV3" else 32
    original = getattr(keras.applications, name)(weights=None, include_top=False, input_shape=(size, size, 3))
    with pytest.raises(ValueError, match=f"where='residual' matches nothing: model '{original.name}'.*where='stages'"):
        ka.attach(original, "cbam")
    assert attention_layers(ka.attach(original, "cbam", where="stages"))  # control: the pointer works


def _task_model(backbone, kind):
    """`backbone` inside a model around it: a Sequential, or a functional classifier with preprocessing."""
    if kind == "sequential":
        return keras.Sequential([keras.Input((32, 32, 3)), backbone, keras.layers.Dense(3, name="head")], name="seq")
    inputs = keras.Input((32, 32, 3))
    x = backbone(keras.layers.Rescaling(1 / 255, name="to_unit")(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x), name="task")


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_attach_looks_into_a_backbone_nested_in_a_task_model(kind):
    model = _task_model(user_cnn((32, 32, 3)), kind)
    x = images(2, 32)
    names = [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    head = [np.array(w) for w in model.get_layer("head").get_weights()]
    rules = [
        ("residual", USER_CNN_RESIDUAL),
        ("stages", USER_CNN_STAGES),
        (["user_cnn/b_bn2", "user_cnn/c_out"], ["b_bn2", "c_out"]),
        (lambda layer: layer.name == "a_bn2", ["a_bn2"]),
    ]
    for where, anchors in rules:
        attached = ka.attach(model, "cbam", where=where)
        inserted = attention_layers(attached)
        check_anchors(inserted, [f"{name}_cbam" for name in anchors])
        # The outer model keeps its own layers (preprocessing, head) and their weights.
        assert [layer.name for layer in attached.layers if not isinstance(layer, keras.layers.InputLayer)] == names
        for kept, original in zip(attached.get_layer("head").get_weights(), head):
            np.testing.assert_array_equal(kept, original)
        expected, scale = assert_same_function(attached, model, x)
    # Control: the comparison can fail (the last model's attention moved away from the identity).
    randomize(inserted)
    assert np.abs(to_numpy(attached(x, training=False)) - expected).max() > 1e-3 * scale


def test_nested_models_attach_cannot_serve_are_refused_clearly():
    backbone = user_cnn((32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    shared = keras.Model(inputs, keras.layers.Add()([backbone(inputs), backbone(inputs)]), name="two_heads")
    with pytest.raises(ValueError, match=r"model 'user_cnn' is called 2 times in model 'two_heads'.*itself"):
        ka.attach(shared, "cbam")
    task = _task_model(backbone, "functional")
    with pytest.raises(ValueError, match=r"calls no model named 'nope' \(it calls \['user_cnn'\]\).*'model_name/"):
        ka.attach(task, "cbam", where=["nope/a_bn2"])
    with pytest.raises(ValueError, match=r"no layer named \['a_bn9'\] in model 'user_cnn'"):
        ka.attach(task, "cbam", where=["user_cnn/a_bn9"])

    class Subclassed(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(4, 3, padding="same")

        def call(self, x):
            return self.conv(x) + x[..., :1]

    inputs = keras.Input((32, 32, 3))
    opaque = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(Subclassed(name="mine")(inputs)), name="outer")
    with pytest.raises(
        ValueError,
        match=r"matches nothing in model 'outer', which calls the subclassed model\(s\) "
        r"\['mine'\]",
    ):
        ka.attach(opaque, "cbam")


@pytest.mark.parametrize("size", [None, 48])
def test_any_input_size(size):
    """Unknown spatial size (None) finds the same blocks and stages as a fixed one."""
    model = user_cnn((size, size, 3))
    for where, names in (("residual", USER_CNN_RESIDUAL), ("stages", USER_CNN_STAGES)):
        attached = ka.attach(model, "cbam", where=where)
        check_anchors(attention_layers(attached), [n + "_cbam" for n in names])
        for s in (32, 48) if size is None else (size,):
            assert_same_function(attached, model, images(2, s))


@pytest.mark.slow
@pytest.mark.no_jax(reason="the stage probe is backend-independent; slow on JAX")
def test_unknown_size_backbone():
    original = keras.applications.MobileNetV2(weights=None, include_top=False, alpha=0.35, input_shape=(None, None, 3))
    stages = attention_layers(ka.attach(original, "cbam", where="stages"))
    assert [layer.name for layer in stages] == [
        "block_1_expand_relu_cbam",
        "block_3_expand_relu_cbam",
        "block_6_expand_relu_cbam",
        "block_13_expand_relu_cbam",
        "out_relu_cbam",
    ]
    residual = ka.attach(original, "cbam")
    assert len(attention_layers(residual)) == 10
    assert_same_function(residual, original, images(1, 64))


# ----------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["cbam", "channel", "spatial", "se", "eca", ka.SqueezeExcitation])
def test_every_attention_preserves_outputs(attention):
    original = user_cnn()
    model = ka.attach(original, attention)
    inserted = attention_layers(model)
    key = attention if isinstance(attention, str) else "se"
    assert [layer.name for layer in inserted] == [f"{n}_{key}" for n in USER_CNN_RESIDUAL]
    assert all(type(layer) is ka.layers.ATTENTIONS[key] for layer in inserted)
    assert_same_function(model, original, images(2, 32))


def test_preserve_outputs_false_is_the_papers_initialisation():
    original = user_cnn()
    model = ka.attach(original, "cbam", preserve_outputs=False)
    x = images(2, 32)
    expected = to_numpy(original(x, training=False))
    assert not np.allclose(to_numpy(model(x, training=False)), expected, rtol=1e-3, atol=1e-3)
    assert not any(layer.channel_attention.start_as_identity for layer in attention_layers(model))


def test_attention_kwargs_and_min_channels():
    model = ka.attach(user_cnn(), "cbam", reduction=4, kernel_size=3, gate="hard_sigmoid")
    first = attention_layers(model)[0]
    assert (first.channel_attention.reduction, first.spatial_attention.kernel_size) == (4, 3)
    assert first.channel_attention.gate == "hard_sigmoid"
    assert first.channel_attention.min_channels == 8  # attach's default for thin layers
    # 16 channels at reduction 16 would leave 1 hidden unit; min_channels=8 makes it 8.
    assert first.channel_attention.mlp_reduce.kernel.shape[-1] == 8
    paper = ka.attach(user_cnn(), "cbam", min_channels=None)
    assert attention_layers(paper)[0].channel_attention.mlp_reduce.kernel.shape[-1] == 1
    with pytest.raises(ValueError, match="a_bn2"):
        ka.attach(user_cnn(), "cbam", reduction=32, min_channels=None)
    fixed = ka.attach(user_cnn(), "se", hidden_channels=6)  # a width from a ported checkpoint: no min_channels
    assert {layer.mlp_reduce.kernel.shape[-1] for layer in attention_layers(fixed)} == {6}


def test_where_names_and_callable():
    original = user_cnn()
    model = ka.attach(original, "se", where=["stem_relu", "b_conv2"])
    assert [layer.name for layer in attention_layers(model)] == ["stem_relu_se", "b_conv2_se"]
    assert_same_function(model, original, images(2, 32))

    model = ka.attach(original, "eca", where=lambda layer: isinstance(layer, L.BatchNormalization))
    batchnorms = [layer.name for layer in original.layers if isinstance(layer, L.BatchNormalization)]
    assert sorted(layer.name for layer in attention_layers(model)) == sorted(f"{n}_eca" for n in batchnorms)
    assert_same_function(model, original, images(2, 32))


@pytest.mark.run_once(reason="graph surgery, the same in every mode")
def test_max_size_places_attention_only_on_small_maps():
    original = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None)
    # Independently: the spatial side of each residual Add's output, from the backbone's own graph.
    add_sides = [layer.output.shape[1] for layer in original.layers if isinstance(layer, L.Add)]
    assert sorted(add_sides) == [3, 3, 6, 6, 6, 6, 6, 12, 12, 24]  # control: the placement below differs
    for max_size, expected in ((6, 7), (12, 9), (96, 10)):
        model = ka.attach(original, "se", max_size=max_size)
        inserted = attention_layers(model)
        assert len(inserted) == expected == sum(side <= max_size for side in add_sides), max_size
        assert all(layer.input.shape[1] <= max_size for layer in inserted)
        assert_same_function(model, original, images(2, 96))
    with pytest.raises(ValueError, match=r"attach: max_size=2 leaves none of the 10 blocks where='residual'.*3x3"):
        ka.attach(original, "se", max_size=2)
    with pytest.raises(ValueError, match=r"attach: `max_size` must be an integer >= 1; got 0"):
        ka.attach(original, "se", max_size=0)
    free = keras.applications.MobileNetV2(input_shape=(None, None, 3), alpha=0.35, include_top=False, weights=None)
    with pytest.raises(ValueError, match=r"attach: max_size=7 .* maps of unknown size .*input_shape=\(224, 224, 3\)"):
        ka.attach(free, "se", max_size=7)


def test_sequential_with_input_shape():
    original = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            L.Conv2D(8, 3, padding="same", name="c1"),
            L.MaxPooling2D(name="p1"),
            L.Conv2D(16, 3, padding="same", name="c2"),
            L.GlobalAveragePooling2D(name="gap"),
        ],
        name="seq",
    )
    model = ka.attach(original, "cbam", where="stages")
    assert [layer.name for layer in attention_layers(model)] == ["c1_cbam", "c2_cbam"]
    assert_same_function(model, original, images(2, 16))


def test_weights_are_copied_not_shared():
    original = user_cnn()
    rng = np.random.default_rng(3)
    for layer in original.layers:  # trained-looking weights, BN statistics included
        if layer.weights:
            layer.set_weights([rng.uniform(0.5, 1.5, size=w.shape).astype("float32") for w in layer.get_weights()])
    model = ka.attach(original, "cbam")
    for layer in original.layers:
        for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert_same_function(model, original, images(2, 32))
    model.get_layer("a_conv1").set_weights([np.zeros(w.shape, "float32") for w in model.get_layer("a_conv1").weights])
    assert np.any(original.get_layer("a_conv1").get_weights()[0] != 0)


class _Scale(L.Layer):
    """A user's layer with a weight, configured by its constructor's arguments only (no "name" in its config)."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.w = self.add_weight(shape=(1,), initializer="ones", name="w")

    def call(self, x):
        return x * self.factor * self.w


class _ScaleDroppingKwargs(_Scale):
    def __init__(self, factor, **kwargs):
        super().__init__(factor)  # the name never reaches Layer: its copy cannot be named like it

    def get_config(self):
        return {"factor": self.factor}


def _scaled_cnn(scale):
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(scale(inputs))
    x = L.Add(name="add")([x, L.Conv2D(8, 3, padding="same", name="conv2")(x)])
    return keras.Model(inputs, x, name="scaled_cnn")


def test_a_layer_whose_config_has_no_name_keeps_it_or_is_named():
    """Was `KeyError: 'scale'`: the copy of a layer named 'scale' came back from its config as '_scale_1'."""
    scale = _Scale(2.0, name="scale")
    original = _scaled_cnn(scale)
    scale.w.assign(np.array([3.0], "float32"))
    model = ka.attach(original, "se", where=["add"])
    assert model.get_layer("scale") is not scale and float(to_numpy(model.get_layer("scale").w)[0]) == 3.0
    assert_same_function(model, original, images(2, 8))
    # A constructor that drops **kwargs (so even the original has a generated name): Keras 3 lets attach name
    # the copy like it (as for keras-hub's DepthwiseConvBlock, which rewrites its own name); tf_keras does
    # not, and the error names the layer and the fix.
    dropping = _scaled_cnn(_ScaleDroppingKwargs(2.0, name="scale"))
    if IS_LEGACY:
        with pytest.raises(
            ValueError,
            match=r"attach: layer '(\w+)' \(_ScaleDroppingKwargs\) comes back from its config as '\1_\d+': its "
            r"`get_config\(\)` leaves out the layer's name.*super\(\)\.get_config\(\)",
        ):
            ka.attach(dropping, "se", where=["add"])
    else:
        model = ka.attach(dropping, "se", where=["add"])
        assert [layer.name for layer in model.layers[:2]] == [layer.name for layer in dropping.layers[:2]]
        assert_same_function(model, dropping, images(2, 8))


def test_every_attention_weight_gets_gradient_user_cnn():
    model = ka.attach(user_cnn(), "cbam")
    variables, grads = attention_gradients(model, images(4, 32))
    assert len(variables) == 3 * 5  # per CBAM: two MLP kernels, two biases, the spatial kernel
    assert not [v.name for v, g in zip(variables, grads) if not np.any(g != 0)]


@pytest.mark.slow
@pytest.mark.no_jax(reason="XLA-compiling these gradients takes minutes on CPU; the user CNN covers JAX")
@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2", "EfficientNetB0", "ConvNeXtTiny"])
def test_every_attention_weight_gets_gradient_backbone(name):
    spec = next(s for s in SPECS if s.name == name and s.where == "residual")
    model = ka.attach(spec.build(), "cbam")
    variables, grads = attention_gradients(model, images(4, spec.size))
    assert len(variables) == 5 * spec.known
    assert not [v.name for v, g in zip(variables, grads) if not np.any(g != 0)]


# ----------------------------------------------------------------------------
# Parameter counts (CBAM paper, Table 4)
# ----------------------------------------------------------------------------


def cbam_parameters(channels, reduction=16, min_channels=8, kernel_size=7):
    hidden = max(channels // reduction, min_channels)
    return 2 * channels * hidden + hidden + channels + 2 * kernel_size * kernel_size


@pytest.mark.slow
@pytest.mark.no_jax(reason="parameter counts are the same Keras 3 Applications as on TensorFlow")
def test_resnet50_cbam_parameters_match_the_paper():
    original = keras.applications.ResNet50(weights=None, include_top=True, input_shape=(32, 32, 3))
    model = ka.attach(original, "cbam", reduction=16)
    blocks = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    assert model.count_params() - original.count_params() == sum(cbam_parameters(c) for c in blocks)
    # Paper: ResNet50 25.56M, + CBAM 28.09M (Keras' convolutions have biases: +0.3%).
    assert abs(original.count_params() / 25.56e6 - 1) < 0.005
    assert abs(model.count_params() / 28.09e6 - 1) < 0.005
    print(f"ResNet50 {original.count_params():,} -> + CBAM {model.count_params():,}")


@pytest.mark.slow
@pytest.mark.no_jax(reason="parameter counts are the same Keras 3 Applications as on TensorFlow")
def test_mobilenetv2_cbam_parameters():
    original = keras.applications.MobileNetV2(weights=None, include_top=True, input_shape=(224, 224, 3))
    model = ka.attach(original, "cbam", reduction=16)
    blocks = [24] * 1 + [32] * 2 + [64] * 3 + [96] * 2 + [160] * 2  # the blocks with a residual Add
    increase = model.count_params() - original.count_params()
    assert increase == sum(cbam_parameters(c) for c in blocks)
    print(f"MobileNetV2 {original.count_params():,} -> + CBAM {model.count_params():,} (+{increase:,})")


# ----------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------

RELOAD_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    fmt, path, data = sys.argv[1:]
    data = np.load(data)
    if fmt == "savedmodel":
        import tensorflow as tf
        loaded = tf.saved_model.load(path)
        out = np.asarray(loaded.serve(data["x"]))
        scale = np.abs(data["y"]).max()
        np.testing.assert_allclose(out, data["y"], rtol=1e-5, atol=1e-5 * scale)
    else:
        import keras_attention
        from keras_attention.backend import keras
        model = keras.models.load_model(path, safe_mode=True)
        assert sum(type(l).__name__ == "CBAM" for l in model.layers) == int(data["n"])
        np.testing.assert_array_equal(np.asarray(model(data["x"], training=False)), data["y"])
    print("RELOAD_OK", fmt)
""")


def reload_in_fresh_process(fmt, path, data_path):
    result = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, fmt, str(path), str(data_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert result.returncode == 0 and "RELOAD_OK" in result.stdout, result.stdout + result.stderr[-3000:]


def test_save_and_reload_in_process(tmp_path):
    model = ka.attach(user_cnn(), "cbam")
    randomize(attention_layers(model))
    path = tmp_path / "user_cnn_cbam.keras"
    model.save(str(path))
    reloaded = keras.models.load_model(str(path), safe_mode=True)
    x = images(2, 32)
    np.testing.assert_array_equal(to_numpy(reloaded(x, training=False)), to_numpy(model(x, training=False)))
    assert [layer.name for layer in attention_layers(reloaded)] == [n + "_cbam" for n in USER_CNN_RESIDUAL]
    assert not any(type(layer).__name__ == "Lambda" for layer in reloaded.layers)


@pytest.mark.slow
def test_backbone_saves_reloads_and_exports(tmp_path):
    """MobileNetV2 + CBAM (attention away from the identity): `.keras` in a fresh process, SavedModel."""
    model = ka.attach(
        keras.applications.MobileNetV2(weights=None, include_top=False, alpha=0.35, input_shape=(64, 64, 3)),
        "cbam",
    )
    randomize(attention_layers(model))
    x = images(2, 64)
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=np.asarray(model(x, training=False)), n=len(attention_layers(model)))
    model.save(str(tmp_path / "model.keras"))
    reload_in_fresh_process("keras", tmp_path / "model.keras", data)
    if KERAS3_TF:
        model.export(str(tmp_path / "exported"), verbose=False)
        reload_in_fresh_process("savedmodel", tmp_path / "exported", data)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="my_subclassed")
        self.conv = L.Conv2D(4, 3)

    def call(self, inputs):
        return self.conv(inputs)


def plain_cnn():
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(2, name="dense")(x), name="plain_cnn")


def test_subclassed_model_is_refused():
    model = Subclassed()
    model(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed.*my_subclassed|my_subclassed.*subclassed"):
        ka.attach(model)


def test_sequential_without_input_is_refused():
    with pytest.raises(ValueError, match="Sequential.*'unbuilt'.*cannot be traced"):
        ka.attach(keras.Sequential([L.Conv2D(4, 3)], name="unbuilt"))


def test_not_a_model_is_refused():
    with pytest.raises(ValueError, match="Conv2D"):
        ka.attach(L.Conv2D(4, 3))


def test_unknown_layer_name():
    with pytest.raises(ValueError, match=r"no layer named \['cnov'\].*plain_cnn.*did you mean \['conv'\]"):
        ka.attach(plain_cnn(), where=["cnov"])


def test_where_matching_nothing():
    with pytest.raises(ValueError, match="where='residual' matches nothing.*plain_cnn.*stages"):
        ka.attach(plain_cnn(), where="residual")

    def no_layer(layer):
        return False

    with pytest.raises(ValueError, match="no_layer matches no layer.*plain_cnn"):
        ka.attach(plain_cnn(), where=no_layer)
    with pytest.raises(ValueError, match="empty list"):
        ka.attach(plain_cnn(), where=[])


def test_bad_where_and_attention():
    with pytest.raises(ValueError, match="unknown `where` 'conv'"):
        ka.attach(plain_cnn(), where="conv")
    with pytest.raises(ValueError, match="got 3"):
        ka.attach(plain_cnn(), where=3)
    with pytest.raises(ValueError, match="'dense'.*4-D"):
        ka.attach(plain_cnn(), where=["dense"])
    with pytest.raises(ValueError, match="unknown `attention` 'bam'"):
        ka.attach(plain_cnn(), "bam", where=["conv"])
    with pytest.raises(ValueError, match="`name`"):
        ka.attach(plain_cnn(), where=["conv"], name="x")
    with pytest.raises(ValueError, match="`start_as_identity`"):
        ka.attach(plain_cnn(), where=["conv"], start_as_identity=False)
