"""CBAM spatial attention."""

from keras_attention.backend import accumulation_dtype, build_sublayer, keras, mean, ops, register
from keras_attention.layers import _kernels
from keras_attention.layers import _validation as v
from keras_attention.layers._gated import BLEND_POINTS, GatedAttention, blend_avg_max


@register
class SpatialAttention(GatedAttention):
    """CBAM spatial attention (Woo et al., ECCV 2018, Eq. 3).

    `M_s(F) = gate(conv_kxk([AvgPool_c(F); MaxPool_c(F)]))`, `F' = M_s(F) * F`:
    the channel mean and channel max (mean first, as the paper and CenterMask
    write it) are stacked, convolved to one map, gated and multiplied into every
    channel. Pooling, convolution and gate run in float32 (float64 in a float64
    model).

    Args:
        kernel_size: odd size of the convolution (7 in CBAM, 3 in CenterMask).
        use_batchnorm: BatchNorm after the convolution, as in the official CBAM
            code (gamma initialised to 0 there and here, so the gate starts at
            0.5). Not in the paper, nor in CenterMask.
        pooling: channel descriptors: ("avg", "max") as in the paper, or one of
            them. `("avg",)` avoids REDUCE_MAX, which older mobile GPU delegates
            reject. "avg_max": one map, (mean + max) / 2 (timm's light CBAM).
        use_bias: bias in the convolution (none in the official code).
        gate: "sigmoid" or "hard_sigmoid".
        start_as_identity: initialise so the layer returns its input exactly
            (zero kernel, gate = 2 * gate(logits)); the kernel still gets
            gradient in the first step unless `use_batchnorm`, whose zero gamma
            holds it back for one step.
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor `(batch, height, width, channels)` or
        `(batch, channels, height, width)`; spatial size may be unknown.

    Output shape:
        Same as the input.

    Example:
    >>> y = SpatialAttention(kernel_size=7)(keras.Input((None, None, 32)))
    >>> y.shape
    (None, None, None, 32)
    """

    def __init__(
        self,
        kernel_size=7,
        use_batchnorm=False,
        pooling=("avg", "max"),
        use_bias=False,
        gate="sigmoid",
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(gate=gate, start_as_identity=start_as_identity, data_format=data_format, **kwargs)
        name = type(self).__name__
        self.kernel_size = v.check_odd_kernel_size(name, kernel_size)
        self.use_batchnorm = bool(use_batchnorm)
        self.pooling = v.normalize_pooling(name, pooling)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        self.channels = v.channels_of(type(self).__name__, input_shape, self.data_format)
        self.input_spec = v.feature_map_spec(self.data_format)  # the weights fit any channel count
        self.conv = keras.layers.Conv2D(
            1,
            self.kernel_size,
            padding="same",
            use_bias=self.use_bias,
            kernel_initializer="zeros" if self.start_as_identity else "glorot_uniform",
            data_format="channels_last",
            dtype=accumulation_dtype(self),
            name="conv",
        )
        build_sublayer(self.conv, (None, None, None, len(self.pooling)))
        if self.use_batchnorm:
            # Official CBAM: BN(eps=1e-5, torch momentum 0.01) with gamma zeroed.
            self.bn = keras.layers.BatchNormalization(
                axis=-1,
                momentum=0.99,
                epsilon=1e-5,
                gamma_initializer="zeros",
                dtype=accumulation_dtype(self),
                name="bn",
            )
            build_sublayer(self.bn, (None, None, None, 1))
        self._build_quantization_points()
        self.built = True

    def quantization_points(self):
        points = ["channel_avg"] if "avg" in self.pooling else []
        if "avg_max" in self.pooling:
            points = ["channel_avg", *(f"channel_{p}" for p in BLEND_POINTS)]
        if len(self.pooling) > 1:
            points.append("descriptors")
        return [*points, "logits", *self.gate_points(), *self.output_point()]

    def _channel_descriptors(self, inputs):
        """(batch, H, W, n_pool) channel mean/max in `accumulation_dtype`, channels_last."""
        x = ops.cast(inputs, accumulation_dtype(self))
        channel_axis = -1 if self.data_format == "channels_last" else 1
        maps = []
        for kind in self.pooling:
            # The max of int8 values keeps the input's scale; the mean is a new tensor.
            average = lambda: self.at_point("channel_avg", mean(x, axis=channel_axis, keepdims=True))  # noqa: E731
            maximum = lambda: ops.amax(x, axis=channel_axis, keepdims=True)  # noqa: E731
            if kind == "avg_max":
                maps.append(blend_avg_max(self, average(), maximum(), "channel_"))
            else:
                maps.append(average() if kind == "avg" else maximum())
        if self.data_format == "channels_first":
            maps = [ops.transpose(m, (0, 2, 3, 1)) for m in maps]
        return maps[0] if len(maps) == 1 else self.at_point("descriptors", ops.concatenate(maps, axis=-1))

    def _gate_logits(self, descriptors, training=None):
        """conv (and BN) of the descriptors; under QAT the BN is folded into the fake-quantized kernel."""
        bn = self.bn if self.use_batchnorm else None
        path = _kernels.spatial_conv_path(descriptors)
        if path is None:
            return self.convolve(self.conv, descriptors, bn, training=training)
        kernel, bias = self.conv_parameters(self.conv, bn)
        quantize = self.kernel_quantizer()
        if path == _kernels.XLA:
            logits = _kernels.shifted_sum_conv(descriptors, quantize(kernel), bias)
        else:
            logits = _kernels.same_conv_to_one_channel(descriptors, kernel, bias, path[1], quantize)
        return logits if bn is None or self.quantizing else self.bn(logits, training=training)

    def compute_gate(self, inputs, training=None):
        """The spatial gate in `accumulation_dtype`, `(batch, H, W, 1)` or `(batch, 1, H, W)`."""
        logits = self._gate_logits(self._channel_descriptors(inputs), training=training)
        gate = self.apply_gate(self.at_point("logits", logits))
        if self.data_format == "channels_first":
            gate = ops.transpose(gate, (0, 3, 1, 2))
        return gate

    def get_config(self):
        config = super().get_config()
        config.update(
            kernel_size=self.kernel_size,
            use_batchnorm=self.use_batchnorm,
            pooling=list(self.pooling),
            use_bias=self.use_bias,
        )
        return config
