"""Strip attentions: timm's StripAttn and Efficient Local Attention (Xu & Wan, 2024)."""

from keras_attention.backend import accumulation_dtype, build_sublayer, keras, ops, register
from keras_attention.layers import _validation as v
from keras_attention.layers._gated import GatedAttention
from keras_attention.layers._norm import GROUP_NORM_POINTS, group_norm
from keras_attention.layers._quantization import ACTIVATION_POINTS, HIDDEN_ACTIVATIONS, run_activation
from keras_attention.layers._strips import (
    refuse_identity_with_residual,
    residual_output,
    residual_points,
    strip_means,
    strips_to_input_layout,
)


def _strip_conv(layer, kernel_size, name, zeros=False):
    """A depthwise (k, 1) convolution along a strip of `strip_means`' layout ('same': PyTorch's k // 2 padding)."""
    return keras.layers.DepthwiseConv2D(
        (kernel_size, 1),
        padding="same",
        use_bias=layer.use_bias,
        depthwise_initializer="zeros" if zeros else "glorot_uniform",
        data_format="channels_last",
        dtype=accumulation_dtype(layer),
        name=name,
    )


@register
class StripAttention(GatedAttention):
    """Strip attention (timm's `StripAttn`, `create_attn("strip")`): one gate from a row and a column strip.

    `out = x * gate(conv_h(mean_W(x)) + conv_w(mean_H(x)))`: the map is averaged
    along its width (one value per row and channel) and along its height; each
    strip goes through a depthwise 1-D convolution along it (optional); their
    sum broadcasts to (H, W, C) and is gated.

    Args:
        use_conv: the two depthwise 1-D convolutions (timm: True); without them
            the gate sees the strip means themselves.
        kernel_size: odd length of the 1-D convolutions (3).
        use_bias: biases in the convolutions (timm: False).
        gate: "sigmoid" (timm) or "hard_sigmoid".
        residual: add the input to the output (timm's `has_skip`).
        start_as_identity: start as the identity (zero convolutions, gate
            2 * gate(0) = 1). Needs `use_conv` and excludes `residual`.
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor `(batch, height, width, channels)` or channels_first; height
        and width may be unknown.

    Output shape:
        Same as the input.

    Example:
    >>> y = StripAttention()(keras.Input((14, 14, 32)))
    >>> y.shape
    (None, 14, 14, 32)
    """

    def __init__(
        self,
        use_conv=True,
        kernel_size=3,
        use_bias=False,
        gate="sigmoid",
        residual=False,
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(gate=gate, start_as_identity=start_as_identity, data_format=data_format, **kwargs)
        name = type(self).__name__
        self.use_conv = bool(use_conv)
        self.kernel_size = v.check_odd_kernel_size(name, kernel_size)
        self.use_bias = bool(use_bias)
        self.residual = bool(residual)
        refuse_identity_with_residual(self)
        if self.start_as_identity and not self.use_conv:
            raise ValueError(
                f"{name}: `start_as_identity=True` needs `use_conv=True`: without the convolutions the gate "
                "sees the strip means themselves, which no weight can set to 0."
            )

    def build(self, input_shape):
        self.channels = v.channels_of(type(self).__name__, input_shape, self.data_format)
        self.input_spec = v.feature_map_spec(self.data_format, self.channels)
        if self.use_conv:
            self.conv_h = _strip_conv(self, self.kernel_size, "conv_h", zeros=self.start_as_identity)
            self.conv_w = _strip_conv(self, self.kernel_size, "conv_w", zeros=self.start_as_identity)
            build_sublayer(self.conv_h, (None, None, 1, self.channels))
            build_sublayer(self.conv_w, (None, None, 1, self.channels))
        self._build_quantization_points()
        self.built = True

    def quantization_points(self):
        convolved = ["strip_h", "strip_w"] if self.use_conv else []
        return ["pooled_h", "pooled_w", *convolved, "logits", *self.gate_points(), *residual_points(self)]

    def call(self, inputs, training=None):
        v.check_floating(type(self).__name__, inputs)
        rows, columns = strip_means(self, inputs)
        if self.use_conv:
            rows = self.at_point("strip_h", self.convolve(self.conv_h, rows))
            columns = self.at_point("strip_w", self.convolve(self.conv_w, columns))
        along_h, along_w = strips_to_input_layout(rows, columns, self.data_format)
        gate = self.apply_gate(self.at_point("logits", along_h + along_w))
        return residual_output(self, inputs * ops.cast(gate, inputs.dtype), inputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            use_conv=self.use_conv, kernel_size=self.kernel_size, use_bias=self.use_bias, residual=self.residual
        )
        return config


# Activations between the GroupNorm and the gate: timm's SiLU ("swish"), none ("linear": the paper's).
ELA_ACTIVATIONS = ("linear", *HIDDEN_ACTIVATIONS)


@register
class EfficientLocalAttention(GatedAttention):
    """Efficient Local Attention (Xu & Wan, 2024; timm's `EfficientLocalAttn`, `create_attn("ela")`).

    Coordinate attention without a channel reduction: each strip mean (one
    per row, one per column) goes through a depthwise 1-D convolution along it,
    GroupNorm, an activation and a gate; `out = x * a_h * a_w`.

    Two published forms:

    * timm's (the defaults): separate convolutions and GroupNorms for the two
      strips, GroupNorm with one group (timm's `GroupNorm1`), SiLU before the
      sigmoid gate, kernel 7, no bias;
    * the paper's ELA-B (the code it gives): one convolution and one GroupNorm
      for both strips, 16 groups, no activation:
      `EfficientLocalAttention(shared=True, norm_groups=16, activation="linear")`.

    Args:
        kernel_size: odd length of the depthwise 1-D convolutions (7).
        norm_groups: GroupNorm's groups; must divide the channel count (1).
        use_norm: the GroupNorm (both forms have it).
        activation: after the GroupNorm: "swish" (timm), "linear" (the
            paper), "relu", "relu6" or "hard_swish".
        shared: one convolution and GroupNorm for both strips (the paper).
        use_bias: biases in the convolutions (neither form has them).
        gate: "sigmoid" (both forms) or "hard_sigmoid".
        residual: add the input to the output (timm's `has_skip`).
        start_as_identity: start as the identity (GroupNorm scale 0, or zero
            convolutions without it: gates 2 * gate(0) = 1); excludes `residual`.
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor `(batch, height, width, channels)` or channels_first; height
        and width may be unknown.

    Output shape:
        Same as the input.

    Example:
    >>> y = EfficientLocalAttention()(keras.Input((14, 14, 32)))
    >>> y.shape
    (None, 14, 14, 32)
    """

    def __init__(
        self,
        kernel_size=7,
        norm_groups=1,
        use_norm=True,
        activation="swish",
        shared=False,
        use_bias=False,
        gate="sigmoid",
        residual=False,
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(gate=gate, start_as_identity=start_as_identity, data_format=data_format, **kwargs)
        name = type(self).__name__
        self.kernel_size = v.check_odd_kernel_size(name, kernel_size)
        self.norm_groups = v.check_int(name, "norm_groups", norm_groups)
        self.use_norm = bool(use_norm)
        self.activation = v.check_choice(name, "activation", activation, ELA_ACTIVATIONS)
        self.shared = bool(shared)
        self.use_bias = bool(use_bias)
        self.residual = bool(residual)
        refuse_identity_with_residual(self)

    def _axes(self):
        return ("h",) if self.shared else ("h", "w")

    def build(self, input_shape):
        name = type(self).__name__
        self.channels = v.channels_of(name, input_shape, self.data_format)
        self.input_spec = v.feature_map_spec(self.data_format, self.channels)
        if self.use_norm and self.channels % self.norm_groups:
            raise ValueError(
                f"{name}: `norm_groups`={self.norm_groups} does not divide the {self.channels} input channels; "
                f"GroupNorm needs groups of equal size (a divisor of {self.channels})."
            )
        dtype = accumulation_dtype(self)
        zero_conv = self.start_as_identity and not self.use_norm
        for axis in self._axes():
            conv = _strip_conv(self, self.kernel_size, f"conv_{axis}", zeros=zero_conv)
            build_sublayer(conv, (None, None, 1, self.channels))
            setattr(self, f"conv_{axis}", conv)
            if self.use_norm:  # GroupNorm's scale and offset (PyTorch's weight and bias)
                gamma = "zeros" if self.start_as_identity else "ones"
                for weight, initializer in (("gamma", gamma), ("beta", "zeros")):
                    variable = self.add_weight(
                        name=f"norm_{axis}_{weight}", shape=(self.channels,), initializer=initializer, dtype=dtype
                    )
                    setattr(self, f"norm_{axis}_{weight}", variable)
        self._build_quantization_points()
        self.built = True

    def quantization_points(self):
        points = ["pooled_h", "pooled_w"]
        for axis in ("h", "w"):
            points.append(f"strip_{axis}")
            points += [f"norm_{axis}_{p}" for p in GROUP_NORM_POINTS] if self.use_norm else []
            points += [f"hidden_{axis}_{p}" for p in ACTIVATION_POINTS[self.activation]]
            points += self.gate_points(f"gate_{axis}")
        return [*points, "scaled_w", *residual_points(self)]

    def _strip_gate(self, strip, axis, training=None):
        own = "h" if self.shared else axis
        y = self.at_point(f"strip_{axis}", self.convolve(getattr(self, f"conv_{own}"), strip))
        if self.use_norm:
            gamma, beta = getattr(self, f"norm_{own}_gamma"), getattr(self, f"norm_{own}_beta")
            y = group_norm(self, y, gamma, beta, self.norm_groups, 1e-5, prefix=f"norm_{axis}_", training=training)
        y = run_activation(self, self.activation, y, prefix=f"hidden_{axis}_")
        return self.apply_gate(y, prefix=f"gate_{axis}")

    def call(self, inputs, training=None):
        v.check_floating(type(self).__name__, inputs)
        rows, columns = strip_means(self, inputs)
        a_h, a_w = strips_to_input_layout(
            self._strip_gate(rows, "h", training), self._strip_gate(columns, "w", training), self.data_format
        )
        scaled = self.at_point("scaled_w", inputs * ops.cast(a_w, inputs.dtype))
        return residual_output(self, scaled * ops.cast(a_h, inputs.dtype), inputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            kernel_size=self.kernel_size,
            norm_groups=self.norm_groups,
            use_norm=self.use_norm,
            activation=self.activation,
            shared=self.shared,
            use_bias=self.use_bias,
            residual=self.residual,
        )
        return config
