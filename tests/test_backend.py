"""Which Keras is active is decided by TF_USE_LEGACY_KERAS alone, whatever the import order."""

import os
import subprocess
import sys

import pytest

from keras_attention import backend

PROBE = (
    "import keras_attention.backend as b, keras_attention as ka;"
    "layer = ka.CBAM();"
    "print('MODE', b.IS_LEGACY, [c.__module__.split('.')[0] for c in type(layer).__mro__ if c.__name__ == 'Layer'][0])"
)


def _run(code, legacy):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["KERAS_BACKEND"] = "tensorflow"
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return [line for line in out.stdout.splitlines() if line.startswith("MODE")][-1]


@pytest.mark.slow
@pytest.mark.run_once(reason="sets its own modes")
@pytest.mark.parametrize("legacy", [False, True])
def test_import_order_does_not_matter(legacy):
    expected = f"MODE {legacy} {'tf_keras' if legacy else 'keras'}"
    for before in ["", "import tensorflow as tf; tf.keras.layers;", "import keras;", "import tf_keras;"]:
        assert _run(before + PROBE, legacy) == expected, before
    # Importing tfmot afterwards (it sets TF_USE_LEGACY_KERAS=1 itself) does not switch us.
    after = PROBE + ";import tensorflow_model_optimization;" + PROBE.split(";")[-1]
    assert _run(after, legacy) == expected


def test_active_keras_matches_the_environment():
    legacy = os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes")
    assert backend.IS_LEGACY == legacy
    assert backend.keras.__name__.split(".")[0] == ("tf_keras" if legacy else "keras")


def test_legacy_ops_shim_matches_keras_ops():
    """The tf_keras shim must compute what keras.ops computes (checked against NumPy)."""
    import numpy as np

    from tests.kit import reference as ref

    x = np.linspace(-5, 5, 11).astype("float32")
    np.testing.assert_allclose(np.asarray(backend.ops.hard_sigmoid(x)), ref.hard_sigmoid(x), atol=1e-6)
    np.testing.assert_allclose(np.asarray(backend.ops.sigmoid(x)), ref.sigmoid(x), atol=1e-6)
    m = np.arange(24, dtype="float32").reshape(2, 3, 4)
    np.testing.assert_allclose(
        np.asarray(backend.ops.mean(m, axis=(1, 2), keepdims=True)), m.mean((1, 2), keepdims=True)
    )
    np.testing.assert_allclose(np.asarray(backend.ops.max(m, axis=-1)), m.max(-1))
    np.testing.assert_allclose(np.asarray(backend.ops.amax(m, axis=(0, 2))), m.max((0, 2)))
    np.testing.assert_allclose(np.asarray(backend.ops.stack([m, m], axis=-1)), np.stack([m, m], -1))


def test_qat_requirement_message():
    if backend.IS_LEGACY:
        backend.require_legacy_keras("QAT")  # no error under tf_keras
    else:
        with pytest.raises(RuntimeError, match="TF_USE_LEGACY_KERAS=1"):
            backend.require_legacy_keras("QAT")
