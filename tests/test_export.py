"""ONNX, OpenVINO and Keras' LiteRT exporter: every exported file loaded back in its own runtime.

The reference is the Keras model's own output; the files run in onnxruntime,
OpenVINO (CPU, float32) and the LiteRT interpreter, which share no code with
Keras. The exporters run on Keras 3 with TensorFlow here and with PyTorch in a
child process (`KERAS_BACKEND` is fixed per process); JAX and tf_keras get
their clear errors.
"""

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

import keras_attention as ka
from keras_attention import export
from keras_attention.backend import BACKEND, IS_LEGACY, keras
from tests.kit.models import every_layer_model, zoo_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4  # relative to the largest output, as `max_rel_error` measures


def detection_model():
    """ThunderNet's CEM + SAM and CenterMask's RoIAlign + SAG-Mask head in one model, boxes as an input."""
    c4, c5, boxes = keras.Input((16, 16, 32)), keras.Input((8, 8, 64)), keras.Input((3, 4))
    features = ka.ContextEnhancement(filters=32)([c4, c5])
    rpn_features, objectness, _ = ka.LightRPNHead(num_anchors=3, filters=32)(features)
    features = ka.RPNGuidedSpatialAttention()([features, rpn_features])
    rois = ka.RoIAlign(output_size=7, strides=16)([features, boxes])
    masks = ka.SAGMaskHead(num_classes=2, filters=16, num_convs=2)(rois)
    return keras.Model([c4, c5, boxes], [objectness, masks])


def detection_data(n=3, seed=0):
    rng = np.random.default_rng(seed)
    y1x1 = rng.uniform(0, 200, size=(n, 3, 2))
    boxes = np.concatenate([y1x1, y1x1 + rng.uniform(8, 56, size=(n, 3, 2))], -1)
    return [
        np.maximum(rng.normal(size=(n, 16, 16, 32)), 0).astype("float32"),
        np.maximum(rng.normal(size=(n, 8, 8, 64)), 0).astype("float32"),
        boxes.astype("float32"),
    ]


def mobilenet_cbam():
    trunk = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, include_top=False, weights=None)
    x = keras.layers.GlobalAveragePooling2D()(trunk.output)
    model = ka.attach(keras.Model(trunk.input, keras.layers.Dense(10)(x)), "cbam", preserve_outputs=False)
    for layer in model.layers:  # trained-like statistics, so the outputs are not all alike
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 0.5, "float32"))
    return model


def _inputs(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n,) + tuple(t.shape)[1:]).astype("float32") for t in model.inputs]


def _export_and_verify(model, data, directory, name):
    """Both formats written and verified; returns {format: report}."""
    data = data if len(data) > 1 else data[0]
    reports = {}
    for path in (
        export.export_onnx(model, os.path.join(directory, f"{name}.onnx")),
        export.export_openvino(model, os.path.join(directory, f"{name}.xml")),
    ):
        report = export.verify(model, path, data, latency_runs=2, threads=(1,))
        assert report.max_rel_error < TOLERANCE, (path, report)
        assert report.min_cosine_similarity > 0.99999, report
        reports[report.format] = report
    return reports


# ----------------------------------------------------------------------------- TensorFlow


@pytest.mark.keras3_tensorflow
def test_every_attention_layer_in_both_formats(tmp_path):
    model = every_layer_model()
    reports = _export_and_verify(model, _inputs(model), str(tmp_path), "layers")
    assert reports["onnx"].ops["Sigmoid"] >= 9  # the gates are in the file, not folded away
    assert sorted(os.listdir(tmp_path)) == ["layers.bin", "layers.onnx", "layers.xml"]  # no temporary files left


@pytest.mark.keras3_tensorflow
def test_every_zoo_attention_in_both_formats(tmp_path):
    model = zoo_model()
    reports = _export_and_verify(model, _inputs(model), str(tmp_path), "zoo")
    assert reports["onnx"].ops["Sigmoid"] >= 10 and reports["onnx"].ops["Exp"] == 2  # GC's attention pooling


@pytest.mark.keras3_tensorflow
def test_thundernet_and_centermask_blocks_with_their_boxes(tmp_path):
    model = detection_model()
    reports = _export_and_verify(model, detection_data(), str(tmp_path), "detection")
    assert reports["onnx"].num_samples == 3
    # Control: other boxes give other masks, so the boxes input really reaches RoIAlign in the file.
    other = detection_data(seed=0)
    other[2] = other[2][::-1].copy()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "detection.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: a for i, a in zip(session.get_inputs(), detection_data())}
    changed = {i.name: a for i, a in zip(session.get_inputs(), other)}
    assert not np.allclose(session.run(None, feed)[1], session.run(None, changed)[1])


