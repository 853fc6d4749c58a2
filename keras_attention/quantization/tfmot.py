"""Quantization-aware training (QAT) with tensorflow-model-optimization.

Post-training int8 squeezes every attention gate into TFLite's fixed sigmoid
scale (1/256) and calibrates the data-dependent ranges of the pooled
descriptors once, after training. QAT simulates that int8 arithmetic while
the model is fine-tuned, so the weights learn to live with it.

    TF_USE_LEGACY_KERAS=1 python train.py         # tfmot works only on tf_keras

    from keras_attention import quantization
    qat = quantization.quantize_model(model)      # float model -> QAT model
    qat.compile(...); qat.fit(...)                # fine-tune a few epochs
    tflite_int8 = keras_attention.tflite.convert(qat, "int8", representative_data=x)

`quantize_model` wraps every keras_attention layer in tfmot's
`QuantizeWrapperV2` with a `QuantizeConfig` of ours (one per public layer)
and leaves the standard Keras layers to tfmot's default 8-bit scheme. Our
configs put a fake-quantization op on every tensor inside the layer that
TFLite computes in int8: pooled descriptors, MLP/convolution outputs, the
gate's logits (the sigmoid's own output has TFLite's fixed scale 1/256,
zero point -128, simulated exactly), products and sums. Kernels are quantized
per output channel (symmetric, narrow range), as TFLite does. The converter
then produces a model that is int8 from input to output, attention included.

BatchNormalization *inside* our layers (SpatialAttention's optional BN,
RPNGuidedSpatialAttention's, LightRPNHead's) is folded into the preceding
convolution with its moving statistics, and those statistics stay frozen
during QAT (its gamma and beta still train): the int8 model computes exactly
the folded convolution QAT trained.

Helpers:
* `quantize_model(model)`: the QAT copy of a whole functional/Sequential model.
* `quantize_annotate_layer(layer)`, `quantize_annotate_model(model)`,
  `quantize_apply(model)`: tfmot's annotate-then-apply flow, with our configs,
  for quantizing only part of a model.
* `quantize_scope()`, `load_qat_model(path)`, `save_qat_model(model, path)`:
  saving and loading. `.h5` and SavedModel directories round-trip; `.keras`
  does not (tfmot's quantize layers do not reload from it) and is refused with
  a clear error instead of writing a file that cannot be read back.
* `float32_model(model)`: the float32 copy of a mixed-precision model (tfmot
  fails on mixed_float16; `quantize_model` calls this itself).
* `quantize_config_for(layer)` and the config classes
  (`CBAMQuantizeConfig`, ...; created on first use).

Everything here needs `TF_USE_LEGACY_KERAS=1` (tf_keras): tfmot 0.8.1 does not
support Keras 3. Under Keras 3 every entry point raises a `RuntimeError` that
says what to set. tensorflow_model_optimization is imported lazily: importing
it sets `TF_USE_LEGACY_KERAS=1` as a side effect, so importing it at
`import keras_attention` time would make the active Keras depend on import
order.
"""

import os
import tempfile
import types
import zipfile

from keras_attention import backend
from keras_attention._io import atomic_path
from keras_attention.backend import is_mixed_precision, keras
from keras_attention.layers._validation import from_channels_last, to_channels_last

_FEATURE = "keras_attention.quantization"
_NUM_BITS = 8
# EMA decay of the activation ranges of our layers' quantization points; the
# first training batch initialises them (tfmot's own quantizers start at
# [-6, 6] with decay 0.999, which takes thousands of steps to adapt).
_RANGE_DECAY = 0.99
# Narrowest activation range (scale >= 4e-6): XNNPACK rejects near-zero scales.
_MIN_RANGE = 1e-3
# TFLite's int8 LOGISTIC output: scale 1/256, zero point -128, i.e. [0, 255/256].
_SIGMOID_RANGE = (0.0, 255.0 / 256.0)

CONFIG_NAMES = (
    "ChannelAttentionQuantizeConfig",
    "SqueezeExcitationQuantizeConfig",
    "EfficientChannelAttentionQuantizeConfig",
    "SpatialAttentionQuantizeConfig",
    "CBAMQuantizeConfig",
    "ContextEnhancementQuantizeConfig",
    "LightRPNHeadQuantizeConfig",
    "RPNGuidedSpatialAttentionQuantizeConfig",
    "SAGMaskHeadQuantizeConfig",
)

__all__ = [
    "quantize_model",
    "quantize_annotate_layer",
    "quantize_annotate_model",
    "quantize_apply",
    "quantize_scope",
    "quantize_config_for",
    "load_qat_model",
    "save_qat_model",
    "float32_model",
    "is_mixed_precision",
    "supported_layers",
    "load_keras3_weights",
    "UnsupportedLayerError",
]  # the *QuantizeConfig classes are attributes too, created on first access (they need tfmot)


class UnsupportedLayerError(ValueError):
    """The model holds layers that neither keras_attention nor tfmot can quantize."""


_QUANTIZE_MODEL = (
    "keras_attention.quantization.quantize_model(model) makes the QAT copy of a whole model (leave_float= "
    "keeps chosen layers in float), with no tfmot annotate/apply step"
)
# What each tfmot-only entry point is on Keras 3, where quantize_model has a native path (keras3.py).
_KERAS3_WAY = {
    "save_qat_model": "a QAT model from quantize_model saves with model.save('qat.keras') and reloads with "
    "keras.saving.load_model('qat.keras') after `import keras_attention`",
    "load_qat_model": "a QAT model saved with model.save('qat.keras') reloads with "
    "keras.saving.load_model('qat.keras') after `import keras_attention`",
    "load_keras3_weights": "the model is a Keras 3 model already: model.load_weights(path) reads Keras 3 weights",
    "float32_model": "quantize_model quantizes a mixed-precision model as its float32 copy by itself; "
    "keras_attention.tflite.float32_copy(model) makes that copy",
    "quantize_scope": "a QAT .keras file reloads with keras.saving.load_model after `import keras_attention` "
    "(no scope needed)",
}


