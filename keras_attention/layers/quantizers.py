"""The int8 fake quantizers of Keras 3 QAT: TFLite's scheme, on every backend.

* Activations: per tensor, asymmetric, 8 bits, the range an exponential moving
  average of each training batch's min and max (started on the first batch,
  always containing 0, as TFLite needs). `ActivationQuantizer` holds it.
* Outputs whose range TFLite fixes (LOGISTIC and SOFTMAX: scale 1/256, zero
  point -128; TANH: 1/128, 0) are fake-quantized to that range, no variables.
* Kernels: symmetric, narrow range ([-127, 127]), per output channel (a
  depthwise kernel per channel; a Dense kernel per tensor, as TFLite's
  FULLY_CONNECTED takes it), the range the kernel's own max |w|.

All of it is `keras.quantizers.fake_quant_with_min_max_vars`, which TensorFlow
lowers to its FakeQuant ops (read by the TFLite converter as QAT ranges, so no
representative data is needed) and JAX/PyTorch run as a custom-gradient op with
the same rounding; under tf_keras, TensorFlow's FakeQuant ops themselves. It
lives beside the layers, which run its quantizers at their named points under
QAT. Both QAT engines use it: Keras 3's `ActivationQuantizer` layers and
tfmot's (`keras_attention.quantization.tfmot`), whose range variables follow
the same `updated_range`. `keras_attention.quantization` re-exports it as
`quantization.quantizers`.
"""

import numpy as np

from keras_attention import backend
from keras_attention.backend import IS_LEGACY, keras, ops, register

NUM_BITS = 8
# EMA decay of activation ranges (tfmot's 0.999 from [-6, 6] takes thousands of steps to adapt).
RANGE_DECAY = 0.99
# Narrowest activation range (scale >= 4e-6): XNNPACK rejects near-zero scales.
MIN_RANGE = 1e-3
# TFLite's int8 output ranges of the ops it fixes.
FIXED_RANGES = {
    "sigmoid": (0.0, 255.0 / 256.0),
    "softmax": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
}


def _fake_quant(x, low, high, narrow_range=False, axis=None):
    if IS_LEGACY:  # tf_keras has no keras.quantizers; Keras 3 lowers to these ops on TensorFlow too
        import tensorflow as tf

        if axis is None:
            return tf.quantization.fake_quant_with_min_max_vars(
                x, low, high, num_bits=NUM_BITS, narrow_range=narrow_range
            )
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            x, low, high, num_bits=NUM_BITS, narrow_range=narrow_range
        )
    return keras.quantizers.fake_quant_with_min_max_vars(
        x, low, high, num_bits=NUM_BITS, narrow_range=narrow_range, axis=axis
    )


def updated_range(x, low, high, started, decay=RANGE_DECAY):
    """(low, high) after a training batch `x`: the batch's own range (with 0) first, then an EMA.

    `started` is 1.0 once the range has seen a batch, else 0.0. The width is
    kept at least `MIN_RANGE` when the range is used (`usable_range`).
    """
    batch_low = ops.minimum(ops.min(ops.stop_gradient(x)), 0.0)
    batch_high = ops.maximum(ops.max(ops.stop_gradient(x)), 0.0)
    keep = ops.cast(started > 0.5, "float32") * decay
    return keep * low + (1.0 - keep) * batch_low, keep * high + (1.0 - keep) * batch_high


def usable_range(low, high):
    """(low, high) widened to at least `MIN_RANGE`, so the int8 scale never collapses (XNNPACK refuses it)."""
    return low, ops.maximum(high, low + MIN_RANGE)


def fake_quant_activation(x, low, high):
    """`x` (any float dtype) fake-quantized to int8 in [low, high] (float32 arithmetic)."""
    low, high = usable_range(ops.stop_gradient(low), ops.stop_gradient(high))
    return ops.cast(_fake_quant(ops.cast(x, "float32"), low, high), x.dtype)


def fixed_range(x, kind):
    """`x` fake-quantized to the int8 output range TFLite fixes for `kind` ("sigmoid", "softmax", "tanh")."""
    low, high = FIXED_RANGES[kind]
    y = _fake_quant(ops.cast(x, "float32"), low, high)
    return ops.cast(y, x.dtype)


