"""Gather-Excite (Hu, Shen, Albanie, Sun & Vedaldi, NeurIPS 2018)."""

import math

from keras_attention.backend import accumulation_dtype, build_sublayer, keras, mean, ops, register
from keras_attention.layers import _validation as v
from keras_attention.layers._gated import GatedAttention
from keras_attention.layers._widths import make_divisible


def _window_counts(size, extent, dtype):
    """How many of `size` positions each window of timm's gather pooling covers (padding excluded)."""
    starts = ops.arange(0, size, extent) - (extent - 1)
    ends = ops.minimum(starts + 2 * extent - 1, size)
    return ops.cast(ends - ops.maximum(starts, 0), dtype)


@register
class GatherExcite(GatedAttention):
    """Gather-Excite (Hu et al., NeurIPS 2018; timm's `GatherExcite`, `create_attn("ge")`).

    Gather: each channel is summarised over a spatial extent, by average
    pooling (GE-θ⁻, no parameters) or by strided depthwise convolutions
    (GE-θ, `extra_params=True`). Excite: an optional 1x1-convolution MLP
    (timm's `ConvMlp`, C -> C/16 -> C with ReLU), the gathered map resized back
    (nearest) and gated: `out = x * gate(...)`. With `extent=0` the extent is
    the whole map (`extent=0` without parameters is Squeeze-and-Excitation with
    timm's width rule).

    * `extent=e` (even) without parameters: average pooling with window
      2e - 1, stride e and padding e - 1 that is not counted (timm's
      `avg_pool2d(count_include_pad=False)`);
    * with parameters: log2(e) depthwise 3x3 convolutions of stride 2 (padding
      1), each followed by BatchNorm, ReLU between them;
    * `extent=0` with parameters: one depthwise convolution whose kernel covers
      the whole map (the paper's global GE-θ; the map size must be known).
      timm pads that convolution to keep the map's size, which makes its gate
      vary per position: not the paper's, and not supported here.

    Args:
        extent: 0 (global) or an even spatial extent (2, 4, 8, ...; a power of
            two with `extra_params`).
        extra_params: gather with depthwise convolutions (GE-θ).
        use_mlp: the excite MLP (timm: True).
        reduction: the MLP's hidden width is `max(1, round(C / reduction))`
            (16; timm's rounding), or `hidden_channels`.
        hidden_channels: the hidden width itself; excludes `reduction`.
        use_batchnorm: BatchNorm after each gather convolution (timm: True).
        gate: "sigmoid" (timm) or "hard_sigmoid".
        start_as_identity: start as the identity (zero last MLP layer, gate
            2 * gate(0) = 1); needs `use_mlp`.
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor `(batch, height, width, channels)` or channels_first;
        height and width may be unknown except for global GE-θ.

    Output shape:
        Same as the input.

    Example:
    >>> y = GatherExcite(extent=4)(keras.Input((16, 16, 32)))
    >>> y.shape
    (None, 16, 16, 32)
    """

    def __init__(
        self,
        extent=0,
        extra_params=False,
        use_mlp=True,
        reduction=None,
        hidden_channels=None,
        use_batchnorm=True,
        gate="sigmoid",
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(gate=gate, start_as_identity=start_as_identity, data_format=data_format, **kwargs)
        name = type(self).__name__
        self.extent = v.check_int(name, "extent", extent, minimum=0)
        self.extra_params = bool(extra_params)
        if self.extent % 2 or (self.extra_params and self.extent and self.extent & (self.extent - 1)):
            expected = "0 or a power of two (2, 4, 8, ...)" if self.extra_params else "0 or an even number"
            raise ValueError(
                f"{name}: `extent` must be {expected} "
                f"({'log2(extent) stride-2 convolutions' if self.extra_params else 'a window of 2 * extent - 1'}); "
                f"got {extent!r}."
            )
        self.use_mlp = bool(use_mlp)
        self.hidden_channels = v.check_hidden_channels(name, hidden_channels, reduction=reduction)
        self.reduction = v.check_int(name, "reduction", reduction, allow_none=True)
        self.use_batchnorm = bool(use_batchnorm)
        if self.start_as_identity and not self.use_mlp:
            raise ValueError(
                f"{name}: `start_as_identity=True` needs `use_mlp=True`: without the MLP the gate sees the "
                "gathered map itself, which no weight can set to 0."
            )

    def hidden_width(self, channels):
        """Width of the MLP's hidden layer for `channels` input channels (timm's rounding)."""
        if self.hidden_channels is not None:
            return self.hidden_channels
        return make_divisible(channels / (self.reduction or 16), 1)

    def _gather_convs(self):
        return 1 if self.extent == 0 else int(math.log2(self.extent))

    def build(self, input_shape):
        name = type(self).__name__
        self.channels = v.channels_of(name, input_shape, self.data_format)
        self.input_spec = v.feature_map_spec(self.data_format, self.channels)
        dtype = accumulation_dtype(self)
        self.gather_layers = []
        if self.extra_params:
            size = tuple(input_shape[1:3] if self.data_format == "channels_last" else input_shape[2:4])
            if self.extent == 0 and None in size:
                raise ValueError(
                    f"{name}: global gathering with parameters (extent=0, extra_params=True) convolves the whole "
                    f"map at once, so its height and width must be known; got input shape {tuple(input_shape)}."
                )
            shape = (None, *size, self.channels)
            for i in range(self._gather_convs()):
                conv = keras.layers.DepthwiseConv2D(
                    size if self.extent == 0 else 3,
                    strides=1 if self.extent == 0 else 2,
                    use_bias=not self.use_batchnorm,
                    data_format="channels_last",
                    dtype=dtype,
                    name=f"gather_conv{i + 1}",
                )
                padded = shape if self.extent == 0 else (None, None, None, self.channels)
                build_sublayer(conv, padded)
                setattr(self, f"gather_conv{i + 1}", conv)
                if self.use_batchnorm:  # PyTorch's BatchNorm2d defaults
                    bn = keras.layers.BatchNormalization(
                        epsilon=1e-5, momentum=0.9, dtype=dtype, name=f"gather_bn{i + 1}"
                    )
                    build_sublayer(bn, (None, None, None, self.channels))
                    setattr(self, f"gather_bn{i + 1}", bn)
        if self.use_mlp:
            hidden = self.hidden_width(self.channels)
            self.fc1 = keras.layers.Conv2D(hidden, 1, activation="relu", dtype=dtype, name="fc1")
            self.fc2 = keras.layers.Conv2D(
                self.channels,
                1,
                kernel_initializer="zeros" if self.start_as_identity else "glorot_uniform",
                dtype=dtype,
                name="fc2",
            )
            build_sublayer(self.fc1, (None, None, None, self.channels))
            build_sublayer(self.fc2, (None, None, None, hidden))
        self._build_quantization_points()
        self.built = True

    def quantization_points(self):
        if self.extra_params:
            gathered = [f"gathered_{i + 1}" for i in range(self._gather_convs())]
        else:
            gathered = ["pooled"] + (["pooled_window"] if self.extent else [])
        mlp = ["hidden", "logits"] if self.use_mlp else []
        return [*gathered, *mlp, *self.gate_points(), "output"]

    def _gather(self, x, training):
        """The gathered map, (batch, h, w, C) channels_last, in `accumulation_dtype`."""
        if not self.extra_params:
            if self.extent == 0:
                return self.at_point("pooled", mean(x, axis=(1, 2), keepdims=True))
            e = self.extent
            padded = ops.pad(x, ((0, 0), (e - 1, e - 1), (e - 1, e - 1), (0, 0)))
            summed = self.at_point(
                "pooled_window", ops.average_pool(padded, 2 * e - 1, e, padding="valid", data_format="channels_last")
            )
            # avg_pool2d(count_include_pad=False): rescale each window by area / covered positions.
            shape = ops.shape(x)
            counts_h = _window_counts(shape[1], e, x.dtype)
            counts_w = _window_counts(shape[2], e, x.dtype)
            area = float((2 * e - 1) ** 2)
            correction = area / (ops.reshape(counts_h, (1, -1, 1, 1)) * ops.reshape(counts_w, (1, 1, -1, 1)))
            return self.at_point("pooled", summed * correction)
        y = x
        for i in range(self._gather_convs()):
            if self.extent:
                y = ops.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))  # PyTorch's symmetric padding 1
            bn = getattr(self, f"gather_bn{i + 1}") if self.use_batchnorm else None
            y = self.convolve(getattr(self, f"gather_conv{i + 1}"), y, bn, training=training)
            if i < self._gather_convs() - 1:
                y = ops.relu(y)
            y = self.at_point(f"gathered_{i + 1}", y)
        return y

    def _resize_nearest(self, y, size):
        """PyTorch's `interpolate(mode="nearest")` to `size`: output i takes input floor(i * in / out)."""
        for axis in (1, 2):
            source, target = ops.shape(y)[axis], size[axis - 1]
            indices = (ops.arange(0, target) * source) // target
            y = ops.take(y, indices, axis=axis)
        return y

    def compute_gate(self, inputs, training=None):
        x = v.to_channels_last(ops.cast(inputs, accumulation_dtype(self)), self.data_format)
        y = self._gather(x, training)
        if self.use_mlp:
            y = self.at_point("logits", self.convolve(self.fc2, self.at_point("hidden", self.convolve(self.fc1, y))))
        gate = self.apply_gate(y)
        if self.extent:
            shape = ops.shape(x)
            gate = self._resize_nearest(gate, (shape[1], shape[2]))
        return v.from_channels_last(gate, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(
            extent=self.extent,
            extra_params=self.extra_params,
            use_mlp=self.use_mlp,
            reduction=self.reduction,
            hidden_channels=self.hidden_channels,
            use_batchnorm=self.use_batchnorm,
        )
        return config
