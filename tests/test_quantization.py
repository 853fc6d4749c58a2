"""Quantization-aware training through tfmot (keras_attention.quantization.tfmot), tf_keras mode.

Under Keras 3 only the clear errors of the tfmot-only helpers are tested here:
tfmot 0.8.1 works only with tf_keras (TF_USE_LEGACY_KERAS=1). Keras 3's own QAT
is tested in test_quantization_keras3.py.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import keras
from tests.kit.flatbuffer_edits import assert_within_int8_steps

# A QAT file computes what its QAT model computes: the outputs within this many int8 steps (rounding
# differences inside the graph can carry a step or two to the output).
QAT_STEPS = 3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------- Keras 3: the clear error


@pytest.mark.keras3(reason="the Keras 3 error path")
def test_keras3_gives_the_clear_error_for_the_tfmot_only_helpers():
    """quantize_model itself runs on Keras 3 (test_quantization_keras3.py); tfmot's helpers need tf_keras."""
    from keras_attention import quantization

    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, ka.CBAM(reduction=2, kernel_size=3)(inputs))
    calls = [
        lambda: quantization.quantize_annotate_layer(model.layers[-1]),
        lambda: quantization.quantize_apply(model),
        lambda: quantization.quantize_scope(),
        lambda: quantization.save_qat_model(model, "model.h5"),
        lambda: quantization.load_qat_model("model.h5"),
        lambda: quantization.load_keras3_weights(model, "model.keras"),
        lambda: quantization.float32_model(model),
        lambda: quantization.CBAMQuantizeConfig,
    ]
    for call in calls:
        with pytest.raises(RuntimeError) as info:
            call()
        message = str(info.value)
        assert "TF_USE_LEGACY_KERAS=1" in message, message
        assert "tensorflow-model-optimization" in message and "Keras 2" in message, message


_IMPORT_CHECK = """
import os, sys
import keras_attention, keras_attention.quantization as q
from keras_attention.backend import IS_LEGACY, keras
assert q.quantize_config_for(keras.layers.Dense(2)) is None  # needs no tfmot
assert "tensorflow_model_optimization" not in sys.modules, "tfmot imported"
assert "TF_USE_LEGACY_KERAS" not in os.environ, os.environ["TF_USE_LEGACY_KERAS"]
assert not IS_LEGACY
print("ok", keras.__version__)
"""


@pytest.mark.keras3(reason="checks that Keras 3 stays active")
def test_importing_quantization_does_not_import_tfmot():
    """tfmot's import sets TF_USE_LEGACY_KERAS=1 as a side effect; ours must not (fresh process)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = ROOT
    result = subprocess.run([sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok 3." in result.stdout


# ------------------------------------------------------------------- tf_keras helpers


def _randomize(layer, seed=0):
    """Random weights everywhere (positive BN variances), so every term of the formula counts."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        value = rng.normal(scale=0.5, size=w.shape)
        if "moving_variance" in w.name:
            value = np.abs(value) + 0.5
        w.assign(value.astype("float32"))


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


CL, CF = "channels_last", "channels_first"
SINGLE = [(2, 6, 7, 16)]
SINGLE_CF = [(2, 16, 6, 7)]
PAIR = [(2, 6, 7, 8), (2, 6, 7, 12)]  # [cem, rpn] / same size
PAIR_CF = [(2, 8, 6, 7), (2, 12, 6, 7)]
CEM_ODD = [(2, 7, 9, 8), (2, 4, 5, 12)]  # C5 = ceil(C4 / 2)
CEM_ODD_CF = [(2, 8, 7, 9), (2, 12, 4, 5)]

