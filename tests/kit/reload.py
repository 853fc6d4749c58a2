"""Reloading saved models in a fresh Python process (`_reload_in_fresh_process.py`)."""

import os
import subprocess
import sys

import numpy as np

from tests.kit.harness import to_numpy

HERE = os.path.dirname(os.path.abspath(__file__))


def save_expected(path, inputs, outputs, **extra):
    """The npz `_reload_in_fresh_process.py` reads: inputs `in00`..., outputs `out00`..., extras."""
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    np.savez(
        path,
        **{f"in{i:02d}": x for i, x in enumerate(inputs)},
        **{f"out{i:02d}": to_numpy(o).astype("float32") for i, o in enumerate(outputs)},
        **extra,
    )
    return path


def reload_elsewhere(*fmt_path_expected, imports=()):
    """Runs `_reload_in_fresh_process.py` on (format, path, expected.npz) triples; returns its stdout.
    `imports`: modules the fresh process imports first (a library whose layers the files hold: keras_hub)."""
    root = os.path.dirname(os.path.dirname(HERE))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["KA_RELOAD_IMPORTS"] = ",".join(imports)
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "_reload_in_fresh_process.py"), *map(str, fmt_path_expected)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0 and "RELOAD_OK" in result.stdout, result.stdout + result.stderr[-3000:]
    return result.stdout
