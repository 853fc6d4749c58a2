"""keras-hub: attention in its image backbones and task models (Keras 3 on TensorFlow, JAX and PyTorch).

Each family is built from a small random-init configuration (no preset downloads: the tests have no
network) at 64x64. The number of blocks `attach` inserts is checked against a count of the family's
own layers (its Add merges, Concatenates, pooling steps, block layers), the result against the
original's outputs (identity at insertion), and one training step must move every attention weight.
"""

import numpy as np
import pytest

import keras_attention as ka
from keras_attention import _keras_hub
from keras_attention.backend import BACKEND, keras

pytestmark = pytest.mark.keras3(reason="keras-hub is built on Keras 3")

SIZE = 64


def _hub():
    import keras_hub

    return keras_hub.models


def _resnet(**kw):
    return _hub().ResNetBackbone(
        input_conv_filters=[64],  # keras-hub requires 64 for the first stage
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 64, 64],
        stackwise_num_blocks=[2, 2, 2],
        stackwise_num_strides=[1, 2, 2],
        block_type="basic_block",
        image_shape=(SIZE, SIZE, 3),
        **kw,
    )


# family: (small configuration, `where`, what independently counts the blocks it gets)
FAMILIES = {
    "ResNetBackbone": (_resnet, "residual", lambda m: _count(m, "Add")),
    "ResNetBackbone_v2_bottleneck": (
        lambda: _hub().ResNetBackbone(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 64],
            stackwise_num_blocks=[2, 2],
            stackwise_num_strides=[1, 2],
            block_type="bottleneck_block",
            use_pre_activation=True,
            image_shape=(SIZE, SIZE, 3),
        ),
        "residual",
        lambda m: _count(m, "Add"),
    ),
    "CSPNetBackbone": (
        lambda: _hub().CSPNetBackbone(
            stem_filters=32,
            stem_kernel_size=3,
            stem_strides=1,
            stackwise_strides=2,
            stackwise_depth=[1, 2, 2],
            stackwise_num_filters=[16, 24, 48],
            down_growth=True,
            bottle_ratio=(0.5, 1.0),
            block_ratio=(1.0, 0.5),
            expand_ratio=(2.0, 1.0),
            block_type="dark_block",
            stage_type="csp",
            stem_padding="same",
            image_shape=(SIZE, SIZE, 3),
        ),
        "residual",
        lambda m: _count(m, "Add"),  # its cross-stage Concatenates join two halves, not a block and its input
    ),
    "XceptionBackbone": (
        lambda: _hub().XceptionBackbone(
            stackwise_conv_filters=[[32, 64], [128, 128], [256, 256], [728, 728]],
            stackwise_pooling=[False, True, True, True],
            image_shape=(SIZE, SIZE, 3),
        ),
        "residual",
        lambda m: _count(m, "Add"),
    ),
    "DenseNetBackbone": (
        lambda: _hub().DenseNetBackbone(stackwise_num_repeats=[2, 2], growth_rate=32, image_shape=(SIZE, SIZE, 3)),
        "residual",  # each dense layer's new features, before the Concatenate
        lambda m: _count(m, "Concatenate"),
    ),
    "VGGBackbone": (
        lambda: _hub().VGGBackbone(
            stackwise_num_repeats=[1, 1, 2], stackwise_num_filters=[8, 16, 32], image_shape=(SIZE, SIZE, 3)
        ),
        "stages",  # the last convolution before each pooling
        lambda m: _count(m, "MaxPooling2D"),
    ),
    "MobileNetBackbone": (
        lambda: _hub().MobileNetBackbone(
            stackwise_expansion=[[40, 56], [64, 144, 144]],
            stackwise_num_blocks=[2, 3],
            stackwise_num_filters=[[16, 16], [24, 24, 24]],
            stackwise_kernel_size=[[3, 3], [5, 5, 5]],
            stackwise_num_strides=[[2, 1], [2, 1, 1]],
            stackwise_se_ratio=[[None, None], [0.25, 0.25, 0.25]],
            stackwise_activation=[["relu", "relu"], ["hard_swish", "hard_swish", "hard_swish"]],
            stackwise_padding=[[1, 1], [2, 2, 2]],
            output_num_filters=288,
            depthwise_filters=8,
            depthwise_stride=2,
            depthwise_residual=False,
            last_layer_filter=288,
            squeeze_and_excite=0.5,
            image_shape=(SIZE, SIZE, 3),
        ),
        "blocks",  # its blocks are layers: DepthwiseConvBlock, InvertedResidualBlock, ConvBnActBlock
        lambda m: sum(type(layer).__name__.endswith("Block") for layer in m.layers),
    ),
    "EfficientNetBackbone_v1": (  # B0-B7: blocks built of plain layers, as in Keras Applications
        lambda: _hub().EfficientNetBackbone(
            stackwise_kernel_sizes=[3, 3, 5],
            stackwise_num_repeats=[1, 2, 2],
            stackwise_input_filters=[32, 16, 24],
            stackwise_output_filters=[16, 24, 40],
            stackwise_expansion_ratios=[1, 6, 6],
            stackwise_strides=[1, 2, 2],
            stackwise_squeeze_and_excite_ratios=[0.25] * 3,
            stackwise_force_input_filters=[0] * 3,
            stackwise_nores_option=[False] * 3,
            stackwise_width_coefficients=[1.0] * 3,
            stackwise_depth_coefficients=[1.0] * 3,
            stackwise_block_types=["v1"] * 3,
            min_depth=None,
            use_depth_divisor_as_min_depth=True,
            cap_round_filter_decrease=True,
            num_features=64,
            input_shape=(SIZE, SIZE, 3),
        ),
        "residual",  # on the projection's BatchNorm, before the Dropout
        lambda m: _count(m, "Add"),
    ),
    "EfficientNetBackbone_v2": (  # V2's fused and unfused MBConv blocks are single layers
        lambda: _hub().EfficientNetBackbone(
            stackwise_kernel_sizes=[3, 3, 3],
            stackwise_num_repeats=[1, 2, 2],
            stackwise_input_filters=[16, 16, 24],
            stackwise_output_filters=[16, 24, 32],
            stackwise_expansion_ratios=[1, 4, 4],
            stackwise_squeeze_and_excite_ratios=[0.0, 0.0, 0.25],
            stackwise_strides=[1, 2, 2],
            stackwise_block_types=["fused", "fused", "unfused"],
            stackwise_force_input_filters=[0] * 3,
            stackwise_nores_option=[False] * 3,
            stackwise_width_coefficients=[1.0] * 3,
            stackwise_depth_coefficients=[1.0] * 3,
            num_features=64,
            input_shape=(SIZE, SIZE, 3),
        ),
        "blocks",  # FusedMBConvBlock, MBConvBlock
        lambda m: sum(type(layer).__name__.endswith("Block") for layer in m.layers),
    ),
}