FORWARD_CASES = {
    "channel": (lambda: ka.ChannelAttention(reduction=4), SINGLE),
    "channel_max_hard_identity": (
        lambda: ka.ChannelAttention(reduction=4, pooling="max", gate="hard_sigmoid", start_as_identity=True),
        SINGLE,
    ),
    "channel_cf": (lambda: ka.ChannelAttention(reduction=4, data_format=CF), SINGLE_CF),
    "se_identity": (lambda: ka.SqueezeExcitation(reduction=4, start_as_identity=True), SINGLE),
    "eca": (lambda: ka.EfficientChannelAttention(), SINGLE),
    "eca_cf_hard": (
        lambda: ka.EfficientChannelAttention(kernel_size=5, gate="hard_sigmoid", data_format=CF),
        SINGLE_CF,
    ),
    "spatial": (lambda: ka.SpatialAttention(kernel_size=3), SINGLE),
    "spatial_bn_cf": (lambda: ka.SpatialAttention(kernel_size=5, use_batchnorm=True, data_format=CF), SINGLE_CF),
    "spatial_max_bias": (lambda: ka.SpatialAttention(kernel_size=3, pooling="max", use_bias=True), SINGLE),
    "spatial_avg_identity": (lambda: ka.SpatialAttention(kernel_size=3, pooling="avg", start_as_identity=True), SINGLE),
    "cbam": (lambda: ka.CBAM(reduction=4, kernel_size=3), SINGLE),
    "cbam_spatial_first_bn": (
        lambda: ka.CBAM(reduction=4, kernel_size=3, arrangement="spatial_first", use_batchnorm=True),
        SINGLE,
    ),
    "cbam_parallel_hard_identity": (
        lambda: ka.CBAM(
            reduction=4, kernel_size=3, arrangement="parallel", gate="hard_sigmoid", start_as_identity=True
        ),
        SINGLE,
    ),
    "cbam_cf": (lambda: ka.CBAM(reduction=4, kernel_size=3, data_format=CF), SINGLE_CF),
    "cem": (lambda: ka.ContextEnhancement(filters=10), [(2, 8, 6, 8), (2, 4, 3, 12)]),
    "cem_odd_cf": (lambda: ka.ContextEnhancement(filters=10, data_format=CF), CEM_ODD_CF),
    "cem_odd": (lambda: ka.ContextEnhancement(filters=10), CEM_ODD),
    "rpn_head": (lambda: ka.LightRPNHead(num_anchors=3, filters=8), SINGLE),
    "rpn_head_cf": (lambda: ka.LightRPNHead(num_anchors=2, filters=8, kernel_size=3, data_format=CF), SINGLE_CF),
    "coord": (lambda: ka.CoordinateAttention(), SINGLE),
    "ese": (lambda: ka.EffectiveSqueezeExcitation(), SINGLE),
    "ceca_cf": (lambda: ka.CircularEfficientChannelAttention(kernel_size=5, data_format=CF), SINGLE_CF),
    "coord_cf_timm_identity": (
        lambda: ka.CoordinateAttention(
            reduction=24, divisor=8, use_bias=False, start_as_identity=True, activation="swish", data_format=CF
        ),
        SINGLE_CF,
    ),
    "scoord_residual": (lambda: ka.SimpleCoordinateAttention(residual=True), SINGLE),
    "ela_paper_cf": (
        lambda: ka.EfficientLocalAttention(shared=True, norm_groups=4, activation="linear", data_format=CF),
        SINGLE_CF,
    ),
    "strip": (lambda: ka.StripAttention(), SINGLE),
    "ecam_identity": (lambda: ka.EfficientChannelAttentionMLP(start_as_identity=True), SINGLE),
    "lcbam": (lambda: ka.LightCBAM(reduction=4, kernel_size=3), SINGLE),
    "ge_params": (lambda: ka.GatherExcite(extent=2, extra_params=True), SINGLE),
    "gc_both_cf": (lambda: ka.GlobalContext(fusion=("scale", "add"), data_format=CF), SINGLE_CF),
    "sam": (lambda: ka.RPNGuidedSpatialAttention(), PAIR),
    "sag_mask_head": (lambda: ka.SAGMaskHead(num_classes=3, filters=8, num_convs=2), [(2, 3, 6, 6, 5)]),
    "sag_mask_head_flat_cf": (
        lambda: ka.SAGMaskHead(num_classes=2, filters=8, num_convs=1, data_format=CF),
        [(4, 5, 7, 7)],
    ),
    "sag_mask_head_agnostic_no_attention": (
        lambda: ka.SAGMaskHead(num_classes=4, filters=8, num_convs=0, class_agnostic=True, use_attention=False),
        [(3, 6, 6, 5)],
    ),
    "sam_plain_hard_cf": (
        lambda: ka.RPNGuidedSpatialAttention(use_batchnorm=False, gate="hard_sigmoid", data_format=CF),
        PAIR_CF,
    ),
}