def _require_tf_keras(entry):
    """Raises, under Keras 3, an error naming `entry`'s Keras 3 counterpart (tfmot needs tf_keras)."""
    if backend.IS_LEGACY:
        return
    way = _KERAS3_WAY.get(entry, _QUANTIZE_MODEL)
    raise RuntimeError(
        f"{_FEATURE}.{entry} is for tf_keras QAT models (tensorflow-model-optimization supports only Keras 2: "
        f"TF_USE_LEGACY_KERAS=1 and the [qat] extra); on Keras 3 (Keras {backend.KERAS_VERSION} on "
        f"{backend.BACKEND}) {way}."
    )


def _require(entry):
    """tfmot, after checking that tf_keras is active (the error naming `entry`'s Keras 3 way otherwise)."""
    _require_tf_keras(entry)
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{_FEATURE} needs tensorflow-model-optimization 0.8.1: pip install 'keras-vision-attention[qat]'"
        ) from error
    return tfmot


def _tf():
    import tensorflow as tf

    return tf


# --------------------------------------------------------------------------
# The quantized forward passes: TensorFlow ops (QAT is tf_keras-only), reading
# only the layers' configuration and their Keras sublayers' variables.
# --------------------------------------------------------------------------


class _Points:
    """Quantization points and quantized kernels of one layer call, by name.

    `q(name, x)` fake-quantizes an activation; `kernel(name)` is a quantized
    (and BN-folded) kernel; `prefix` scopes the names of a nested layer.
    """

    def __init__(self, points, kernels, prefix="", fixed=True):
        self._points, self._kernels, self._prefix, self._fixed = points, kernels, prefix, fixed

    def scoped(self, prefix):
        return _Points(self._points, self._kernels, self._prefix + prefix + "_", self._fixed)

    def q(self, name, x):
        return self._points[self._prefix + name](x)

    def fixed(self, x, low, high):
        """Fake quantization to a range fixed by TFLite (the sigmoid's output)."""
        if not self._fixed:
            return x
        return _tf().quantization.fake_quant_with_min_max_args(x, low, high, num_bits=_NUM_BITS)

    def kernel(self, name):
        return self._kernels[self._prefix + name]


class _Spec:
    """What a layer's quantized forward needs: point names and kernel specs."""

    def __init__(self):
        self.points = []
        self.kernels = []  # (name, variable, per_axis, fold) with fold = (bn, depthwise) or None

    def scoped(self, prefix):
        return _ScopedSpec(self, prefix + "_")

    def point(self, name):
        self.points.append(name)

    def kernel(self, name, conv, bn=None):
        depthwise = hasattr(conv, "depthwise_kernel")
        variable = conv.depthwise_kernel if depthwise else conv.kernel
        # Per output channel for convolutions (what TFLite does); per tensor for
        # depthwise kernels (k, k, C, 1), whose last axis is the multiplier, and
        # for transposed convolutions (k, k, out, in), whose last axis is the input.
        per_axis = not depthwise and not _is_transposed(conv)
        self.kernels.append((name, variable, per_axis, (bn, depthwise) if bn is not None else None))


class _ScopedSpec:
    def __init__(self, spec, prefix):
        self._spec, self._prefix = spec, prefix

    def scoped(self, prefix):
        return _ScopedSpec(self._spec, self._prefix + prefix + "_")

    def point(self, name):
        self._spec.point(self._prefix + name)

    def kernel(self, name, conv, bn=None):
        self._spec.kernel(self._prefix + name, conv, bn)


def _bn_factor(bn):
    """(scale, shift) of an inference-mode BatchNormalization: y = x * scale + shift."""
    tf = _tf()
    gamma = bn.gamma if bn.scale else 1.0
    beta = bn.beta if bn.center else 0.0
    scale = gamma * tf.math.rsqrt(bn.moving_variance + bn.epsilon)
    return scale, beta - bn.moving_mean * scale


def _fold_kernel(kernel, fold):
    tf = _tf()
    bn, depthwise = fold
    scale, _ = _bn_factor(bn)
    if depthwise:  # (k, k, C, m): output channel c * m + j
        shape = tf.shape(kernel)
        return kernel * tf.reshape(scale, (shape[2], shape[3]))
    return kernel * scale


def _conv(conv, x, kernel, bn=None, activation=True):
    """`conv` (a Conv2D / DepthwiseConv2D sublayer, channels_last) with a given
    (quantized) kernel; `bn`, when given, folded in with its moving statistics."""
    tf = _tf()
    padding = conv.padding.upper()
    if hasattr(conv, "depthwise_kernel"):
        y = tf.nn.depthwise_conv2d(
            x, kernel, strides=(1,) + tuple(conv.strides) + (1,), padding=padding, dilations=tuple(conv.dilation_rate)
        )
    else:
        y = tf.nn.conv2d(x, kernel, strides=tuple(conv.strides), padding=padding, dilations=tuple(conv.dilation_rate))
    bias = conv.bias if conv.use_bias else None
    if bn is not None:
        scale, shift = _bn_factor(bn)
        bias = shift if bias is None else shift + bias * scale
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    return conv.activation(y) if activation else y


def _is_transposed(conv):
    return "Transpose" in type(conv).__name__


def _deconv(conv, x, kernel):
    """A Conv2DTranspose sublayer (channels_last, no output_padding) with a given (quantized) kernel."""
    tf = _tf()

    def out_size(size, k, stride):
        return size * stride if conv.padding == "same" else (size - 1) * stride + k

    shape = tf.shape(x)
    sizes = [out_size(shape[i + 1], k, st) for i, (k, st) in enumerate(zip(conv.kernel_size, conv.strides))]
    y = tf.nn.conv2d_transpose(
        x,
        kernel,
        tf.stack([shape[0], sizes[0], sizes[1], conv.filters]),
        strides=tuple(conv.strides),
        padding=conv.padding.upper(),
    )
    static = [
        None if x.shape[i + 1] is None else out_size(x.shape[i + 1], k, st)
        for i, (k, st) in enumerate(zip(conv.kernel_size, conv.strides))
    ]
    y = tf.ensure_shape(y, (x.shape[0], static[0], static[1], conv.filters))
    if conv.use_bias:
        y = tf.nn.bias_add(y, conv.bias)
    return conv.activation(y)


