"""Keras 3 QAT (keras_attention.quantization.quantize_model without tf_keras or tfmot).

References: NumPy versions of TensorFlow's FakeQuant arithmetic and of the
moving-average ranges; the LiteRT interpreter running the int8 file converted
from the QAT model (another runtime: int8 kernels, not fake quantization); a
reloaded `.keras` file in a fresh process; a model trained on JAX.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import BACKEND, keras

pytestmark = pytest.mark.keras3(reason="Keras 3 QAT; tf_keras takes the tfmot path (test_quantization.py)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def np_fake_quant(x, low, high, narrow_range=False, num_bits=8):
    """TensorFlow's FakeQuantWithMinMaxVars: nudge the zero point onto the grid, clamp, round half up."""
    qmin, qmax = (1 if narrow_range else 0), 2**num_bits - 1
    scale = (high - low) / (qmax - qmin)
    zero_from_min = qmin - low / scale
    zero = np.clip(np.floor(zero_from_min + 0.5), qmin, qmax)
    nudged_low, nudged_high = (qmin - zero) * scale, (qmax - zero) * scale
    clamped = np.clip(x, nudged_low, nudged_high)
    return np.floor((clamped - nudged_low) / scale + 0.5) * scale + nudged_low


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


# ------------------------------------------------------------------ the quantizers against NumPy


def test_activation_quantizer_ranges_and_rounding_match_numpy():
    from keras_attention.quantization import ActivationQuantizer

    rng = np.random.default_rng(0)
    q = ActivationQuantizer(decay=0.9)
    first = rng.normal(1.0, 2.0, (4, 5)).astype("float32")
    y = _np(q(first, training=True))
    low, high = min(first.min(), 0.0), max(first.max(), 0.0)  # the first batch sets the range
    np.testing.assert_allclose(y, np_fake_quant(first, low, high), atol=1e-6)
    second = (rng.uniform(0.5, 3.0, (4, 5))).astype("float32")  # all positive: the range must still hold 0
    _np(q(second, training=True))
    low, high = 0.9 * low + 0.1 * 0.0, 0.9 * high + 0.1 * second.max()
    np.testing.assert_allclose(_np(q.range), [low, high], rtol=1e-5)
    probe = np.linspace(-8, 8, 101, dtype="float32")
    np.testing.assert_allclose(_np(q(probe)), np_fake_quant(probe, low, high), atol=1e-5)  # inference: stored range
    assert len(np.unique(_np(q(probe)))) <= 256


def test_fixed_ranges_are_tflites():
    from keras_attention.quantization import ActivationQuantizer

    x = np.linspace(0, 1, 1001, dtype="float32")
    y = _np(ActivationQuantizer(fixed="sigmoid")(x))
    np.testing.assert_allclose(y * 256, np.round(y * 256), atol=1e-4)  # scale 1/256, zero point -128
    assert y.max() == pytest.approx(255 / 256)


def test_kernels_are_symmetric_per_output_channel():
    from keras_attention.layers.quantizers import quantize_kernel

    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype("float32") * np.array([0.01, 0.1, 1, 10, 100], "float32")
    got = _np(quantize_kernel(kernel))
    for c in range(5):
        bound = np.abs(kernel[..., c]).max()
        np.testing.assert_allclose(
            got[..., c], np_fake_quant(kernel[..., c], -bound, bound, narrow_range=True), rtol=1e-5, atol=1e-7 * bound
        )
        steps = got[..., c] / (bound / 127)
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # integers in [-127, 127]
        assert np.abs(steps).max() <= 127.001
    # Control: one range for the whole tensor would flatten the smallest channel to zero.
    assert np.count_nonzero(np_fake_quant(kernel[..., 0], -np.abs(kernel).max(), np.abs(kernel).max(), True)) == 0
    assert np.count_nonzero(got[..., 0]) > 0


def test_quantization_points_are_the_identity_in_float():
    """quantization=None is the float layer; the QAT layer with the float weights differs by quantization only."""
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 32)).astype("float32")
    plain, qat = ka.CBAM(reduction=4), ka.CBAM(reduction=4, quantization="int8")
    expected = _np(plain(x))
    qat(x)
    targets = {w.path.split("/", 1)[1]: w for w in qat.weights}
    for w in plain.weights:
        targets[w.path.split("/", 1)[1]].assign(w)
    qat(x, training=True)  # set the ranges
    got = _np(qat(x))
    assert not np.array_equal(got, expected)
    step = (np.abs(expected).max() * 2) / 255
    assert np.abs(got - expected).max() < 4 * step
    assert ka.CBAM.from_config(qat.get_config()).get_config() == qat.get_config()
    assert "quantization" not in plain.get_config()  # float configs are unchanged


