"""Run as a script in a fresh interpreter: reload a saved model and compare outputs.

    python _reload_in_fresh_process.py FORMAT PATH EXPECTED.npz [FORMAT PATH EXPECTED.npz ...]

FORMAT: keras | h5 | tf_keras_savedmodel (loaded with the Keras loader) |
savedmodel (Keras 3 `model.export`, served with `tf.saved_model.load`, no
keras_attention import needed). EXPECTED.npz holds the inputs (`in00`, `in01`,
...), the outputs (`out00`, ...) and, for a model compiled with a loss,
`y_true` and the `loss` value, which the reloaded model's own loss must give.
Exits non-zero on any difference.
"""

import importlib
import os
import sys

import numpy as np


def _sorted(data, prefix):
    return [data[k] for k in sorted(k for k in data.files if k.startswith(prefix))]


def _numpy(x):
    detach = getattr(x, "detach", None)  # a PyTorch tensor that requires grad (Keras 3 on PyTorch)
    return np.asarray(detach().cpu() if detach is not None else x)


def check(fmt, path, expected_path):
    data = np.load(expected_path)
    inputs, expected = _sorted(data, "in"), _sorted(data, "out")
    inputs = inputs[0] if len(inputs) == 1 else inputs
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)  # keep a reference: its variables die with it
        outputs = loaded.serve(inputs)
    else:
        import keras_attention  # noqa: F401  registers the layers: no custom_objects below
        from keras_attention.backend import keras

        kwargs = {} if fmt == "tf_keras_savedmodel" else {"safe_mode": True}
        model = keras.models.load_model(path, **kwargs)
        outputs = model(inputs, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    assert len(outputs) == len(expected), (len(outputs), len(expected))
    for i, (out, exp) in enumerate(zip(outputs, expected)):
        if fmt in ("savedmodel", "tf_keras_savedmodel"):
            # Served as a graph: TensorFlow's graph rewrites (op fusion) round differently from eager.
            np.testing.assert_allclose(_numpy(out), exp, rtol=1e-6, atol=1e-6, err_msg=f"output {i} ({fmt})")
        else:
            np.testing.assert_array_equal(_numpy(out), exp, err_msg=f"output {i} ({fmt})")
    if "loss" in data.files:
        name = type(model.loss).__name__
        value = float(_numpy(model.loss(data["y_true"], outputs[0])))
        np.testing.assert_allclose(value, float(data["loss"]), rtol=1e-6, err_msg=f"the reloaded {name}")
        print(f"LOSS_OK {name}")
    print(f"RELOAD_OK {fmt} {len(expected)} outputs")


if __name__ == "__main__":
    for module in filter(None, os.environ.get("KA_RELOAD_IMPORTS", "").split(",")):
        importlib.import_module(module)  # registers that library's layers, as its users import it
    args = sys.argv[1:]
    for start in range(0, len(args), 3):
        check(*args[start : start + 3])