def _one_layer_model(factory, shapes):
    inputs = [keras.Input(s[1:]) for s in shapes]
    layer = factory()
    outputs = layer(inputs if len(inputs) > 1 else inputs[0])
    return keras.Model(inputs, outputs), layer


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
@pytest.mark.parametrize("case", sorted(FORWARD_CASES))
def test_tfmot_qat_layer_computes_the_float_layer_within_int8_error(case):
    """Under tfmot each layer runs its own forward pass with tfmot's quantizers at its points: after one
    training batch sets the ranges, the QAT layer (inner BatchNorm folded, kernels fake-quantized) is
    the float layer within int8 rounding, and not equal to it (the quantizers did run)."""
    from keras_attention import quantization

    factory, shapes = FORWARD_CASES[case]
    model, layer = _one_layer_model(factory, shapes)
    _randomize(layer)
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=s).astype("float32") for s in shapes]
    x = inputs if len(inputs) > 1 else inputs[0]
    expected = [np.asarray(t) for t in _as_list(model(x, training=False))]
    qat = quantization.quantize_model(model)
    qat(x, training=True)  # the first batch sets every range
    actual = [np.asarray(t) for t in _as_list(qat(x, training=False))]
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        span = float(e.max() - e.min())
        error = float(np.abs(a - e).max())
        # A dozen int8 steps of the output's range: one rounding per point, carried through a gate.
        assert error < 12 * span / 255, (error, span)
        assert error > 0, "the QAT model computed exactly the float model: no fake quantization ran"


@pytest.mark.tensorflow_backends(reason="the two QAT engines: Keras 3's and tfmot's (tf_keras)")
def test_a_point_added_in_the_layer_reaches_either_engine(monkeypatch):
    """A point is written once, in the layer; Keras 3 QAT and tfmot both give it a range and train it.
    Control: a point used in the forward pass but not listed is refused by either engine."""
    from keras_attention import quantization
    from keras_attention.layers.channel import ChannelAttention

    listed = [True]
    points, gate_logits = ChannelAttention.quantization_points, ChannelAttention._gate_logits

    def quantization_points(self):
        return [*points(self), "probe"] if listed[0] else points(self)

    def probed_gate_logits(self, pooled, training=None):
        return self.at_point("probe", 4.0 * gate_logits(self, pooled, training=training))

    monkeypatch.setattr(ChannelAttention, "quantization_points", quantization_points)
    monkeypatch.setattr(ChannelAttention, "_gate_logits", probed_gate_logits)

    def qat():
        inputs = keras.Input((6, 6, 8))
        return quantization.quantize_model(keras.Model(inputs, ka.SqueezeExcitation(reduction=2)(inputs)))

    x = np.random.default_rng(0).normal(size=(4, 6, 6, 8)).astype("float32")
    model = qat()
    model(x, training=True)
    values = {getattr(w, "path", w.name): float(np.asarray(w)) for w in model.weights if len(w.shape) == 0}

    def learned(point):  # (min, max) of a point's range, as either engine names it
        pattern = re.compile(rf"(quant_{point}/range_|/{point}_)(min|max)")
        return sorted(v for n, v in values.items() if pattern.search(n))

    # The probe sits after the x4 on the logits: its range is four times the logits' range.
    assert len(learned("probe")) == 2, sorted(values)
    np.testing.assert_allclose(learned("probe"), 4 * np.array(learned("logits")), rtol=1e-2)
    listed[0] = False
    with pytest.raises((RuntimeError, ValueError), match="probe"):
        qat()(x, training=True)


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
def test_every_public_layer_has_a_quantize_config():
    from keras_attention import layers, quantization

    public = {
        name
        for name in layers.__all__
        if isinstance(getattr(layers, name), type) and issubclass(getattr(layers, name), keras.layers.Layer)
    }
    supported = {cls.__name__ for cls in quantization.supported_layers()}
    missing = public - supported - set(quantization.NOT_QUANTIZED)
    assert not missing, f"public layers without a QuantizeConfig: {sorted(missing)}"
    assert not supported & set(quantization.NOT_QUANTIZED)
    for name in supported:
        config_cls = getattr(quantization, f"{name}QuantizeConfig")
        config = config_cls()
        assert config.get_config() == {}
        assert keras.saving.get_registered_name(config_cls) == f"keras_attention>{name}QuantizeConfig"
    assert quantization.quantize_config_for(keras.layers.Dense(3)) is None
    # SqueezeExcitation subclasses ChannelAttention but gets its own config.
    assert type(quantization.quantize_config_for(ka.SqueezeExcitation())).__name__ == "SqueezeExcitationQuantizeConfig"
    with pytest.raises(ValueError, match="CBAMQuantizeConfig quantizes CBAM layers"):
        quantization.CBAMQuantizeConfig().get_activations_and_quantizers(ka.SpatialAttention())