# ------------------------------------------------------------------- models, training, files


def _small_model(attention=None, size=16, channels=8):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    if attention is not None:
        x = attention(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5)(x))


def _data(n=48, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32"), rng.integers(0, 5, n)


def _fit(model, x, y, epochs=1, jit=False, eager=False):
    # eager: for a few steps of a big backbone, tracing its training graph costs more than the steps.
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
        run_eagerly=eager,
    )
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0)
    return model


def test_quantize_model_trains_with_jit_and_moves_every_weight():
    from keras_attention import quantization

    x, y = _data()
    qat = quantization.quantize_model(_small_model(ka.CBAM(reduction=2)))
    before = {w.path: _np(w).copy() for w in qat.trainable_weights}
    _fit(qat, x, y, jit=True)
    frozen = [
        p for p, v in before.items() if np.array_equal(v, _np(next(w for w in qat.trainable_weights if w.path == p)))
    ]
    assert not frozen, frozen
    assert not quantization.uncalibrated(qat)
    assert quantization.is_qat_model(qat)


def test_float_and_qat_models_train_independently():
    """The QAT copy owns its weights: training the float model afterwards (JAX donates the buffers of a
    jitted step) neither breaks nor moves the QAT model, and the other way round."""
    from keras_attention import quantization

    x, y = _data()
    model = _small_model(ka.CBAM(reduction=2))
    qat = quantization.quantize_model(model)
    qat_before = [_np(w).copy() for w in qat.weights]
    _fit(model, x, y, jit=BACKEND == "jax")
    assert all(np.array_equal(_np(w), b) for w, b in zip(qat.weights, qat_before))
    float_after = [_np(w).copy() for w in model.weights]
    _fit(qat, x, y, jit=BACKEND == "jax")  # failed on JAX with "Array has been deleted" before the copy
    assert all(np.array_equal(_np(w), a) for w, a in zip(model.weights, float_after))


def test_qat_keras_file_reloads_in_a_fresh_process_and_trains_on(tmp_path):
    from keras_attention import quantization

    x, y = _data()
    qat = _fit(quantization.quantize_model(_small_model(ka.CBAM(reduction=2))), x, y)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", _np(qat.predict(x, verbose=0)))
    script = f"""
import numpy as np, keras, keras_attention
m = keras.models.load_model({path!r}, safe_mode=True)
x = np.load({str(tmp_path / "x.npy")!r})
np.testing.assert_allclose(np.asarray(m.predict(x, verbose=0)), np.load({str(tmp_path / "expected.npy")!r}), atol=1e-5)
m.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
loss = m.fit(x, np.zeros(len(x), "int32"), epochs=3, verbose=0).history["loss"]
assert loss[-1] < loss[0], loss  # training on moves it towards the new labels
print("reloaded and trained")
"""
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reloaded and trained" in result.stdout


# ------------------------------------------------------------------------- int8 files vs Keras


def _agreement(expected, got):
    expected, got = np.asarray(expected).reshape(len(expected), -1), np.asarray(got).reshape(len(got), -1)
    cosine = np.sum(expected * got, -1) / (np.linalg.norm(expected, axis=-1) * np.linalg.norm(got, axis=-1) + 1e-12)
    # The QAT model's logits are fake-quantized onto an int8 grid, so two classes can tie exactly; then
    # either is its top-1 (argmax would pick the first and count a flip the int8 file did not make).
    chosen = np.take_along_axis(expected, got.argmax(-1)[:, None], -1)[:, 0]
    return float(np.mean(chosen == expected.max(-1))), float(cosine.min())