def _gate_spec(spec, gate, scale):
    if gate == "hard_sigmoid":
        spec.point("gate_relu6")
        spec.point("gate")
    elif scale != 1.0:
        spec.point("gate")


def _gate(p, logits, gate, scale):
    """The gate on fake-quantized logits, as TFLite computes it in int8."""
    tf = _tf()
    if gate == "hard_sigmoid":  # relu6(x + 3) / 6: ADD+RELU6, then MUL by a constant
        return p.q("gate", p.q("gate_relu6", tf.nn.relu6(logits + 3.0)) * (scale / 6.0))
    g = p.fixed(tf.sigmoid(logits), *_SIGMOID_RANGE)
    return g if scale == 1.0 else p.q("gate", g * scale)


def _identity_scale(layer):
    return 2.0 if getattr(layer, "start_as_identity", False) else 1.0


# ChannelAttention / SqueezeExcitation ---------------------------------------


def _channel_spec(layer, spec):
    for kind in layer.pooling:
        if kind == "avg":
            spec.point("avg_pool")
        spec.point(f"mlp_reduce_{kind}")
        spec.point(f"mlp_expand_{kind}")
    if len(layer.pooling) > 1:
        spec.point("logits")
    spec.kernel("mlp_reduce_kernel", layer.mlp_reduce)
    spec.kernel("mlp_expand_kernel", layer.mlp_expand)
    _gate_spec(spec, layer.gate, _identity_scale(layer))
    spec.point("output")


def _channel_gate(layer, p, x):
    tf = _tf()
    axes = (1, 2) if layer.data_format == "channels_last" else (2, 3)
    logits = None
    for kind in layer.pooling:
        if kind == "avg":
            pooled = p.q("avg_pool", tf.reduce_mean(x, axis=axes, keepdims=True))
        else:  # REDUCE_MAX keeps its input's scale: no point of its own
            pooled = tf.reduce_max(x, axis=axes, keepdims=True)
        if layer.data_format == "channels_first":
            pooled = tf.reshape(pooled, (-1, 1, 1, layer.channels))
        hidden = p.q(f"mlp_reduce_{kind}", _conv(layer.mlp_reduce, pooled, p.kernel("mlp_reduce_kernel")))
        z = p.q(f"mlp_expand_{kind}", _conv(layer.mlp_expand, hidden, p.kernel("mlp_expand_kernel")))
        logits = z if logits is None else p.q("logits", logits + z)
    gate = _gate(p, logits, layer.gate, _identity_scale(layer))
    if layer.data_format == "channels_first":
        gate = tf.reshape(gate, (-1, layer.channels, 1, 1))
    return gate


def _channel_forward(layer, p, x, training=None):
    return p.q("output", x * _channel_gate(layer, p, x))


# EfficientChannelAttention ----------------------------------------------------


def _eca_spec(layer, spec):
    spec.point("avg_pool")
    spec.point("logits")
    spec.kernel("conv_kernel", layer.conv)
    _gate_spec(spec, layer.gate, _identity_scale(layer))
    spec.point("output")


def _eca_forward(layer, p, x, training=None):
    tf = _tf()
    axes = (1, 2) if layer.data_format == "channels_last" else (2, 3)
    pooled = p.q("avg_pool", tf.reduce_mean(x, axis=axes, keepdims=True))
    z = p.q("logits", _conv(layer.conv, tf.reshape(pooled, (-1, 1, layer.channels, 1)), p.kernel("conv_kernel")))
    gate = _gate(p, tf.reshape(z, (-1, 1, 1, layer.channels)), layer.gate, _identity_scale(layer))
    if layer.data_format == "channels_first":
        gate = tf.reshape(gate, (-1, layer.channels, 1, 1))
    return p.q("output", x * gate)


# SpatialAttention -------------------------------------------------------------


def _spatial_spec(layer, spec):
    if "avg" in layer.pooling:
        spec.point("channel_mean")
    if len(layer.pooling) > 1:
        spec.point("descriptors")
    spec.point("logits")
    spec.kernel("conv_kernel", layer.conv, getattr(layer, "bn", None) if layer.use_batchnorm else None)
    _gate_spec(spec, layer.gate, _identity_scale(layer))
    spec.point("output")


def _spatial_gate(layer, p, x):
    tf = _tf()
    axis = -1 if layer.data_format == "channels_last" else 1
    maps = []
    for kind in layer.pooling:
        if kind == "avg":
            maps.append(p.q("channel_mean", tf.reduce_mean(x, axis=axis, keepdims=True)))
        else:
            maps.append(tf.reduce_max(x, axis=axis, keepdims=True))
    # One requantize: CONCATENATION gives mean and max one shared scale.
    d = maps[0] if len(maps) == 1 else p.q("descriptors", tf.concat(maps, axis=axis))
    d = to_channels_last(d, layer.data_format)
    bn = layer.bn if layer.use_batchnorm else None
    logits = p.q("logits", _conv(layer.conv, d, p.kernel("conv_kernel"), bn=bn))
    return from_channels_last(_gate(p, logits, layer.gate, _identity_scale(layer)), layer.data_format)


def _spatial_forward(layer, p, x, training=None):
    return p.q("output", x * _spatial_gate(layer, p, x))


# CBAM -------------------------------------------------------------------------


def _cbam_spec(layer, spec):
    _channel_spec(layer.channel_attention, spec.scoped("channel"))
    _spatial_spec(layer.spatial_attention, spec.scoped("spatial"))
    if layer.arrangement == "parallel":
        spec.point("output")


