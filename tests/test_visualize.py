import numpy as np
import pytest

import keras_attention as ka
from keras_attention import visualize
from keras_attention.backend import BACKEND, keras
from tests.kit import reference as ref
from tests.kit.layer_reference import randomize_weights


def _model():
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = ka.CBAM(reduction=2, name="cbam")(x)
    x = ka.SpatialAttention(kernel_size=3, name="sa")(x)
    logits = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, logits)
    for layer in model.layers:
        randomize_weights(layer, seed=1) if layer.name in ("cbam", "sa") else None
    return model


def test_attention_maps_equal_the_gates_of_the_formula():
    model = _model()
    images = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype("float32")
    maps = dict(visualize.attention_maps(model, images))
    assert list(maps) == ["cbam", "sa"]
    features = np.asarray(keras.Model(model.inputs, model.get_layer("conv").output)(images)).astype("float64")
    cbam = model.get_layer("cbam")
    ca, sa = cbam.channel_attention, cbam.spatial_attention
    w = lambda v: v.numpy().astype("float64")  # noqa: E731
    after_channel = features * ref.channel_gate(
        features,
        w(ca.mlp_reduce.kernel)[0, 0],
        w(ca.mlp_reduce.bias),
        w(ca.mlp_expand.kernel)[0, 0],
        w(ca.mlp_expand.bias),
    )
    expected = ref.spatial_gate(after_channel, w(sa.conv.kernel))[..., 0]
    np.testing.assert_allclose(maps["cbam"], expected, rtol=1e-5, atol=1e-5)
    after_cbam = np.asarray(keras.Model(model.inputs, cbam.output)(images)).astype("float64")
    sa_layer = model.get_layer("sa")
    np.testing.assert_allclose(
        maps["sa"], ref.spatial_gate(after_cbam, w(sa_layer.conv.kernel))[..., 0], rtol=1e-5, atol=1e-5
    )


def test_attention_maps_need_a_spatial_gate():
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, ka.SqueezeExcitation(reduction=2)(inputs))
    with pytest.raises(ValueError, match="attention_maps: model .* holds no layer with a spatial gate"):
        visualize.attention_maps(model, np.zeros((1, 8, 8, 4), "float32"))


@pytest.mark.tensorflow_backends(reason="grad_cam uses tf.GradientTape")
def test_grad_cam_matches_its_definition_on_a_linear_head():
    """For logits = W . GAP(A), dy_c/dA^k = W[k, c] / (h w): Grad-CAM is ReLU(sum_k W[k,c] A^k) up to scale."""
    inputs = keras.Input((6, 6, 3))
    features = keras.layers.Conv2D(5, 3, padding="same", name="features")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, use_bias=False)(keras.layers.GlobalAveragePooling2D()(features)))
    images = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype("float32")
    cam = visualize.grad_cam(model, images, class_index=1, layer_name="features")
    a = np.asarray(keras.Model(inputs, features)(images))
    expected = np.maximum((a * model.layers[-1].kernel.numpy()[:, 1]).sum(-1), 0)
    expected /= expected.reshape(2, -1).max(1)[:, None, None]
    np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-5)


def test_save_overlays_writes_a_png(tmp_path):
    images = np.random.default_rng(2).uniform(size=(2, 12, 12, 3)).astype("float32")
    path = visualize.save_overlays(
        tmp_path / "maps.png", images, [("a", np.ones((2, 6, 6))), ("b", np.zeros((2, 3, 3)))]
    )
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_attention_maps_and_grad_cam_look_inside_a_nested_backbone():
    """docs/attach.md's recipe: the backbone nested in a classifier (and in a Sequential) keeps its maps."""
    flat = _model()
    backbone = keras.Model(flat.inputs, flat.get_layer("sa").output, name="backbone")
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Rescaling(0.5)(inputs)
    head = keras.layers.Dense(4, use_bias=False)
    classifier = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(backbone(x))), name="classifier")
    sequential = keras.Sequential([keras.Input((12, 12, 3)), backbone, keras.layers.GlobalAveragePooling2D()])
    images = np.random.default_rng(3).normal(size=(2, 12, 12, 3)).astype("float32")
    expected = visualize.attention_maps(flat, images * 0.5)  # the flat model's maps equal the formula (above)
    for model, scale in ((classifier, 0.5), (sequential, 1.0)):
        maps = visualize.attention_maps(model, images)
        assert [name for name, _ in maps] == ["cbam", "sa"]
        reference = expected if scale == 0.5 else visualize.attention_maps(flat, images)
        for (_, got), (_, want) in zip(maps, reference):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if BACKEND != "tensorflow":
        return
    # Grad-CAM of the backbone's output: ReLU(sum_k W[k, c] A^k), scaled to a peak of 1 (linear head).
    cam = visualize.grad_cam(classifier, images, class_index=2)
    a = np.asarray(backbone(images * 0.5))
    want = np.maximum((a * head.kernel.numpy()[:, 2]).sum(-1), 0)
    want /= np.where(want.reshape(2, -1).max(1) > 0, want.reshape(2, -1).max(1), 1)[:, None, None]
    np.testing.assert_allclose(cam, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no layer 'conv' at its top level .*inside the nested model 'backbone'"):
        visualize.grad_cam(classifier, images, layer_name="conv")
