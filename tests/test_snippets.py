"""Every Python code block of the README and the docs runs as written and does the right thing.

A reader copies these first. Each page's blocks run in order in one namespace,
in a fresh working folder, as a reader following the page would. What a page
leaves to the reader (their `model`, `x_train`, a checkpoint they downloaded)
comes from the page's setup below: small real data and models, files written
as their publishers write them. The only change to a block's text: nothing is
downloaded here, so `weights="imagenet"` runs as `weights=None`.

A block preceded by `<!-- snippet: tf_keras -->` runs under tf_keras
(`TF_USE_LEGACY_KERAS=1`), every other block under Keras 3 on TensorFlow (the
blocks do not depend on the backend: run once). `<!-- snippet: not run: why -->`
marks a block no test machine can run (a TPU, several workers); the test lists
them, so a new one is a decision, not an accident. Checks after some blocks
test what the block claims (the loss of logits, an int8-end-to-end file, ...).
"""

import contextlib
import io
import os
import pathlib
import re

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import BACKEND, IS_LEGACY, keras

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ["README.md", "tflite/README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
PAGES.remove("docs/index.md") if "docs/index.md" in PAGES else None  # written from README.md by `make docs`
FENCE = re.compile(r"(?:<!-- snippet: (?P<directive>[^>]*?) -->\n)?```python\n(?P<code>.*?)\n```", re.S)
NOT_RUN = {  # page: the reasons of its blocks marked `not run`, in order
    "docs/distribution.md": [
        "several workers, each a process started with its TF_CONFIG",
        "a TPU",
    ],
}
OFFLINE = [  # no downloads at run time: ImageNet weights, and keras-hub's preset from a folder the setup writes
    ('weights="imagenet"', "weights=None"),
    ('from_preset("resnet_18_imagenet"', 'from_preset("./resnet_18_imagenet"'),
]
MODE = "tf_keras" if IS_LEGACY else "keras3" if BACKEND == "tensorflow" else None


def blocks(page):
    """`[(directive or None, code)]` of the page's python blocks."""
    return [(m["directive"], m["code"]) for m in FENCE.finditer((ROOT / page).read_text())]


def _digits(size, channels=3, train=64, test=32):
    (x_train, y_train), (x_test, y_test) = ka.data.digits(size=size, channels=channels)
    return x_train[:train], y_train[:train], x_test[:test], y_test[:test]


def _small_classifier(size=32):
    """A CNN with CBAM, trained briefly on digits: raw pixels in, its Rescaling inside; under tf_keras
    (tfmot refuses Rescaling) the pixels are scaled outside it."""
    x_train, y_train, x_test, y_test = _digits(size, train=512)
    if IS_LEGACY:
        x_train, x_test = x_train / 255.0, x_test / 255.0
    inputs = keras.Input((size, size, 3))
    x = inputs if IS_LEGACY else keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = ka.CBAM(reduction=4, kernel_size=3)(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=3, verbose=0)
    return dict(model=model, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def _classifier_data():
    names = _small_classifier()
    return {**names, "x_calibration": names["x_train"][:100], "x_held_out": names["x_test"]}


def _pretrained_files(*names):
    from tests.kit import reference_resnet

    files = {
        "resnet50_cbam": "RESNET50_CBAM_new_name_wrap.pth",
        "seresnet50": "seresnet50.safetensors",
        "ecaresnet50d": "ecaresnet50d.safetensors",
    }
    for name in names:
        reference_resnet.save_as_published(name, reference_resnet.randomised(name), files[name])


def _readme():
    _pretrained_files("resnet50_cbam")
    x_train, _, x_test, _ = _digits(96, train=32, test=8)
    return dict(x_train=x_train, x_held_out=x_test)


def _attach():
    x_train, y_train, _, _ = _digits(96, train=32)
    return dict(x_train=x_train, y_train=y_train)


def _centermask():
    data = ka.data.shapes(num_images=4, image_size=64)
    return dict(instance_masks=data["masks"], gt_boxes=data["boxes"], gt_classes=data["classes"])


def _demo():
    backbone = ka.attach(
        keras.applications.MobileNetV2(weights=None, include_top=False, alpha=0.35, input_shape=(32, 32, 3)), "cbam"
    )
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)))
    return dict(model=keras.Model(inputs, keras.layers.Dense(10)(x)), images=_digits(32, train=2)[0])


def _distribution():
    x, y, _, _ = _digits(32, train=64)

    def build_model():
        return _small_classifier()["model"]

    return dict(build_model=build_model, x=x, y=y)


def _models():
    from tests.kit import reference_mobilenet_ca

    _pretrained_files("resnet50_cbam", "seresnet50", "ecaresnet50d")
    reference_mobilenet_ca.save_as_published(reference_mobilenet_ca.randomised(), "mbv2_ca.pth")
    return dict(images=_digits(224, train=2)[0])


def _keras_hub():
    """A local preset folder as keras-hub writes one (`save_to_preset`): ResNet-18's architecture, random
    weights, its image converter at 64x64 (the published preset's is 224x224) to keep the test small."""
    import keras_hub

    hub = keras_hub.models
    backbone = hub.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[2, 2, 2, 2],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
    )
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(64, 64),
        scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
        offset=[-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
    )
    preprocessor = hub.ResNetImageClassifierPreprocessor(image_converter=converter)
    hub.ResNetImageClassifier(backbone=backbone, num_classes=1000, preprocessor=preprocessor).save_to_preset(
        "resnet_18_imagenet"
    )
    x_train, y_train, _, _ = _digits(48, train=32)
    return dict(x_train=x_train, y_train=y_train)