def _cbam_forward(layer, p, x, training=None):
    ca, sa = layer.channel_attention, layer.spatial_attention
    pc, ps = p.scoped("channel"), p.scoped("spatial")
    if layer.arrangement == "channel_first":
        return _spatial_forward(sa, ps, _channel_forward(ca, pc, x))
    if layer.arrangement == "spatial_first":
        return _channel_forward(ca, pc, _spatial_forward(sa, ps, x))
    channel_gate, spatial_gate = _channel_gate(ca, pc, x), _spatial_gate(sa, ps, x)
    return p.q("output", pc.q("output", x * channel_gate) * spatial_gate)


# ThunderNet -------------------------------------------------------------------


def _cem_spec(layer, spec):
    for name in ("c4_lateral", "c5_lateral", "c5_mean", "global_context", "partial_sum", "output"):
        spec.point(name)
    for name in ("c4_lateral", "c5_lateral", "global_context"):
        spec.kernel(f"{name}_kernel", getattr(layer, name))


def _cem_forward(layer, p, inputs, training=None):
    tf = _tf()
    c4 = to_channels_last(inputs[0], layer.data_format)
    c5 = to_channels_last(inputs[1], layer.data_format)
    lateral4 = p.q("c4_lateral", _conv(layer.c4_lateral, c4, p.kernel("c4_lateral_kernel")))
    lateral5 = p.q("c5_lateral", _conv(layer.c5_lateral, c5, p.kernel("c5_lateral_kernel")))
    # Nearest neighbour to C4's size, legacy pixel mapping: C4 pixel (i, j) takes
    # C5 pixel (floor(i * h5 / h4), ...) = (i // 2, j // 2) for h5 = ceil(h4 / 2),
    # which is the layer's repeat-and-crop; one RESIZE_NEAREST_NEIGHBOR in TFLite.
    size = c4.shape[1:3]
    if size[0] is None or size[1] is None:
        size = tf.shape(c4)[1:3]
    up5 = tf.compat.v1.image.resize_nearest_neighbor(lateral5, size, align_corners=False, half_pixel_centers=False)
    pooled = p.q("c5_mean", tf.reduce_mean(c5, axis=(1, 2), keepdims=True))
    context = p.q("global_context", _conv(layer.global_context, pooled, p.kernel("global_context_kernel")))
    out = p.q("output", p.q("partial_sum", lateral4 + up5) + context)
    return from_channels_last(out, layer.data_format)


def _rpn_spec(layer, spec):
    for name in ("depthwise", "features", "objectness", "box_deltas"):
        spec.point(name)
    spec.kernel("depthwise_kernel", layer.depthwise, layer.depthwise_bn)
    spec.kernel("pointwise_kernel", layer.pointwise, layer.pointwise_bn)
    spec.kernel("objectness_kernel", layer.objectness)
    spec.kernel("box_deltas_kernel", layer.box_deltas)


def _rpn_forward(layer, p, inputs, training=None):
    tf = _tf()
    x = to_channels_last(inputs, layer.data_format)
    x = p.q("depthwise", tf.nn.relu(_conv(layer.depthwise, x, p.kernel("depthwise_kernel"), bn=layer.depthwise_bn)))
    features = p.q(
        "features", tf.nn.relu(_conv(layer.pointwise, x, p.kernel("pointwise_kernel"), bn=layer.pointwise_bn))
    )
    objectness = p.q("objectness", _conv(layer.objectness, features, p.kernel("objectness_kernel")))
    deltas = p.q("box_deltas", _conv(layer.box_deltas, features, p.kernel("box_deltas_kernel")))
    return [from_channels_last(t, layer.data_format) for t in (features, objectness, deltas)]


def _sam_spec(layer, spec):
    spec.point("logits")
    spec.kernel("theta_kernel", layer.theta, layer.theta_bn if layer.use_batchnorm else None)
    _gate_spec(spec, layer.gate, 1.0)
    spec.point("output")


def _sam_forward(layer, p, inputs, training=None):
    rpn = to_channels_last(inputs[1], layer.data_format)
    bn = layer.theta_bn if layer.use_batchnorm else None
    logits = p.q("logits", _conv(layer.theta, rpn, p.kernel("theta_kernel"), bn=bn))
    gate = from_channels_last(_gate(p, logits, layer.gate, 1.0), layer.data_format)
    return p.q("output", inputs[0] * gate)


# CenterMask -------------------------------------------------------------------


def _sag_spec(layer, spec):
    for i, conv in enumerate(layer.convs):
        spec.point(f"conv{i + 1}")
        spec.kernel(f"conv{i + 1}_kernel", conv)
    if layer.attention is not None:
        _spatial_spec(layer.attention, spec.scoped("sam"))
    spec.point("deconv")
    spec.kernel("deconv_kernel", layer.deconv)
    spec.point("output")
    spec.kernel("predictor_kernel", layer.predictor)


def _sag_forward(layer, p, inputs, training=None):
    tf = _tf()
    x = inputs
    rank = len(x.shape)
    if layer.data_format == "channels_first":
        x = tf.transpose(x, (0, 1, 3, 4, 2) if rank == 5 else (0, 2, 3, 1))
    lead = None
    if rank == 5:  # (batch, boxes, S, S, C) -> (batch * boxes, S, S, C)
        shape = tf.shape(x)
        lead = shape[:2]
        x = tf.reshape(x, tf.concat([[-1], shape[2:]], axis=0))
    for i, conv in enumerate(layer.convs):
        x = p.q(f"conv{i + 1}", _conv(conv, x, p.kernel(f"conv{i + 1}_kernel")))
    if layer.attention is not None:
        x = _spatial_forward(layer.attention, p.scoped("sam"), x)
    x = p.q("deconv", _deconv(layer.deconv, x, p.kernel("deconv_kernel")))
    x = p.q("output", _conv(layer.predictor, x, p.kernel("predictor_kernel")))
    if lead is not None:
        x = tf.reshape(x, tf.concat([lead, tf.shape(x)[1:]], axis=0))
    if layer.data_format == "channels_first":
        x = tf.transpose(x, (0, 1, 4, 2, 3) if rank == 5 else (0, 3, 1, 2))
    return x