def _count(model, kind):
    return sum(type(layer).__name__ == kind for layer in model.layers)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _images(n=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def _build(family):
    keras.utils.set_random_seed(0)
    build, where, count = FAMILIES[family]
    backbone = build()
    return backbone, where, count(backbone)


def _classifier(backbone):
    """A head on the backbone's last map (the backbone nested, as in keras-hub's ImageClassifier)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(backbone(x))
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(x))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_takes_attention_and_keeps_its_outputs(family):
    backbone, where, expected = _build(family)
    x = _images()
    model = ka.attach(backbone, "cbam", where=where)
    inserted = ka.backbones.attention_layers(model)
    assert len(inserted) == expected > 0, [layer.name for layer in inserted]
    np.testing.assert_allclose(_np(model(x)), _np(backbone(x)), rtol=1e-5, atol=1e-5)
    # Control: the paper's initialisation changes the outputs, so the comparison above can fail.
    changed = ka.attach(backbone, "cbam", where=where, preserve_outputs=False)
    assert np.max(np.abs(_np(changed(x)) - _np(backbone(x)))) > 1e-3


# On JAX a family costs about 25 s of XLA compilation here, so JAX and PyTorch train one family of each
# rule that builds its graph differently (Add merges; block layers); TensorFlow trains every family.
TRAINED_ELSEWHERE = ("MobileNetBackbone", "ResNetBackbone")


def test_every_family_trains_saves_and_reloads_in_a_fresh_process(tmp_path):
    """Nested in a classifier (as in an ImageClassifier): every attention weight gets gradient and a step trains;
    the `.keras` file reloads with safe_mode=True in a new interpreter (after `import keras_hub`)."""
    from tests.kit.harness import gradients
    from tests.kit.reload import reload_elsewhere, save_expected

    x, y = _images(8), np.arange(8) % 5
    triples = []
    for family in sorted(FAMILIES) if BACKEND == "tensorflow" else TRAINED_ELSEWHERE:
        backbone, where, expected = _build(family)
        model = ka.attach(_classifier(backbone), "cbam", where=where)
        attention = ka.backbones.attention_layers(model)
        assert len(attention) == expected, family
        variables = [w for layer in attention for w in layer.trainable_weights]
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        grads = gradients(model, x, lambda outputs, loss=loss: loss(y, outputs), variables)
        assert not [v.path for v, g in zip(variables, grads) if not np.any(g != 0)], family
        model.compile(keras.optimizers.SGD(0.1), loss)
        model.train_on_batch(x, y)
        path = tmp_path / f"{family}.keras"
        model.save(path)
        expected_path = save_expected(tmp_path / f"{family}.npz", x, model(x, training=False))
        triples += ["keras", path, expected_path]
    out = reload_elsewhere(*triples, imports=("keras_hub",))
    assert out.count("RELOAD_OK") == len(triples) // 3


@pytest.mark.keras3_tensorflow(reason="TFLite conversion")
@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(f for f in FAMILIES if not f.endswith("bottleneck")))
def test_family_goes_to_int8_end_to_end(family):
    """Keras 3 QAT for a few steps, then an int8 file: int8 end to end, builtin ops only, and LiteRT agrees
    with the QAT model. The families whose blocks are single layers (where="blocks") have no QAT form
    (QAT cannot reach inside a layer's `call()`; the error says so): post-training int8 instead."""
    from keras_attention import quantization, tflite

    backbone, where, _ = _build(family)
    model = ka.attach(_classifier(backbone), "cbam", where=where)
    x, y = _images(48, seed=1), np.random.default_rng(1).integers(0, 5, 48)
    for layer in model._flatten_layers(include_self=False):  # trained statistics, not a random net's
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.5
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:32], y[:32], batch_size=16, epochs=2, verbose=0)
    if where == "blocks":
        with pytest.raises(quantization.UnsupportedLayerError, match=r"built of other layers.*post-training int8"):
            quantization.quantize_model(model)
        reference = model
        flatbuffer = tflite.convert(model, "int8", representative_data=x[:32])
    else:
        reference = quantization.quantize_model(model)
        reference.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        reference.fit(x[:32], y[:32], batch_size=16, epochs=1, verbose=0)
        flatbuffer = tflite.convert(reference, "int8")
    assert tflite.is_int8_end_to_end(flatbuffer), [op["op"] for op in tflite.float_ops(flatbuffer)]
    ops = {op["op"] for op in tflite.op_inventory(flatbuffer)}
    assert not {op for op in ops if op.startswith(("Flex", "CUSTOM"))}, ops  # builtin only
    expected, got = _np(reference.predict(x[32:], verbose=0)), tflite.run(flatbuffer, x[32:])[0]
    cosine = np.sum(expected * got) / (np.linalg.norm(expected) * np.linalg.norm(got))
    # Post-training ranges come from 32 images, QAT's from training: a looser bar for the former.
    bar = 0.98 if where == "blocks" else 0.99
    assert cosine >= bar and np.mean(expected.argmax(1) == got.argmax(1)) >= 0.85, (family, cosine)


