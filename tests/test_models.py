"""keras_attention.models against PyTorch models of the published architectures (tests/kit/reference_resnet.py).

Each source model gets random weights and non-trivial BatchNorm statistics, is
saved the way its publisher saves it (the official CBAM release: torch.save of
{'state_dict': ...} with DataParallel's `module.` prefixes; timm: safetensors),
and loaded through our converters; the logits must equal PyTorch's.
"""

import sys

import numpy as np
import pytest
import torch  # in the test extra: a broken install fails here, it does not skip the pretrained suite

from keras_attention import models
from keras_attention.backend import IS_LEGACY, keras
from tests.kit import reference_resnet
from tests.kit.harness import save_and_reload, to_numpy

# Published parameter counts (millions): the official CBAM README / paper, timm's results-imagenet.csv.
PUBLISHED_PARAMS = {"resnet50_cbam": 28.09, "seresnet50": 28.09, "ecaresnet50d": 25.58, "ecaresnet101d": 44.57}


def _save(name, source, path):
    return reference_resnet.save_as_published(name, source, path)


def _torch_logits(source, images_nhwc):
    with torch.no_grad():
        return source(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def _relative_error(actual, expected):
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("name", ["resnet50_cbam", "seresnet50", "ecaresnet50d"])
def test_ported_checkpoint_gives_pytorch_logits(name, tmp_path):
    source = reference_resnet.randomised(name)
    path = _save(name, source, tmp_path / ("ckpt.pth" if name.endswith("_cbam") else "model.safetensors"))
    # 75: odd sizes on the way down exercise PyTorch's symmetric padding and ceil-mode pooling.
    model = getattr(models, name)(weights=str(path), input_shape=(75, 75, 3), classifier_activation=None)
    images = np.random.default_rng(1).normal(size=(2, 75, 75, 3)).astype("float32")
    expected = _torch_logits(source, images)
    actual = to_numpy(model(images, training=False))
    assert _relative_error(actual, expected) < 1e-4
    assert np.array_equal(actual.argmax(-1), expected.argmax(-1))
    # Parameters: PyTorch's (weights and BN affine; running statistics are buffers) = Keras' trainable weights.
    assert _trainable_count(model) == reference_resnet.parameter_count(source)
    assert round(_trainable_count(model) / 1e6, 2) == PUBLISHED_PARAMS[name]
    # Control: the randomly initialised model is far from PyTorch's logits.
    fresh = getattr(models, name)(input_shape=(75, 75, 3), classifier_activation=None)
    assert _relative_error(to_numpy(fresh(images, training=False)), expected) > 0.1


@pytest.mark.run_once  # the same layer types as the 50-layer variants, which every mode compares
def test_deeper_variants_match_their_sources_in_size_and_names(tmp_path):
    """ResNet-101 + CBAM (official code, no published weights) and ECA-ResNet-101-D (timm)."""
    for name in ("resnet101_cbam", "ecaresnet101d"):
        source = reference_resnet.randomised(name)
        model = getattr(models, name)(input_shape=(32, 32, 3), classifier_activation=None)
        assert _trainable_count(model) == reference_resnet.parameter_count(source)
        report = models.load_torch_checkpoint(model, _save("resnet50_cbam", source, tmp_path / f"{name}.pth"))
        assert report.loaded == len(source.state_dict()) - len(report.skipped)
        images = np.random.default_rng(2).normal(size=(1, 32, 32, 3)).astype("float32")
        assert _relative_error(to_numpy(model(images, training=False)), _torch_logits(source, images)) < 1e-4
    assert round(_trainable_count(model) / 1e6, 2) == PUBLISHED_PARAMS["ecaresnet101d"]


@pytest.mark.keras3(reason="TensorFlow's CPU kernels have no NCHW pooling: channels_first runs on Keras 3")
def test_channels_first_model_takes_the_same_checkpoint(tmp_path):
    source = reference_resnet.randomised("ecaresnet50d")
    path = _save("ecaresnet50d", source, tmp_path / "model.safetensors")
    model = models.ecaresnet50d(
        weights=str(path), input_shape=(3, 45, 45), data_format="channels_first", classifier_activation=None
    )
    images = np.random.default_rng(3).normal(size=(1, 45, 45, 3)).astype("float32")
    actual = to_numpy(model(images.transpose(0, 3, 1, 2), training=False))
    assert _relative_error(actual, _torch_logits(source, images)) < 1e-4


def test_headless_model_skips_the_classifier_and_reloads_from_a_keras_file(tmp_path):
    source = reference_resnet.randomised("resnet50_cbam")
    path = _save("resnet50_cbam", source, tmp_path / "ckpt.pth.tar")
    model = models.resnet50_cbam(include_top=False, weights=str(path), input_shape=(64, 64, 3), pooling="avg")
    assert model.output_shape == (None, 2048)
    report = models.load_torch_checkpoint(model, path)
    assert sorted(k for k, why in report.skipped.items() if "include_top" in why) == ["fc.bias", "fc.weight"]
    images = np.random.default_rng(4).normal(size=(2, 64, 64, 3)).astype("float32")
    with torch.no_grad():
        expected = source.features(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).mean((2, 3)).numpy()
    assert _relative_error(to_numpy(model(images, training=False)), expected) < 1e-4
    # The dotted layer names survive a .keras (or tf_keras .h5) round trip.
    reloaded = save_and_reload(model, tmp_path / ("model.h5" if IS_LEGACY else "model.keras"))
    np.testing.assert_array_equal(to_numpy(reloaded(images, training=False)), to_numpy(model(images, training=False)))


def _weights(model):
    return [np.array(to_numpy(w)) for w in model.weights]


def _assert_untouched(model, before):
    for old, new in zip(before, _weights(model)):
        np.testing.assert_array_equal(old, new)


@pytest.mark.run_once
def test_checkpoints_that_do_not_fit_are_refused_whole(tmp_path):
    source = reference_resnet.randomised("seresnet50")
    state = {k: v.clone() for k, v in source.state_dict().items()}
    model = models.resnet50_cbam(input_shape=(32, 32, 3))
    before = _weights(model)

    # Another architecture: SE keys are unexpected, CBAM keys missing; nothing is assigned.
    wrong = _save("seresnet50", source, tmp_path / "se.safetensors")
    with pytest.raises(models.CheckpointMismatchError, match=r"not in the file: layer1\.0\.cbam\.") as info:
        models.load_checkpoint(model, wrong)
    assert "layer1.0.se.fc1.bias" in str(info.value) and "nothing was loaded" in str(info.value)
    _assert_untouched(model, before)

    cbam = reference_resnet.randomised("resnet50_cbam")
    good = dict(cbam.state_dict())
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "layer2.1.bn2.running_var"}, r"layer2\.1\.bn2\.running_var"),
        "shape": ({**good, "layer3.0.conv2.weight": torch.zeros(256, 256, 1, 1)}, r"layer3\.0\.conv2\.weight: shape"),
        "nan": ({**good, "layer4.2.cbam.ChannelGate.mlp.1.bias": torch.full((128,), float("nan"))}, "not finite"),
        "extra": ({**good, "layer1.0.extra.weight": torch.zeros(1)}, r"belong to no weight.*layer1\.0\.extra\.weight"),
    }
    for case, (state, pattern) in cases.items():
        torch.save(state, tmp_path / f"{case}.pth")
        with pytest.raises(models.CheckpointMismatchError, match=pattern):
            models.load_torch_checkpoint(model, tmp_path / f"{case}.pth")
        _assert_untouched(model, before)
    # A classifier of another size is a shape error naming fc (build with include_top=False to drop it).
    with pytest.raises(models.CheckpointMismatchError, match=r"fc\.weight: shape \(1000, 2048\).*\(10, 2048\)"):
        torch.save(good, tmp_path / "good.pth")
        models.resnet50_cbam(input_shape=(32, 32, 3), classes=10, weights=str(tmp_path / "good.pth"))
    # Control: the intact checkpoint loads and changes every weight of the model.
    models.load_torch_checkpoint(model, tmp_path / "good.pth")
    unchanged = [w.path for w, old in zip(model.weights, before) if np.array_equal(old, to_numpy(w))]
    assert unchanged == []  # the reference randomises every BatchNorm (gammas, betas, statistics) too


