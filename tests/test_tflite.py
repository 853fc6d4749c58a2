"""keras_attention.tflite: every claim is checked by running the .tflite in the LiteRT interpreter.

Runs on Keras 3 (TensorFlow) and tf_keras; on JAX only the clear error is checked.
"""

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import keras_attention as ka
from keras_attention import tflite
from keras_attention.backend import BACKEND, IS_LEGACY, all_layers, keras, set_global_dtype_policy
from tests.kit.flatbuffer_edits import (
    assert_within_int8_steps,
    with_byte_flipped,
    with_last_activation_scale,
    with_tensor_name_not_utf8,
)
from tests.kit.models import flex_op_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_TF = BACKEND == "tensorflow"
# Post-training int8 of the small trained CNN: its outputs within this many int8 steps of Keras' (6.0
# measured on Keras 3, 19.2 on tf_keras's differently trained weights: rounding in every layer adds up);
# a wrong output scale or zero point adds far more.
PTQ_STEPS = 32
import ai_edge_litert  # noqa: E402,F401 - in the test extra: a missing interpreter must fail CI, not skip it


def _model(layer_fn, shape):
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer_fn(inputs))


def test_jax_backend_gets_a_clear_error():
    if ON_TF:
        pytest.skip("checked on the JAX backend")
    model = _model(lambda x: ka.CBAM(reduction=2)(x), (8, 8, 8))
    with pytest.raises(RuntimeError, match="needs the TensorFlow backend.*KERAS_BACKEND=tensorflow"):
        tflite.convert(model)


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits16():
    from keras_attention.data import digits

    return digits(size=16)


