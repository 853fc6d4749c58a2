"""Coordinate Attention (Hou, Zhou & Feng, CVPR 2021) and timm's simplified form."""

from keras_attention.backend import accumulation_dtype, build_sublayer, keras, ops, register
from keras_attention.layers import _validation as v
from keras_attention.layers._gated import GatedAttention
from keras_attention.layers._quantization import (
    ACTIVATION_POINTS,
    FUSED_ACTIVATIONS,
    HIDDEN_ACTIVATIONS,
    run_activation,
)
from keras_attention.layers._strips import (
    refuse_identity_with_residual,
    residual_output,
    residual_points,
    strip_means,
    strips_to_input_layout,
)
from keras_attention.layers._widths import make_divisible


@register
class CoordinateAttention(GatedAttention):
    """Coordinate Attention (Hou, Zhou & Feng, CVPR 2021): channel attention that keeps positions.

    The map is averaged along its width (one descriptor per row) and along its
    height (one per column). Both strips go through one shared 1x1 convolution,
    BatchNormalization and an activation, then through a 1x1 convolution each
    back to C channels and a gate: `out = x * a_w * a_h`, with `a_h` of shape
    (H, 1, C) and `a_w` (1, W, C).

    Two published forms:

    * the authors' (`coordatt.py`, `mbv2_ca.py`; the defaults): hidden width
      `max(8, C // 32)`, convolutions with bias, BatchNorm, h_swish;
    * timm's `CoordAttn`: `CoordinateAttention(reduction=24, divisor=8,
      use_bias=False)` (timm's `make_divisible(C * 1/16 * 2/3, 8)` is
      `make_divisible(C / 24, 8)`), and `residual=True` for its `has_skip`.

    Args:
        reduction: the hidden width is `C // reduction` (32; `None`: 32 unless
            `hidden_channels` is given), or `make_divisible(C / reduction,
            divisor)` when `divisor` is given.
        min_channels: lower bound of the hidden width (8; with `divisor`, the
            default bound is the divisor).
        hidden_channels: the hidden width itself. Excludes `reduction`,
            `min_channels` and `divisor`.
        divisor: round the hidden width to a multiple of it (timm's rule).
        use_bias: biases in the three convolutions (the authors': True; timm: False).
        use_batchnorm: BatchNormalization after the shared convolution (both forms have it).
        activation: the hidden activation: "hard_swish" (both forms),
            "relu", "relu6" or "swish".
        gate: "sigmoid" (both forms) or "hard_sigmoid".
        residual: add the input to the output (timm's `has_skip`).
        start_as_identity: start as the identity (gates 2 * gate(0) = 1, from
            zero-initialised gate convolutions); the gate convolutions learn
            from the first step, the shared one from the second. Excludes
            `residual` (`x * g + x` is not `x` for any gate value a sigmoid reaches).
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor `(batch, height, width, channels)` (channels_last) or
        `(batch, channels, height, width)`. Height and width may be unknown.

    Output shape:
        Same as the input.

    Example:
    >>> y = CoordinateAttention()(keras.Input((14, 14, 96)))
    >>> y.shape
    (None, 14, 14, 96)
    """

    def __init__(
        self,
        reduction=None,
        min_channels=None,
        hidden_channels=None,
        divisor=None,
        use_bias=True,
        use_batchnorm=True,
        activation="hard_swish",
        gate="sigmoid",
        residual=False,
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(gate=gate, start_as_identity=start_as_identity, data_format=data_format, **kwargs)
        name = type(self).__name__
        self.hidden_channels = v.check_hidden_channels(
            name, hidden_channels, reduction=reduction, min_channels=min_channels, divisor=divisor
        )
        default = None if self.hidden_channels is not None else 32
        self.reduction = v.check_int(name, "reduction", default if reduction is None else reduction, allow_none=True)
        self.min_channels = v.check_int(name, "min_channels", min_channels, allow_none=True)
        self.divisor = v.check_int(name, "divisor", divisor, allow_none=True)
        self.use_bias = bool(use_bias)
        self.use_batchnorm = bool(use_batchnorm)
        self.activation = v.check_choice(name, "activation", activation, HIDDEN_ACTIVATIONS)
        self.residual = bool(residual)
        refuse_identity_with_residual(self)

    def hidden_width(self, channels):
        """Width of the shared convolution's output for `channels` input channels."""
        if self.hidden_channels is not None:
            return self.hidden_channels
        if self.divisor is not None:
            return make_divisible(channels / self.reduction, self.divisor, self.min_channels)
        return max(8 if self.min_channels is None else self.min_channels, channels // self.reduction)

    def build(self, input_shape):
        name = type(self).__name__
        self.channels = v.channels_of(name, input_shape, self.data_format)
        self.input_spec = v.feature_map_spec(self.data_format, self.channels)
        hidden = self.hidden_width(self.channels)
        dtype = accumulation_dtype(self)  # the strips are small: float32 keeps the gates exact

        def conv(filters, layer_name, zeros=False):
            initializer = "zeros" if zeros else "glorot_uniform"
            return keras.layers.Conv2D(
                filters,
                1,
                use_bias=self.use_bias,
                kernel_initializer=initializer,
                data_format="channels_last",
                dtype=dtype,
                name=layer_name,
            )

        self.conv1 = conv(hidden, "conv1")
        # PyTorch's BatchNorm2d defaults (eps 1e-5, momentum 0.1), so ported statistics mean the same.
        if self.use_batchnorm:
            self.bn1 = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, dtype=dtype, name="bn1")
            build_sublayer(self.bn1, (None, None, 1, hidden))
        self.conv_h = conv(self.channels, "conv_h", zeros=self.start_as_identity)
        self.conv_w = conv(self.channels, "conv_w", zeros=self.start_as_identity)
        build_sublayer(self.conv1, (None, None, 1, self.channels))
        build_sublayer(self.conv_h, (None, None, 1, hidden))
        build_sublayer(self.conv_w, (None, None, 1, hidden))
        self._build_quantization_points()
        self.built = True

    def quantization_points(self):
        points = []
        for axis in ("h", "w"):
            points += [f"pooled_{axis}"] + ([] if self.activation in FUSED_ACTIVATIONS else [f"reduced_{axis}"])
            points += [f"hidden_{axis}_{p}" for p in ACTIVATION_POINTS[self.activation]]
            points += [f"logits_{axis}", *self.gate_points(f"gate_{axis}")]
        return [*points, "scaled_w", *residual_points(self)]

    def _shared(self, strip, axis, training):
        """conv1, BN and the activation of one strip (QAT: BN folded, one strip at a time)."""
        bn = self.bn1 if self.use_batchnorm else None
        y = self.convolve(self.conv1, strip, bn, training=training)
        if self.activation not in FUSED_ACTIVATIONS:
            y = self.at_point(f"reduced_{axis}", y)
        return run_activation(self, self.activation, y, prefix=f"hidden_{axis}_")

    def compute_gates(self, inputs, training=None):
        """(a_h, a_w) in `accumulation_dtype`, shaped to broadcast against `inputs`."""
        rows, columns = strip_means(self, inputs)
        if self.quantizing:
            # No CONCATENATION in the int8 file (its two inputs would need one scale); with the
            # BatchNorm folded (frozen statistics) the two strips are independent.
            hidden_h, hidden_w = self._shared(rows, "h", training), self._shared(columns, "w", training)
        else:
            # One pass over both strips, as the authors: BatchNorm's training statistics span both.
            bn = self.bn1 if self.use_batchnorm else None
            y = self.convolve(self.conv1, ops.concatenate([rows, columns], axis=1), bn, training=training)
            y = run_activation(self, self.activation, y)
            height = ops.shape(rows)[1]
            hidden_h, hidden_w = y[:, :height], y[:, height:]
        a_h = self.apply_gate(self.at_point("logits_h", self.convolve(self.conv_h, hidden_h)), prefix="gate_h")
        a_w = self.apply_gate(self.at_point("logits_w", self.convolve(self.conv_w, hidden_w)), prefix="gate_w")
        return strips_to_input_layout(a_h, a_w, self.data_format)

    def call(self, inputs, training=None):
        v.check_floating(type(self).__name__, inputs)
        a_h, a_w = self.compute_gates(inputs, training=training)
        scaled = self.at_point("scaled_w", inputs * ops.cast(a_w, inputs.dtype))
        return residual_output(self, scaled * ops.cast(a_h, inputs.dtype), inputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            reduction=self.reduction,
            min_channels=self.min_channels,
            hidden_channels=self.hidden_channels,
            divisor=self.divisor,
            use_bias=self.use_bias,
            use_batchnorm=self.use_batchnorm,
            activation=self.activation,
            residual=self.residual,
        )
        return config


@register
class SimpleCoordinateAttention(CoordinateAttention):
    """Simplified Coordinate Attention (timm's `SimpleCoordAttn`, `create_attn("scoord")`).

    Coordinate Attention with linear projections and no normalization, whose
    two strips are added before one gate: `out = x * gate(a_h + a_w)`, where
    `a_h = W_h act(W_1 mean_W(x))` (one value per row and channel) and `a_w`
    likewise per column. The shared and the two head projections are 1x1
    convolutions on the strips (timm's `nn.Linear`s, transposed weights).

    Args:
        reduction, min_channels, hidden_channels, divisor: the hidden width,
            as in `CoordinateAttention`; the defaults are timm's
            `make_divisible(C * 0.25 * 2/3, 8)` = `make_divisible(C / 6, 8)`.
        use_bias: biases in the three projections (timm: True).
        activation: "swish" (timm's SiLU), "hard_swish", "relu" or "relu6".
        gate: "sigmoid" (timm) or "hard_sigmoid".
        residual: add the input to the output (timm's `has_skip`).
        start_as_identity: start as the identity (zero heads, gate 2 * gate(0)
            = 1); excludes `residual`.
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor `(batch, height, width, channels)` or channels_first; height
        and width may be unknown.

    Output shape:
        Same as the input.

    Example:
    >>> y = SimpleCoordinateAttention()(keras.Input((14, 14, 96)))
    >>> y.shape
    (None, 14, 14, 96)
    """

    def __init__(
        self,
        reduction=None,
        min_channels=None,
        hidden_channels=None,
        divisor=None,
        use_bias=True,
        activation="swish",
        gate="sigmoid",
        residual=False,
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        if hidden_channels is None and reduction is None and divisor is None:
            reduction, divisor = 6, 8  # timm's rd_ratio 0.25 times se_factor 2/3, rounded to 8
        super().__init__(
            reduction=reduction,
            min_channels=min_channels,
            hidden_channels=hidden_channels,
            divisor=divisor,
            use_bias=use_bias,
            use_batchnorm=False,
            activation=activation,
            gate=gate,
            residual=residual,
            start_as_identity=start_as_identity,
            data_format=data_format,
            **kwargs,
        )

    def quantization_points(self):
        points = ["pooled_h", "pooled_w"]
        for axis in ("h", "w"):
            points += [] if self.activation in FUSED_ACTIVATIONS else [f"reduced_{axis}"]
            points += [f"hidden_{axis}_{p}" for p in ACTIVATION_POINTS[self.activation]] + [f"logits_{axis}"]
        return [*points, "logits", *self.gate_points(), *residual_points(self)]

    def call(self, inputs, training=None):
        v.check_floating(type(self).__name__, inputs)
        rows, columns = strip_means(self, inputs)
        logits_h = self.at_point("logits_h", self.convolve(self.conv_h, self._shared(rows, "h", training)))
        logits_w = self.at_point("logits_w", self.convolve(self.conv_w, self._shared(columns, "w", training)))
        along_h, along_w = strips_to_input_layout(logits_h, logits_w, self.data_format)
        gate = self.apply_gate(self.at_point("logits", along_h + along_w))
        return residual_output(self, inputs * ops.cast(gate, inputs.dtype), inputs)

    def get_config(self):
        config = super().get_config()
        del config["use_batchnorm"]
        return config