# layer class name -> (config class name, spec builder, forward)
_IMPLEMENTATIONS = {
    "ChannelAttention": ("ChannelAttentionQuantizeConfig", _channel_spec, _channel_forward),
    "SqueezeExcitation": ("SqueezeExcitationQuantizeConfig", _channel_spec, _channel_forward),
    "EfficientChannelAttention": ("EfficientChannelAttentionQuantizeConfig", _eca_spec, _eca_forward),
    "SpatialAttention": ("SpatialAttentionQuantizeConfig", _spatial_spec, _spatial_forward),
    "CBAM": ("CBAMQuantizeConfig", _cbam_spec, _cbam_forward),
    "ContextEnhancement": ("ContextEnhancementQuantizeConfig", _cem_spec, _cem_forward),
    "LightRPNHead": ("LightRPNHeadQuantizeConfig", _rpn_spec, _rpn_forward),
    "RPNGuidedSpatialAttention": ("RPNGuidedSpatialAttentionQuantizeConfig", _sam_spec, _sam_forward),
    "SAGMaskHead": ("SAGMaskHeadQuantizeConfig", _sag_spec, _sag_forward),
}

# Public layers without a QuantizeConfig, and why (quantize_model says so).
NOT_QUANTIZED = {
    "RoIAlign": (
        "RoIAlign samples feature maps at box coordinates, which int8 cannot hold (a 1-pixel error "
        "per 256/255 pixels of image size), and tfmot would fake-quantize its box input. Keep "
        "RoIAlign in float and quantize the mask head on RoI features: e.g. a model "
        "keras.Model(rois, SAGMaskHead(...)(rois)) whose input is RoIAlign's output."
    ),
}


def _layer_classes():
    """{class name: class} of the public keras_attention layers QAT supports."""
    from keras_attention import layers

    return {name: getattr(layers, name) for name in _IMPLEMENTATIONS if hasattr(layers, name)}


def supported_layers():
    """The keras_attention layer classes `quantize_model` has a QuantizeConfig for."""
    return tuple(_layer_classes().values())


def _implementation_of(layer):
    """The entry of `_IMPLEMENTATIONS` for `layer` (most derived class first), or None."""
    classes = _layer_classes()
    for cls in type(layer).__mro__:
        if cls.__name__ in _IMPLEMENTATIONS and classes.get(cls.__name__) is cls:
            return _IMPLEMENTATIONS[cls.__name__]
    return None


# --------------------------------------------------------------------------
# tfmot classes, created on first use (tfmot is imported lazily)
# --------------------------------------------------------------------------

_CLASSES = {}


