"""timm's variants of the channel gates: Effective SE (CenterMask's VoVNet-v2), circular ECA and ECA with an MLP."""

from keras_attention.backend import accumulation_dtype, build_sublayer, keras, ops, register
from keras_attention.layers import _validation as v
from keras_attention.layers._quantization import (
    ACTIVATION_POINTS,
    FUSED_ACTIVATIONS,
    HIDDEN_ACTIVATIONS,
    run_activation,
)
from keras_attention.layers._widths import make_divisible
from keras_attention.layers.channel import EfficientChannelAttention, _ChannelGateBase


@register
class EffectiveSqueezeExcitation(_ChannelGateBase):
    """Effective Squeeze-Excitation (Lee & Park, CenterMask, CVPR 2020): SE with one C -> C convolution.

    `F' = F * gate(W AvgPool(F) + b)`: no reduction, so no channel information
    is lost in a bottleneck; the gate is the hard sigmoid relu6(x + 3) / 6, as
    in VoVNet-v2 and timm's `EffectiveSEModule` (`create_attn("ese")`).

    Args:
        use_bias: the convolution's bias (timm and VoVNet-v2 have it).
        gate: "hard_sigmoid" (the paper's and timm's) or "sigmoid".
        start_as_identity: start as the identity (zero convolution, gate 2 * gate(0)).
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor, `(batch, height, width, channels)` or channels_first.

    Output shape:
        Same as the input.

    Example:
    >>> y = EffectiveSqueezeExcitation()(keras.Input((8, 8, 32)))
    >>> y.shape
    (None, 8, 8, 32)
    """

    def __init__(self, use_bias=True, gate="hard_sigmoid", start_as_identity=False, data_format=None, **kwargs):
        super().__init__(gate=gate, start_as_identity=start_as_identity, data_format=data_format, **kwargs)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        self.channels = v.channels_of(type(self).__name__, input_shape, self.data_format)
        self.input_spec = v.feature_map_spec(self.data_format, self.channels)
        zeros = "zeros" if self.start_as_identity else None
        self.fc = keras.layers.Conv2D(
            self.channels,
            1,
            use_bias=self.use_bias,
            kernel_initializer=zeros or "glorot_uniform",
            data_format="channels_last",
            dtype=accumulation_dtype(self),
            name="fc",
        )
        build_sublayer(self.fc, (None, 1, 1, self.channels))
        self._build_quantization_points()
        self.built = True

    def _logit_points(self):
        return ["logits"]

    def _gate_logits(self, pooled, training=None):
        return self.at_point("logits", self.convolve(self.fc, pooled[0]))

    def get_config(self):
        config = super().get_config()
        config.update(use_bias=self.use_bias)
        return config


@register
class CircularEfficientChannelAttention(EfficientChannelAttention):
    """ECA with circular padding across channels (timm's `CecaModule`, `create_attn("ceca")`).

    The 1-D convolution over the pooled channel descriptor wraps around: the
    first channels see the last ones, as channels have no edge. Everything
    else is `EfficientChannelAttention` (kernel size from the channel count,
    no bias, sigmoid gate). The padding is the concatenation of the
    descriptor's last and first `k // 2` entries around it (CONCATENATION of
    one tensor's slices in TFLite: one scale, int8 throughout).

    Args:
        kernel_size, gamma, beta, gate, start_as_identity, data_format,
        quantization: as `EfficientChannelAttention`.

    Input shape:
        4-D tensor, `(batch, height, width, channels)` or channels_first.

    Output shape:
        Same as the input.

    Example:
    >>> y = CircularEfficientChannelAttention()(keras.Input((8, 8, 64)))
    >>> y.shape
    (None, 8, 8, 64)
    """

    _padding = "valid"

    def _gate_logits(self, pooled, training=None):
        row = ops.reshape(pooled[0], (-1, 1, self.channels, 1))
        half = self.resolved_kernel_size // 2
        wrapped = ops.concatenate([row[:, :, self.channels - half :], row, row[:, :, :half]], axis=2)
        z = self.at_point("logits", self.convolve(self.conv, wrapped))
        return ops.reshape(z, (-1, 1, 1, self.channels))


