"""Keras 3 on PyTorch: the attention layers trace into one torch.compile graph (what jit_compile=True uses).

A graph break splits the layer into separately compiled pieces with Python in
between, and torch.compile then gains nothing (docs/speed.md measured it:
0.98-1.17x the eager time with Keras' `ops.max`, whose result check breaks
the graph).
"""

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import keras, ops

pytestmark = pytest.mark.torch_only(reason="torch.compile")

LAYERS = {
    "cbam": lambda: ka.CBAM(reduction=4),
    "cbam_parallel": lambda: ka.CBAM(reduction=4, arrangement="parallel", use_batchnorm=True),
    "channel": lambda: ka.ChannelAttention(reduction=4),
    "spatial": lambda: ka.SpatialAttention(),
    "se": lambda: ka.SqueezeExcitation(reduction=4),
    "eca": lambda: ka.EfficientChannelAttention(),
}


def _graph_breaks(layer, x):
    import torch

    layer(x)  # built outside the trace
    return torch._dynamo.explain(layer)(x).graph_break_count


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_is_one_graph(name):
    import torch

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 8, 8, 32)).astype("float32"))
    assert _graph_breaks(LAYERS[name](), x) == 0


def test_control_keras_max_breaks_the_graph():
    """The check can fail: the same channel max through `ops.max` instead of `ops.amax` breaks the graph."""
    import torch

    class MaxGate(keras.layers.Layer):
        def call(self, x):
            return x * ops.sigmoid(ops.max(x, axis=(1, 2), keepdims=True))

    x = torch.ones(2, 8, 8, 4)
    assert _graph_breaks(MaxGate(), x) > 0