@pytest.mark.run_once
def test_damaged_files_give_clear_errors(tmp_path):
    model = models.seresnet50(input_shape=(32, 32, 3))
    good = _save("seresnet50", reference_resnet.randomised("seresnet50"), tmp_path / "model.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(
        ValueError, match=r"load_timm_safetensors: cannot read .*truncated\.safetensors' as safetensors"
    ):
        models.load_timm_safetensors(model, truncated)
    pth = tmp_path / "ckpt.pth"
    torch.save(reference_resnet.randomised("seresnet50").state_dict(), pth)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(pth.read_bytes()[:4096])
    with pytest.raises(ValueError, match=r"load_torch_checkpoint: cannot read .*cut\.pth' as a PyTorch checkpoint"):
        models.load_torch_checkpoint(model, cut)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        models.load_checkpoint(model, tmp_path / "empty.pth")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        models.load_checkpoint(model, tmp_path / "absent.pth")
    torch.save({"state_dict": {"conv1.weight": [1, 2]}}, tmp_path / "list.pth")
    with pytest.raises(ValueError, match="'conv1.weight' is list, not a tensor"):
        models.load_torch_checkpoint(model, tmp_path / "list.pth")
    torch.save([1, 2, 3], tmp_path / "notdict.pth")
    with pytest.raises(ValueError, match="holds list, not a state dict"):
        models.load_torch_checkpoint(model, tmp_path / "notdict.pth")