def _channel_family(size=12):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = ka.ChannelAttention(reduction=4)(x)
    x = ka.SqueezeExcitation(reduction=4, gate="hard_sigmoid")(x)
    x = ka.EfficientChannelAttention(start_as_identity=True)(x)
    x = ka.ChannelAttention(reduction=4, pooling="max", start_as_identity=True)(x)
    x = ka.CoordinateAttention(residual=True)(x)
    x = ka.EffectiveSqueezeExcitation()(x)
    x = ka.CircularEfficientChannelAttention()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="channel_family")


def _spatial_family(size=12):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = ka.SpatialAttention(kernel_size=3, use_batchnorm=True)(x)
    x = ka.CBAM(reduction=4, kernel_size=3)(x)
    x = ka.CBAM(reduction=4, kernel_size=3, arrangement="spatial_first", gate="hard_sigmoid")(x)
    x = ka.CBAM(reduction=4, kernel_size=3, arrangement="parallel", start_as_identity=True, spatial_pooling="avg")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="spatial_family")


def _thundernet_family(size=16):
    inputs = keras.Input((size, size, 3))
    c4 = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    c5 = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(c4)
    cem = ka.ContextEnhancement(filters=12)([c4, c5])
    features, objectness, deltas = ka.LightRPNHead(num_anchors=3, filters=16)(cem)
    sam = ka.RPNGuidedSpatialAttention()([cem, features])
    return keras.Model(inputs, [sam, objectness, deltas], name="thundernet_family")


def _centermask_family(size=8):
    rois = keras.Input((3, size, size, 8))  # (batch, boxes, S, S, C): RoIAlign's output
    return keras.Model(rois, ka.SAGMaskHead(num_classes=3, filters=16, num_convs=2)(rois), name="centermask_family")


def _zoo_family(size=12):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    for layer in (
        ka.SimpleCoordinateAttention(),
        ka.EfficientLocalAttention(),
        ka.StripAttention(residual=True),
        ka.EfficientChannelAttentionMLP(),
        ka.LightCBAM(reduction=4, kernel_size=3),
        ka.GatherExcite(extent=2),
        ka.GlobalContext(),
        ka.GlobalContext(fusion="add", use_attn=False),
    ):
        x = layer(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="zoo_family")


FAMILIES = {
    # family: (builder, input size, ops that must be int8 in the .tflite)
    "channel": (
        _channel_family,
        12,
        {"MEAN", "REDUCE_MAX", "LOGISTIC", "MUL", "ADD", "CONV_2D", "RESHAPE", "HARD_SWISH"},
    ),
    "spatial_cbam": (_spatial_family, 12, {"MEAN", "REDUCE_MAX", "CONCATENATION", "LOGISTIC", "MUL", "ADD", "CONV_2D"}),
    "centermask": (
        _centermask_family,
        8,
        {"CONV_2D", "TRANSPOSE_CONV", "MEAN", "REDUCE_MAX", "CONCATENATION", "LOGISTIC", "MUL", "RESHAPE"},
    ),
    "zoo": (
        _zoo_family,
        12,
        {"MEAN", "REDUCE_MAX", "LOGISTIC", "MUL", "ADD", "SUB", "RSQRT", "EXP", "DEPTHWISE_CONV_2D", "GATHER"},
    ),
    "thundernet": (
        _thundernet_family,
        16,
        {"CONV_2D", "DEPTHWISE_CONV_2D", "TILE", "MEAN", "ADD", "LOGISTIC", "MUL"},
    ),
}