@pytest.mark.keras3_tensorflow
@pytest.mark.slow
def test_mobilenetv2_with_cbam_in_every_format(tmp_path):
    """ONNX, OpenVINO, and Keras' own LiteRT exporter, each file run in its own runtime."""
    from keras_attention import tflite

    model = mobilenet_cbam()
    data = _inputs(model, n=8)
    reports = _export_and_verify(model, data, str(tmp_path), "mobilenet")
    assert reports["onnx"].top1_agreement == reports["openvino"].top1_agreement == 1.0
    model.export(str(tmp_path / "keras.tflite"), format="litert", verbose=False)
    report = tflite.verify(model, str(tmp_path / "keras.tflite"), data[0], latency_runs=0, analyze_gpu=False)
    assert report.all_builtin and report.max_rel_error < TOLERANCE, report


@pytest.mark.keras3_tensorflow
def test_keras_litert_exporter_writes_flex_ops_that_verify_names(tmp_path):
    """Keras' exporter allows Flex ops; our report names them, where the interpreter alone would not run."""
    from keras_attention import tflite
    from tests.kit.models import flex_op_model

    model = flex_op_model()
    data = _inputs(model, n=2)[0]
    model(data)
    path = str(tmp_path / "flex.tflite")
    model.export(path, format="litert", verbose=False)
    assert [op["op"] for op in tflite.op_inventory(path) if not op["builtin"]] == ["FlexMatrixDeterminant"]
    with pytest.raises(tflite.InvalidTFLiteModelError, match=r"Flex .*\['FlexMatrixDeterminant'\].*names the Keras"):
        tflite.verify(model, path, data, latency_runs=0)


@pytest.mark.keras3_tensorflow
def test_a_mixed_precision_model_exports_as_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((8, 8, 16))
        model = keras.Model(inputs, ka.CBAM(reduction=4)(inputs))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = export.export_onnx(model, str(tmp_path / "mixed.onnx"))
    report = export.verify(model, path, _inputs(model), latency_runs=0)
    assert report.max_rel_error < 1e-2  # the Keras side computes in float16


@pytest.mark.keras3_tensorflow
def test_a_model_never_called_is_called_once_and_exports(tmp_path):
    inputs = keras.Input((8, 8, 16))
    model = keras.Model(inputs, ka.EfficientChannelAttention()(inputs))
    path = export.export_onnx(model, str(tmp_path / "eca.onnx"))
    assert export.verify(model, path, _inputs(model), latency_runs=0).max_rel_error < TOLERANCE


@pytest.mark.keras3_tensorflow
@pytest.mark.slow
def test_the_pytorch_backend_exports_both_formats(tmp_path):
    """Keras 3 on PyTorch (torch.onnx; OpenVINO from torch): every layer and the detection blocks."""
    script = f"""
import json, keras
from tests.kit.models import every_layer_model
from tests.test_export import _export_and_verify, _inputs, detection_data, detection_model
assert keras.backend.backend() == "torch"
layers = every_layer_model()
out = {{"layers": _export_and_verify(layers, _inputs(layers), {str(tmp_path)!r}, "layers"),
        "detection": _export_and_verify(detection_model(), detection_data(), {str(tmp_path)!r}, "detection")}}
print(json.dumps({{k: {{f: r.max_rel_error for f, r in v.items()}} for k, v in out.items()}}))
"""
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="torch")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(errors) == {"layers", "detection"} and all(set(e) == {"onnx", "openvino"} for e in errors.values())


# ----------------------------------------------------------------------------- JAX (jax2onnx)
# jax2onnx needs a newer absl-py than tfmot allows, so it has an environment of its own:
# `make test-jax-onnx` (part of `make test`) runs this file there with KA_TEST_JAX2ONNX=1, which
# makes these tests fail, not skip, if jax2onnx is missing.
JAX2ONNX = (
    not IS_LEGACY
    and BACKEND == "jax"
    and (importlib.util.find_spec("jax2onnx") is not None or os.environ.get("KA_TEST_JAX2ONNX") == "1")
)
on_jax2onnx = pytest.mark.skipif(not JAX2ONNX, reason="ONNX on JAX: the jax2onnx environment (make test-jax-onnx)")


def _verified_onnx(model, data, path, batch_size=None):
    path = export.export_onnx(model, path, batch_size=batch_size)
    report = export.verify(model, path, data if len(data) > 1 else data[0], latency_runs=2, threads=(1,))
    assert report.max_rel_error < TOLERANCE and report.min_cosine_similarity > 0.99999, report
    return report


@on_jax2onnx
def test_jax_every_attention_layer_to_onnx(tmp_path):
    model = every_layer_model()
    report = _verified_onnx(model, _inputs(model), str(tmp_path / "layers.onnx"))
    assert report.ops["Sigmoid"] >= 9
    # Traced as plain ops: XLA's form of the spatial convolution would add k row-shifted Slices each.
    assert "Slice" not in report.ops, report.ops
    assert os.listdir(tmp_path) == ["layers.onnx"]


