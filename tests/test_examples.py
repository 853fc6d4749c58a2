"""Every example runs in its --fast form, so none rots."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args, timeout=600):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), "--fast", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.keras3_tensorflow(
    reason="CI time; JAX: test_jax_backend runs the quickstart's model; tf_keras: "
    "test_quantization.py::test_example_fast runs an example end to end, test_serialization its saving"
)
def test_quickstart(tmp_path):
    out = run_example("quickstart.py", "--out", str(tmp_path))
    assert "identical predictions: True" in out
    assert (tmp_path / "model.keras").exists()


@pytest.mark.slow
@pytest.mark.run_once(reason="the converter's backend; test_tflite covers tf_keras")
def test_export_tflite(tmp_path):
    out = run_example("export_tflite.py", "--out", str(tmp_path))
    report = json.loads((tmp_path / "export.json").read_text())
    modes = {row["mode"]: row for row in report["modes"]}
    assert set(modes) == {"float32", "float16", "dynamic", "int8"}
    assert modes["int8"]["int8_end_to_end"] and all(row["builtin_only"] for row in modes.values())
    # Each file was run by the LiteRT interpreter; float32 must agree with Keras to float rounding.
    assert modes["float32"]["max_abs_error"] < 1e-4
    assert modes["float16"]["size_kib"] < modes["float32"]["size_kib"]
    for row in modes.values():
        assert (tmp_path / os.path.basename(row["file"])).stat().st_size > 0
    assert "| int8 |" in out


@pytest.mark.slow
@pytest.mark.jax_only
def test_jax_backend(tmp_path):
    out = run_example("jax_backend.py", "--out", str(tmp_path))
    assert "identical predictions: True" in out
    error = float(re.search(r"NumPy formula: max abs error (\S+)", out).group(1))
    assert error < 1e-4


@pytest.mark.slow
@pytest.mark.run_once(reason="test_distribute covers every engine")
def test_distributed_finetune(tmp_path):
    out = run_example("distributed_finetune.py", "--cpu-devices", "2", "--out", str(tmp_path))
    assert "2 replica(s)" in out, out[-2000:]
    assert (tmp_path / "model.keras").exists()
    # The model saved inside the engine, reloaded on one device, predicts what the trained one did.
    assert float(re.search(r"max \|output difference\| (\S+)", out).group(1)) < 1e-4


@pytest.mark.slow
@pytest.mark.run_once(reason="Keras 3 QAT to int8 on TensorFlow")
def test_pretrained_resnet50_cbam(tmp_path):
    """The published-checkpoint path end to end, with a file in the official release's format (random weights)."""
    torch = pytest.importorskip("torch")
    from tests.kit import reference_resnet

    source = reference_resnet.randomised("resnet50_cbam")
    checkpoint = tmp_path / "RESNET50_CBAM_new_name_wrap.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, checkpoint)
    out = run_example("pretrained_resnet50_cbam.py", "--weights", str(checkpoint), "--out", str(tmp_path / "out"))
    assert f"backbone from {checkpoint}" in out and "| QAT int8 (LiteRT) |" in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["int8_end_to_end"] and results["all_builtin"] and results["top1_agreement"] >= 0.9
    assert (tmp_path / "out" / "model_int8.tflite").stat().st_size == results["size_bytes"]