@pytest.mark.run_once
def test_unreadable_files_name_the_format_tried_and_never_suggest_an_unsafe_load(tmp_path):
    model = models.seresnet50(include_top=False, input_shape=(32, 32, 3))
    noise = np.random.default_rng(0).bytes(256)
    random_pth = tmp_path / "random.pth"
    random_pth.write_bytes(b"\x80\x02" + noise)  # a pickle's first bytes, then noise: torch.load refuses it
    with pytest.raises(ValueError) as caught:
        models.load_torch_checkpoint(model, random_pth)
    message = str(caught.value)
    assert "random.pth' as a PyTorch checkpoint" in message and "not a readable PyTorch checkpoint" in message
    assert "weights_only set to False" not in message and "arbitrary code execution" not in message
    assert "weights_only`" not in message and "Unsupported operand" in message  # torch's reason, not its advice
    # A pickle that would run code: refused, and the message does not say how to load it anyway.
    (tmp_path / "evil.pth").write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.")
    with pytest.raises(ValueError, match=r"evil\.pth' as a PyTorch checkpoint.*os\.system") as caught:
        models.load_checkpoint(model, tmp_path / "evil.pth")
    assert "False" not in str(caught.value)
    # Random bytes named .safetensors: neither format's header; both formats named.
    (tmp_path / "random.safetensors").write_bytes(noise)
    with pytest.raises(ValueError, match=r"load_checkpoint: .*random\.safetensors' is neither a safetensors file"):
        models.load_checkpoint(model, tmp_path / "random.safetensors")
    # Starts like safetensors (header length, '{'), then damaged: read and reported as safetensors.
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes((40).to_bytes(8, "little") + b'{"a": {"dtype": "F32", ' + noise[:40])
    with pytest.raises(ValueError, match=r"load_timm_safetensors: cannot read .*damaged\.safetensors' as safetensors"):
        models.load_checkpoint(model, damaged)


@pytest.mark.run_once
def test_builders_say_nothing_is_downloaded_and_where_the_file_is(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"seresnet50: got weights='imagenet', a name.*never downloads.*"
        r"timm/seresnet50\.ra2_in1k on the Hugging Face Hub",
    ):
        models.seresnet50(weights="imagenet")
    with pytest.raises(
        FileNotFoundError,
        match=r"no checkpoint file at .*absent\.pth'.*never downloads.*"
        r"RESNET50_CBAM_new_name_wrap\.pth from the official CBAM repository",
    ):
        models.resnet50_cbam(weights=str(tmp_path / "absent.pth"))
    with pytest.raises(ValueError, match=r"ecaresnet101d: .*timm/ecaresnet101d\.miil_in1k"):
        models.ecaresnet101d(weights="ImageNet")
    with pytest.raises(TypeError, match=r"ecaresnet50d: `weights` must be None or the path .*got bool"):
        models.ecaresnet50d(weights=True)