@pytest.fixture(scope="module")
def trained_cnn_cbam(digits16):
    """A tiny CNN with two CBAM blocks, trained a few seconds on real digits (int8 needs trained weights)."""
    if not ON_TF:
        pytest.skip("TensorFlow backend only")
    (x_train, y_train), _ = digits16
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = ka.CBAM(reduction=4, kernel_size=7, name="cbam_1")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = ka.CBAM(reduction=4, kernel_size=3, name="cbam_2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x), name="cnn_cbam")
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    model.fit(x_train, y_train, batch_size=32, epochs=4, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained_tflite(trained_cnn_cbam, digits16):
    """The trained model converted once per quantization mode."""
    (x_train, _), _ = digits16
    return {q: tflite.convert(trained_cnn_cbam, q, representative_data=x_train[:100]) for q in tflite.QUANTIZATIONS}


# ---------------------------------------------------- every public layer, float32


def _public_layer_cases():
    cases = [
        ("CBAM", lambda: ka.CBAM(reduction=4), [(12, 12, 16)]),
        (
            "CBAM-spatial_first",
            lambda: ka.CBAM(reduction=4, arrangement="spatial_first", use_batchnorm=True),
            [(12, 12, 16)],
        ),
        (
            "CBAM-parallel-hard_sigmoid",
            lambda: ka.CBAM(reduction=4, arrangement="parallel", gate="hard_sigmoid"),
            [(12, 12, 16)],
        ),
        ("CBAM-unknown-size", lambda: ka.CBAM(reduction=4), [(None, None, 16)]),
        ("CBAM-channels_first", lambda: ka.CBAM(reduction=4, data_format="channels_first"), [(16, 10, 12)]),
        ("ChannelAttention", lambda: ka.ChannelAttention(reduction=4), [(12, 12, 16)]),
        ("SpatialAttention", lambda: ka.SpatialAttention(), [(12, 12, 16)]),
        ("SpatialAttention-avg", lambda: ka.SpatialAttention(pooling=("avg",)), [(12, 12, 16)]),
        ("SqueezeExcitation", lambda: ka.SqueezeExcitation(reduction=4), [(12, 12, 16)]),
        ("EfficientChannelAttention", lambda: ka.EfficientChannelAttention(), [(12, 12, 16)]),
        ("ContextEnhancement", lambda: ka.ContextEnhancement(filters=24), [(12, 12, 16), (6, 6, 32)]),
        ("LightRPNHead", lambda: ka.LightRPNHead(num_anchors=3, filters=16), [(12, 12, 24)]),
        ("RPNGuidedSpatialAttention", lambda: ka.RPNGuidedSpatialAttention(), [(12, 12, 24), (12, 12, 16)]),
        ("SAGMaskHead", lambda: ka.SAGMaskHead(num_classes=3, filters=16, num_convs=2), [(14, 14, 16)]),
    ]
    return [pytest.param(factory, shapes, id=name) for name, factory, shapes in cases]


@pytest.mark.tensorflow_backends
@pytest.mark.parametrize("factory, shapes", _public_layer_cases())
def test_every_public_layer_float32_matches_keras(request, factory, shapes):
    name = request.node.callspec.id.split("-")[0]
    assert hasattr(ka, name), f"keras_attention.{name}, a public layer, is gone"
    keras.utils.set_random_seed(1)
    inputs = [keras.Input(s) for s in shapes]
    outputs = factory()(inputs if len(inputs) > 1 else inputs[0])
    model = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs)
    rng = np.random.default_rng(0)
    concrete = [tuple(d if d is not None else 10 for d in s) for s in shapes]
    data = [rng.normal(size=(4,) + s).astype("float32") for s in concrete]
    flatbuffer = tflite.convert(model)
    report = tflite.verify(model, flatbuffer, data if len(data) > 1 else data[0], latency_runs=0, analyze_gpu=False)
    assert report.all_builtin
    assert report.max_abs_error <= 1e-4, str(report)
    assert report.max_rel_error <= 1e-4, str(report)


@pytest.mark.keras3_tensorflow(reason="TFLite conversion")
def test_multiply_adds_are_counted_from_the_file():
    """Against the textbook counts of each layer, written from the Keras layers' shapes."""
    inputs = keras.Input((8, 6, 4))
    conv = keras.layers.Conv2D(5, 3, padding="same")
    depthwise = keras.layers.DepthwiseConv2D(3, padding="same")
    dense = keras.layers.Dense(7)
    x = keras.layers.GlobalAveragePooling2D()(depthwise(conv(inputs)))
    model = keras.Model(inputs, dense(ka.SqueezeExcitation(reduction=1)(keras.layers.Reshape((1, 1, 5))(x))))
    counted = tflite.multiply_adds(tflite.convert(model, "float32"))
    textbook = {
        "CONV_2D": 8 * 6 * 5 * (3 * 3 * 4) + 2 * (5 * 5),  # the stem, then SE's two 1x1 convolutions (C = 5)
        "DEPTHWISE_CONV_2D": 8 * 6 * 5 * (3 * 3),
        "FULLY_CONNECTED": 7 * 5,
    }
    assert counted["by_op"] == textbook and counted["weights"] == sum(textbook.values())
    assert counted["elementwise"] >= 5 + 5  # SE's sigmoid and product over the 5 channels at least


# ------------------------------------------------------- quantization modes


@pytest.mark.tensorflow_backends
@pytest.mark.parametrize(
    "quantization, max_rel, min_cos",
    [("float32", 1e-5, 0.999999), ("float16", 5e-3, 0.9999), ("dynamic", 5e-2, 0.999), ("int8", 0.15, 0.99)],
)
def test_each_quantization_mode_agrees_with_keras_on_held_out_digits(
    trained_cnn_cbam, trained_tflite, digits16, quantization, max_rel, min_cos
):
    _, (x_test, y_test) = digits16
    report = tflite.verify(trained_cnn_cbam, trained_tflite[quantization], x_test[:64], latency_runs=0)
    assert report.all_builtin and report.custom_ops == []
    assert report.max_rel_error <= max_rel, str(report)
    assert report.cosine_similarity >= min_cos, str(report)
    assert report.top1_agreement >= {"float32": 1.0, "float16": 0.98}.get(quantization, 0.95), str(report)
    kinds = {op["dtype"] for op in report.ops}
    if quantization == "float32":
        assert kinds == {"float32"}
    if quantization == "float16":  # float16 weights dequantized once at load, compute in float32
        assert "float16->float32" in kinds
        # Smaller; not a fixed ratio: on this tiny model the flatbuffer's fixed overhead dominates,
        # and the converter keeps some small tensors in float32.
        assert report.size_bytes < len(trained_tflite["float32"])
    if quantization == "dynamic":  # the 3x3x16x32 conv kernel is stored in int8
        assert any("int8 weights" in k for k in kinds), kinds
    if quantization == "int8":
        assert report.int8_end_to_end, report.float_ops


@pytest.mark.tensorflow_backends
def test_auto_quantizer_keeps_the_int8_model_closer_to_keras_on_a_signed_map():
    """CBAM on a linear conv's output (signed, like a residual branch): TF 2.21's MLIR
    quantizer clips REDUCE_MAX's input to the max's range; "auto" must keep the legacy file."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((16, 16, 8))
    features = ka.CBAM(reduction=4)(keras.layers.Conv2D(16, 3, padding="same")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(features)))
    x_calibration, x_held_out = rng.normal(size=(2, 32, 16, 16, 8)).astype("float32")
    files = {
        q: tflite.convert(model, "int8", representative_data=x_calibration, quantizer=q)
        for q in ("mlir", "legacy", "auto")
    }
    expected = np.asarray(model(x_held_out))
    errors = {q: float(np.mean((tflite.run(f, x_held_out)[0] - expected) ** 2)) for q, f in files.items()}
    assert errors["mlir"] > 10 * errors["legacy"], errors
    assert files["auto"] == files["legacy"], errors


@pytest.mark.tensorflow_backends
def test_int8_cbam_is_int8_end_to_end_with_builtin_ops(trained_cnn_cbam, trained_tflite, digits16):
    """Full-integer CBAM: every op between the input QUANTIZE and the output DEQUANTIZE is int8."""
    _, (x_test, _) = digits16
    report = tflite.verify(trained_cnn_cbam, trained_tflite["int8"], x_test[:200], latency_runs=0)
    assert report.int8_end_to_end and report.float_ops == []
    table = report.op_table()
    for op in (
        "REDUCE_MAX",
        "MEAN",
        "LOGISTIC",
        "MUL",
        "CONCATENATION",
        "CONV_2D",
        "SUM",
    ):  # avg+max share one MLP call: SUM of hidden units, bias folded into the conv
        assert table[(op, "int8")] >= 1, (op, table)
    assert table[("QUANTIZE", "float32->int8")] == 1 and table[("DEQUANTIZE", "int8->float32")] == 1
    assert report.cosine_similarity >= 0.99 and report.min_cosine_similarity >= 0.95, str(report)
    assert_within_int8_steps(report, trained_tflite["int8"], PTQ_STEPS)
    assert report.size_bytes < 0.7 * len(trained_tflite["float32"])


@pytest.mark.tensorflow_backends
def test_int8_io_has_no_float_tensor_at_all(trained_cnn_cbam, digits16):
    (x_train, _), (x_test, _) = digits16
    flatbuffer = tflite.convert(trained_cnn_cbam, "int8", representative_data=x_train[:100], int8_io=True)
    inventory = tflite.op_inventory(flatbuffer)
    assert not any(op["op"] in ("QUANTIZE", "DEQUANTIZE") for op in inventory)
    assert all("float" not in op["dtype"] for op in inventory)
    report = tflite.verify(trained_cnn_cbam, flatbuffer, x_test[:64], latency_runs=0, analyze_gpu=False)
    assert report.int8_end_to_end and report.cosine_similarity >= 0.99, str(report)
    assert_within_int8_steps(report, flatbuffer, PTQ_STEPS)


@pytest.mark.tensorflow_backends
def test_the_int8_step_check_catches_a_wrong_output_scale_that_cosine_misses(
    trained_cnn_cbam, trained_tflite, digits16
):
    """Control for assert_within_int8_steps: LiteRT's outputs 50 % too large (a wrong output scale) keep the
    cosine exactly and fail the step check."""
    from keras_attention.tflite.verification import output_agreement

    _, (x_test, _) = digits16
    flatbuffer = trained_tflite["int8"]
    report = tflite.verify(trained_cnn_cbam, flatbuffer, x_test[:64], latency_runs=0, analyze_gpu=False)
    actual = [np.asarray(a) for a in tflite.run(flatbuffer, x_test[:64])]
    expected = [np.asarray(trained_cnn_cbam(x_test[:64]))]
    wrong_scale = output_agreement([a * 1.5 for a in actual], expected)
    assert wrong_scale["cosine_similarity"] == pytest.approx(report.cosine_similarity, abs=1e-6)
    with pytest.raises(AssertionError, match="int8 steps"):
        assert_within_int8_steps(types.SimpleNamespace(**wrong_scale), flatbuffer, PTQ_STEPS)


@pytest.mark.tensorflow_backends
def test_representative_data_from_a_dataset_and_an_image_directory(trained_cnn_cbam, digits16, tmp_path):
    import tensorflow as tf

    (x_train, y_train), (x_test, _) = digits16
    dataset = tf.data.Dataset.from_tensor_slices((x_train[:96], y_train[:96])).batch(32)
    from PIL import Image

    for i in range(40):
        Image.fromarray(x_train[i, :, :, 0].astype("uint8")).resize((24, 24)).save(tmp_path / f"{i:03d}.png")
    for data in (dataset, str(tmp_path)):
        flatbuffer = tflite.convert(trained_cnn_cbam, "int8", representative_data=data)
        report = tflite.verify(trained_cnn_cbam, flatbuffer, x_test[:64], latency_runs=0, analyze_gpu=False)
        assert report.int8_end_to_end and report.cosine_similarity >= 0.98, str(report)
        assert_within_int8_steps(report, flatbuffer, PTQ_STEPS)


@pytest.fixture(scope="module")
def scaled_input_cnn(trained_cnn_cbam):
    """The trained CNN without its Rescaling layer: it takes pixels / 255, preprocessed outside the model."""
    inputs = keras.Input((16, 16, 1))
    x = inputs
    for layer in trained_cnn_cbam.layers[2:]:  # a chain: Input, Rescaling, then the weights
        x = layer(x)
    return keras.Model(inputs, x, name="cnn_cbam_scaled_outside")


def _digit_folder(root, images, labels):
    """The digits as PNGs, one sub-folder per class (the layout `demo --data` takes)."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[:, :, 0].astype("uint8")).save(root / str(label) / f"{i:03d}.png")
    return root


@pytest.mark.tensorflow_backends
def test_a_class_folder_calibrates_only_with_the_preprocessing_the_model_needs(
    scaled_input_cnn, trained_cnn_cbam, digits16, tmp_path
):
    """Issue 29.2: raw folder pixels for a model that expects pixels / 255 are refused, not silently used."""
    (x_train, y_train), (x_test, _) = digits16
    folder = _digit_folder(tmp_path / "digits", x_train[:60], y_train[:60])
    from keras_attention.tflite.calibration import image_files

    assert {os.path.basename(os.path.dirname(f)) for f in image_files(str(folder))[:10]} == set("0123456789")
    with pytest.raises(ValueError, match="raw pixels 0-255.*no Rescaling.*preprocess="):
        tflite.convert(scaled_input_cnn, "int8", representative_data=str(folder))
    reports = {}
    for name, preprocess in (("scaled", lambda images: images / 255.0), ("raw", lambda images: images)):
        flatbuffer = tflite.convert(scaled_input_cnn, "int8", representative_data=str(folder), preprocess=preprocess)
        reports[name] = tflite.verify(
            scaled_input_cnn, flatbuffer, x_test[:64] / 255.0, latency_runs=0, analyze_gpu=False
        )
    assert reports["scaled"].int8_end_to_end and reports["scaled"].cosine_similarity >= 0.98, str(reports["scaled"])
    # Control: what the refusal prevents. Raw-pixel ranges ruin the file for the same model.
    assert reports["raw"].cosine_similarity < 0.9, str(reports["raw"])
    # A model with its own Rescaling takes the raw folder as it is.
    flatbuffer = tflite.convert(trained_cnn_cbam, "int8", representative_data=str(folder))
    report = tflite.verify(trained_cnn_cbam, flatbuffer, x_test[:64], latency_runs=0, analyze_gpu=False)
    assert report.cosine_similarity >= 0.98, str(report)


@pytest.mark.tensorflow_backends
def test_calibration_arrays_whose_range_contradicts_the_model_warn(scaled_input_cnn, trained_cnn_cbam, digits16):
    import warnings

    (x_train, _), _ = digits16
    with pytest.warns(UserWarning, match="look like raw pixels"):
        tflite.convert(scaled_input_cnn, "int8", representative_data=x_train[:20])
    with pytest.warns(UserWarning, match="scaled twice"):
        tflite.convert(trained_cnn_cbam, "int8", representative_data=x_train[:20] / 255.0)
    with warnings.catch_warnings():  # control: matching ranges say nothing
        warnings.simplefilter("error", UserWarning)
        tflite.convert(scaled_input_cnn, "int8", representative_data=x_train[:20] / 255.0)
        tflite.convert(trained_cnn_cbam, "int8", representative_data=x_train[:20])


# ------------------------------------------------------------ the report


@pytest.mark.tensorflow_backends
def test_report_has_sizes_latency_and_writes_a_file(trained_cnn_cbam, digits16, tmp_path):
    import json

    (x_train, _), (x_test, _) = digits16
    path = tmp_path / "sub" / "model.tflite"
    flatbuffer = tflite.convert(trained_cnn_cbam, "int8", representative_data=x_train[:50], path=path)
    assert path.read_bytes() == flatbuffer
    report = tflite.verify(trained_cnn_cbam, str(path), x_test[:8], latency_runs=5)
    assert report.size_bytes == len(flatbuffer)
    assert set(report.latency_ms) == {1, 2} and all(v > 0 for v in report.latency_ms.values())
    assert report.xnnpack is True
    import tensorflow as tf

    analyzer = io.StringIO()  # the analyzer's own words, read here without the package's parsing
    with contextlib.redirect_stdout(analyzer):
        tf.lite.experimental.Analyzer.analyze(model_content=flatbuffer, gpu_compatibility=True)
    assert "GPU COMPATIBILITY WARNING" not in analyzer.getvalue() and report.gpu_compatible is True
    assert report["num_samples"] == 8
    json.dumps(report.to_dict())
    assert "int8 end to end" in str(report) and "CONV_2D" in str(report)


@pytest.mark.tensorflow_backends
def test_mixed_precision_model_is_converted_in_float32(tmp_path):
    keras.utils.set_random_seed(2)
    set_global_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((12, 12, 8))
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inputs)
        x = ka.CBAM(reduction=4, name="cbam")(x)
        outputs = keras.layers.Conv2D(4, 1, dtype="float32", name="head")(x)
        model = keras.Model(inputs, outputs)
    finally:
        set_global_dtype_policy("float32")
    assert tflite.is_mixed_precision(model)
    copy = tflite.float32_copy(model)
    assert not tflite.is_mixed_precision(copy)
    assert [layer.name for layer in copy.layers][1:] == [layer.name for layer in model.layers][1:]
    for original, copied in zip(model.weights, copy.weights):  # the same values, now float32 throughout
        assert copied.dtype == "float32"
        np.testing.assert_array_equal(np.asarray(copied), np.asarray(original).astype("float32"))
    data = np.random.default_rng(0).normal(size=(4, 12, 12, 8)).astype("float32")
    flatbuffer = tflite.convert(model)
    assert {op["dtype"] for op in tflite.op_inventory(flatbuffer)} == {"float32"}
    exact = tflite.verify(copy, flatbuffer, data, latency_runs=0, analyze_gpu=False)
    assert exact.max_rel_error <= 1e-5, str(exact)
    vs_mixed = tflite.verify(model, flatbuffer, data, latency_runs=0, analyze_gpu=False)
    assert vs_mixed.max_rel_error <= 1e-2, str(vs_mixed)  # Keras ran in float16


