"""Fine-tuning after `attach()`: `freeze_backbone()`, `unfreeze()` and the recipe on digits."""

import importlib.util
import os

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backbones import attention_layers
from keras_attention.backend import keras
from tests.kit.models import images, user_cnn

L = keras.layers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def variable_ids(variables):
    return {id(v) for v in variables}


def layer_variables(layers):
    return [w for layer in layers for w in layer.trainable_weights]


def snapshot(model):
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers}


def changed_layers(before, model):
    return {
        layer.name
        for layer in model.layers
        if any(not np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights()))
    }


def test_freeze_backbone_trains_only_attention_and_head():
    model = ka.attach(user_cnn(), "se")  # any attention; SE compiles fastest under JAX
    assert ka.freeze_backbone(model, keep_trainable=["logits"]) is model
    attention = attention_layers(model)
    expected = layer_variables(attention) + model.get_layer("logits").trainable_weights
    assert variable_ids(model.trainable_weights) == variable_ids(expected)
    batchnorms = [layer for layer in model.layers if isinstance(layer, L.BatchNormalization)]
    assert batchnorms and not any(layer.trainable for layer in batchnorms)

    # One training step: frozen layers (BatchNorm statistics included) stay put.
    before = snapshot(model)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = images(4, 32) / 255.0, np.random.default_rng(0).normal(size=(4, 10)).astype("float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert changed_layers(before, model) == {layer.name for layer in attention} | {"logits"}


def test_freeze_nested_backbone_and_unfreeze():
    backbone = ka.attach(user_cnn(), "cbam")
    inputs = keras.Input((32, 32, 3))
    outputs = L.Dense(3, name="new_head")(backbone(inputs))
    classifier = keras.Model(inputs, outputs)

    ka.freeze_backbone(backbone)
    expected = layer_variables(attention_layers(backbone)) + classifier.get_layer("new_head").trainable_weights
    assert variable_ids(classifier.trainable_weights) == variable_ids(expected)

    ka.unfreeze(classifier)  # through the nested backbone
    batchnorms = [layer for layer in backbone.layers if isinstance(layer, L.BatchNormalization)]
    others = [layer for layer in backbone.layers if layer.weights and layer not in batchnorms]
    assert not any(layer.trainable for layer in batchnorms)
    assert all(layer.trainable for layer in others)
    frozen = variable_ids(w for layer in batchnorms for w in layer.weights)
    assert variable_ids(classifier.trainable_weights) == variable_ids(
        w for w in classifier.weights if id(w) not in frozen and w.trainable
    )
    assert not frozen & variable_ids(classifier.trainable_weights)

    ka.unfreeze(classifier, keep_batchnorm_frozen=False)
    assert all(layer.trainable for layer in batchnorms)
    assert len(classifier.trainable_weights) == len(
        [w for layer in backbone.layers + [classifier.get_layer("new_head")] for w in layer.trainable_weights]
    )


def test_freeze_options():
    model = ka.attach(user_cnn(), "se")
    ka.freeze_backbone(model, train_attention=False, keep_trainable=lambda layer: layer.name.startswith("c_"))
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert trainable == {"c_conv1", "c_bn1", "c_conv2", "c_bn2", "c_bn2_se"}
    with pytest.raises(ValueError, match=r"freeze_backbone: no layer named \['head'\]"):
        ka.freeze_backbone(model, keep_trainable=["head"])


def load_example():
    spec = importlib.util.spec_from_file_location(
        "finetune_keras_app", os.path.join(ROOT, "examples", "finetune_keras_app.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.keras3  # and so, out of the PyTorch mode's files, run once: on Keras 3 + TensorFlow
@pytest.mark.no_jax(
    reason="XLA-compiling MobileNetV2's training step on CPU takes minutes under JAX; "
    "attach() and the freeze helpers are tested in every mode above"
)
def test_finetune_mobilenetv2_on_digits(tmp_path):
    """The example's recipe (--fast): MobileNetV2 (alpha 0.35, 96x96, weights=None) + CBAM on digits."""
    results = load_example().run(weights=None, alpha=0.35, fast=True, out=str(tmp_path))
    history = results["frozen"] + results["finetune"]
    print("test accuracy per epoch:", " ".join(f"{a:.3f}" for a in history))
    assert results["max_relative_change_at_insertion"] < 1e-4
    assert history[-1] > history[0] + 0.2, history
    assert results["identical_after_reload"]
    assert (tmp_path / "finetuned.keras").exists()
