"""The same layers on JAX: Keras 3 with `KERAS_BACKEND=jax`, trained with XLA.

Builds the quickstart CNN (three CBAM blocks) on the JAX backend, trains it
with `jit_compile=True` (JAX always compiles with XLA) on scikit-learn's
digits, checks the trained model against a NumPy CBAM computed from its own
weights, saves it as `.keras` and reloads it with `safe_mode=True`. The file
is backend-neutral: `KERAS_BACKEND=tensorflow` loads it too (and from there
it converts to TFLite, see export_tflite.py).

    python examples/jax_backend.py [--epochs 8] [--fast] [--out DIR]

The backend is chosen before Keras is imported; this script sets
`KERAS_BACKEND=jax` unless you set it yourself.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import time  # noqa: E402

import numpy as np  # noqa: E402
from _shared import build_model, compile_model, digits_for, parse_arguments, save_and_reload  # noqa: E402

import keras_attention as ka  # noqa: E402
from keras_attention.backend import BACKEND, IS_LEGACY, keras  # noqa: E402


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_cbam(x, layer):
    """CBAM (channel then spatial attention, CBAM paper Eq. 2-3) in NumPy with `layer`'s weights."""
    channel, spatial = layer.channel_attention, layer.spatial_attention
    w1, b1 = (np.asarray(w) for w in channel.mlp_reduce.weights)
    w2, b2 = (np.asarray(w) for w in channel.mlp_expand.weights)
    w1, w2 = w1.reshape(w1.shape[-2:]), w2.reshape(w2.shape[-2:])

    def mlp(v):
        return np.maximum(v @ w1 + b1, 0) @ w2 + b2

    x = x * _sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))[:, None, None, :]
    kernel = np.asarray(spatial.conv.kernel)  # (k, k, 2, 1), no bias
    k = kernel.shape[0]
    descriptors = np.stack([x.mean(axis=-1), x.max(axis=-1)], axis=-1)
    padded = np.pad(descriptors, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    height, width = x.shape[1:3]
    logits = sum(padded[:, i : i + height, j : j + width, :] @ kernel[i, j] for i in range(k) for j in range(k))
    return x * _sigmoid(logits)


def main(argv=None):
    args = parse_arguments(__doc__, argv, epochs=8)
    if IS_LEGACY or BACKEND != "jax":
        raise SystemExit(
            f"jax_backend.py runs Keras 3 on JAX; got {'tf_keras' if IS_LEGACY else BACKEND}. "
            "Unset TF_USE_LEGACY_KERAS and KERAS_BACKEND (or set KERAS_BACKEND=jax)."
        )
    import jax

    (x_train, y_train), (x_test, y_test), epochs = digits_for(args)
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(), 2e-3, jit_compile=True)
    print(f"Keras {keras.__version__} on JAX {jax.__version__}, devices {jax.devices()}")
    start = time.time()
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=2)
    print(f"trained in {time.time() - start:.1f}s (XLA compile included)")
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)

    # The trained first CBAM block against the formula in NumPy, on real activations.
    block = next(layer for layer in model.layers if isinstance(layer, ka.CBAM))
    block_input = keras.Model(model.input, block.input)(x_test[:16])
    error = float(np.max(np.abs(np.asarray(block(block_input)) - numpy_cbam(np.asarray(block_input), block))))
    print(f"first CBAM block vs NumPy formula: max abs error {error:.2e}")

    print(f"test accuracy: {accuracy:.4f}")
    same = save_and_reload(model, x_test, args.out, prefix="keras_attention_jax_")
    if error > 1e-4 or not same:
        raise SystemExit("check failed: CBAM differs from the formula or the reloaded model differs")
    return accuracy


if __name__ == "__main__":
    main()