def _check_int8_file(qat, x, min_top1=0.99):
    from keras_attention import tflite

    flatbuffer = tflite.convert(qat, "int8")  # no representative data: the QAT ranges are in the graph
    assert tflite.is_int8_end_to_end(flatbuffer), [op["op"] for op in tflite.float_ops(flatbuffer)]
    expected = _np(qat.predict(x, verbose=0))
    got = tflite.run(flatbuffer, x)[0]
    top1, cosine = _agreement(expected, got)
    assert top1 >= min_top1 and cosine >= 0.999, (top1, cosine)
    return flatbuffer, expected, got


ATTENTION_CASES = {
    "cbam": lambda: ka.CBAM(reduction=2),
    "cbam_parallel_hard_identity_bn": lambda: ka.CBAM(
        reduction=2, arrangement="parallel", gate="hard_sigmoid", start_as_identity=True, use_batchnorm=True
    ),
    "cbam_spatial_first": lambda: ka.CBAM(reduction=2, arrangement="spatial_first"),
    "channel_max_only": lambda: ka.ChannelAttention(reduction=2, pooling="max", use_bias=False),
    "se": lambda: ka.SqueezeExcitation(reduction=2),
    "eca": lambda: ka.EfficientChannelAttention(),
    "spatial_avg_bn": lambda: ka.SpatialAttention(pooling="avg", use_batchnorm=True, kernel_size=3),
    # The zoo's authors' forms, ceca and the identity starts are in tfmot's cases (test_quantization.py).
    "ese": lambda: ka.EffectiveSqueezeExcitation(),
    "coord_timm_skip_hard": lambda: ka.CoordinateAttention(
        reduction=24, divisor=8, use_bias=False, residual=True, gate="hard_sigmoid", activation="relu6"
    ),
    # The rest of the zoo, timm's forms, in chains (one conversion each: CI time).
    "zoo_strips": lambda: _chain(
        ka.SimpleCoordinateAttention(), ka.EfficientLocalAttention(), ka.StripAttention(), ka.GatherExcite(extent=2)
    ),
    "zoo_channel": lambda: _chain(ka.EfficientChannelAttentionMLP(), ka.LightCBAM(reduction=2)),
    "gc_scale_and_add": lambda: ka.GlobalContext(fusion=("scale", "add")),
}


def _chain(*layers):
    def apply(x):
        for layer in layers:
            x = layer(x)
        return x

    return apply


@pytest.mark.keras3_tensorflow(reason="TFLite conversion")
@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_attention_layers_int8_file_computes_what_qat_computes(case):
    from keras_attention import quantization, tflite

    x, y = _data()
    qat = _fit(quantization.quantize_model(_small_model(ATTENTION_CASES[case]())), x, y)
    # Small random heads have near-tied logits: one flip in 48 is a rounding tie, not a bug (cosine and
    # the error bound below are the tight checks; the backbones are held to top-1 >= 0.99).
    flatbuffer, expected, got = _check_int8_file(qat, x, min_top1=0.95)
    step = (expected.max() - min(expected.min(), 0)) / 255
    assert np.abs(expected - got).max() <= 3 * step + 1e-6  # a few int8 steps: rounding order differs
    if case == "cbam":  # the QAT file keeps the fast space-to-depth spatial convolution
        assert ("SPACE_TO_DEPTH", "int8") in tflite.op_counts(flatbuffer)


def _thundernet_model(gate="sigmoid", per_channel=True):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    c4 = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(x)
    c5 = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(c4)
    cem = ka.ContextEnhancement(filters=12)([c4, c5])
    features, objectness, deltas = ka.LightRPNHead(num_anchors=3, filters=8)(cem)
    sam = ka.RPNGuidedSpatialAttention(gate=gate, per_channel=per_channel)([cem, features])
    pooled = [keras.layers.GlobalAveragePooling2D()(t) for t in (sam, objectness, deltas)]
    return keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Concatenate()(pooled)))


@pytest.mark.keras3_tensorflow(reason="TFLite conversion")
@pytest.mark.parametrize("gate, per_channel", [("sigmoid", True), ("hard_sigmoid", False)])
def test_thundernet_layers_int8_file_computes_what_qat_computes(gate, per_channel):
    from keras_attention import quantization, tflite

    x, y = _data(size=32)
    qat = _fit(quantization.quantize_model(_thundernet_model(gate, per_channel)), x, y)
    assert {"ContextEnhancement", "LightRPNHead", "RPNGuidedSpatialAttention"} <= {
        type(layer).__name__ for layer in qat.layers if getattr(layer, "quantization", None) == "int8"
    }
    flatbuffer, expected, got = _check_int8_file(qat, x, min_top1=0.95)
    step = (expected.max() - min(expected.min(), 0)) / 255
    assert np.abs(expected - got).max() <= 3 * step + 1e-6
    assert ("ADD", "int8") in tflite.op_counts(flatbuffer)  # the CEM sum is int8 as well