@on_jax2onnx
def test_jax_every_zoo_attention_to_onnx(tmp_path):
    model = zoo_model()
    report = _verified_onnx(model, _inputs(model), str(tmp_path / "zoo.onnx"))
    assert report.ops["Sigmoid"] >= 10 and report.ops["Exp"] == 2


@on_jax2onnx
def test_jax_export_writes_the_plain_layers_not_their_xla_form(tmp_path):
    """Control for the test above: Keras' exporter alone traces under jit and writes the XLA form (a row
    convolution and the sum of its k row-shifted slices: k - 1 Adds).

    The Adds are counted, not the slices: jax2onnx writes a slice as Slice, or, once a model with slices
    (CoordinateAttention's strips) was converted in the process, as Range/Expand/Gather ops.
    """
    import onnx

    inputs = keras.Input((16, 16, 8))
    model = keras.Model(inputs, ka.SpatialAttention(kernel_size=7)(inputs))
    model(_inputs(model)[0])
    model.export(str(tmp_path / "raw.onnx"), format="onnx", verbose=False)
    raw = Counter(node.op_type for node in onnx.load(str(tmp_path / "raw.onnx")).graph.node)
    report = _verified_onnx(model, _inputs(model), str(tmp_path / "plain.onnx"))
    assert raw["Add"] >= 6 and report.ops.get("Conv") == 1 and "Add" not in report.ops, (raw, report.ops)
    assert "Slice" not in report.ops, report.ops


@on_jax2onnx
def test_jax_thundernet_and_centermask_blocks_with_a_fixed_batch(tmp_path):
    model = detection_model()
    data = detection_data()
    with pytest.raises(ValueError, match=r"JAX backend, RoIAlign \(.*\) exports to ONNX only with a fixed batch"):
        export.export_onnx(model, str(tmp_path / "free.onnx"))
    assert not os.listdir(tmp_path)
    report = _verified_onnx(model, data, str(tmp_path / "detection.onnx"), batch_size=3)
    assert report.num_samples == 3 and report.ops["Conv"] >= 6
    with pytest.raises(ValueError, match=r"batch size is fixed at 3 .*got 2 samples"):
        export.verify(model, str(tmp_path / "detection.onnx"), [a[:2] for a in data], latency_runs=0)


@on_jax2onnx
def test_jax_mobilenetv2_with_cbam_to_onnx(tmp_path):
    model = mobilenet_cbam()
    report = _verified_onnx(model, _inputs(model, n=8), str(tmp_path / "mobilenet.onnx"))
    assert report.top1_agreement == 1.0 and "Slice" not in report.ops


@on_jax2onnx
def test_jax_command_line_writes_a_fixed_batch_onnx_and_verifies_it(tmp_path, capsys):
    import onnxruntime

    from keras_attention.cli import main

    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, ka.CBAM(reduction=2)(inputs))
    model.save(tmp_path / "m.keras")
    data = _inputs(model, n=5)[0]
    np.save(tmp_path / "data.npy", data)
    args = ["convert", str(tmp_path / "m.keras"), str(tmp_path / "m.onnx"), "--representative"]
    assert main([*args, str(tmp_path / "data.npy"), "--batch-size", "2"]) == 0
    assert ", 4 samples)" in capsys.readouterr().out  # 5 samples verified as 2 batches of the file's 2
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == 2
    onnx_out = session.run(None, {session.get_inputs()[0].name: data[:2]})[0]
    np.testing.assert_allclose(onnx_out, model(data[:2]), atol=1e-5)
    assert main([*args, str(tmp_path / "data.npy"), "--batch-size", "0"]) == 2
    assert "`batch_size` must be an integer >= 1 (a fixed batch size) or None; got 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input