def _classes(entry="quantize_config_for"):
    """tfmot's quantizer and QuantizeConfig subclasses for our layers, defined on first use.

    Long because the classes subclass tfmot's, and importing tfmot imports
    tf_keras: defined at module level they would make `import keras_attention`
    load tf_keras and tfmot in every Keras 3 session. One function keeps them
    defined once and cached in `_CLASSES`.
    """
    if _CLASSES:
        return _CLASSES
    tfmot = _require(entry)
    tf = _tf()
    qk = tfmot.quantization.keras

    class _ActivationQuantizer(qk.quantizers.Quantizer):
        """Per-tensor asymmetric 8-bit activation quantizer with its own variable names.

        The range starts from the first training batch's min/max (widened to
        include 0, as TFLite requires) and then follows an exponential moving
        average; before any training it is tfmot's default [-6, 6].
        """

        def __init__(self, name, decay=_RANGE_DECAY):
            self.name, self.decay = name, decay

        def build(self, tensor_shape, name, layer):
            def weight(suffix, value):
                return layer.add_weight(
                    f"{self.name}_{suffix}", shape=(), trainable=False, initializer=keras.initializers.Constant(value)
                )

            return {"min_var": weight("min", -6.0), "max_var": weight("max", 6.0), "seen": weight("seen", 0.0)}

        def __call__(self, inputs, training, weights, **kwargs):
            min_var, max_var = weights["min_var"], weights["max_var"]
            if training:
                x = tf.cast(inputs, "float32")
                batch_min = tf.minimum(tf.reduce_min(x), 0.0)
                batch_max = tf.maximum(tf.reduce_max(x), 0.0)
                first = weights["seen"] < 0.5
                d = self.decay
                new_min = tf.where(first, batch_min, d * min_var + (1 - d) * batch_min)
                new_max = tf.where(first, batch_max, d * max_var + (1 - d) * batch_max)
                # A tensor that never varies (a dead ReLU) must not get a zero
                # scale: TFLite kernels (XNNPACK) refuse it.
                new_max = tf.maximum(new_max, new_min + _MIN_RANGE)
                min_var = min_var.assign(new_min)
                max_var = max_var.assign(new_max)
                with tf.control_dependencies([min_var, max_var]):
                    weights["seen"].assign(1.0)
            return tf.quantization.fake_quant_with_min_max_vars(
                inputs, min_var, max_var, num_bits=_NUM_BITS, narrow_range=False
            )

        def get_config(self):
            return {"name": self.name, "decay": self.decay}

    class _KernelQuantizer(qk.quantizers.Quantizer):
        """tfmot's LastValueQuantizer (symmetric, narrow range) under a unique name,
        applied after folding a BatchNormalization into the kernel when asked."""

        def __init__(self, name, per_axis, fold=None):
            self.name, self.per_axis, self.fold = name, per_axis, fold
            self._inner = qk.quantizers.LastValueQuantizer(
                num_bits=_NUM_BITS, per_axis=per_axis, symmetric=True, narrow_range=True
            )

        def build(self, tensor_shape, name, layer):
            return self._inner.build(tensor_shape, self.name, layer)

        def __call__(self, inputs, training, weights, **kwargs):
            kernel = _fold_kernel(inputs, self.fold) if self.fold is not None else inputs
            return self._inner(kernel, training, weights)

        def get_config(self):
            return {"name": self.name, "per_axis": self.per_axis}

    class _PassThrough(qk.quantizers.Quantizer):
        """Leaves a weight (bias, BatchNorm parameter) unquantized, as TFLite does."""

        def build(self, tensor_shape, name, layer):
            return {}

        def __call__(self, inputs, training, weights, **kwargs):
            return inputs

        def get_config(self):
            return {}

    class _AttentionQuantizeConfig(qk.QuantizeConfig):
        """QuantizeConfig of a keras_attention layer.

        tfmot's wrapper asks it for the kernels to quantize (returned with our
        kernel quantizers), for "activations" (one linear activation per
        quantization point inside the layer, each with its own range
        variables) and for output quantizers (none: the forward pass quantizes
        its outputs itself, which also covers layers with several outputs).
        `set_quantize_activations` installs the quantized forward pass as the
        wrapped layer's `call`, which the wrapper then runs.
        """

        layer_class_name = None

        def _check(self, layer):
            impl = _implementation_of(layer)
            if impl is None or impl[0] != type(self).__name__:
                raise ValueError(
                    f"{type(self).__name__} quantizes {self.layer_class_name} layers; got "
                    f"{type(layer).__name__} {layer.name!r}. Use quantize_config_for(layer)."
                )
            return impl

        def _spec(self, layer):
            spec = _Spec()
            self._check(layer)[1](layer, spec)
            return spec

        def get_weights_and_quantizers(self, layer):
            # Every trainable weight, in the layer's order (biases and BN
            # parameters pass through unquantized): tfmot's wrapper lists the
            # weights returned here first, so the wrapper's weight order is the
            # same whether or not the layer was built before the wrapper (it is
            # not when tf_keras loads an .h5 file), and .h5 files reload.
            kernels = {
                id(variable): (name, per_axis, fold) for name, variable, per_axis, fold in self._spec(layer).kernels
            }
            variables = list(layer.trainable_weights)
            listed = {id(v) for v in variables}
            variables += [v for name, v, _, _ in self._spec(layer).kernels if id(v) not in listed]
            pairs, order = [], []
            for variable in variables:
                if id(variable) in kernels:
                    name, per_axis, fold = kernels[id(variable)]
                    pairs.append((variable, _KernelQuantizer(name, per_axis, fold)))
                    order.append(name)
                else:
                    pairs.append((variable, _PassThrough()))
                    order.append(None)
            layer.__dict__.setdefault("_ka_qat_state", {})["weight_order"] = order
            return pairs

        def get_activations_and_quantizers(self, layer):
            return [(keras.activations.linear, _ActivationQuantizer(name)) for name in self._spec(layer).points]

        def set_quantize_weights(self, layer, quantize_weights):
            state = layer.__dict__.setdefault("_ka_qat_state", {})
            order = state.get("weight_order")
            if order is None or len(order) != len(quantize_weights):
                raise ValueError(
                    f"{type(self).__name__}: got {len(quantize_weights)} quantized weights for layer "
                    f"{layer.name!r}, expected {len(order or [])}."
                )
            state["kernels"] = {name: w for name, w in zip(order, quantize_weights) if name is not None}

        def set_quantize_activations(self, layer, quantize_activations):
            names = self._spec(layer).points
            if len(names) != len(quantize_activations):
                raise ValueError(
                    f"{type(self).__name__}: expected {len(names)} quantization points, "
                    f"got {len(quantize_activations)}."
                )
            state = layer.__dict__.setdefault("_ka_qat_state", {})
            state["points"] = dict(zip(names, quantize_activations))
            forward = self._check(layer)[2]

            def call(self, inputs, training=None):
                points = _Points(state["points"], state.get("kernels", {}))
                return forward(self, points, inputs, training=training)

            # A bound method set as a plain attribute (bypassing Keras' attribute
            # tracking): the wrapper runs `layer.call(inputs, training=...)`.
            # Plain TensorFlow code without Python control flow on tensors: no
            # autograph conversion needed (it would only slow tracing down).
            call = _tf().autograph.experimental.do_not_convert(call)
            object.__setattr__(layer, "call", types.MethodType(call, layer))

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

        def __eq__(self, other):
            return type(self) is type(other)

        def __ne__(self, other):
            return not self.__eq__(other)

        __hash__ = object.__hash__

    classes = {}
    for layer_name, (config_name, _, _) in _IMPLEMENTATIONS.items():
        cls = type(
            config_name,
            (_AttentionQuantizeConfig,),
            {
                "layer_class_name": layer_name,
                "__doc__": f"tfmot QuantizeConfig for keras_attention's {layer_name} (int8 end to end in TFLite).",
                "__module__": __name__,
            },
        )
        classes[config_name] = keras.saving.register_keras_serializable(package="keras_attention")(cls)
    classes["_ActivationQuantizer"] = _ActivationQuantizer
    classes["_KernelQuantizer"] = _KernelQuantizer
    _CLASSES.update(classes)
    return _CLASSES


def __getattr__(name):  # PEP 562: the config classes exist once tfmot is imported
    if name in CONFIG_NAMES:
        return _classes(name)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def quantize_config_for(layer):
    """A new QuantizeConfig for a keras_attention layer, or None for any other layer."""
    impl = _implementation_of(layer)
    if impl is None:
        return None
    return _classes()[impl[0]]()


def _custom_objects():
    classes = _classes()
    objects = {name: classes[name] for name in CONFIG_NAMES}
    objects.update(_layer_classes())
    return objects


def quantize_scope(*extra):
    """tfmot's `quantize_scope` with keras_attention's layers and QuantizeConfigs in it.

    Use it to load a QAT model saved as `.h5` or a SavedModel directory:
    `with quantize_scope(): model = tf_keras.models.load_model(path)`.
    """
    tfmot = _require("quantize_scope")
    return tfmot.quantization.keras.quantize_scope(_custom_objects(), *extra)


# --------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------