def quantize_kernel(kernel, axis=-1):
    """Symmetric, narrow-range, per-channel fake quantization of a kernel along `axis`.

    A depthwise kernel (kh, kw, C, m) is quantized per output channel c * m + j
    by viewing it as (kh, kw, C * m).
    """
    kernel = ops.convert_to_tensor(kernel)
    shape = tuple(kernel.shape)
    if axis is None:  # per tensor
        bound = ops.stop_gradient(ops.maximum(ops.max(ops.abs(kernel)), 1e-8))
        return _fake_quant(kernel, -bound, bound, narrow_range=True)
    if axis == "depthwise":
        flat = ops.reshape(kernel, shape[:2] + (shape[2] * shape[3],))
        return ops.reshape(quantize_kernel(flat, -1), shape)
    axis = axis % len(shape)
    reduce_axes = tuple(i for i in range(len(shape)) if i != axis)
    bound = ops.maximum(ops.max(ops.abs(kernel), axis=reduce_axes), 1e-8)
    bound = ops.stop_gradient(bound)
    return _fake_quant(kernel, -bound, bound, narrow_range=True, axis=axis)


@register
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a tensor to int8 with a range learned from the data.

    In training the range is updated from the batch (`min(x, 0)`, `max(x, 0)`):
    the first training batch sets it, later ones move it by an exponential
    moving average with `decay`. Outside training the stored range is used.
    The range keeps at least `MIN_RANGE` width, so the int8 scale never
    collapses. The layer is what TFLite's QUANTIZE parameters of a tensor become.

    Args:
        decay: moving-average decay of the range (0.99).
        fixed: name of a TFLite fixed output range ("sigmoid", "softmax",
            "tanh"): no variables, that range always.

    Input shape:
        Any float tensor.

    Output shape:
        Same as the input.

    Example:
    >>> q = ActivationQuantizer()
    >>> y = q(np.linspace(-1.0, 3.0, 8, dtype="float32"), training=True)
    >>> [round(float(v), 4) for v in ops.convert_to_numpy(q.range)]
    [-1.0, 3.0]
    """

    def __init__(self, decay=RANGE_DECAY, fixed=None, **kwargs):
        super().__init__(**kwargs)
        if IS_LEGACY:
            raise RuntimeError(
                "ActivationQuantizer: Keras 3 QAT runs on Keras 3; under tf_keras use "
                "keras_attention.quantization.quantize_model, which takes the tfmot path."
            )
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"ActivationQuantizer: `decay` must be in [0, 1); got {decay!r}.")
        if fixed is not None and fixed not in FIXED_RANGES:
            raise ValueError(
                f"ActivationQuantizer: unknown fixed range {fixed!r}; expected one of {sorted(FIXED_RANGES)}."
            )
        self.decay = float(decay)
        self.fixed = fixed
        self.supports_masking = True

    def build(self, input_shape):
        if self.fixed is None:
            # float32 whatever the policy: ranges are statistics, not activations.
            self.range_min = self.add_weight(
                shape=(), initializer="zeros", trainable=False, dtype="float32", name="range_min"
            )
            self.range_max = self.add_weight(
                shape=(), initializer="zeros", trainable=False, dtype="float32", name="range_max"
            )
            self.initialized = self.add_weight(
                shape=(), initializer="zeros", trainable=False, dtype="float32", name="initialized"
            )
        self.built = True

    @property
    def range(self):
        """(min, max) the quantizer uses outside training."""
        if self.fixed is not None:
            return ops.convert_to_tensor(FIXED_RANGES[self.fixed])
        low, high = usable_range(ops.convert_to_tensor(self.range_min), ops.convert_to_tensor(self.range_max))
        return ops.stack([ops.cast(low, "float32"), ops.cast(high, "float32")])

    def call(self, inputs, training=None):
        if self.fixed is not None:
            return fixed_range(inputs, self.fixed)
        low, high = ops.convert_to_tensor(self.range_min), ops.convert_to_tensor(self.range_max)
        if training:
            started = ops.convert_to_tensor(self.initialized)
            low, high = updated_range(ops.cast(inputs, "float32"), low, high, started, self.decay)
            self.range_min.assign(low)
            self.range_max.assign(high)
            self.initialized.assign(1.0)
        return fake_quant_activation(inputs, low, high)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(decay=self.decay, fixed=self.fixed)
        return config


def _is_depthwise(layer):
    return isinstance(layer, keras.layers.DepthwiseConv2D)


def _output_axis(layer):
    """The output-channel axis of a kernel ("depthwise": (kh, kw, C, m))."""
    if _is_depthwise(layer):
        return "depthwise"
    return -2 if isinstance(layer, keras.layers.Conv2DTranspose) else -1  # transposed: (kh, kw, out, in)


def _kernel_axis(layer):
    """The axis TFLite quantizes a kernel along (its output channels); None: per tensor."""
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2DTranspose)):
        # FULLY_CONNECTED and TRANSPOSE_CONV: the converter transposes the kernel and refuses a
        # per-channel axis on it ("mismatched quantized axes").
        return None
    return _output_axis(layer)


def batch_norm_factors(bn):
    """(scale, shift) of `bn` in inference mode: bn(y) = y * scale + shift (moving statistics)."""
    scale = ops.rsqrt(ops.convert_to_tensor(bn.moving_variance) + bn.epsilon)
    if bn.scale:
        scale = scale * bn.gamma
    shift = -ops.convert_to_tensor(bn.moving_mean) * scale
    if bn.center:
        shift = shift + bn.beta
    return scale, shift


def fold_batch_norm(kernel, bias, bn, axis=-1):
    """(kernel, bias) with `bn` (or None) folded in: kernel * scale per output channel, bias * scale + shift.

    `axis` is the kernel's output-channel axis, or "depthwise" for (kh, kw, C, m).
    The BN's moving statistics are used (frozen during QAT; gamma and beta still
    train through the folded kernel): the convolution the TFLite converter writes.
    """
    kernel = ops.convert_to_tensor(kernel)
    bias = ops.convert_to_tensor(bias) if bias is not None else None
    if bn is None:
        return kernel, bias
    scale, shift = batch_norm_factors(bn)
    if axis == "depthwise":
        shape = tuple(kernel.shape[2:])
    else:
        shape = [1] * len(kernel.shape)
        shape[axis] = -1
    kernel = kernel * ops.reshape(scale, shape)
    return kernel, (shift if bias is None else bias * scale + shift)


def kernel_of(layer):
    """The kernel variable of a convolution or Dense (tf_keras names a depthwise one `depthwise_kernel`)."""
    return layer.depthwise_kernel if IS_LEGACY and _is_depthwise(layer) else layer.kernel


def folded_parameters(layer, bn=None, quantize=True):
    """(fake-quantized kernel, bias or None) of a convolution or Dense, `bn` folded in (`fold_batch_norm`)."""
    kernel, bias = fold_batch_norm(kernel_of(layer), layer.bias if layer.use_bias else None, bn, _output_axis(layer))
    return (quantize_kernel(kernel, _kernel_axis(layer)) if quantize else kernel), bias


def bias_add(y, bias, data_format):
    if bias is None:
        return y
    if data_format == "channels_first" and len(y.shape) == 4:
        return y + ops.reshape(bias, (1, -1, 1, 1))
    return y + bias


def quantized_call(layer, x, bn=None, activation=True):
    """`layer` (Conv1D/2D, DepthwiseConv2D, Conv2DTranspose or Dense) with its quantized, BN-folded kernel.

    The activation of the layer itself (e.g. `Conv2D(activation="relu")`) is
    applied unless `activation=False`; the output is not fake-quantized here
    (the caller's point does it, after any fused activation).
    """
    kernel, bias = folded_parameters(layer, bn)
    data_format = getattr(layer, "data_format", "channels_last")
    if isinstance(layer, keras.layers.Dense):
        y = ops.matmul(x, kernel)
    elif _is_depthwise(layer):
        y = ops.depthwise_conv(
            x,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            data_format=data_format,
            dilation_rate=layer.dilation_rate,
        )
    elif isinstance(layer, keras.layers.Conv2DTranspose):
        y = ops.conv_transpose(
            x,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            output_padding=layer.output_padding,
            data_format=data_format,
            dilation_rate=layer.dilation_rate,
        )
    else:
        y = layer.convolution_op(x, kernel)
    y = bias_add(y, bias, data_format)
    return layer.activation(y) if activation and layer.activation is not None else y


def quantizers(model):
    """Every ActivationQuantizer with a learned range in `model` (nested ones included)."""
    return [
        layer for layer in backend.all_layers(model) if isinstance(layer, ActivationQuantizer) and layer.fixed is None
    ]


def is_qat_model(model):
    """True when `model` holds Keras 3 QAT quantizers (the output of `quantize_model`)."""
    return not IS_LEGACY and bool(quantizers(model))


def uncalibrated(model):
    """Paths of the quantizers that have not seen a training batch (their range is still empty)."""
    return [q.path for q in quantizers(model) if float(np.asarray(keras.ops.convert_to_numpy(q.initialized))) < 0.5]


__all__ = [
    "NUM_BITS",
    "RANGE_DECAY",
    "MIN_RANGE",
    "FIXED_RANGES",
    "fixed_range",
    "updated_range",
    "usable_range",
    "fake_quant_activation",
    "quantize_kernel",
    "kernel_of",
    "ActivationQuantizer",
    "batch_norm_factors",
    "fold_batch_norm",
    "folded_parameters",
    "bias_add",
    "quantized_call",
    "quantizers",
    "is_qat_model",
    "uncalibrated",
]
