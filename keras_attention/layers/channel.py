"""Channel attention: CBAM's channel gate, Squeeze-and-Excitation and ECA."""

import math

import numpy as np

from keras_attention.backend import accumulation_dtype, build_sublayer, keras, mean, ops, register
from keras_attention.layers import _validation as v
from keras_attention.layers._gated import BLEND_POINTS, GatedAttention, blend_avg_max


class _ChannelGateBase(GatedAttention):
    """Pools a feature map to one descriptor per channel, gates, multiplies.

    Subclasses build `self._gate_logits(pooled_list)` from the pooled
    descriptors; this base does the pooling (in float32, so a float16 sum over a
    large map cannot overflow), the gate and the multiplication.
    """

    _pooling = ("avg",)

    def _spatial_axes(self):
        return (1, 2) if self.data_format == "channels_last" else (2, 3)

    def _pooled_descriptors(self, inputs):
        """(batch, 1, 1, C) descriptors in `accumulation_dtype`, channels_last, one per pooling."""
        x = ops.cast(inputs, accumulation_dtype(self))
        axes = self._spatial_axes()
        pooled = []
        for kind in self._pooling:
            # The max of int8 values keeps the input's scale: only the mean is a new int8 tensor.
            average = lambda: self.at_point("pooled_avg", mean(x, axis=axes, keepdims=True))  # noqa: E731
            maximum = lambda: ops.amax(x, axis=axes, keepdims=True)  # noqa: E731 - ops.max breaks torch.compile
            if kind == "avg_max":
                p = blend_avg_max(self, average(), maximum(), "pooled_")
            else:
                p = average() if kind == "avg" else maximum()
            if self.data_format == "channels_first":
                p = ops.reshape(p, (-1, 1, 1, self.channels))
            pooled.append(p)
        return pooled

    def quantization_points(self):
        pooled = ["pooled_avg"] if "avg" in self._pooling else []
        if "avg_max" in self._pooling:
            pooled = ["pooled_avg", *(f"pooled_{p}" for p in BLEND_POINTS)]
        return [*pooled, *self._logit_points(), *self.gate_points(), *self.output_point()]

    def compute_gate(self, inputs, training=None):
        """The channel gate in `accumulation_dtype`, shaped to broadcast against `inputs`."""
        logits = self._gate_logits(self._pooled_descriptors(inputs), training=training)
        gate = self.apply_gate(logits)
        if self.data_format == "channels_first":
            gate = ops.reshape(gate, (-1, self.channels, 1, 1))
        return gate


