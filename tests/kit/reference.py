"""Independent NumPy implementations of the papers' formulas (float64).

Written from the equations, not from the layers: all maps are channels_last
here; tests transpose channels_first inputs before calling them.
"""

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def hard_sigmoid(z):
    return np.clip(z + 3.0, 0.0, 6.0) / 6.0


def gate(z, name="sigmoid", scale=1.0):
    return scale * (sigmoid(z) if name == "sigmoid" else hard_sigmoid(z))


def to_channels_last(x, data_format):
    return x if data_format == "channels_last" else np.transpose(x, (0, 2, 3, 1))


def from_channels_last(x, data_format):
    return x if data_format == "channels_last" else np.transpose(x, (0, 3, 1, 2))


def conv2d_same(x, kernel, bias=None):
    """Stride-1 'same' convolution (cross-correlation, as deep-learning frameworks define it).

    x: (B, H, W, Cin); kernel: (kh, kw, Cin, Cout).
    """
    kh, kw = kernel.shape[:2]
    b, h, w, _ = x.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = np.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += padded[:, i : i + h, j : j + w, :] @ kernel[i, j]
    return out if bias is None else out + bias


def batchnorm_inference(z, gamma, beta, mean, var, eps):
    return gamma * (z - mean) / np.sqrt(var + eps) + beta


def channel_gate(x, w1, b1, w2, b2, pooling=("avg", "max"), gate_name="sigmoid", scale=1.0):
    """CBAM Eq. 2: M_c = gate(sum_p MLP(pool_p(F))), shaped (B, 1, 1, C). x channels_last."""
    pools = {"avg": x.mean(axis=(1, 2)), "max": x.max(axis=(1, 2))}
    logits = 0.0
    for kind in pooling:
        hidden = np.maximum(pools[kind] @ w1 + (0 if b1 is None else b1), 0.0)
        logits = logits + hidden @ w2 + (0 if b2 is None else b2)
    return gate(logits, gate_name, scale)[:, None, None, :]


def spatial_gate(x, kernel, bias=None, bn=None, pooling=("avg", "max"), gate_name="sigmoid", scale=1.0):
    """CBAM Eq. 3: M_s = gate(conv([mean_c F; max_c F])), shaped (B, H, W, 1). x channels_last.

    bn: None or (gamma, beta, moving_mean, moving_var, eps), inference mode.
    """
    pools = {"avg": x.mean(axis=-1), "max": x.max(axis=-1)}
    stacked = np.stack([pools[kind] for kind in pooling], axis=-1)
    logits = conv2d_same(stacked, kernel, bias)
    if bn is not None:
        logits = batchnorm_inference(logits, *bn)
    return gate(logits, gate_name, scale)


def eca(x, kernel_1d, gate_name="sigmoid", scale=1.0):
    """ECA: gate(conv1d_k(avgpool(F))) over the channel axis, zero padding, no bias."""
    pooled = x.mean(axis=(1, 2))
    k = len(kernel_1d)
    padded = np.pad(pooled, ((0, 0), (k // 2, k // 2)))
    logits = sum(kernel_1d[j] * padded[:, j : j + pooled.shape[1]] for j in range(k))
    return x * gate(logits, gate_name, scale)[:, None, None, :]


def eca_kernel_size(channels, gamma=2, beta=1):
    """The ECA paper's rule: t = |log2(C)/gamma + b/gamma|, nearest odd (timm: at least 3)."""
    t = int(abs((np.log2(channels) + beta) / gamma))
    t = t if t % 2 else t + 1
    return max(t, 3)