@pytest.mark.keras3_tensorflow
def test_broken_files_and_wrong_paths_get_clear_errors(tmp_path):
    model = every_layer_model()
    data = _inputs(model, n=1)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(export.InvalidExportedModelError, match=r"garbage.onnx' is not a valid ONNX model"):
        export.verify(model, str(garbage), data)
    import onnx
    from onnx import helper

    node = helper.make_node("Relu", ["missing"], ["y"])  # reads a tensor nothing defines
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "dangling.onnx"))
    with pytest.raises(export.InvalidExportedModelError, match=r"dangling.onnx' is not a valid ONNX model"):
        export.verify(model, str(tmp_path / "dangling.onnx"), data)
    # Passes the checker and loads, but cannot run: a feature map reshaped to 5 values (as jax2onnx's
    # 4-D MaxPool window loads and fails at run time, docs/export.md).
    reshape = helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = helper.make_graph(
        [reshape],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", "h", "w", "c"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [5])],
        initializer=[helper.make_tensor("shape", onnx.TensorProto.INT64, [1], [5])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "fails.onnx"))
    onnx.checker.check_model(str(tmp_path / "fails.onnx"), full_check=True)
    with pytest.raises(export.InvalidExportedModelError, match=r"fails.onnx' but cannot run it: .*Reshape"):
        export.verify(model, str(tmp_path / "fails.onnx"), data)
    with pytest.raises(ValueError, match=r"expected an \.onnx or an OpenVINO \.xml.*tflite\.verify"):
        export.verify(model, str(tmp_path / "model.tflite"), data)
    with pytest.raises(FileNotFoundError, match="no file at"):
        export.verify(model, str(tmp_path / "absent.onnx"), data)
    with pytest.raises(ValueError, match=r"export_openvino: OpenVINO IR is an \.xml file"):
        export.export_openvino(model, str(tmp_path / "model.onnx"))
    path = export.export_onnx(model, str(tmp_path / "good.onnx"))  # control: the good file verifies
    assert export.verify(model, path, data, latency_runs=0).max_rel_error < TOLERANCE


@pytest.mark.keras3_tensorflow
def test_a_missing_exporter_names_the_extra(monkeypatch, tmp_path):
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, ka.SqueezeExcitation(reduction=2)(inputs))
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"export_onnx: needs the `tf2onnx`.*keras-vision-attention\[onnx\]"):
        export.export_onnx(model, str(tmp_path / "se.onnx"))
    assert not os.listdir(tmp_path)
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=r"needs the `openvino`.*keras-vision-attention\[openvino\]"):
        export.export_openvino(model, str(tmp_path / "se.xml"))


@pytest.mark.jax_only(reason="the JAX backend's own errors")
@pytest.mark.skipif(JAX2ONNX, reason="jax2onnx is installed: the errors without it are tested in .venv")
def test_jax_names_the_way_out(tmp_path, monkeypatch):
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, ka.CBAM(reduction=2)(inputs))
    pytest.importorskip("onnx")
    with pytest.raises(
        ImportError,
        match=r"export_onnx: needs the `jax2onnx`.*keras-vision-attention\[jax-onnx\].*KERAS_BACKEND=tensorflow",
    ):
        export.export_onnx(model, str(tmp_path / "cbam.onnx"))
    monkeypatch.setitem(sys.modules, "openvino", None)  # refused before openvino is imported
    with pytest.raises(RuntimeError, match=r"XlaCallModule.*KERAS_BACKEND=tensorflow or torch"):
        export.export_openvino(model, str(tmp_path / "cbam.xml"))
    assert not os.listdir(tmp_path)


@pytest.mark.jax_only(reason="how the JAX exporters trace RoIAlign's batch size")
def test_roi_align_itself_refuses_jax2onnx_free_batch_trace():
    """Keras' own model.export(format="onnx") skips export_onnx's check: RoIAlign gives its message itself
    when the traced batch size is jax2onnx's sentinel (not an int, not a JAX symbolic dimension); a
    symbolic batch from jax.export (Keras' SavedModel export on JAX) still traces."""
    import jax

    from keras_attention.layers import roi_align

    class _DynamicDimSentinel:  # the kind of length jax2onnx gives arange(0, batch) for a free batch
        pass

    with pytest.raises(
        ValueError,
        match=r"RoIAlign 'rois': on the JAX backend, RoIAlign \(rois\) exports to ONNX "
        r"only with a fixed batch size.*batch_size=.*KERAS_BACKEND=tensorflow",
    ):
        roi_align._check_traced_batch("rois", _DynamicDimSentinel())
    layer = ka.RoIAlign(output_size=2, strides=4, name="rois")

    def call(features, boxes):
        return layer([features, boxes])

    b = jax.export.symbolic_shape("b")[0]
    exported = jax.export.export(jax.jit(call))(
        jax.ShapeDtypeStruct((b, 16, 16, 4), "float32"), jax.ShapeDtypeStruct((b, 3, 4), "float32")
    )
    assert exported.out_avals[0].shape[1:] == (3, 2, 2, 4) and not isinstance(exported.out_avals[0].shape[0], int)
    roi_align._check_traced_batch("rois", 3)  # a fixed batch size is fine


@pytest.mark.tf_keras_only(reason="tf_keras's error")
def test_tf_keras_names_the_way_out(tmp_path):
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, ka.CBAM(reduction=2)(inputs))
    with pytest.raises(RuntimeError, match=r"tf_keras has no model.export\(format=...\).*tflite.convert"):
        export.export_onnx(model, str(tmp_path / "cbam.onnx"))