@pytest.mark.tensorflow_backends
def test_saved_keras_file_and_saved_model_directory_convert(tmp_path):
    keras.utils.set_random_seed(3)
    model = _model(lambda x: ka.CBAM(reduction=2)(keras.layers.Conv2D(8, 3)(x)), (10, 10, 3))
    data = np.random.default_rng(0).normal(size=(3, 10, 10, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    tflite.export_saved_model(model, str(tmp_path / "saved"))
    tflite.export_saved_model(model, str(tmp_path / "frozen"), freeze=True)
    for source in (str(tmp_path / "m.keras"), str(tmp_path / "saved"), str(tmp_path / "frozen")):
        report = tflite.verify(source, tflite.convert(source), data, latency_runs=0, analyze_gpu=False)
        assert report.max_rel_error <= 1e-5, (source, str(report))

    # freeze=True: the weights are constants of the graph, which computes what the Keras model computes.
    import tensorflow as tf

    frozen, saved = (tf.saved_model.load(str(tmp_path / name)) for name in ("frozen", "saved"))
    assert not frozen.signatures["serving_default"].variables
    assert saved.signatures["serving_default"].variables  # control: the plain export keeps them
    outputs = frozen.signatures["serving_default"](input_0=tf.constant(data[:1]))
    assert list(outputs) == ["output_0"]
    np.testing.assert_allclose(outputs["output_0"].numpy(), np.asarray(model(data[:1])), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- errors


@pytest.mark.tensorflow_backends
def test_flex_op_is_refused_with_the_op_and_the_layer_named():
    model = flex_op_model()
    with pytest.raises(tflite.FlexOpError) as caught:
        tflite.convert(model)
    message = str(caught.value)
    assert "MatrixDeterminant" in message
    assert "'determinant_gate' (Determinant)" in message
    assert caught.value.ops == [("MatrixDeterminant", "'determinant_gate' (Determinant)")]


@pytest.mark.tensorflow_backends
def test_int8_without_representative_data_and_other_bad_arguments():
    model = _model(lambda x: ka.CBAM(reduction=2)(x), (8, 8, 8))
    with pytest.raises(ValueError, match="needs representative_data"):
        tflite.convert(model, "int8")
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        tflite.convert(model, "int4")
    with pytest.raises(ValueError, match="int8_io=True needs quantization='int8'"):
        tflite.convert(model, "float16", int8_io=True)
    with pytest.raises(ValueError, match="expects rank 4"):
        tflite.convert(model, "int8", representative_data=np.zeros((8, 8), "float32"))


@pytest.mark.tensorflow_backends
def test_corrupt_tflite_files_get_a_clear_error(tmp_path):
    model = _model(lambda x: ka.CBAM(reduction=2)(x), (8, 8, 8))
    flatbuffer = tflite.convert(model)
    data = np.zeros((2, 8, 8, 8), "float32")
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(flatbuffer[: len(flatbuffer) // 3])
    with pytest.raises(tflite.InvalidTFLiteModelError, match="truncated.tflite.*corrupt or truncated"):
        tflite.verify(model, str(truncated), data)
    not_tflite = tmp_path / "weights.h5"
    not_tflite.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(tflite.InvalidTFLiteModelError, match="is not a TFLite model"):
        tflite.verify(model, str(not_tflite), data)
    with pytest.raises(FileNotFoundError, match="no .tflite file"):
        tflite.verify(model, str(tmp_path / "missing.tflite"), data)


@pytest.mark.tensorflow_backends
def test_tampered_flatbuffer_structure_gets_the_clear_error():
    """Was UnicodeDecodeError (a name that is not UTF-8), struct.error, TypeError or ValueError from inside the
    readers: load_flatbuffer now runs every reader once, so a damaged file is InvalidTFLiteModelError."""
    model = _model(lambda x: ka.CBAM(reduction=2)(x), (8, 8, 8))
    flatbuffer = tflite.convert(model)
    bad_name = with_tensor_name_not_utf8(flatbuffer)
    for read in (tflite.op_inventory, tflite.op_counts, tflite.degenerate_activations, tflite.gpu_unsupported_ops):
        with pytest.raises(tflite.InvalidTFLiteModelError, match=r"corrupt or truncated \(UnicodeDecodeError"):
            read(bad_name)
    assert tflite.op_inventory(flatbuffer)  # control: the untouched file reads
    step = max(1, len(flatbuffer) // 400)
    for position in range(8, len(flatbuffer), step):  # every byte kind: offsets, lengths, names, weights
        tampered = with_byte_flipped(flatbuffer, position)
        for read in (tflite.op_inventory, tflite.degenerate_activations):
            try:
                read(tampered)
            except tflite.InvalidTFLiteModelError:
                pass  # anything else fails the test


@pytest.mark.tensorflow_backends
def test_python_conversion_leaves_stderr_to_the_caller_as_documented(capfd):
    """The converter's C++ lines reach the caller's descriptor 2 (hiding them would take the process's stderr
    from every thread); docs/tflite.md and convert's docstring say so and name the ways to filter them."""
    model = _model(lambda x: keras.layers.Conv2D(4, 3)(x), (8, 8, 3))
    data = np.random.default_rng(0).uniform(size=(8, 8, 8, 3)).astype("float32")
    capfd.readouterr()
    tflite.convert(model, "int8", representative_data=data)
    err = capfd.readouterr().err
    assert "fully_quantize:" in err, err[-2000:]
    with open(os.path.join(ROOT, "docs", "tflite.md"), encoding="utf-8") as handle:
        docs = handle.read()
    assert "**The Python API leaves stderr alone.**" in docs and "fully_quantize" in docs
    assert "keras-attention convert" in tflite.convert.__doc__ and "docs/tflite.md" in tflite.convert.__doc__


@pytest.mark.tensorflow_backends
def test_identity_initialised_attention_that_crashes_xnnpack_in_int8_is_refused():
    """Untrained `start_as_identity` channel attention has logits exactly 0: a collapsed int8 range."""
    model = _model(lambda x: ka.ChannelAttention(reduction=2, start_as_identity=True, name="ca")(x), (8, 8, 8))
    data = np.random.default_rng(0).uniform(size=(8, 8, 8, 8)).astype("float32")
    with pytest.raises(tflite.TFLiteConversionError, match="(?s)never varied.*crashed.*'ca'"):
        tflite.convert(model, "int8", representative_data=data)


@pytest.mark.tensorflow_backends
@pytest.mark.parametrize("scale", [float("nan"), 0.0])
def test_nan_or_zero_activation_scales_are_refused_not_crashed_on(scale, tmp_path):
    """A hand-edited or broken int8 file: run, verify and measure_latency refuse it when it crashes LiteRT
    (seen here in a child process of the test's own) and run it when it does not; never a crash."""
    model = _model(lambda x: keras.layers.Conv2D(4, 3, name="conv")(x), (8, 8, 3))
    data = np.random.default_rng(0).uniform(size=(16, 8, 8, 3)).astype("float32")
    good = tflite.convert(model, "int8", representative_data=data)
    assert not tflite.degenerate_activations(good)  # control: the unpatched file is fine
    bad = with_last_activation_scale(good, scale)
    assert tflite.degenerate_activations(bad)
    assert not _crashes_litert(good, data, tmp_path)  # control: the probe runs a good file
    crashes = _crashes_litert(bad, data, tmp_path)
    for call in (
        lambda: tflite.run(bad, data[:2]),
        lambda: tflite.verify(model, bad, data[:2], latency_runs=0),
        lambda: tflite.measure_latency(bad, threads=(1,), runs=1),
    ):
        if crashes:
            with pytest.raises(tflite.InvalidTFLiteModelError, match="(?s)never varied.*crashed"):
                call()
        else:
            call()  # LiteRT runs it: running it in this process is safe


def _crashes_litert(flatbuffer, data, tmp_path):
    """Whether LiteRT (XNNPACK, one thread) crashes invoking the file on a real sample, in a child process."""
    (tmp_path / "probe.tflite").write_bytes(flatbuffer)
    np.save(tmp_path / "probe.npy", data[:1])
    code = (
        "import sys, numpy as np\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        "it = Interpreter(model_path=sys.argv[1], num_threads=1)\n"
        "it.allocate_tensors()\n"
        "it.set_tensor(it.get_input_details()[0]['index'], np.load(sys.argv[2]))\n"
        "it.invoke()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "probe.tflite"), str(tmp_path / "probe.npy")],
        capture_output=True,
        timeout=300,
    )
    return run.returncode != 0


@pytest.mark.tensorflow_backends
def test_run_refuses_empty_or_mismatched_data():
    model = _model(lambda x: keras.layers.Dense(2)(x), (3,))
    flatbuffer = tflite.convert(model)
    with pytest.raises(ValueError, match="got no samples"):
        tflite.run(flatbuffer, np.zeros((0, 3), "float32"))
    inputs = [keras.Input((3,)), keras.Input((3,))]
    two = tflite.convert(keras.Model(inputs, keras.layers.Add()(inputs)))
    with pytest.raises(ValueError, match=r"different numbers of samples \(\[2, 3\]\)"):
        tflite.run(two, [np.zeros((2, 3), "float32"), np.zeros((3, 3), "float32")])


# ------------------------------------------------- GPU delegate (analyzer)


@pytest.mark.tensorflow_backends
def test_spatial_attention_avg_pooling_for_mobile_gpus():
    """pooling=("avg",) drops REDUCE_MAX (rejected by older mobile GPU delegates).

    What TensorFlow Lite's analyzer (TF 2.21) says, checked here: both variants
    pass its GPU check (REDUCE_MAX with constant axes is supported by the
    current delegate); only the avg variant has no REDUCE_MAX at all.
    """
    reports = {}
    for pooling in (("avg", "max"), ("avg",)):
        keras.utils.set_random_seed(0)
        model = _model(lambda x, p=pooling: ka.SpatialAttention(pooling=p)(keras.layers.Conv2D(16, 3)(x)), (16, 16, 3))
        flatbuffer = tflite.convert(model)
        compatible, issues, text = tflite.gpu_compatibility(flatbuffer)
        reports[pooling] = (compatible, issues, {op["op"] for op in tflite.op_inventory(flatbuffer)})
        assert "ModelAnalyzer" in text
    assert "REDUCE_MAX" in reports[("avg", "max")][2]
    assert "REDUCE_MAX" not in reports[("avg",)][2]
    assert reports[("avg",)][:2] == (True, [])
    assert reports[("avg", "max")][:2] == (True, []), "the TF 2.21 analyzer accepts REDUCE_MAX"


@pytest.mark.tensorflow_backends
def test_gpu_delegate_gaps_are_reported_even_where_the_analyzer_passes_them():
    """TOPK_V2 has no GPU-delegate kernel. The TF 2.21 analyzer still prints "looks compatible"
    (its check passes every model we tried); `verify` reports the op from the delegate's op list."""
    import tensorflow as tf

    class TopTwo(keras.layers.Layer):
        def call(self, x):
            return tf.math.top_k(x, 2).values

    model = _model(lambda x: TopTwo()(x), (8, 8, 4))
    flatbuffer = tflite.convert(model)
    assert tflite.gpu_unsupported_ops(flatbuffer) == ["TOPK_V2"]
    report = tflite.verify(model, flatbuffer, np.ones((2, 8, 8, 4), "float32"), latency_runs=0)
    assert report.gpu_unsupported_ops == ["TOPK_V2"]
    assert report.gpu_compatible is True, "the TF 2.21 analyzer does not flag TOPK_V2"


# --------------------------------------------------- MobileNetV2 + CBAM


def _reference_models():
    spec = importlib.util.spec_from_file_location(
        "reference_models", os.path.join(ROOT, "tflite", "reference_models.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.tf_keras_only(reason="Keras 3 runs the same checks in test_kit_script_writes_the_table_in_ci_size")
def test_mobilenetv2_cbam_float32_and_trained_int8():
    refs = _reference_models()
    (x_train, y_train), (x_test, _) = refs.digits_rgb(32)
    model = refs.mobilenet_v2(32, cbam=True)
    assert sum(isinstance(layer, ka.CBAM) for layer in all_layers(model)) == 10
    refs.train_classifier(model, x_train, y_train, epochs=2)
    float32 = tflite.verify(model, tflite.convert(model), x_test[:16], latency_runs=0, analyze_gpu=False)
    assert float32.max_rel_error <= 1e-4, str(float32)
    int8 = tflite.convert(model, "int8", representative_data=x_train[:100])
    report = tflite.verify(model, int8, x_test[:100], latency_runs=0)
    assert report.all_builtin and report.int8_end_to_end, report.float_ops
    assert report.cosine_similarity >= 0.99, str(report)


@pytest.mark.tensorflow_backends
@pytest.mark.slow
def test_kit_script_writes_the_table_in_ci_size(tmp_path):
    if IS_LEGACY:
        pytest.skip("the kit runs on Keras 3")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tflite", "build_kit.py"), "--ci", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    import json

    table = (tmp_path / "results.md").read_text()
    results = json.loads((tmp_path / "results.json").read_text())
    assert "| mobilenetv2 " in table and "int8" in table
    rows = {(r["model"], r["quantization"]): r for r in results["rows"]}
    plain = rows[("mobilenetv2", "int8")]
    assert plain["all_builtin"] and plain["int8_end_to_end"]
    assert os.path.getsize(tmp_path / "mobilenetv2_int8.tflite") == plain["size_bytes"]
    cbam = rows[("mobilenetv2_cbam", "int8")]
    assert cbam["int8_end_to_end"] and cbam["cosine_similarity"] >= 0.99
    assert rows[("mobilenetv2_cbam", "float32")]["max_rel_error"] <= 1e-4
    assert results["cbam_vs_plain"]["int8"]["latency_ratio_1_thread"] > 0
    for head in ("sag_mask_head", "thundernet_cem_rpn_sam"):
        assert rows[(head, "float32")]["all_builtin"] and rows[(head, "int8")]["int8_end_to_end"]


def test_top1_agreement_counts_exact_ties_in_the_keras_logits():
    """QAT logits lie on an int8 grid and can tie: any tied class is Keras' top-1 (hand-computed cases)."""
    from keras_attention.tflite.verification import output_agreement

    keras_logits = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.1], [0.3, 0.3, 0.3], [0.7, 0.1, 0.2]], "float32")
    runtime_logits = np.array([[0.49, 0.51, 0.1], [0.2, 0.9, 0.1], [0.3, 0.31, 0.3], [0.1, 0.7, 0.2]], "float32")
    # Rows 0 and 2: the runtime picks a class tied for Keras' top; row 3 is a real flip.
    assert output_agreement([runtime_logits], [keras_logits])["top1_agreement"] == 0.75
    # Control: without the ties, rows 0 and 2 are flips too (argmax of Keras' row is class 0).
    untied = keras_logits + np.array([0.01, 0, 0], "float32")
    assert output_agreement([runtime_logits], [untied])["top1_agreement"] == 0.25
