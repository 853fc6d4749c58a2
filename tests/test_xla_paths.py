"""The formulations layers switch to while traced for XLA compute the paper's function too.

`SpatialAttention` replaces its k x k convolution by a sum of shifted views
under XLA, and on TensorFlow `CBAM` runs as one function with a hand-written
gradient (see `layers/_kernels.py`); eager calls, which the harness checks, take the
plain layers. Here the compiled forward pass is compared with the NumPy
reference and its gradients with those of the plain (non-XLA) graph, which
TensorFlow's and JAX's autodiff compute. On JAX `jax.grad` traces too, which a
layer cannot tell from XLA tracing, so the reference forces the plain layers and
each test counts which path traced.
"""

import contextlib
from unittest import mock

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import BACKEND
from tests.kit.layer_reference import randomize_weights, reference_output


@contextlib.contextmanager
def _counting_shifted_sums(calls):
    """Counts SpatialAttention's XLA-only convolution (a sum of shifted views) into `calls`."""
    from keras_attention.layers import _kernels

    original = _kernels.shifted_sum_conv
    with mock.patch.object(_kernels, "shifted_sum_conv", lambda *a: calls.append(1) or original(*a)):
        yield


@contextlib.contextmanager
def _plain_layers():
    """Forces the plain formulation: under `jax.grad` every value is a tracer, which reads as XLA tracing."""
    from keras_attention.layers import _kernels

    with mock.patch.object(_kernels, "xla_compiling", lambda tensor: False):
        yield


def _compiled_forward_and_grad(layer, x, g, fused_calls=None):
    """Forward output and d(sum(out * g))/d(x, weights) under XLA, the plain-graph gradient, and how
    many shifted-sum convolutions each traced (the control that the two took different paths);
    `fused_calls` (a list) counts the compiled pass's fused CBAM calls."""
    from keras_attention.layers import _kernels

    compiled_calls, plain_calls = [], []
    fused_calls = [] if fused_calls is None else fused_calls
    original = _kernels.fused_cbam
    with (
        _counting_shifted_sums(compiled_calls),
        mock.patch.object(_kernels, "fused_cbam", lambda *a: fused_calls.append(1) or original(*a)),
    ):
        out, grads = _forward_and_grad(layer, x, g, jit=True)
    with _counting_shifted_sums(plain_calls), _plain_layers():
        _, plain = _forward_and_grad(layer, x, g, jit=False)
    return out, grads, plain, (len(compiled_calls), len(plain_calls))


def _forward_and_grad(layer, x, g, jit):
    if BACKEND == "jax":
        import jax

        params = [v.value for v in layer.trainable_variables]
        frozen = [v.value for v in layer.non_trainable_variables]
        forward = lambda p, x: layer.stateless_call(p, frozen, x)[0]  # noqa: E731
        loss = lambda p, x: (forward(p, x) * g).sum()  # noqa: E731
        maybe_jit = jax.jit if jit else (lambda f: f)
        out = maybe_jit(forward)(params, x)
        grads = maybe_jit(jax.grad(loss, argnums=(0, 1)))(params, x)
        return np.asarray(out), [np.asarray(t) for t in grads[0]] + [np.asarray(grads[1])]
    import tensorflow as tf

    x = tf.constant(x)

    def forward_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x)
            loss = tf.reduce_sum(out * g)
        return out, tape.gradient(loss, layer.trainable_variables + [x])

    out, grads = tf.function(forward_and_grad, jit_compile=jit)(x)
    return out.numpy(), [t.numpy() for t in grads]


@pytest.mark.parametrize(
    "make_layer",
    [
        lambda: ka.SpatialAttention(kernel_size=7),
        lambda: ka.SpatialAttention(kernel_size=3, use_bias=True, pooling=("max",)),
        lambda: ka.SpatialAttention(kernel_size=5, use_batchnorm=True, data_format="channels_first"),
        lambda: ka.CBAM(reduction=4, arrangement="parallel"),
        lambda: ka.CBAM(reduction=4),
        lambda: ka.CBAM(reduction=2, kernel_size=3, use_bias=False, start_as_identity=True),
    ],
)
def test_xla_forward_matches_reference_and_gradients_match_plain_graph(make_layer):
    layer = make_layer()
    shape = (2, 16, 9, 13) if layer.data_format == "channels_first" else (2, 9, 13, 16)
    layer.build(shape)
    randomize_weights(layer, seed=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")
    g = rng.normal(size=shape).astype("float32")
    fused = []
    out, grads, plain, (compiled_calls, plain_calls) = _compiled_forward_and_grad(layer, x, g, fused)
    np.testing.assert_allclose(out, reference_output(layer, x), rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert plain_calls == 0  # the reference gradient came from the plain layers
    assert compiled_calls > 0  # and the compiled one from the XLA convolution (CBAM's spatial gate too)
    if BACKEND == "tensorflow" and isinstance(layer, ka.CBAM) and layer.arrangement == "channel_first":
        assert fused  # TensorFlow's XLA took the fused CBAM: not plain layers compared with plain layers


def test_xla_path_under_mixed_precision():
    """Variables read in call() come autocast to float16; the XLA path must still run in float32."""
    from keras_attention.backend import keras, set_global_dtype_policy

    x = np.random.default_rng(1).normal(size=(2, 8, 8, 16)).astype("float32")
    reference = keras.Sequential([keras.Input((8, 8, 16)), ka.CBAM(reduction=4)])
    set_global_dtype_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((8, 8, 16)), ka.CBAM(reduction=4)])
        model.set_weights(reference.get_weights())
        model.compile(loss="mse", jit_compile=True)
        out = np.asarray(model.predict(x, verbose=0)).astype("float32")
    finally:
        set_global_dtype_policy("float32")
    np.testing.assert_allclose(out, np.asarray(reference(x)), atol=2e-2)


@pytest.mark.parametrize("channels", [16, 20])  # 20: not a multiple of the 8 channel slices
def test_cbam_xla_gradient_splits_ties_like_autodiff(channels):
    """ReLU'd maps: dead channels tie everywhere for the H x W max, constant channels tie for the channel max."""
    layer = ka.CBAM(reduction=4)
    shape = (2, 6, 7, channels)
    layer.build(shape)
    randomize_weights(layer, seed=5)
    rng = np.random.default_rng(2)
    x = np.maximum(rng.normal(size=shape), 0.0).astype("float32")
    x[..., :3] = 0.0
    x[..., 5] = 1.0
    g = rng.normal(size=shape).astype("float32")
    fused = []
    out, grads, plain, (compiled_calls, plain_calls) = _compiled_forward_and_grad(layer, x, g, fused)
    np.testing.assert_allclose(out, reference_output(layer, x), rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert plain_calls == 0 and compiled_calls > 0
    assert bool(fused) == (BACKEND == "tensorflow")  # the fused gradient's tie handling is what is tested


@pytest.mark.tensorflow_backends(reason="the fused CBAM is TensorFlow's XLA path only")
def test_cbam_takes_the_fused_path_under_xla_only(monkeypatch):
    from keras_attention.layers import _kernels

    calls = []
    original = _kernels.fused_cbam
    monkeypatch.setattr(_kernels, "fused_cbam", lambda *a: calls.append(1) or original(*a))
    layer = ka.CBAM(reduction=4)
    layer.build((2, 8, 8, 16))
    x = np.random.default_rng(4).normal(size=(2, 8, 8, 16)).astype("float32")
    layer(x)
    _compiled_forward_and_grad(layer, x, x)
    assert len(calls) == 1  # traced once under XLA; not in eager or the plain graph