# ------------------------------------------------------------------------------ task models


def test_image_classifier_takes_attention_both_ways():
    """attach(task model) rewrites its nested backbone and keeps its head; a task model built on an
    attached backbone keeps keras-hub's API (the preprocessor, predict on raw images)."""
    hub = _hub()
    backbone, _, blocks = _build("ResNetBackbone")
    classifier = hub.ResNetImageClassifier(backbone=backbone, num_classes=3)
    x = _images()
    attached = ka.attach(classifier, "cbam")
    assert len(ka.backbones.attention_layers(attached)) == blocks
    np.testing.assert_allclose(_np(attached(x)), _np(classifier(x)), rtol=1e-5, atol=1e-5)
    assert attached.get_layer("predictions").get_weights()[0].tolist() == (
        classifier.get_layer("predictions").get_weights()[0].tolist()
    )
    rebuilt = hub.ImageClassifier(backbone=ka.attach(backbone, "cbam"), num_classes=3)
    assert len(ka.backbones.attention_layers(rebuilt)) == blocks
    rebuilt.get_layer("predictions").set_weights(classifier.get_layer("predictions").get_weights())
    np.testing.assert_allclose(_np(rebuilt(x)), _np(classifier(x)), rtol=1e-5, atol=1e-5)


def test_our_builder_is_an_image_classifier_backbone():
    hub = _hub()
    keras.utils.set_random_seed(0)
    from keras_attention import models

    backbone = models.mobilenetv2_ca(include_top=False, input_shape=(SIZE, SIZE, 3))
    classifier = hub.ImageClassifier(backbone=backbone, num_classes=4)
    x = _images(2)
    features = _np(keras.layers.GlobalAveragePooling2D()(backbone(x)))
    dense = classifier.get_layer("predictions")
    np.testing.assert_allclose(_np(classifier(x)), features @ _np(dense.kernel) + _np(dense.bias), rtol=1e-4, atol=1e-4)