def float32_model(model):
    """A float32 copy of a mixed-precision model (same layer names and weights).

    tfmot's QAT fails under mixed_float16; this is `backend.float32_copy`
    (each layer rebuilt from its config in float32, weights copied). A model
    that is float32 already is returned as it is.
    """
    _require_tf_keras("float32_model")
    if not is_mixed_precision(model):
        return model
    return backend.float32_copy(model, "keras_attention.quantization.float32_model")


# --------------------------------------------------------------------------
# Annotate / apply
# --------------------------------------------------------------------------


def quantize_annotate_layer(layer, quantize_config=None):
    """tfmot's `quantize_annotate_layer`, choosing our QuantizeConfig for our layers.

    For a keras_attention layer the config defaults to `quantize_config_for(layer)`;
    for a standard Keras layer to tfmot's default 8-bit scheme. Use it on the
    layers to quantize when building a model, then `quantize_apply(model)`.
    """
    tfmot = _require("quantize_annotate_layer")
    if quantize_config is None:
        quantize_config = quantize_config_for(layer)
    return tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=quantize_config)


def _check_graph_model(model, what):
    if not isinstance(model, keras.Model):
        raise ValueError(f"{_FEATURE}.{what}: expected a tf_keras Model; got {type(model).__name__}.")
    if not isinstance(model, keras.Sequential) and not getattr(model, "_is_graph_network", False):
        raise ValueError(
            f"{_FEATURE}.{what}: {model.name!r} is a subclassed model; tfmot quantizes only functional "
            "and Sequential models. Rebuild it with the functional API."
        )
    if not model.built:
        raise ValueError(f"{_FEATURE}.{what}: {model.name!r} is not built; give it an Input first.")


def quantize_annotate_model(model):
    """Annotates every layer of a functional/Sequential model for `quantize_apply`.

    keras_attention layers get our QuantizeConfigs, other layers tfmot's
    default scheme (`quantize_apply` raises `UnsupportedLayerError` for layers
    neither supports; to quantize only part of a model, annotate those layers
    yourself with `quantize_annotate_layer`).
    """
    tfmot = _require("quantize_annotate_model")
    _check_graph_model(model, "quantize_annotate_model")
    qk = tfmot.quantization.keras
    for layer in model.layers:
        if isinstance(layer, _wrapper_class()):
            raise ValueError(
                f"{_FEATURE}: model {model.name!r} is already quantization-aware (layer {layer.name!r} is a "
                "QuantizeWrapper); quantize the float model."
            )
        if type(layer).__name__ in NOT_QUANTIZED and _implementation_of(layer) is None:
            raise UnsupportedLayerError(
                f"{_FEATURE}: layer {layer.name!r} ({type(layer).__name__}) is not quantized: "
                f"{NOT_QUANTIZED[type(layer).__name__]}"
            )
        if isinstance(layer, keras.Model):
            raise UnsupportedLayerError(
                f"{_FEATURE}: model {model.name!r} contains the nested model {layer.name!r}; tfmot cannot "
                "quantize nested models. Flatten it, e.g. keras.Model(inner.input, head(inner.output))."
            )

    def annotate(layer):
        if isinstance(layer, (keras.layers.InputLayer, _annotate_class())):
            return layer
        return qk.quantize_annotate_layer(layer, quantize_config=quantize_config_for(layer))

    return keras.models.clone_model(model, clone_function=annotate)


def _wrapper_class():
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

    return QuantizeWrapper


def _annotate_class():
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import QuantizeAnnotate

    return QuantizeAnnotate


def quantize_apply(model):
    """tfmot's `quantize_apply` inside `quantize_scope()`: the annotated model made QAT-ready."""
    tfmot = _require("quantize_apply")
    with quantize_scope():
        try:
            return tfmot.quantization.keras.quantize_apply(model)
        except RuntimeError as error:
            if "is not supported" not in str(error):
                raise
            raise UnsupportedLayerError(
                f"{_FEATURE}: {error} Replace the layer by a supported one (e.g. apply a Rescaling "
                "layer's preprocessing outside the model), or quantize only part of the model: "
                "annotate the layers to quantize with quantize_annotate_layer() and call quantize_apply()."
            ) from error


def quantize_model(model):
    """A quantization-aware-training copy of a model holding keras_attention layers.

    Args:
        model: a built tf_keras functional or Sequential model (no nested
            models) whose layers are keras_attention layers or layers tfmot's
            default 8-bit scheme supports (Conv2D, DepthwiseConv2D, Dense,
            BatchNormalization, ReLU, Add, pooling, ...). A mixed-precision model
            is copied to float32 first. The model is not modified.

    Returns:
        A new tf_keras model: our layers wrapped with our QuantizeConfigs, the
        others with tfmot's; weights copied. Compile and fine-tune it (a few
        epochs, small learning rate), then convert it with
        `keras_attention.tflite.convert(qat_model, "int8", representative_data=...)`
        for an int8-end-to-end `.tflite`. Save it with `save_qat_model` (`.h5`
        or a SavedModel directory); its `save()` refuses `.keras`.

    Raises:
        RuntimeError: under Keras 3 (set `TF_USE_LEGACY_KERAS=1`).
        UnsupportedLayerError: layers neither we nor tfmot can quantize.
        ValueError: a subclassed or unbuilt model.
    """
    _require("quantize_model")
    _check_graph_model(model, "quantize_model")
    model = float32_model(model)
    qat = quantize_apply(quantize_annotate_model(model))
    _guard_save(qat)
    return qat


# --------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------

_KERAS_V3_ERROR = (
    "{feature}: a QAT model cannot be saved as {path!r}: tfmot's quantize layers do not reload "
    "from the .keras format (their variable counts do not match on load), so the file would be "
    "unusable. Save it as .h5 (`save_qat_model(model, 'model.h5')`) or as a SavedModel directory "
    "(`save_qat_model(model, 'model_dir')`), and reload with `load_qat_model(path)`; or convert it "
    "to TFLite directly."
)


def _is_keras_v3_path(path):
    return str(os.fspath(path)).lower().endswith(".keras")