@pytest.mark.run_once
@pytest.mark.parametrize("module, extra", [("torch", "torch"), ("safetensors.numpy", "weights")])
def test_missing_reader_names_the_extra(module, extra, monkeypatch, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x00" * 16)
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    loader = "load_torch_checkpoint" if module == "torch" else "load_timm_safetensors"
    with pytest.raises(ImportError, match=rf"{loader}: needs the `{module}`.*keras-vision-attention\[{extra}\]"):
        getattr(models, loader)(None, tmp_path / "x.bin")


@pytest.mark.run_once
def test_builder_arguments_are_checked():
    with pytest.raises(ValueError, match="resnet50_cbam: `pooling` must be one of"):
        models.resnet50_cbam(include_top=False, pooling="mean")
    with pytest.raises(ValueError, match="seresnet50: `input_shape` must be"):
        models.seresnet50(input_shape=(224, 224))
    with pytest.raises(ValueError, match="ecaresnet50d: `classes`"):
        models.ecaresnet50d(classes=0)
    with pytest.raises(ValueError, match="data_format"):
        models.resnet50_cbam(data_format="nhwc")
    inputs = keras.Input((8, 8, 3))
    separable = keras.Model(inputs, keras.layers.SeparableConv2D(4, 3, name="separable")(inputs))
    with pytest.raises(models.CheckpointMismatchError, match="'separable' .* no PyTorch counterpart"):
        models.assign(separable, {}, "arrays")


@pytest.mark.run_once
def test_loaded_backbone_works_with_the_backbone_tools(tmp_path):
    """The backbone tools see the source's attention: freeze_backbone leaves exactly the 16 SE blocks (and the
    head) trainable; attach refuses clearly, since a second block per branch would stack on the first."""
    import keras_attention as ka
    from keras_attention.backbones import attention_layers, freeze_backbone

    path = _save("seresnet50", reference_resnet.randomised("seresnet50"), tmp_path / "model.safetensors")
    backbone = models.seresnet50(include_top=False, weights=str(path), input_shape=(32, 32, 3), pooling="avg")
    assert [layer.name for layer in attention_layers(backbone)][:2] == ["layer1_0_se", "layer1_1_se"]
    assert len(attention_layers(backbone)) == 16
    model = keras.Model(backbone.input, keras.layers.Dense(10, name="head")(backbone.output))
    freeze_backbone(model, keep_trainable=["head"])
    trainable = sorted({layer.name for layer in model.layers if layer.trainable and layer.weights})
    assert trainable == sorted(["head", *(layer.name for layer in attention_layers(backbone))])
    with pytest.raises(ValueError, match=r"attach: 'seresnet50' already has 16 attention layer\(s\)"):
        ka.attach(backbone, "eca")


# ----------------------------------------------------------------- MobileNetV2 + Coordinate Attention


def test_mobilenetv2_ca_checkpoint_gives_pytorch_logits(tmp_path):
    """The authors' mbv2_ca.py in PyTorch, saved as the released mbv2_ca.pth keys its classifier
    (`classifier.weight`): it loads and the logits equal PyTorch's."""
    from tests.kit import reference_mobilenet_ca as reference

    source = reference.randomised()
    path = reference.save_as_published(source, tmp_path / "mbv2_ca.pth")
    # 75: odd sizes on the way down exercise PyTorch's symmetric padding of the strided convolutions.
    model = models.mobilenetv2_ca(weights=str(path), input_shape=(75, 75, 3), classifier_activation=None)
    images = np.random.default_rng(1).normal(size=(2, 75, 75, 3)).astype("float32")
    expected = _torch_logits(source, images)
    actual = to_numpy(model(images, training=False))
    assert _relative_error(actual, expected) < 1e-4
    assert np.array_equal(actual.argmax(-1), expected.argmax(-1))
    assert _trainable_count(model) == reference_resnet.parameter_count(source)
    inserted = [layer for layer in model.layers if type(layer).__name__ == "CoordinateAttention"]
    assert len(inserted) == 16  # every inverted residual with expansion 6; the t = 1 block has none
    # Control: the randomly initialised model is far from PyTorch's logits.
    fresh = models.mobilenetv2_ca(input_shape=(75, 75, 3), classifier_activation=None)
    assert _relative_error(to_numpy(fresh(images, training=False)), expected) > 0.1


@pytest.mark.run_once(reason="checkpoint bookkeeping, the same in every mode")
def test_mobilenetv2_ca_headless_and_other_widths(tmp_path):
    from tests.kit import reference_mobilenet_ca as reference

    source = reference.randomised()
    path = reference.save_as_published(source, tmp_path / "mbv2_ca.pth")
    # mbv2_ca.py's own spelling of the classifier (`classifier.1.weight`) loads the same weights.
    released, own = (models.mobilenetv2_ca(input_shape=(32, 32, 3)) for _ in range(2))
    models.load_checkpoint(released, str(path))
    models.load_checkpoint(own, str(reference.save_as_published(source, tmp_path / "own.pth", "classifier.1")))
    assert all(np.array_equal(a, b) for a, b in zip(released.get_weights(), own.get_weights()))
    headless = models.mobilenetv2_ca(include_top=False, pooling="avg", input_shape=(32, 32, 3))
    report = models.load_checkpoint(headless, str(path))
    assert set(report.skipped) >= {"classifier.weight", "classifier.bias"}
    assert headless.output_shape == (None, 1280)
    # Width multipliers follow mbv2_ca.py's _make_divisible (0.5: 16-channel stem, 1280 last channels).
    for alpha in (0.5, 1.4):
        source = reference.randomised(width_mult=alpha)
        model = models.mobilenetv2_ca(alpha=alpha, input_shape=(32, 32, 3))
        assert _trainable_count(model) == reference_resnet.parameter_count(source)
    with pytest.raises(ValueError, match=r"mobilenetv2_ca: `alpha` \(the width multiplier\) must be a number"):
        models.mobilenetv2_ca(alpha=0)
    with pytest.raises(models.CheckpointMismatchError, match="does not fit model"):
        models.mobilenetv2_ca(alpha=0.5, weights=str(path))  # a 1.0 checkpoint into a 0.5 model
