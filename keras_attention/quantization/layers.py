"""The QAT forms of standard Keras layers (Keras 3): each computes what TFLite's int8 op computes.

`quantize_model` puts these in place of the float layers:

* `QuantizedConv`: Conv1D/Conv2D, DepthwiseConv2D, SeparableConv2D,
  Conv2DTranspose or Dense, with a following BatchNormalization folded in
  (moving statistics, frozen) and a following ReLU/ReLU6 fused, as the converter
  folds and fuses them; per-channel symmetric kernels, one int8 output.
* `QuantizedActivation`: an activation with the int8 points of the ops TFLite
  runs it as (hard_sigmoid: ADD+RELU6, MUL; swish: LOGISTIC, MUL; ...).
* `QuantizedBatchNormalization`: a BatchNormalization that follows no
  convolution (MUL, ADD).
* `QuantizedRescaling`, `QuantizedNormalization`: input preprocessing (MUL, ADD
  / SUB, MUL).

Every other layer keeps its float form with an `ActivationQuantizer` after it
(or none where TFLite keeps the input's scale: max pooling, padding, reshapes).
"""

import numpy as np

from keras_attention.backend import build_sublayer, keras, ops, register
from keras_attention.layers._quantization import ACTIVATION_POINTS, QuantizationPoints, run_activation
from keras_attention.layers.quantizers import (
    batch_norm_factors,
    bias_add,
    fold_batch_norm,
    quantize_kernel,
    quantized_call,
)

# Activations TFLite fuses into the convolution before them.
FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")


def activation_name(layer_or_fn):
    """The name of a Keras activation (function, Activation, ReLU or Softmax layer), or None if it has no int8 form."""
    if isinstance(layer_or_fn, keras.layers.ReLU):
        if float(layer_or_fn.negative_slope) != 0.0 or float(layer_or_fn.threshold) != 0.0:
            return None
        max_value = layer_or_fn.max_value
        if max_value is None:
            return "relu"
        return "relu6" if float(max_value) == 6.0 else None
    if isinstance(layer_or_fn, keras.layers.Softmax):
        axis = layer_or_fn.axis
        return "softmax" if axis in (-1, [-1], (-1,)) else None
    if isinstance(layer_or_fn, keras.layers.Activation):
        layer_or_fn = layer_or_fn.activation
    if layer_or_fn is None:
        return "linear"
    name = getattr(layer_or_fn, "__name__", None)
    return name if name in ACTIVATION_POINTS else None


def _layer(value):
    """A sublayer from its config, left unbuilt so the wrapper's `build()` builds it in its own scope."""
    if not isinstance(value, dict):
        return value
    return keras.layers.deserialize({k: v for k, v in value.items() if k != "build_config"})


class _QuantizedWrapper(QuantizationPoints, keras.layers.Layer):
    def __init__(self, **kwargs):
        kwargs.setdefault("quantization", "int8")
        super().__init__(**self._init_quantization(kwargs))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


