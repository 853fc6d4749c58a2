"""timm's one-convolution channel gates: Effective SE (CenterMask's VoVNet-v2) and circular ECA."""

from keras_attention.backend import accumulation_dtype, build_sublayer, keras, ops, register
from keras_attention.layers import _validation as v
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
