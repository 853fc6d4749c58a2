"""The `>>>` examples in the package's docstrings run and print what they show (Keras 3 on TensorFlow).

Each docstring example is what a reader copies first, so it is run as a doctest
with `keras`, `np` and `keras_attention` (as `ka`) in scope besides its module's
own names. tf_keras prints shapes differently (`TensorShape`), so the examples
are written for, and run under, Keras 3.
"""

import doctest
import importlib

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import keras

MODULES = [
    "keras_attention.backbones",
    "keras_attention.data",
    "keras_attention.distribute",
    "keras_attention.export",
    "keras_attention.layers.cbam",
    "keras_attention.layers.centermask",
    "keras_attention.layers.channel",
    "keras_attention.layers.channel_variants",
    "keras_attention.layers.coord",
    "keras_attention.layers.strip",
    "keras_attention.layers.gather_excite",
    "keras_attention.layers.global_context",
    "keras_attention.layers.factory",
    "keras_attention.layers.quantizers",
    "keras_attention.layers.roi_align",
    "keras_attention.layers.spatial",
    "keras_attention.layers.thundernet",
    "keras_attention.models.mobilenet",
    "keras_attention.models.resnet",
    "keras_attention.quantization.layers",
]


@pytest.mark.run_once(reason="written for Keras 3")
@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{module_name} has no docstring example (remove it from MODULES)"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        test.globs = {**vars(module), "keras": keras, "np": np, "ka": ka}
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples in {module_name} failed (see above)"


def test_every_module_with_examples_is_listed():
    import pathlib

    root = pathlib.Path(ka.__file__).parent
    with_examples = {
        "keras_attention." + ".".join(path.relative_to(root).with_suffix("").parts)
        for path in root.rglob("*.py")
        if ">>> " in path.read_text()
    }
    assert with_examples == set(MODULES)