class _QuantizedSublayerWrapper(_QuantizedWrapper):
    """A QAT form that computes from one float layer's variables (`self.layer`), built in its own scope."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = _layer(layer)

    def build(self, input_shape):
        build_sublayer(self.layer, input_shape)
        self._build_quantization_points()
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(layer=keras.layers.serialize(self.layer))
        return config


@register
class QuantizedConv(_QuantizedWrapper):
    """A convolution or Dense layer, with an optional BatchNormalization and activation, in int8 QAT form.

    Args:
        layer: the Conv1D/Conv2D/DepthwiseConv2D/SeparableConv2D/Conv2DTranspose/Dense
            layer (or its serialized config).
        batch_norm: the BatchNormalization that follows it (or None): folded
            into the kernel with its moving statistics (frozen).
        activation: the activation that follows (ReLU / ReLU6 fuse into the
            convolution as in TFLite; any name of `ACTIVATION_POINTS`).

    Input shape:
        That of `layer`.

    Output shape:
        That of `layer`.

    Example:
    >>> q = QuantizedConv(keras.layers.Conv2D(4, 3), batch_norm=keras.layers.BatchNormalization())
    >>> tuple(q(np.ones((1, 8, 8, 2), "float32")).shape)
    (1, 6, 6, 4)
    """

    def __init__(self, layer, batch_norm=None, activation="linear", **kwargs):
        super().__init__(**kwargs)
        self.layer = _layer(layer)
        self.batch_norm = _layer(batch_norm) if batch_norm is not None else None
        self.activation = activation
        self.inner_activation = activation_name(getattr(self.layer, "activation", None))
        if self.activation not in ACTIVATION_POINTS or self.inner_activation is None:
            raise ValueError(
                f"QuantizedConv: {self.layer.name!r} ({type(self.layer).__name__}) has an activation with no "
                f"int8 form; supported: {sorted(ACTIVATION_POINTS)}."
            )
        if self.batch_norm is not None and self.inner_activation != "linear":
            raise ValueError(
                f"QuantizedConv: cannot fold {self.batch_norm.name!r} into {self.layer.name!r}, whose own "
                f"activation {self.inner_activation!r} comes between them."
            )
        self.separable = isinstance(self.layer, keras.layers.SeparableConv2D)

    def _last_activation(self):
        return self.activation if self.activation != "linear" else self.inner_activation

    def quantization_points(self):
        points = ["depthwise"] if self.separable else []
        if self.inner_activation not in FUSABLE_ACTIVATIONS:
            points.append("conv")  # the convolution's own output feeds a non-fused activation
        points += [f"inner_{p}" for p in ACTIVATION_POINTS[self.inner_activation]]
        points += ACTIVATION_POINTS[self.activation]
        return points + (["output"] if self._last_activation() == "linear" else [])

    def build(self, input_shape):
        build_sublayer(self.layer, input_shape)
        output_shape = self.layer.compute_output_shape(input_shape)
        if self.batch_norm is not None:
            build_sublayer(self.batch_norm, output_shape)
        self._build_quantization_points()
        self.built = True

    def _separable(self, x):
        layer = self.layer
        depthwise = quantize_kernel(layer.depthwise_kernel, "depthwise")
        y = ops.depthwise_conv(
            x,
            depthwise,
            strides=layer.strides,
            padding=layer.padding,
            data_format=layer.data_format,
            dilation_rate=layer.dilation_rate,
        )
        y = self.at_point("depthwise", y)
        kernel, bias = fold_batch_norm(layer.pointwise_kernel, layer.bias if layer.use_bias else None, self.batch_norm)
        y = ops.conv(y, quantize_kernel(kernel, -1), data_format=layer.data_format)
        return bias_add(y, bias, layer.data_format)

    def call(self, inputs, training=None):
        # The layer's own activation runs below, at its int8 points.
        if self.separable:
            y = self._separable(inputs)
        else:
            y = quantized_call(self.layer, inputs, self.batch_norm, activation=False)
        if self.inner_activation not in FUSABLE_ACTIVATIONS:
            y = self.at_point("conv", y)
        y = run_activation(self, self.inner_activation, y, prefix="inner_")
        y = run_activation(self, self.activation, y)
        return self.at_point("output", y) if self._last_activation() == "linear" else y

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            layer=keras.layers.serialize(self.layer),
            batch_norm=keras.layers.serialize(self.batch_norm) if self.batch_norm is not None else None,
            activation=self.activation,
        )
        return config


@register
class QuantizedActivation(_QuantizedWrapper):
    """An activation at the int8 points of the TFLite ops it becomes.

    Args:
        activation: one of `ACTIVATION_POINTS` ("relu", "relu6", "sigmoid",
            "softmax", "tanh", "hard_sigmoid", "swish"/"silu",
            "hard_swish"/"hard_silu", "linear").

    Input shape:
        Any.

    Output shape:
        Same as the input.

    Example:
    >>> tuple(QuantizedActivation("hard_swish")(np.ones((2, 3), "float32")).shape)
    (2, 3)
    """

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATION_POINTS:
            raise ValueError(
                f"QuantizedActivation: {activation!r} has no int8 form here; expected one of "
                f"{sorted(ACTIVATION_POINTS)}."
            )
        self.activation = activation

    def quantization_points(self):
        return ACTIVATION_POINTS[self.activation]

    def build(self, input_shape):
        self._build_quantization_points()
        self.built = True

    def call(self, inputs, mask=None):
        if mask is not None:
            raise ValueError(f"QuantizedActivation {self.name!r}: a masked softmax has no int8 form here.")
        return run_activation(self, self.activation, inputs)

    def get_config(self):
        config = super().get_config()
        config.update(activation=self.activation)
        return config


def _channel_shape(rank, axis):
    shape = [1] * rank
    shape[axis] = -1
    return shape


@register
class QuantizedBatchNormalization(_QuantizedSublayerWrapper):
    """A BatchNormalization that follows no convolution: `x * scale` and `+ shift`, moving statistics frozen.

    Args:
        layer: the BatchNormalization layer (or its config).

    Input shape:
        Any, with the layer's `axis`.

    Output shape:
        Same as the input.

    Example:
    >>> tuple(QuantizedBatchNormalization(keras.layers.BatchNormalization())(np.ones((2, 3), "float32")).shape)
    (2, 3)
    """

    def quantization_points(self):
        return ["scaled", "output"]

    def call(self, inputs, mask=None):
        # `mask`: Keras' BatchNormalization takes one, so a functional graph (keras-hub's DenseNet) may pass
        # mask=None; with moving statistics, as here, Keras' BN does not use it either.
        axis = self.layer.axis % len(inputs.shape)
        scale, shift = batch_norm_factors(self.layer)
        shape = _channel_shape(len(inputs.shape), axis)
        scaled = self.at_point("scaled", inputs * ops.reshape(scale, shape))
        return self.at_point("output", scaled + ops.reshape(shift, shape))


@register
class QuantizedRescaling(_QuantizedWrapper):
    """`x * scale + offset` (Keras' Rescaling) as int8 MUL and ADD.

    Args:
        scale, offset: as `keras.layers.Rescaling` (scalars or per-channel lists).

    Input shape:
        Any.

    Output shape:
        Same as the input.

    Example:
    >>> tuple(QuantizedRescaling(1 / 127.5, -1.0)(np.ones((1, 4, 4, 3), "float32")).shape)
    (1, 4, 4, 3)
    """

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset = scale, offset
        self.has_offset = bool(np.any(np.asarray(offset, "float32") != 0.0))

    def quantization_points(self):
        return ["scaled", "output"] if self.has_offset else ["output"]

    def build(self, input_shape):
        self._build_quantization_points()
        self.built = True

    def call(self, inputs):
        scaled = inputs * ops.convert_to_tensor(self.scale, inputs.dtype)
        if not self.has_offset:
            return self.at_point("output", scaled)
        return self.at_point(
            "output", self.at_point("scaled", scaled) + ops.convert_to_tensor(self.offset, inputs.dtype)
        )

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, offset=self.offset)
        return config


@register
class QuantizedNormalization(_QuantizedSublayerWrapper):
    """Keras' Normalization, `(x - mean) / sqrt(variance)`, as int8 SUB and MUL (by 1 / std).

    Args:
        layer: the adapted `keras.layers.Normalization` (or its config; its
            mean and variance are weights copied from the float model).

    Input shape:
        That of the layer.

    Output shape:
        Same as the input.

    Example:
    >>> n = keras.layers.Normalization(mean=[1.0, 2.0], variance=[4.0, 1.0])
    >>> tuple(QuantizedNormalization(n)(np.ones((3, 2), "float32")).shape)
    (3, 2)
    """

    def __init__(self, layer, **kwargs):
        super().__init__(layer, **kwargs)
        if getattr(self.layer, "invert", False):
            raise ValueError(
                f"QuantizedNormalization: {self.layer.name!r} has invert=True, which has no int8 form here."
            )

    def quantization_points(self):
        return ["centered", "output"]

    def call(self, inputs):
        mean = ops.cast(self.layer.mean, inputs.dtype)
        inverse_std = 1.0 / ops.maximum(ops.sqrt(ops.cast(self.layer.variance, inputs.dtype)), keras.backend.epsilon())
        centered = self.at_point("centered", inputs - mean)
        return self.at_point("output", centered * inverse_std)