def test_detection_and_segmentation_backbones_build_on_an_attached_encoder():
    """RetinaNet and DeepLabV3 are refused as such (built around an encoder) and built from an attached
    encoder instead: attach keeps keras-hub's `pyramid_outputs`, with attention in them."""
    hub = _hub()
    encoder, _, blocks = _build("ResNetBackbone")
    attached = ka.attach(encoder, "cbam")
    x = _images(2)

    def pyramid(model):
        return {k: _np(v) for k, v in keras.Model(model.inputs, model.pyramid_outputs)(x).items()}

    assert sorted(attached.pyramid_outputs) == sorted(encoder.pyramid_outputs) == ["P2", "P3", "P4"]
    for level, value in pyramid(encoder).items():
        np.testing.assert_allclose(pyramid(attached)[level], value, rtol=1e-5, atol=1e-5)
    changed = pyramid(ka.attach(encoder, "cbam", preserve_outputs=False))  # control: attention is in them
    assert np.max(np.abs(changed["P4"] - pyramid(encoder)["P4"])) > 1e-3
    retinanet = hub.RetinaNetBackbone(image_encoder=attached, min_level=3, max_level=4, use_p5=False)
    assert len(ka.backbones.attention_layers(retinanet)) == blocks
    assert {k: tuple(v.shape) for k, v in retinanet(x).items()} == {"P3": (2, 8, 8, 256), "P4": (2, 4, 4, 256)}
    plain = hub.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=4, use_p5=False)
    with pytest.raises(ValueError, match=r"RetinaNetBackbone.*attach to the encoder.*pyramid_outputs"):
        ka.attach(plain, "cbam")
    deeplab = hub.DeepLabV3Backbone(
        image_encoder=attached, spatial_pyramid_pooling_key="P4", upsampling_size=4, dilation_rates=[1, 2]
    )
    assert len(ka.backbones.attention_layers(deeplab)) == blocks


