"""Every example runs in its --fast form, so none rots."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args, timeout=600):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), "--fast", *args],
        capture_output=True, text=True, timeout=timeout, env=dict(os.environ),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_quickstart(tmp_path):
    out = run_example("quickstart.py", "--out", str(tmp_path))
    assert "identical predictions: True" in out
    assert (tmp_path / "model.keras").exists()