@pytest.mark.keras3_tensorflow(reason="TFLite conversion")
def test_sag_mask_head_int8_file_computes_what_qat_computes():
    from keras_attention import quantization, tflite

    rois = keras.Input((8, 8, 6))  # flattened RoI features, as RoIAlign's output reshaped
    head = ka.SAGMaskHead(num_classes=2, filters=8, num_convs=2)
    model = keras.Model(rois, head(rois))
    # A trained predictor's scale (its std-0.001 initialisation gives logits ~1e-3, whose int8 steps are far
    # finer than one step of the map before it: any rounding difference there would be many output steps).
    head.predictor.kernel.assign(np.random.default_rng(5).normal(0, 0.3, head.predictor.kernel.shape))
    x = np.random.default_rng(3).normal(size=(32, 8, 8, 6)).astype("float32")
    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-3), "mse")
    qat.fit(x, np.random.default_rng(4).normal(size=(32, 16, 16, 2)).astype("float32"), epochs=1, verbose=0)
    flatbuffer, expected, got = _check_int8_file(qat, x, min_top1=0.9)  # argmax over 512 mask logits
    step = (expected.max() - min(expected.min(), 0)) / 255
    error = np.abs(expected - got)
    # Measured: 95.7 % of the logits within one int8 step, the rest within 3.2 (without the attention
    # 98.8 % and 2.1; deconv + predictor alone 99.6 % and 1.0): rounding differences through the gate's product.
    assert np.mean(error <= step + 1e-6) >= 0.9 and error.max() <= 4 * step + 1e-6, (
        np.mean(error <= step),
        error.max() / step,
    )
    assert ("TRANSPOSE_CONV", "int8") in tflite.op_counts(flatbuffer)


def test_roi_align_is_named_unless_left_float():
    from keras_attention import quantization

    features, boxes = keras.Input((16, 16, 4)), keras.Input((3, 4))
    model = keras.Model([features, boxes], ka.RoIAlign(output_size=4, strides=4, name="roi")([features, boxes]))
    with pytest.raises(quantization.UnsupportedLayerError, match=r"roi \(RoIAlign\)"):
        quantization.quantize_model(model)
    with pytest.warns(UserWarning, match=r"left in float.*roi \(RoIAlign\)"):
        quantization.quantize_model(model, leave_float=[ka.RoIAlign])


def _every_standard_layer_model():
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3000.0, 2800.0, 2500.0])(inputs)
    x = layers.ZeroPadding2D(1)(x)
    x = layers.Conv2D(8, 3, strides=1, use_bias=True)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu6")(x)
    a = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    a = layers.BatchNormalization()(a)
    a = layers.Activation("hard_swish")(a)
    b = layers.SeparableConv2D(8, 3, padding="same")(x)
    b = layers.Activation("swish")(b)
    gate = layers.Conv2D(8, 1, activation="hard_sigmoid")(layers.GlobalAveragePooling2D(keepdims=True)(b))
    b = layers.Multiply()([b, gate])
    x = layers.Add()([a, b])
    x = layers.Concatenate()([x, layers.Activation("tanh")(x)])
    x = layers.MaxPooling2D()(x)
    x = layers.AveragePooling2D(2)(x)
    x = ka.CBAM(reduction=4)(x)
    x = layers.Dropout(0.1)(layers.Flatten()(x))
    x = layers.Dense(16, activation="relu")(layers.Reshape((-1,))(x))
    return keras.Model(inputs, layers.Softmax()(layers.Dense(5)(x)))


