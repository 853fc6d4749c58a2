"""The CBAM block: channel attention and spatial attention."""

from keras_attention.backend import build_sublayer, keras, ops, register
from keras_attention.layers import _kernels
from keras_attention.layers import _validation as v
from keras_attention.layers._quantization import QuantizationPoints
from keras_attention.layers.channel import ChannelAttention
from keras_attention.layers.spatial import SpatialAttention

ARRANGEMENTS = ("channel_first", "spatial_first", "parallel")


def _under_cbam(error, name, in_arguments):
    """A sublayer's ValueError re-raised under the block's name: the user called CBAM, not its parts.

    An argument error speaks CBAM's argument names (the spatial branch's
    `pooling` is CBAM's `spatial_pooling`); an input error keeps the part's name,
    which says which branch could not take the input.
    """
    part, _, detail = str(error).partition(": ")
    if not in_arguments or part not in ("ChannelAttention", "SpatialAttention"):
        return ValueError(f"{name}: {error}")
    if part == "SpatialAttention":
        detail = detail.replace("`pooling`", "`spatial_pooling`")
    return ValueError(f"{name}: {detail}")


@register
class CBAM(QuantizationPoints, keras.layers.Layer):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018).

    `F' = M_c(F) * F`, then `F'' = M_s(F') * F'` (the paper's default,
    "channel_first"). The arrangement ablation of the paper's Table 3 is also
    available: "spatial_first" applies the spatial gate first, "parallel"
    computes both gates from `F` and applies both, `F * M_c(F) * M_s(F)`.

    Args:
        reduction: channel-MLP reduction ratio (16; `None`: 16 unless
            `hidden_channels` is given).
        kernel_size: spatial-attention convolution size (7).
        arrangement: "channel_first", "spatial_first" or "parallel".
        min_channels, hidden_channels, pooling, use_bias: of the channel
            attention (see `ChannelAttention`).
        spatial_pooling, use_batchnorm: of the spatial attention (see
            `SpatialAttention`).
        gate: "sigmoid" or "hard_sigmoid", for both gates.
        start_as_identity: both parts start as the identity, so the block
            returns its input exactly at initialisation.
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor `(batch, height, width, channels)` or channels_first.

    Output shape:
        Same as the input.

    Example:
    >>> y = CBAM(reduction=16, kernel_size=7)(keras.Input((56, 56, 256)))
    >>> y.shape
    (None, 56, 56, 256)
    """

    def __init__(
        self,
        reduction=None,
        kernel_size=7,
        arrangement="channel_first",
        min_channels=None,
        hidden_channels=None,
        pooling=("avg", "max"),
        use_bias=True,
        spatial_pooling=("avg", "max"),
        use_batchnorm=False,
        gate="sigmoid",
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**self._init_quantization(kwargs))
        name = type(self).__name__
        self.arrangement = v.check_choice(name, "arrangement", arrangement, ARRANGEMENTS)
        self.data_format = v.normalize_data_format(name, data_format)
        try:  # the sublayers check the arguments; the user called CBAM, so the error says CBAM
            self.channel_attention = ChannelAttention(
                reduction=reduction,
                min_channels=min_channels,
                hidden_channels=hidden_channels,
                pooling=pooling,
                use_bias=use_bias,
                gate=gate,
                start_as_identity=start_as_identity,
                data_format=self.data_format,
                quantization=self.quantization,
                name="channel_attention",
            )
            self.spatial_attention = SpatialAttention(
                kernel_size=kernel_size,
                use_batchnorm=use_batchnorm,
                pooling=spatial_pooling,
                gate=gate,
                start_as_identity=start_as_identity,
                data_format=self.data_format,
                quantization=self.quantization,
                name="spatial_attention",
            )
        except ValueError as error:
            raise _under_cbam(error, name, in_arguments=True) from None
        if self.arrangement == "parallel":  # only their gates are used: no output points of their own
            self.channel_attention.gate_only = self.spatial_attention.gate_only = True
        self.supports_masking = True

    def build(self, input_shape):
        name = type(self).__name__
        self.channels = v.channels_of(name, input_shape, self.data_format)
        self.input_spec = v.feature_map_spec(self.data_format, self.channels)
        try:
            build_sublayer(self.channel_attention, input_shape)
        except ValueError as error:
            raise _under_cbam(error, name, in_arguments=False) from None
        build_sublayer(self.spatial_attention, input_shape)
        self._build_quantization_points()
        self.built = True

    def quantization_points(self):
        # The sublayers quantize their own tensors; the parallel arrangement multiplies here.
        return ["channel_scaled", "output"] if self.arrangement == "parallel" else []

    def call(self, inputs, training=None):
        v.check_floating(type(self).__name__, inputs)
        ca, sa = self.channel_attention, self.spatial_attention
        if self.arrangement == "channel_first":
            if _kernels.takes_fused_cbam(self, inputs):
                return _kernels.fused_cbam(inputs, self)
            return sa(ca(inputs), training=training)
        if self.arrangement == "spatial_first":
            return ca(sa(inputs, training=training))
        channel_gate = ops.cast(ca.compute_gate(inputs), inputs.dtype)
        spatial_gate = ops.cast(sa.compute_gate(inputs, training=training), inputs.dtype)
        return self.at_point("output", self.at_point("channel_scaled", inputs * channel_gate) * spatial_gate)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        ca, sa = self.channel_attention, self.spatial_attention
        config.update(
            reduction=ca.reduction,
            kernel_size=sa.kernel_size,
            arrangement=self.arrangement,
            min_channels=ca.min_channels,
            hidden_channels=ca.hidden_channels,
            pooling=list(ca.pooling),
            use_bias=ca.use_bias,
            spatial_pooling=list(sa.pooling),
            use_batchnorm=sa.use_batchnorm,
            gate=ca.gate,
            start_as_identity=ca.start_as_identity,
            data_format=self.data_format,
            **self.quantization_config(),
        )
        return config


@register
class LightCBAM(CBAM):
    """timm's light CBAM (`LightCbamModule`, `create_attn("lcbam")`): CBAM with blended pooling.

    Both gates see one descriptor instead of two: the channel gate
    `MLP((AvgPool(F) + MaxPool(F)) / 2)`, the spatial gate a k x k convolution
    and BatchNorm of `(mean_c(F) + max_c(F)) / 2`. One MLP pass and a 1-channel
    convolution instead of two of each; otherwise CBAM (channel gate first).
    timm's defaults: no MLP biases, BatchNorm after the spatial convolution
    (its gamma starts at 0 here, as the official CBAM's, so the spatial gate
    starts at 0.5), hidden width `max(1, int(C / 16 + 0.5))` — the same as
    `C // 16` when C is a multiple of 16; `hidden_channels` ports any other.

    Args:
        reduction, min_channels, hidden_channels: the MLP's hidden width (see
            `ChannelAttention`).
        kernel_size: the spatial convolution's size (7).
        use_bias: biases in the MLP (timm: False).
        use_batchnorm: BatchNorm after the spatial convolution (timm: True).
        gate: "sigmoid" (timm) or "hard_sigmoid", for both gates.
        start_as_identity: both parts start as the identity.
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor `(batch, height, width, channels)` or channels_first.

    Output shape:
        Same as the input.

    Example:
    >>> y = LightCBAM()(keras.Input((28, 28, 64)))
    >>> y.shape
    (None, 28, 28, 64)
    """

    def __init__(
        self,
        reduction=None,
        kernel_size=7,
        min_channels=None,
        hidden_channels=None,
        use_bias=False,
        use_batchnorm=True,
        gate="sigmoid",
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(
            reduction=reduction,
            kernel_size=kernel_size,
            min_channels=min_channels,
            hidden_channels=hidden_channels,
            pooling="avg_max",
            use_bias=use_bias,
            spatial_pooling="avg_max",
            use_batchnorm=use_batchnorm,
            gate=gate,
            start_as_identity=start_as_identity,
            data_format=data_format,
            **kwargs,
        )

    def get_config(self):
        config = super().get_config()
        for fixed in ("arrangement", "pooling", "spatial_pooling"):
            del config[fixed]
        return config
