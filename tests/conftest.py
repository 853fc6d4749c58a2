import os
import sys

import numpy as np
import pytest
from hypothesis import settings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_attention  # noqa: E402
from keras_attention.backend import BACKEND, IS_LEGACY  # noqa: E402

MODE = "tf_keras" if IS_LEGACY else f"keras3-{BACKEND}"

settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True)
settings.load_profile("ci")


def pytest_report_header(config):
    return f"keras_attention mode: {MODE} (keras {keras_attention.backend.KERAS_VERSION})"


@pytest.fixture(autouse=True)
def _seed():
    # Every test starts from the same seeds (NumPy, Python, the backend's initialisers), so a
    # result does not depend on which tests ran before it in the same worker.
    keras_attention.backend.keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    # Slow tests first: pytest-xdist hands tests out in this order, so a minute-long test
    # started last would run alone while the other worker idles.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