@pytest.mark.keras3_tensorflow(reason="TFLite conversion")
def test_every_standard_layer_quantizes_to_an_int8_file():
    from keras_attention import quantization, tflite

    x, y = _data()
    qat = _fit(quantization.quantize_model(_every_standard_layer_model()), x, y, epochs=2)
    # The softmax output has TFLite's fixed 1/256 steps: close probabilities tie in int8.
    flatbuffer, _, _ = _check_int8_file(qat, x, min_top1=0.9)
    ops = {op for op, _ in tflite.op_counts(flatbuffer)}
    assert {"HARD_SWISH", "DEPTHWISE_CONV_2D", "SOFTMAX", "TANH", "MAX_POOL_2D", "AVERAGE_POOL_2D"} <= ops, ops


@pytest.mark.keras3_tensorflow(reason="TFLite conversion")
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_qat_trained_on_another_backend_converts_on_tensorflow(tmp_path, backend):
    """Train on one backend, ship from another: JAX (jit) or PyTorch -> .keras -> TensorFlow -> int8 TFLite."""
    path = str(tmp_path / f"{backend}_qat.keras")
    script = f"""
import numpy as np, keras, keras_attention as ka
from keras_attention import quantization
from tests.test_quantization_keras3 import _data, _fit, _small_model
keras.utils.set_random_seed(0)  # as tests/conftest.py seeds every in-process test: one model, every run
x, y = _data()
qat = _fit(quantization.quantize_model(_small_model(ka.CBAM(reduction=2))), x, y, epochs=2, jit={backend == "jax"})
qat.save({path!r})
print(keras.backend.backend())
"""
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert backend in result.stdout
    qat = keras.models.load_model(path, safe_mode=True)
    x, _ = _data(seed=1)  # held-out inputs
    _check_int8_file(qat, x)