def save_qat_model(model, path, include_optimizer=True):
    """Saves a QAT model in a format that reloads: `.h5`/`.hdf5` or a SavedModel directory.

    Args:
        model: a model from `quantize_model` / `quantize_apply`.
        path: `*.h5` (HDF5, one file) or a directory (TensorFlow SavedModel).
            `*.keras` raises `ValueError` (tfmot's quantize layers do not
            reload from it) before anything is written.
        include_optimizer: save the optimizer state too.

    Returns:
        The path.
    """
    _require_tf_keras("save_qat_model")
    path = os.fspath(path)
    if _is_keras_v3_path(path):
        raise ValueError(_KERAS_V3_ERROR.format(feature=f"{_FEATURE}.save_qat_model", path=path))
    save = getattr(model, "_ka_unguarded_save", None) or model.save
    save_format = "h5" if path.lower().endswith((".h5", ".hdf5")) else "tf"
    # Whole or not at all: a failed save leaves the previous file or folder as it was.
    with atomic_path(path, f"{_FEATURE}.save_qat_model", allow_directory=save_format == "tf") as temporary:
        save(temporary, save_format=save_format, include_optimizer=include_optimizer)
    return path


def _guard_save(model):
    """Makes `model.save(...)` refuse `.keras` with the clear error (instance attribute)."""
    unguarded = model.save

    def save(filepath, *args, **kwargs):
        if _is_keras_v3_path(filepath) or kwargs.get("save_format") in ("keras", "keras_v3"):
            raise ValueError(_KERAS_V3_ERROR.format(feature=f"{_FEATURE}: model.save", path=os.fspath(filepath)))
        return unguarded(filepath, *args, **kwargs)

    save.__doc__ = unguarded.__doc__
    object.__setattr__(model, "_ka_unguarded_save", unguarded)
    object.__setattr__(model, "save", save)
    return model


def load_qat_model(path, compile=True):  # noqa: A002 - Keras' argument name
    """Loads a QAT model saved by `save_qat_model` (`.h5` or SavedModel directory).

    `.keras` raises `ValueError`. The model's `save()` refuses `.keras` again.
    """
    _require_tf_keras("load_qat_model")
    path = os.fspath(path)
    if _is_keras_v3_path(path):
        raise ValueError(_KERAS_V3_ERROR.format(feature=f"{_FEATURE}.load_qat_model", path=path))

    with quantize_scope():
        model = keras.models.load_model(path, compile=compile)
    return _guard_save(model)


# --------------------------------------------------------------------------
# From Keras 3 to tf_keras
# --------------------------------------------------------------------------


def _snake_case(name):
    """Keras' `to_snake_case` (the same in Keras 3 and tf_keras)."""
    import re

    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _weight_file_keys(model):
    """Where each layer of `model` lives in a `.weights.h5` file, for the layers with weights.

    Both Kerases address a model's layers by class name and position, not by
    `layer.name` ("conv2d", "conv2d_1", "cbam", ...), so the layer *names* need
    not match between the two builds; the classes and their order must.
    """
    used, keys = {}, {}
    for layer in model.layers:
        key = _snake_case(type(layer).__name__)
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        if layer.weights:
            keys[key] = layer.name
    return keys


def _h5_keys_with_variables(weights_path):
    import h5py

    keys = set()
    with h5py.File(weights_path, "r") as handle:
        layers = handle.get("layers")
        if layers is None:
            raise ValueError(f"{_FEATURE}: {weights_path!r} has no 'layers' group; is it a Keras 3 weights file?")
        for key, group in layers.items():
            found = []
            group.visititems(
                lambda name, item, out=found: out.append(name) if name.split("/")[-2:-1] == ["vars"] else None
            )
            if found:
                keys.add(key)
    return keys


def load_keras3_weights(model, path):
    """Loads weights saved by Keras 3 into the same architecture rebuilt under tf_keras.

    tf_keras cannot read a Keras 3 `.keras` file's architecture (its config
    names Keras 3 modules), but both Kerases write weights in the same layout:
    build the model again under `TF_USE_LEGACY_KERAS=1` with the same code
    (keras_attention's layers and `keras.applications` exist in both Kerases),
    load the weights with this function, then quantize it.

    Args:
        model: the tf_keras model, built, with the same layers in the same
            order as the Keras 3 one (layer names may differ: the file
            addresses layers by class and position).
        path: a Keras 3 `.keras` file (its `model.weights.h5` is used) or a
            `.weights.h5` file from Keras 3's `model.save_weights()`.

    Returns:
        `model`, with the weights loaded.

    Raises:
        ValueError: the file's layers with weights differ from the model's
            (another architecture, or layers in another order), named; or
            the file is not a Keras 3 weights file.
    """
    _require_tf_keras("load_keras3_weights")
    path = os.fspath(path)
    with tempfile.TemporaryDirectory(prefix="keras_attention_weights_") as directory:
        weights = path
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "model.weights.h5" not in archive.namelist():
                    raise ValueError(f"{_FEATURE}: {path!r} is a zip file without model.weights.h5; not a .keras file.")
                archive.extract("model.weights.h5", directory)
            weights = os.path.join(directory, "model.weights.h5")
        elif not path.endswith(".weights.h5"):
            raise ValueError(
                f"{_FEATURE}.load_keras3_weights: expected a Keras 3 .keras file or a .weights.h5 file; got {path!r}."
            )
        in_file = _h5_keys_with_variables(weights)
        in_model = _weight_file_keys(model)
        if in_file != set(in_model):
            only_file = ", ".join(sorted(in_file - set(in_model))) or "none"
            only_model = ", ".join(f"{key} (layer {in_model[key]!r})" for key in sorted(set(in_model) - in_file))
            raise ValueError(
                f"{_FEATURE}.load_keras3_weights: {path!r} does not hold the weights of model {model.name!r}. "
                f"Layers with weights only in the file: {only_file}; only in the model: {only_model or 'none'} "
                "(both Kerases address layers by class and position, not by name). Rebuild the model with "
                "the same code that built the Keras 3 one."
            )
        model.load_weights(weights)
    return model
