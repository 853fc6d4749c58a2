"""Independent NumPy (float64) implementations of ThunderNet's CEM, RPN and SAM.

Written from the paper's formulas, channels_last; the `*_output(layer, ...)`
adapters read a built layer's weights and handle channels_first by transposing.
"""

import numpy as np

from tests.kit import reference as ref


def _np(variable):
    return np.asarray(variable.numpy(), dtype="float64")


def conv1x1(x, kernel, bias=None):
    """x: (B, H, W, Cin); kernel: (1, 1, Cin, Cout)."""
    out = np.einsum("bhwc,cd->bhwd", x, kernel[0, 0])
    return out if bias is None else out + bias


def depthwise_conv_same(x, kernel):
    """Stride-1 'same' depthwise cross-correlation; kernel (kh, kw, C, 1)."""
    kh, kw = kernel.shape[:2]
    b, h, w, c = x.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = np.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
    out = np.zeros((b, h, w, c))
    for i in range(kh):
        for j in range(kw):
            out += padded[:, i : i + h, j : j + w, :] * kernel[i, j, :, 0]
    return out


def nearest_up2_to(x, height, width):
    """Nearest-neighbour x2 upsampling, written as an index map: out[i, j] = x[i // 2, j // 2]."""
    rows = np.arange(height) // 2
    cols = np.arange(width) // 2
    return x[:, rows][:, :, cols]


def context_enhancement(c4, c5, w4, b4, w5, b5, wg, bg):
    """CEM: conv1x1(C4) + up2(conv1x1(C5)) + conv1x1(GAP(C5)), broadcast."""
    _, h, w, _ = c4.shape
    lateral4 = conv1x1(c4, w4, b4)
    lateral5 = nearest_up2_to(conv1x1(c5, w5, b5), h, w)
    context = conv1x1(c5.mean(axis=(1, 2), keepdims=True), wg, bg)
    return lateral4 + lateral5 + context


def light_rpn(x, dw_kernel, dw_bn, pw_kernel, pw_bn, obj_kernel, obj_bias, box_kernel, box_bias):
    """RPN: relu(BN(dw5x5)) -> relu(BN(conv1x1)) -> objectness, box heads."""
    h = np.maximum(ref.batchnorm_inference(depthwise_conv_same(x, dw_kernel), *dw_bn), 0.0)
    features = np.maximum(ref.batchnorm_inference(conv1x1(h, pw_kernel), *pw_bn), 0.0)
    return [features, conv1x1(features, obj_kernel, obj_bias), conv1x1(features, box_kernel, box_bias)]


def sam_gate(rpn, kernel, bias=None, bn=None, gate_name="sigmoid"):
    z = conv1x1(rpn, kernel, bias)
    if bn is not None:
        z = ref.batchnorm_inference(z, *bn)
    return ref.gate(z, gate_name)


def sam(cem, rpn, kernel, bias=None, bn=None, gate_name="sigmoid"):
    """SAM: F_CEM * gate(BN(theta(F_RPN)))."""
    return cem * sam_gate(rpn, kernel, bias, bn, gate_name)


# --- adapters: run the reference with a built layer's weights -----------------------------


def _bn(layer):
    return (_np(layer.gamma), _np(layer.beta), _np(layer.moving_mean), _np(layer.moving_variance), layer.epsilon)


def _last(x, data_format):
    return ref.to_channels_last(np.asarray(x, dtype="float64"), data_format)


def cem_output(layer, c4, c5):
    f = layer.data_format
    out = context_enhancement(
        _last(c4, f),
        _last(c5, f),
        _np(layer.c4_lateral.kernel),
        _np(layer.c4_lateral.bias),
        _np(layer.c5_lateral.kernel),
        _np(layer.c5_lateral.bias),
        _np(layer.global_context.kernel),
        _np(layer.global_context.bias),
    )
    return ref.from_channels_last(out, f)


def _depthwise_kernel(depthwise):
    # Keras 3 calls it `kernel`, tf_keras `depthwise_kernel`.
    return depthwise.depthwise_kernel if hasattr(depthwise, "depthwise_kernel") else depthwise.kernel


def rpn_output(layer, x):
    f = layer.data_format
    outs = light_rpn(
        _last(x, f),
        _np(_depthwise_kernel(layer.depthwise)),
        _bn(layer.depthwise_bn),
        _np(layer.pointwise.kernel),
        _bn(layer.pointwise_bn),
        _np(layer.objectness.kernel),
        _np(layer.objectness.bias),
        _np(layer.box_deltas.kernel),
        _np(layer.box_deltas.bias),
    )
    return [ref.from_channels_last(o, f) for o in outs]


def sam_gate_output(layer, rpn):
    f = layer.data_format
    bias = None if layer.use_batchnorm else _np(layer.theta.bias)
    bn = _bn(layer.theta_bn) if layer.use_batchnorm else None
    return ref.from_channels_last(sam_gate(_last(rpn, f), _np(layer.theta.kernel), bias, bn, layer.gate), f)


def sam_output(layer, cem, rpn):
    return np.asarray(cem, dtype="float64") * sam_gate_output(layer, rpn)


# --- the CEM -> RPN -> SAM graph the integration tests share ------------------------------


def thundernet_graph(
    c4_shape=(20, 20, 16),
    c5_shape=(10, 10, 24),
    channels=32,
    filters=24,
    num_anchors=3,
    use_sam=True,
    data_format="channels_last",
    use_batchnorm=True,
    per_channel=True,
):
    """Functional model `[C4, C5] -> [F_SAM (or F_CEM without SAM), objectness, box_deltas]`.

    Returns `(model, layers)` with `layers` a dict: "cem", "rpn", and "sam" when used.
    """
    import keras_attention as ka
    from keras_attention.backend import keras

    c4 = keras.Input(c4_shape, name="c4")
    c5 = keras.Input(c5_shape, name="c5")
    layers = {
        "cem": ka.ContextEnhancement(channels, data_format=data_format, name="cem"),
        "rpn": ka.LightRPNHead(num_anchors, filters=filters, data_format=data_format, name="rpn"),
    }
    cem = layers["cem"]([c4, c5])
    rpn_features, objectness, deltas = layers["rpn"](cem)
    head_input = cem
    if use_sam:
        layers["sam"] = ka.RPNGuidedSpatialAttention(
            use_batchnorm=use_batchnorm, per_channel=per_channel, data_format=data_format, name="sam"
        )
        head_input = layers["sam"]([cem, rpn_features])
    return keras.Model([c4, c5], [head_input, objectness, deltas]), layers