@register
class ChannelAttention(_ChannelGateBase):
    """CBAM channel attention (Woo et al., ECCV 2018, Eq. 2).

    `M_c(F) = gate(MLP(AvgPool(F)) + MLP(MaxPool(F)))`, `F' = M_c(F) * F`.
    The MLP (C -> C/r -> C, ReLU between) is shared by the pooled descriptors
    and written as two 1x1 convolutions, which convert to TFLite without the
    shape ops a Dense layer on a (B, 1, 1, C) tensor adds. Pooling and the gate
    run in float32 (float64 in a float64 model); the output has the layer's
    compute dtype.

    Args:
        reduction: channel reduction ratio r of the MLP (16 in the paper;
            `None` means 16 unless `hidden_channels` is given).
        min_channels: lower bound for the hidden width. `None` (default) is the
            official code: hidden = floor(C / r), an error when that is 0.
        hidden_channels: the hidden width itself, for ports of weights whose
            width no ratio gives (timm's SE: `make_divisible(C / 16, 8)`; timm's
            CbamModule: `max(1, int(C / r + 0.5))`). Excludes `reduction` and `min_channels`.
        pooling: pooled descriptors fed to the MLP: ("avg", "max") as in the
            paper, or either alone; "avg_max" is one descriptor, (avg + max) / 2
            (timm's light CBAM).
        use_bias: biases in the MLP (the official code has them; Eq. 2 does not).
        gate: "sigmoid" (paper) or "hard_sigmoid" (relu6(x + 3) / 6).
        start_as_identity: initialise so the layer returns its input exactly
            (gate = 2 * gate(logits), logits 0 at start) while every weight still
            gets gradient; for inserting into trained networks. The default
            False is the paper's initialisation.
        data_format: "channels_last" or "channels_first"; default: Keras' global
            image data format.
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor `(batch, height, width, channels)` (channels_last) or
        `(batch, channels, height, width)` (channels_first). Height and width
        may be unknown.

    Output shape:
        Same as the input.

    Example:
    >>> x = keras.Input((32, 32, 64))
    >>> y = ChannelAttention(reduction=16)(x)
    >>> y.shape
    (None, 32, 32, 64)
    """

    def __init__(
        self,
        reduction=None,
        min_channels=None,
        hidden_channels=None,
        pooling=("avg", "max"),
        use_bias=True,
        gate="sigmoid",
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(gate=gate, start_as_identity=start_as_identity, data_format=data_format, **kwargs)
        name = type(self).__name__
        self.hidden_channels = v.check_hidden_channels(
            name, hidden_channels, reduction=reduction, min_channels=min_channels
        )
        default = None if self.hidden_channels is not None else 16
        self.reduction = v.check_int(name, "reduction", default if reduction is None else reduction, allow_none=True)
        self.min_channels = v.check_int(name, "min_channels", min_channels, allow_none=True)
        self._pooling = v.normalize_pooling(name, pooling)
        self.use_bias = bool(use_bias)

    @property
    def pooling(self):
        return self._pooling

    def hidden_width(self, channels):
        """Width of the MLP's hidden layer for `channels` input channels."""
        if self.hidden_channels is not None:
            return self.hidden_channels
        hidden = channels // self.reduction
        if self.min_channels is not None:
            hidden = max(hidden, self.min_channels)
        if hidden < 1:
            raise ValueError(
                f"{type(self).__name__}: reduction={self.reduction} is larger than the "
                f"{channels} input channels, leaving a hidden layer of width 0. Use a "
                f"reduction <= {channels} or set min_channels (e.g. min_channels=8)."
            )
        return hidden

    def build(self, input_shape):
        self.channels = v.channels_of(type(self).__name__, input_shape, self.data_format)
        self.input_spec = v.feature_map_spec(self.data_format, self.channels)
        hidden = self.hidden_width(self.channels)
        # The MLP is tiny; keeping it in float32 keeps the gate exact under mixed precision.
        self.mlp_reduce = keras.layers.Conv2D(
            hidden,
            1,
            use_bias=self.use_bias,
            activation="relu",
            data_format="channels_last",
            dtype=accumulation_dtype(self),
            name="mlp_reduce",
        )
        self.mlp_expand = keras.layers.Conv2D(
            self.channels,
            1,
            use_bias=self.use_bias,
            data_format="channels_last",
            dtype=accumulation_dtype(self),
            name="mlp_expand",
        )
        build_sublayer(self.mlp_reduce, (None, 1, 1, self.channels))
        build_sublayer(self.mlp_expand, (None, 1, 1, hidden))
        if self.start_as_identity:
            self._initialise_as_identity()
        self._build_quantization_points()
        self.built = True

    def _initialise_as_identity(self):
        """Logits exactly 0 for every input, with gradient reaching every weight.

        With the first kernel 0 and its bias 1, the hidden layer is a constant 1
        whatever the input, the second layer adds `W2^T 1 + b2`, and choosing
        `b2 = -W2^T 1` cancels it. The first kernel still gets gradient through
        W2, and W2 through the constant hidden activation. Without biases the
        second kernel is zeroed instead (the first kernel then learns from the
        second step on).
        """
        reduce_kernel = self.mlp_reduce.kernel
        expand_kernel = self.mlp_expand.kernel
        if not self.use_bias:
            expand_kernel.assign(np.zeros(expand_kernel.shape, accumulation_dtype(self)))
            return
        reduce_kernel.assign(np.zeros(reduce_kernel.shape, accumulation_dtype(self)))
        self.mlp_reduce.bias.assign(np.ones(self.mlp_reduce.bias.shape, accumulation_dtype(self)))
        w2 = np.asarray(expand_kernel.numpy())
        self.mlp_expand.bias.assign(-w2.reshape(w2.shape[-2], w2.shape[-1]).sum(axis=0))

    def _gate_logits(self, pooled, training=None):
        """sum_p W2 relu(W1 p + b1) + b2, with one call of each projection.

        The descriptors are stacked along the height axis, reduced together,
        their hidden activations summed, and expanded once:
        `W2 (h_avg + h_max) + 2 b2` equals the paper's sum of two MLP outputs
        and costs two convolutions instead of four (in TFLite graphs too). Under
        QAT each descriptor is reduced on its own (three convolutions, no concat).
        """
        if len(pooled) == 1:
            hidden = self.at_point("hidden", self.convolve(self.mlp_reduce, pooled[0]))
            return self.at_point("logits", self.convolve(self.mlp_expand, hidden))
        if self.quantizing:
            # No CONCATENATION under QAT: TF 2.21's converter rejects one whose two input scales are
            # nearly (not exactly) equal ("same scale constraint"). One reduce per descriptor, summed.
            hidden = [
                self.at_point(f"hidden_{kind}", self.convolve(self.mlp_reduce, p))
                for kind, p in zip(self.pooling, pooled)
            ]
            hidden = self.at_point("hidden_sum", ops.add(hidden[0], hidden[1]))
        else:
            stacked = ops.concatenate(pooled, axis=1)
            hidden = ops.sum(self.convolve(self.mlp_reduce, stacked), axis=1, keepdims=True)
        logits = self.at_point("logits", self.convolve(self.mlp_expand, hidden))
        if self.use_bias:
            # Cast: under mixed precision Keras autocasts variables read in call().
            extra_bias = (len(pooled) - 1) * ops.cast(self.mlp_expand.bias, logits.dtype)
            logits = self.at_point("logits_biased", logits + extra_bias)
        return logits

    def _logit_points(self):
        if len(self.pooling) == 1:
            return ["hidden", "logits"]
        hidden = [f"hidden_{kind}" for kind in self.pooling]
        return [*hidden, "hidden_sum", "logits"] + (["logits_biased"] if self.use_bias else [])

    def get_config(self):
        config = super().get_config()
        config.update(
            reduction=self.reduction,
            min_channels=self.min_channels,
            hidden_channels=self.hidden_channels,
            pooling=list(self.pooling),
            use_bias=self.use_bias,
        )
        return config


@register
class SqueezeExcitation(ChannelAttention):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018): CBAM's channel gate with average pooling only.

    `F' = F * gate(W2 relu(W1 AvgPool(F) + b1) + b2)`, the MLP written as 1x1
    convolutions, pooling and gate in float32 (float64 in a float64 model).

    Args:
        reduction: channel reduction ratio (16 in the paper; `None`: 16 unless
            `hidden_channels` is given).
        min_channels: lower bound for the hidden width; `None`: floor(C / r).
        hidden_channels: the hidden width itself (see `ChannelAttention`).
        use_bias: biases in the two projections (the paper's FC layers have them).
        gate: "sigmoid" or "hard_sigmoid" (the latter is timm's "ese" flavour).
        start_as_identity: start as the identity (see `ChannelAttention`).
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor, `(batch, height, width, channels)` or channels_first.

    Output shape:
        Same as the input.

    Example:
    >>> y = SqueezeExcitation(reduction=4)(keras.Input((8, 8, 32)))
    >>> y.shape
    (None, 8, 8, 32)
    """

    def __init__(
        self,
        reduction=None,
        min_channels=None,
        hidden_channels=None,
        use_bias=True,
        gate="sigmoid",
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        pooling = kwargs.pop("pooling", "avg")  # the paper's squeeze: average pooling only
        if v.normalize_pooling(type(self).__name__, pooling) != ("avg",):
            raise ValueError(
                f"SqueezeExcitation: `pooling` is fixed to average pooling (the paper's squeeze); "
                f"got {pooling!r}. ChannelAttention(pooling=...) takes max pooling."
            )
        super().__init__(
            reduction=reduction,
            min_channels=min_channels,
            hidden_channels=hidden_channels,
            pooling=("avg",),
            use_bias=use_bias,
            gate=gate,
            start_as_identity=start_as_identity,
            data_format=data_format,
            **kwargs,
        )

    def get_config(self):
        config = super().get_config()
        del config["pooling"]
        return config


def eca_kernel_size(channels, gamma=2, beta=1):
    """ECA's adaptive kernel: |log2(C) + beta| / gamma, made odd, at least 3 (timm's rule)."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


@register
class EfficientChannelAttention(_ChannelGateBase):
    """Efficient Channel Attention (Wang et al., CVPR 2020).

    Global average pooling, a 1-D convolution across neighbouring channels
    (no bias, no dimensionality reduction), gated, multiplied into the input.

    Args:
        kernel_size: odd size of the 1-D convolution; `None` (default) derives
            it from the channel count as in the paper: |log2(C) + beta| / gamma,
            made odd, at least 3.
        gamma, beta: constants of the adaptive kernel-size rule (2 and 1).
        gate: "sigmoid" or "hard_sigmoid".
        start_as_identity: start as the identity (zero kernel, gate 2 * gate).
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor, `(batch, height, width, channels)` or channels_first.

    Output shape:
        Same as the input.

    Example:
    >>> y = EfficientChannelAttention()(keras.Input((8, 8, 64)))
    >>> y.shape
    (None, 8, 8, 64)
    """

    _padding = "same"  # of the 1-D convolution across channels (zeros at both ends, as the paper)

    def __init__(
        self, kernel_size=None, gamma=2, beta=1, gate="sigmoid", start_as_identity=False, data_format=None, **kwargs
    ):
        super().__init__(gate=gate, start_as_identity=start_as_identity, data_format=data_format, **kwargs)
        name = type(self).__name__
        if kernel_size is not None:
            v.check_odd_kernel_size(name, kernel_size)
        for arg, value in (("gamma", gamma), ("beta", beta)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or (arg == "gamma" and value <= 0)
            ):
                expected = "a positive number" if arg == "gamma" else "a finite number"
                raise ValueError(
                    f"{name}: `{arg}` must be {expected} (the kernel-size rule "
                    f"|log2(C) + beta| / gamma); got {value!r}."
                )
        self.kernel_size = kernel_size
        self.gamma = gamma
        self.beta = beta

    def build(self, input_shape):
        self.channels = v.channels_of(type(self).__name__, input_shape, self.data_format)
        self.input_spec = v.feature_map_spec(self.data_format, self.channels)
        self.resolved_kernel_size = self.kernel_size or eca_kernel_size(self.channels, self.gamma, self.beta)
        self._build_convolutions()
        self._build_quantization_points()
        self.built = True

    def _build_convolutions(self):
        # A (1, k) 2-D convolution over a (B, 1, C, 1) view is the paper's 1-D conv
        # and stays a single builtin CONV_2D in TFLite.
        self.conv = keras.layers.Conv2D(
            1,
            (1, self.resolved_kernel_size),
            padding=self._padding,
            use_bias=False,
            kernel_initializer="zeros" if self.start_as_identity else "glorot_uniform",
            data_format="channels_last",
            dtype=accumulation_dtype(self),
            name="conv",
        )
        build_sublayer(self.conv, (None, 1, self.channels, 1))

    def _logit_points(self):
        return ["logits"]

    def _gate_logits(self, pooled, training=None):
        z = self.at_point("logits", self.convolve(self.conv, ops.reshape(pooled[0], (-1, 1, self.channels, 1))))
        return ops.reshape(z, (-1, 1, 1, self.channels))

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, gamma=self.gamma, beta=self.beta)
        return config