SETUP = {
    "README.md": _readme,
    "docs/attach.md": _attach,
    "docs/centermask.md": _centermask,
    "docs/demo.md": _demo,
    "docs/distribution.md": _distribution,
    "docs/export.md": _classifier_data,
    "docs/keras_hub.md": _keras_hub,
    "docs/models.md": _models,
    "docs/quantization.md": _classifier_data,
    "docs/tflite.md": _classifier_data,
    "tflite/README.md": _classifier_data,
}


def _loss_is_of_logits(names):
    """The compiled loss equals cross-entropy of softmax(logits), computed in NumPy."""
    model = names["model"]
    x, y, _, _ = _digits(32, train=16)
    logits = np.asarray(model.predict(x, verbose=0), "float64")
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -log_softmax[np.arange(len(y)), y].mean()
    loss = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def _int8_file(name):
    def check(names):
        from keras_attention import tflite

        assert tflite.is_int8_end_to_end(names[name])

    return check


def _report_agrees(names):
    report = names["report"]
    assert report.int8_end_to_end and report.cosine_similarity >= 0.98, str(report)


def _headless_backbone(names):
    assert tuple(names["backbone"].output.shape)[1:] == (2048,)


def _mask_targets(names):
    assert names["y"].shape == (4, 3, 28, 28, 80) and set(np.unique(names["y"])) <= {-1.0, 0.0, 1.0}


def _both_exports(names):
    assert os.path.exists("model.onnx") and os.path.exists("model.xml") and os.path.exists("model.bin")


def _maps_and_cams(names):
    assert len(names["maps"]) == 10 and names["cams"].shape == (2, 1, 1) and os.path.exists("attention.png")


def _nested_attach(names):
    from keras_attention.backbones import attention_layers

    assert len(attention_layers(names["model"])) == 10
    assert [layer.name for layer in attention_layers(names["last"])] == ["block_16_project_BN_cbam"]


def _hub_resnet18_cbam(names):
    from keras_attention.backbones import attention_layers

    assert len(attention_layers(names["backbone"])) == 8  # ResNet-18's residual blocks
    assert names["model"].preprocessor is names["classifier"].preprocessor


CHECKS = {  # (page, block index): what the block claims
    ("README.md", 0): _loss_is_of_logits,
    ("README.md", 1): _int8_file("flatbuffer"),
    ("README.md", 2): _headless_backbone,
    ("docs/layers.md", 0): _loss_is_of_logits,
    ("docs/attach.md", 2): _nested_attach,
    ("docs/centermask.md", 0): _mask_targets,
    ("docs/demo.md", 0): _maps_and_cams,
    ("docs/export.md", 0): _both_exports,
    ("docs/keras_hub.md", 0): _hub_resnet18_cbam,
    ("docs/keras_hub.md", 1): _int8_file("int8"),
    ("docs/models.md", 0): _headless_backbone,
    ("docs/quantization.md", 0): _int8_file("int8"),
    ("docs/quantization.md", 1): _int8_file("int8"),
    ("docs/tflite.md", 0): _report_agrees,
    ("tflite/README.md", 0): _report_agrees,
}


def _run_page(page, mode, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names, ran = None, 0
    reasons = []
    for index, (directive, code) in enumerate(blocks(page)):
        if directive and directive.startswith("not run: "):
            reasons.append(directive[len("not run: ") :])
            continue
        assert directive in (None, "tf_keras"), f"{page}: unknown snippet directive {directive!r}"
        if (directive == "tf_keras") != (mode == "tf_keras"):
            continue
        if names is None:
            names = SETUP.get(page, dict)()
        for old, new in OFFLINE:
            code = code.replace(old, new)
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"{page} (python block {index + 1})", "exec"), names)  # noqa: S102
        if (page, index) in CHECKS:
            CHECKS[(page, index)](names)
        ran += 1
    assert reasons == NOT_RUN.get(page, []), f"{page}: blocks not run {reasons}"
    return ran


@pytest.mark.tensorflow_backends(reason="the blocks do not depend on the backend")
@pytest.mark.parametrize(
    "page", [p for p in PAGES if any((d == "tf_keras") == (MODE == "tf_keras") for d, _ in blocks(p))]
)
def test_every_python_block_of_the_page_runs(page, tmp_path, monkeypatch):
    ran = _run_page(page, MODE, tmp_path, monkeypatch)
    tf_keras_blocks = sum(d == "tf_keras" for d, _ in blocks(page))
    expected = tf_keras_blocks if MODE == "tf_keras" else len(blocks(page)) - tf_keras_blocks
    assert ran == expected - len(NOT_RUN.get(page, [])) * (MODE == "keras3")


def test_the_snippet_runner_catches_a_wrong_loss_and_a_failing_block(tmp_path, monkeypatch):
    """Controls: the README's former first block (string loss on logits) fails the loss check, and a
    block that raises fails the page."""
    if MODE != "keras3":
        pytest.skip("Keras 3 on TensorFlow")
    code = blocks("README.md")[0][1]
    wrong = code.replace(
        'keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]',
        '"sparse_categorical_crossentropy"',
    )
    assert wrong != code
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(wrong, "README.md (former block 1)", "exec"), names)  # noqa: S102
    with pytest.raises(AssertionError):
        _loss_is_of_logits(names)
    page = tmp_path / "page.md"
    page.write_text("```python\nraise ValueError('a block that fails')\n```\n")
    with pytest.raises(ValueError, match="a block that fails"):
        exec(compile(blocks(page)[0][1], "page", "exec"), {})  # noqa: S102