@pytest.mark.keras3_tensorflow(reason="TFLite conversion")
@pytest.mark.slow
def test_example_fast_keras3(tmp_path):
    """examples/qat_mobilenetv2_cbam.py under Keras 3: MobileNetV2 + 10 CBAM, QAT int8 end to end."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "qat_mobilenetv2_cbam.py"), "--fast", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| QAT int8 (LiteRT) |" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["qat"].startswith("Keras 3")
    assert results["qat_int8_end_to_end"] and results["qat_all_builtin"] and not results["qat_float_ops"]
    assert results["qat_ops"]["LOGISTIC [int8]"] == 20  # 10 CBAM blocks, two gates each
    assert results["qat_top1_agreement"] >= 0.95
    qat = keras.models.load_model(tmp_path / "qat_model.keras", safe_mode=True)
    assert sum(type(layer).__name__ == "CBAM" and layer.quantization == "int8" for layer in qat.layers) == 10


# MobileNetV3Small brings its own SE blocks (hard-sigmoid gates) beside CBAM. ResNet-50 + CBAM through QAT
# to int8: tests/test_examples.py::test_pretrained_resnet50_cbam; EfficientNetB0 left out for CI time.
BACKBONES = {"MobileNetV3Small": 32}


@pytest.mark.keras3_tensorflow(reason="TFLite conversion")
@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_backbone_with_cbam_qat_int8_end_to_end(family):
    from keras_attention import quantization

    size = BACKBONES[family]
    trunk = getattr(keras.applications, family)(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
    )
    model = ka.attach(keras.Model(trunk.input, keras.layers.Dense(5)(trunk.output)), "cbam")
    for layer in model.layers:  # trained statistics: a random deep net's activations fade to nothing
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.5
    x, y = _data(n=48, size=size)
    _fit(model, x[:32], y[:32], epochs=2, eager=True)
    qat = _fit(quantization.quantize_model(model), x[:32], y[:32], eager=True)
    _check_int8_file(qat, x[32:])


# ------------------------------------------------------------------------------ bad input


def test_subclassed_model_is_refused_clearly():
    from keras_attention import quantization

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match="subclassed model.*functional"):
        quantization.quantize_model(net)


def test_tfmot_only_entry_points_name_the_keras3_way(tmp_path):
    """On Keras 3, where quantize_model works, the tf_keras/tfmot helpers name their Keras 3 counterpart."""
    from keras_attention import quantization

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    calls = {
        r"save_qat_model is for tf_keras QAT models.*model\.save\('qat\.keras'\)": lambda: quantization.save_qat_model(
            model, str(tmp_path / "qat.h5")
        ),
        r"load_qat_model is for tf_keras.*keras\.saving\.load_model\('qat\.keras'\)": lambda: (
            quantization.load_qat_model(str(tmp_path / "qat.h5"))
        ),
        r"load_keras3_weights is for tf_keras.*model\.load_weights\(path\)": lambda: quantization.load_keras3_weights(
            model, str(tmp_path / "w.weights.h5")
        ),
        r"float32_model is for tf_keras.*tflite\.float32_copy": lambda: quantization.float32_model(model),
        r"quantize_scope is for tf_keras.*keras\.saving\.load_model": quantization.quantize_scope,
        r"quantize_apply is for tf_keras.*quantization\.quantize_model\(model\)": lambda: quantization.quantize_apply(
            model
        ),
        r"quantize_annotate_model is for tf_keras.*quantize_model\(model\)": lambda: (
            quantization.quantize_annotate_model(model)
        ),
        r"quantize_config_for is for tf_keras.*quantize_model\(model\)": lambda: quantization.quantize_config_for(
            ka.CBAM()
        ),
        r"CBAMQuantizeConfig is for tf_keras.*quantize_model\(model\)": lambda: quantization.CBAMQuantizeConfig,
    }
    for pattern, call in calls.items():
        with pytest.raises(RuntimeError, match=pattern) as caught:
            call()
        assert "needs tf_keras" not in str(caught.value)
    assert not os.listdir(tmp_path)


def test_unsupported_layer_is_named_or_left_float_on_request():
    from keras_attention import quantization

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.LayerNormalization(name="ln")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(quantization.UnsupportedLayerError, match=r"ln \(LayerNormalization\)"):
        quantization.quantize_model(model)
    with pytest.warns(UserWarning, match=r"left in float.*ln \(LayerNormalization\)"):
        qat = quantization.quantize_model(model, leave_float=["ln"])
    assert any(isinstance(layer, keras.layers.LayerNormalization) for layer in qat.layers)


def test_mixed_precision_model_is_quantized_in_float32_with_a_warning():
    from keras_attention import quantization

    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _small_model(ka.SqueezeExcitation(reduction=2))
    finally:
        keras.config.set_dtype_policy("float32")
    with pytest.warns(UserWarning, match="mixed-precision.*float32"):
        qat = quantization.quantize_model(model)
    assert {layer.compute_dtype for layer in qat.layers if layer.weights} == {"float32"}


def test_already_quantized_model_is_refused():
    from keras_attention import quantization

    qat = quantization.quantize_model(_small_model())
    with pytest.raises(ValueError, match="already a QAT model"):
        quantization.quantize_model(qat)


@pytest.mark.keras3_tensorflow(reason="TFLite conversion")
def test_convert_refuses_other_modes_and_unset_ranges_of_a_qat_model():
    from keras_attention import quantization, tflite

    qat = quantization.quantize_model(_small_model(ka.EfficientChannelAttention()))
    with pytest.raises(ValueError, match="never set.*fit\\(\\).*calibrate"):
        tflite.convert(qat, "int8")
    x, _ = _data()
    quantization.calibrate(qat, x)
    with pytest.raises(ValueError, match="QAT model.*'int8' only.*'float16'"):
        tflite.convert(qat, "float16")
    assert tflite.is_int8_end_to_end(tflite.convert(qat, "int8"))


@pytest.mark.run_once(reason="backend-independent")
def test_calibrate_warns_when_the_data_contradict_the_models_input():
    """quantization.calibrate checks its data as tflite.convert does (issue 29: raw pixels vs preprocessing)."""
    import warnings

    from keras_attention import quantization

    def qat_model(rescaling):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Rescaling(1 / 255.0)(inputs) if rescaling else inputs
        x = ka.CBAM(reduction=2)(keras.layers.Conv2D(4, 3, padding="same")(x))
        return quantization.quantize_model(keras.Model(inputs, x))

    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3)).astype("float32")
    with pytest.warns(UserWarning, match="calibrate: the calibration data look like raw pixels"):
        quantization.calibrate(qat_model(rescaling=False), pixels)
    with pytest.warns(UserWarning, match="calibrate: .* scaled twice"):
        quantization.calibrate(qat_model(rescaling=True), pixels / 255.0)
    with warnings.catch_warnings():  # control: matching data say nothing
        warnings.simplefilter("error", UserWarning)
        quantization.calibrate(qat_model(rescaling=True), pixels)
        quantization.calibrate(qat_model(rescaling=False), pixels / 255.0)