@register
class EfficientChannelAttentionMLP(EfficientChannelAttention):
    """ECA with a small MLP of 1-D convolutions across channels (timm's `EcaModule(use_mlp=True)`, "ecam").

    The pooled descriptor, viewed as a 1-D signal over channels, goes through
    a 1x1 convolution to `hidden` feature maps (with bias), an activation, and
    a `kernel_size` convolution back to one map (with bias), then the gate.
    timm's experiment, not in the ECA paper.

    Args:
        kernel_size, gamma, beta: the second convolution's size, as
            `EfficientChannelAttention` (from the channel count by default).
        reduction, hidden_channels, divisor: the hidden width is
            `make_divisible(C / reduction, divisor)` with timm's rounding (at
            most 10 % down), defaults 8 and 8; or `hidden_channels`.
        activation: "relu" (timm), "relu6", "swish" or "hard_swish".
        gate: "sigmoid" or "hard_sigmoid".
        start_as_identity: start as the identity (zero second convolution).
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor, `(batch, height, width, channels)` or channels_first.

    Output shape:
        Same as the input.

    Example:
    >>> y = EfficientChannelAttentionMLP()(keras.Input((8, 8, 64)))
    >>> y.shape
    (None, 8, 8, 64)
    """

    def __init__(
        self,
        kernel_size=None,
        gamma=2,
        beta=1,
        reduction=None,
        hidden_channels=None,
        divisor=None,
        activation="relu",
        gate="sigmoid",
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(
            kernel_size=kernel_size,
            gamma=gamma,
            beta=beta,
            gate=gate,
            start_as_identity=start_as_identity,
            data_format=data_format,
            **kwargs,
        )
        name = type(self).__name__
        self.hidden_channels = v.check_hidden_channels(name, hidden_channels, reduction=reduction, divisor=divisor)
        self.reduction = v.check_int(name, "reduction", reduction, allow_none=True)
        self.divisor = v.check_int(name, "divisor", divisor, allow_none=True)
        self.activation = v.check_choice(name, "activation", activation, HIDDEN_ACTIVATIONS)

    def hidden_width(self, channels):
        """Feature maps between the two convolutions for `channels` input channels."""
        if self.hidden_channels is not None:
            return self.hidden_channels
        return make_divisible(channels / (self.reduction or 8), self.divisor or 8, round_limit=0.9)

    def _build_convolutions(self):
        hidden = self.hidden_width(self.channels)
        dtype = accumulation_dtype(self)
        self.conv = keras.layers.Conv2D(hidden, 1, data_format="channels_last", dtype=dtype, name="conv")  # 1 -> hidden
        self.conv2 = keras.layers.Conv2D(
            1,
            (1, self.resolved_kernel_size),
            padding="same",
            kernel_initializer="zeros" if self.start_as_identity else "glorot_uniform",
            data_format="channels_last",
            dtype=dtype,
            name="conv2",
        )
        build_sublayer(self.conv, (None, 1, self.channels, 1))
        build_sublayer(self.conv2, (None, 1, self.channels, hidden))

    def _logit_points(self):
        fused = self.activation in FUSED_ACTIVATIONS
        hidden = [] if fused else ["hidden"]
        return [*hidden, *[f"hidden_{p}" for p in ACTIVATION_POINTS[self.activation]], "logits"]

    def _gate_logits(self, pooled, training=None):
        y = self.convolve(self.conv, ops.reshape(pooled[0], (-1, 1, self.channels, 1)))
        if self.activation not in FUSED_ACTIVATIONS:
            y = self.at_point("hidden", y)
        y = run_activation(self, self.activation, y, prefix="hidden_")
        z = self.at_point("logits", self.convolve(self.conv2, y))
        return ops.reshape(z, (-1, 1, 1, self.channels))

    def get_config(self):
        config = super().get_config()
        config.update(
            reduction=self.reduction,
            hidden_channels=self.hidden_channels,
            divisor=self.divisor,
            activation=self.activation,
        )
        return config
