import json
import os
import sys

import numpy as np
import pytest
from hypothesis import settings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_attention  # noqa: E402
from keras_attention.backend import BACKEND, IS_LEGACY  # noqa: E402

MODE = "tf_keras" if IS_LEGACY else f"keras3-{BACKEND}"

if MODE == "keras3-torch":
    # torch.compile keeps per-code-object state across tests: a layer's call() compiled for other shapes
    # recompiles with symbolic sizes, and PyTorch's inductor then failed on LightCBAM's spatial gate
    # ("cannot determine truth value of Relational: 1 < s53") in one test order only. Static shapes per
    # compile make the jit steps independent of the order (a recompile per new shape, as in a fresh process).
    import torch._dynamo

    torch._dynamo.config.automatic_dynamic_shapes = False

# The mode markers, one name for each mode restriction: a test marked `@pytest.mark.run_once` (or a
# module with `pytestmark = pytest.mark.run_once`) runs in the modes listed for the marker here and is
# skipped in the others; `@pytest.mark.run_once(reason="...")` adds the test's own reason to the skip
# message. Registered in pyproject.toml ([tool.pytest.ini_options] markers); applied in pytest_collection_modifyitems.
KERAS3_TF = ("keras3-tensorflow",)
MODE_MARKERS = {
    "keras3_tensorflow": (KERAS3_TF, "Keras 3 on TensorFlow only"),
    "run_once": (KERAS3_TF, "the same in every mode: run once, on Keras 3 + TensorFlow"),
    "tensorflow_backends": (("keras3-tensorflow", "tf_keras"), "TensorFlow only (Keras 3 or tf_keras)"),
    "keras3": (("keras3-tensorflow", "keras3-jax", "keras3-torch"), "Keras 3 only, not tf_keras"),
    "no_jax": (("keras3-tensorflow", "keras3-torch", "tf_keras"), "not on the JAX backend"),
    "tf_keras_only": (("tf_keras",), "tf_keras only"),
    "jax_only": (("keras3-jax",), "Keras 3 on JAX only"),
    "torch_only": (("keras3-torch",), "Keras 3 on PyTorch only"),
}

# The files whose behaviour depends on the backend, run in the fourth mode of `make test`
# (Keras 3 on PyTorch, `-m "torch_mode and not slow"`): their tests get the `torch_mode` marker here.
# The list lives here, not in the Makefile, so that one place says which tests the PyTorch mode runs.
TORCH_MODE_FILES = {
    "test_backbones.py",
    "test_cbam.py",
    "test_channel_attention.py",
    "test_channel_variants.py",
    "test_context_enhancement.py",
    "test_coordinate_attention.py",
    "test_distribute.py",
    "test_efficient_channel_attention.py",
    "test_keras_hub.py",
    "test_light_rpn_head.py",
    "test_models.py",
    "test_roi_align.py",
    "test_rpn_guided_spatial_attention.py",
    "test_sag_mask_head.py",
    "test_spatial_attention.py",
    "test_squeeze_excitation.py",
    "test_torch_compile.py",
    "test_zoo.py",
}

settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True)
settings.load_profile("ci")


def pytest_configure(config):
    registered = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    missing = sorted(set(MODE_MARKERS) - registered)
    if missing:
        raise pytest.UsageError(f"tests/conftest.py: register the mode markers {missing} in pyproject.toml")
    gone = sorted(TORCH_MODE_FILES - set(os.listdir(os.path.dirname(os.path.abspath(__file__)))))
    if gone:
        raise pytest.UsageError(f"tests/conftest.py: TORCH_MODE_FILES names files that do not exist: {gone}")


def pytest_report_header(config):
    return f"keras_attention mode: {MODE} (keras {keras_attention.backend.KERAS_VERSION})"


@pytest.fixture(autouse=True)
def _seed():
    # Every test starts from the same seeds (NumPy, Python, the backend's initialisers), so a
    # result does not depend on which tests ran before it in the same worker.
    keras_attention.backend.keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: it reads `torch_mode`
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in TORCH_MODE_FILES:
            item.add_marker(pytest.mark.torch_mode)
        for name, (modes, why) in MODE_MARKERS.items():
            marker = item.get_closest_marker(name)
            if marker is not None and MODE not in modes:
                reason = marker.kwargs.get("reason")
                item.add_marker(pytest.mark.skip(reason=f"{why}: {reason}" if reason else why))
    _longest_first(items)


# ----------------------------------------------------------------------------
# Scheduling: the two workers finish together when the longest tests start first.
# tests/durations.json holds each mode's measured seconds per test (tests of 0.5 s and more;
# `make durations` re-measures); pytest-xdist hands tests out in the order sorted here, one at a
# time (the Makefile's flags). Its `xdist_group` marker, which would keep the tests of a module
# fixture on one worker, groups nothing under pytest 9: the one expensive module fixture,
# tests/test_distribute.py's, shares its result between the workers through a file instead.
# ----------------------------------------------------------------------------
DURATIONS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "durations.json")
UNMEASURED_SECONDS = {True: 20.0, False: 0.5}  # by the `slow` marker: tests not in the file yet


def _measured_seconds():
    if not os.path.exists(DURATIONS_FILE):
        return {}
    with open(DURATIONS_FILE) as f:
        return json.load(f).get(MODE, {})


def _longest_first(items):
    measured = _measured_seconds()

    def expected(item):
        return measured.get(item.nodeid, UNMEASURED_SECONDS[item.get_closest_marker("slow") is not None])

    items.sort(key=lambda item: -expected(item))
    # The tests that read one shared once-per-run result (SHARED_RESULT_FIXTURES): the first computes it;
    # started beside it, a second would wait on its lock for as long (100 s on JAX). The rest go last.
    first_seen, waiting = set(), []
    for item in list(items):
        shared = SHARED_RESULT_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if shared and not shared <= first_seen:
            first_seen |= shared
        elif shared:
            waiting.append(item)
            items.remove(item)
    items.extend(waiting)


# Module fixtures whose one result the xdist workers share through a file under a lock.
SHARED_RESULT_FIXTURES = frozenset({"measured"})  # tests/test_distribute.py


_recorded = {}


def pytest_runtest_logreport(report):
    if os.environ.get("KA_RECORD_DURATIONS"):
        _recorded[report.nodeid] = _recorded.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    """With KA_RECORD_DURATIONS=1, the seconds of each test run go into this mode's entry of durations.json."""
    if not os.environ.get("KA_RECORD_DURATIONS") or hasattr(session.config, "workerinput"):
        return
    everything = {}
    if os.path.exists(DURATIONS_FILE):
        with open(DURATIONS_FILE) as f:
            everything = json.load(f)
    # Merged, so that a partial run (-k, one file, the ONNX environment) updates only the tests it ran.
    measured = {**everything.get(MODE, {}), **{k: round(v, 1) for k, v in _recorded.items()}}
    everything[MODE] = {k: v for k, v in sorted(measured.items()) if v >= 0.5}
    partial = DURATIONS_FILE + ".partial"
    with open(partial, "w") as f:
        json.dump(everything, f, indent=0, sort_keys=True)
        f.write("\n")
    os.replace(partial, DURATIONS_FILE)