def _train_a_little(model, x, steps=2, seed=0):
    outputs = _as_list(model.outputs)
    targets = [
        np.random.default_rng(seed + i).normal(size=(len(x),) + tuple(o.shape[1:])).astype("float32")
        for i, o in enumerate(outputs)
    ]
    model.compile(keras.optimizers.SGD(0.01), "mse")
    history = model.fit(x, targets if len(targets) > 1 else targets[0], batch_size=len(x) // steps, epochs=1, verbose=0)
    return history.history["loss"][-1]


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_qat_models_train_convert_and_are_int8_end_to_end(family):
    """Every public layer (and its variants): a QAT model trains a step and
    converts to a .tflite that is int8 from input to output with builtin ops
    only, runs in LiteRT and agrees with the QAT Keras model."""
    from keras_attention import quantization, tflite

    builder, size, required = FAMILIES[family]
    model = builder(size)
    qat = quantization.quantize_model(model)
    ours = [layer for layer in qat.layers if type(getattr(layer, "layer", None)) in quantization.supported_layers()]
    assert len(ours) == sum(type(layer) in quantization.supported_layers() for layer in model.layers)
    for wrapper in ours:
        assert type(wrapper.quantize_config).__name__ == f"{type(wrapper.layer).__name__}QuantizeConfig"
    x = np.random.default_rng(0).random((32,) + tuple(model.input.shape[1:])).astype("float32")
    loss = _train_a_little(qat, x)
    assert np.isfinite(loss)
    flatbuffer = tflite.convert(qat, "int8", representative_data=x[:16])
    report = tflite.verify(qat, flatbuffer, x[:16], latency_runs=0, analyze_gpu=False)
    table = report.op_table()
    assert report.all_builtin, report.custom_ops
    assert report.int8_end_to_end, f"float ops: {report.float_ops}\n{report}"
    assert not report.float_ops
    int8_ops = {op for (op, dtype) in table if dtype == "int8"}
    assert required <= int8_ops, f"missing int8 ops {sorted(required - int8_ops)}\n{report}"
    # The only float ops: the model's input QUANTIZE and one output DEQUANTIZE per output.
    assert table[("QUANTIZE", "float32->int8")] == 1
    assert table[("DEQUANTIZE", "int8->float32")] == len(_as_list(model.outputs))
    # The fake-quant simulation is what LiteRT computes (a rounding step at most).
    assert report.min_cosine_similarity > 0.99, str(report)
    assert_within_int8_steps(report, flatbuffer, QAT_STEPS)


# --------------------------------------------------------------------- saving and loading


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
def test_save_formats(tmp_path):
    from keras_attention import quantization, tflite

    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = ka.CBAM(reduction=4, kernel_size=3, use_batchnorm=True)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    qat = quantization.quantize_model(keras.Model(inputs, keras.layers.Dense(10)(x)))
    x = np.random.default_rng(0).random((16, 12, 12, 3)).astype("float32")
    _train_a_little(qat, x)
    expected = qat.predict(x, verbose=0)

    # .keras: tfmot's quantize layers do not reload from it -> refused, nothing written.
    for save in (
        lambda p: qat.save(p),
        lambda p: quantization.save_qat_model(qat, p),
        lambda p: quantization.load_qat_model(p),
    ):
        path = tmp_path / "qat.keras"
        with pytest.raises(ValueError, match=r"\.keras format.*\.h5.*SavedModel"):
            save(str(path))
        assert not path.exists()
    with pytest.raises(ValueError, match="cannot be saved"):
        qat.save(str(tmp_path / "qat_dir"), save_format="keras")

    for name in ("qat.h5", "qat_savedmodel"):
        path = str(tmp_path / name)
        quantization.save_qat_model(qat, path)
        loaded = quantization.load_qat_model(path)
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
        assert np.isfinite(_train_a_little(loaded, x))  # still trains
        if name.endswith(".h5"):
            flatbuffer = tflite.convert(loaded, "int8", representative_data=x[:8])
            assert tflite.is_int8_end_to_end(flatbuffer)
        with pytest.raises(ValueError, match="cannot be saved"):
            loaded.save(str(tmp_path / "again.keras"))
    # model.save with .h5 goes through (the guard only refuses .keras).
    qat.save(str(tmp_path / "plain.h5"))
    reloaded = quantization.load_qat_model(str(tmp_path / "plain.h5"))
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), expected)


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
def test_a_qat_file_with_other_quantizer_variables_gets_the_way_out(tmp_path):
    """A .h5 whose quantizer variables differ from today's layers' (one dropped here, as a file saved
    by version 0.1 names them differently) is refused with the way out, not a bare count mismatch."""
    import h5py

    from keras_attention import quantization

    inputs = keras.Input((8, 8, 4))
    path = str(tmp_path / "qat.h5")
    qat = quantization.quantize_model(keras.Model(inputs, ka.SqueezeExcitation(reduction=2)(inputs)))
    quantization.save_qat_model(qat, path)
    quantization.load_qat_model(path)  # control: the file as written loads
    with h5py.File(path, "r+") as handle:
        group = handle[f"model_weights/{qat.layers[-1].name}"]
        dropped = [str(n) for n in group.attrs["weight_names"] if str(n).endswith("pooled_avg_seen:0")]
        assert len(dropped) == 1
        group.attrs["weight_names"] = [n for n in group.attrs["weight_names"] if str(n) not in dropped]
        del group[dropped[0]]
    with pytest.raises(ValueError, match=r"load_qat_model: .*qat.h5.*does not load.*call quantize_model again"):
        quantization.load_qat_model(path)


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
def test_tfmot_keras_format_really_does_not_reload(tmp_path):
    """The reason for the guard: tfmot's own .keras round trip fails."""
    from keras_attention import quantization

    qat = quantization.quantize_model(_channel_family())
    path = str(tmp_path / "raw.keras")
    qat._ka_unguarded_save(path)  # bypass our guard
    with pytest.raises(ValueError, match="expected .* variables"):
        with quantization.quantize_scope():
            keras.models.load_model(path)