# ------------------------------------------------------------------------------ refusals


def test_vision_transformer_and_one_layer_stages_are_refused_with_the_reason():
    hub = _hub()
    vit = hub.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    with pytest.raises(ValueError, match=r"keras-hub ViTBackbone.*vision transformer.*ResNetBackbone"):
        ka.attach(vit, "cbam")
    classifier = hub.ViTImageClassifier(backbone=vit, num_classes=2)
    with pytest.raises(ValueError, match=r"keras-hub ViTBackbone.*vision transformer"):
        ka.attach(classifier, "se")  # nested in its task model: the same reason
    hgnet = hub.HGNetV2Backbone(
        depths=[1, 1],
        embedding_size=16,
        hidden_sizes=[32, 64],
        stem_channels=[3, 8, 16],
        hidden_act="relu",
        use_learnable_affine_block=False,
        stackwise_stage_filters=[(16, 8, 32, 1, 1, 3), (32, 16, 64, 1, 1, 3)],
        apply_downsample=[False, True],
        use_lightweight_conv_block=[False, False],
        image_shape=(SIZE, SIZE, 3),
    )
    with pytest.raises(ValueError, match=r"HGNetV2Backbone.*inside one layer \(HGNetV2Encoder\)"):
        ka.attach(hgnet, "cbam", where="stages")
    # Control: a convolutional family passes the same check.
    assert _keras_hub.refusal(_build("ResNetBackbone")[0]) is None


def test_residual_on_block_layers_points_to_blocks():
    backbone, _, blocks = _build("MobileNetBackbone")
    with pytest.raises(ValueError, match=r"5 InvertedResidualBlock.*where='blocks'"):
        ka.attach(backbone, "cbam")
    assert len(ka.backbones.attention_layers(ka.attach(backbone, "cbam", where="blocks"))) == blocks


def test_a_backbone_shared_by_two_branches_is_refused():
    backbone, _, _ = _build("ResNetBackbone")
    inputs = keras.Input((SIZE, SIZE, 3))
    twice = keras.Model(inputs, keras.layers.Add()([backbone(inputs), backbone(keras.layers.Rescaling(0.5)(inputs))]))
    with pytest.raises(ValueError, match=r"called 2 times.*Attach to 'res_net_backbone"):
        ka.attach(twice, "cbam")
    with pytest.raises(ValueError, match=r"calls no model named 'resnet'"):
        ka.attach(_classifier(backbone), "cbam", where=["resnet/conv2_block1_add"])


@pytest.mark.run_once(reason="the installed keras-hub's classes, the same in every mode")
def test_every_image_backbone_family_is_tested_or_refused():
    """Every backbone an image task of the installed keras-hub uses is tested above or refused by rule,
    so a new keras-hub family fails here until it is decided."""
    hub = _hub()
    import keras_hub

    task_bases = tuple(
        getattr(keras_hub.models, name)
        for name in ("ImageClassifier", "ImageSegmenter", "ObjectDetector", "DepthEstimator")
        if hasattr(keras_hub.models, name)
    )
    families = set()
    for name in dir(hub):
        task = getattr(hub, name)
        if isinstance(task, type) and issubclass(task, task_bases) and getattr(task, "backbone_cls", None):
            families.add(task.backbone_cls.__name__)
    tested = {name.split("_")[0] for name in FAMILIES}
    assert {"ResNetBackbone", "ViTBackbone", "MobileNetBackbone"} <= families  # the enumeration finds them
    undecided = families - tested - set(_keras_hub.REFUSED)
    assert not undecided, f"keras-hub image families neither tested nor refused: {sorted(undecided)}"
    assert not tested & set(_keras_hub.REFUSED)
    assert set(_keras_hub.CNN_FAMILIES) <= tested


def test_keras_hub_is_installed_for_these_tests():
    """The test extra installs keras-hub (with tensorflow-text): these tests must not skip silently."""
    assert hasattr(_hub(), "ResNetBackbone")