# ------------------------------------------------------------------ mixed precision, errors


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
def test_mixed_precision_model_is_cast_to_float32():
    from keras_attention import quantization

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential(
            [  # Sequential models quantize too
                keras.Input((12, 12, 3)),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                ka.CBAM(reduction=4, kernel_size=3),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(10, dtype="float32"),
            ]
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert quantization.is_mixed_precision(model)
    float32 = quantization.float32_model(model)
    assert not quantization.is_mixed_precision(float32)
    x = np.random.default_rng(0).random((8, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(float32.predict(x, verbose=0), model.predict(x, verbose=0), atol=5e-2)
    for a, b in zip(float32.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)

    qat = quantization.quantize_model(model)
    assert not quantization.is_mixed_precision(qat)
    assert all(layer.dtype_policy.name == "float32" for layer in qat.layers)
    cbam = next(layer for layer in qat.layers if type(getattr(layer, "layer", None)) is ka.CBAM).layer
    original = next(layer for layer in model.layers if isinstance(layer, ka.CBAM))
    for a, b in zip(cbam.get_weights(), original.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(_train_a_little(qat, np.concatenate([x, x])))


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
def test_unsupported_models_give_clear_errors():
    from keras_attention import quantization

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inputs)  # tfmot has no config for it
    rescaling = keras.Model(inputs, keras.layers.Conv2D(4, 3)(x))
    with pytest.raises(quantization.UnsupportedLayerError, match="scale.*Rescaling.*quantize_annotate_layer"):
        quantization.quantize_model(rescaling)

    inner = keras.Model(inputs, ka.SqueezeExcitation(reduction=2)(keras.layers.Conv2D(8, 3)(inputs)), name="inner")
    outer_in = keras.Input((8, 8, 3))
    nested = keras.Model(outer_in, keras.layers.GlobalAveragePooling2D()(inner(outer_in)))
    with pytest.raises(quantization.UnsupportedLayerError, match="nested model 'inner'"):
        quantization.quantize_model(nested)

    qat = quantization.quantize_model(keras.Model(inputs, ka.SqueezeExcitation(reduction=2)(inputs)))
    with pytest.raises(ValueError, match="already quantization-aware"):
        quantization.quantize_model(qat)

    features, boxes = keras.Input((8, 8, 4)), keras.Input((2, 4))
    roi_model = keras.Model([features, boxes], ka.RoIAlign(output_size=4, strides=4)([features, boxes]))
    with pytest.raises(quantization.UnsupportedLayerError, match="RoIAlign.*box coordinates.*SAGMaskHead"):
        quantization.quantize_model(roi_model)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        quantization.quantize_model(Subclassed())


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
def test_quantize_annotate_part_of_a_model():
    """quantize_annotate style: only the annotated layers are quantized."""
    from keras_attention import quantization

    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="float_conv")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="feeds_cbam")(x)
    x = quantization.quantize_annotate_layer(ka.CBAM(reduction=4, kernel_size=3, name="cbam"))(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    annotated = keras.Model(inputs, outputs)
    qat = quantization.quantize_apply(annotated)
    by_name = {layer.name: layer for layer in qat.layers}
    assert type(by_name["quant_cbam"].quantize_config).__name__ == "CBAMQuantizeConfig"
    # Only the CBAM and the quantization of its input (tfmot's OutputOnlyConfig) are added.
    assert type(by_name["quant_feeds_cbam"].quantize_config).__name__ == "OutputOnlyConfig"
    assert {"float_conv", "pool", "head"} <= set(by_name)
    x = np.random.default_rng(0).random((16, 12, 12, 3)).astype("float32")
    assert np.isfinite(_train_a_little(qat, x))


# --------------------------------------------------------------------- Keras 3 -> tf_keras

_TRANSFER_MODEL = """
import keras_attention as ka
from keras_attention.backend import keras

def build():
    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = ka.CBAM(reduction=4, kernel_size=3, use_batchnorm=True)(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = ka.EfficientChannelAttention()(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))
"""

_KERAS3_SAVE = (
    _TRANSFER_MODEL
    + """
import sys
import numpy as np
model = build()
rng = np.random.default_rng(0)
for w in model.weights:  # weights a fresh build would not have
    value = rng.normal(scale=0.3, size=w.shape)
    w.assign((np.abs(value) + 0.5 if "variance" in w.path else value).astype("float32"))
x = rng.random((8, 12, 12, 3)).astype("float32")
np.save(sys.argv[1] + "/x.npy", x)
np.save(sys.argv[1] + "/y.npy", np.asarray(model(x, training=False)))
model.save(sys.argv[1] + "/model.keras")
print("keras", keras.__version__)
"""
)


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
@pytest.mark.slow
def test_a_keras3_model_reaches_qat(tmp_path):
    """The documented path: Keras 3 saves `.keras`; under tf_keras the same code
    rebuilds the model, `load_keras3_weights` loads the weights, QAT follows."""
    from keras_attention import quantization

    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(KERAS_BACKEND="tensorflow", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-c", _KERAS3_SAVE, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "keras 3." in result.stdout

    # tf_keras cannot read the Keras 3 architecture...
    with pytest.raises(Exception, match="keras.src|could not|Could not"):
        keras.models.load_model(str(tmp_path / "model.keras"))
    # ...but the same code rebuilds it and the weights load (layer names may
    # differ: built after other models here, the layers are "conv2d_7", ...).
    namespace = {}
    exec(_TRANSFER_MODEL, namespace)  # noqa: S102 - the test's own model code
    namespace["build"]()
    model = namespace["build"]()
    assert model.layers[1].name != "conv2d"
    quantization.load_keras3_weights(model, str(tmp_path / "model.keras"))
    x, y = np.load(tmp_path / "x.npy"), np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), y, rtol=1e-5, atol=1e-5)
    qat = quantization.quantize_model(model)
    assert np.isfinite(_train_a_little(qat, np.concatenate([x, x])))

    # Another architecture: a clear error naming the layers.
    pooled = model.get_layer("pool").output
    other = keras.Model(model.input, keras.layers.Dense(10)(keras.layers.Dense(8, name="extra")(pooled)))
    with pytest.raises(ValueError, match=r"only in the file: none; only in the model: dense_1 \(layer 'dense_\d+'\)"):
        quantization.load_keras3_weights(other, str(tmp_path / "model.keras"))


# ----------------------------------------------------------------------- accuracy (digits)


def _digits_model():
    inputs = keras.Input((16, 16, 1))
    x = inputs
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = ka.CBAM(reduction=4, kernel_size=3)(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="digits_cnn_cbam")


def _ptq_accuracy(model, calibration, x_test, y_test):
    """Post-training int8 accuracy in LiteRT; (accuracy, how).

    `tflite.convert` refuses models whose calibration leaves a tensor with a
    near-zero scale (a dead unit) when XNNPACK crashes on them; the PTQ
    baseline is then measured with LiteRT's reference kernels instead.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from keras_attention import tflite

    try:
        flatbuffer = tflite.convert(model, "int8", representative_data=calibration)
        return float(np.mean(tflite.run(flatbuffer, x_test)[0].argmax(1) == y_test)), "XNNPACK"
    except tflite.TFLiteConversionError as error:
        assert "never varied" in str(error), str(error)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[None]] for sample in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    interpreter = Interpreter(
        model_content=converter.convert(),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    predictions = []
    for sample in x_test:
        interpreter.set_tensor(inp["index"], sample[None])
        interpreter.invoke()
        predictions.append(interpreter.get_tensor(out["index"])[0].argmax())
    return float(np.mean(np.asarray(predictions) == y_test)), "reference kernels"


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
@pytest.mark.slow
def test_digits_qat_int8_matches_float_and_beats_ptq():
    """Trained weights (digits, 16x16): QAT int8 within 0.5 point of float and
    no worse than post-training int8, all measured in LiteRT."""
    from keras_attention import quantization, tflite
    from keras_attention.data import digits

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = digits(size=16, channels=1)
    x_train, x_test = x_train / 255.0, x_test / 255.0
    model = _digits_model()
    epochs, batch = 12, 32
    steps = epochs * -(-len(x_train) // batch)
    model.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-2, steps)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch, verbose=0)
    float_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert float_accuracy > 0.93  # the weights are trained: the comparison means something

    calibration = x_train[:200]
    ptq_accuracy, ptq_kernels = _ptq_accuracy(model, calibration, x_test, y_test)

    qat = quantization.quantize_model(model)
    qat.compile(
        keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    qat.fit(x_train, y_train, epochs=2, batch_size=batch, verbose=0)
    flatbuffer = tflite.convert(qat, "int8", representative_data=calibration)
    assert tflite.is_int8_end_to_end(flatbuffer)
    qat_accuracy = float(np.mean(tflite.run(flatbuffer, x_test)[0].argmax(1) == y_test))
    print(
        f"\ndigits 16x16, {len(x_test)} test images: float {float_accuracy:.4f}, "
        f"post-training int8 {ptq_accuracy:.4f} ({ptq_kernels}), QAT int8 {qat_accuracy:.4f}"
    )
    assert qat_accuracy >= float_accuracy - 0.005
    assert qat_accuracy >= ptq_accuracy


# ------------------------------------------------------------------------------ example


@pytest.mark.tf_keras_only(reason="tfmot 0.8.1 supports only tf_keras; under Keras 3 only the clear error is tested")
@pytest.mark.slow
def test_example_fast(tmp_path):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "qat_mobilenetv2_cbam.py"), "--fast", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| QAT int8 (LiteRT) |" in result.stdout and "| float (Keras) |" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["qat_int8_end_to_end"] and results["qat_all_builtin"] and not results["qat_float_ops"]
    assert results["qat_ops"]["LOGISTIC [int8]"] == 20  # 10 CBAM blocks, two gates each
    for name in ("qat_int8.tflite", "qat_model.h5"):
        assert (tmp_path / name).exists()
