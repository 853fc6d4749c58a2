"""Global Context block (Cao, Xu, Lin, Wei & Hu, GCNet, ICCVW 2019)."""

from keras_attention.backend import accumulation_dtype, build_sublayer, keras, mean, ops, register
from keras_attention.layers import _validation as v
from keras_attention.layers._gated import GatedAttention
from keras_attention.layers._norm import GROUP_NORM_POINTS, group_norm
from keras_attention.layers._widths import make_divisible
from keras_attention.layers.quantizers import folded_parameters, quantize_kernel

FUSIONS = ("scale", "add")


@register
class GlobalContext(GatedAttention):
    """Global Context block (GCNet; timm's `GlobalContext`: `create_attn("gc")` and `("gca")`).

    Context modelling: a 1x1 convolution to one map, a softmax over all H x W
    positions, and the softmax-weighted sum of the input (one vector per
    image; `use_attn=False`: the mean). Transform: a bottleneck MLP per fusion
    (1x1 convolution, LayerNorm, ReLU, 1x1 convolution). Fusion: "scale"
    multiplies the input by gate(MLP) (timm's "gc"), "add" adds MLP to it
    (timm's "gca" and GCNet's default), or both.

    In an int8 file the softmax is not one op: TFLite's int8 SOFTMAX has a
    fixed output step of 1/256, which rounds to 0 the weights of a map with
    more than a few hundred positions. Under QAT the layer computes
    `exp(l - max l)` (EXP, in (0, 1]), the weighted mean and the mean weight,
    and skips the division: it would scale the bottleneck's input, which its
    LayerNorm removes (`LN(W c / d + b) = LN(W c + b d)`, with d > 0 and
    LayerNorm's epsilon scaled by d^2). Every op stays builtin int8.

    Args:
        fusion: "scale" (timm's "gc"), "add" (timm's "gca", GCNet's default)
            or ("scale", "add").
        use_attn: attention pooling (True) or the mean.
        reduction: the bottleneck width is `max(1, round(C / reduction))`
            (8, timm's rounding), or `hidden_channels`.
        hidden_channels: the bottleneck width itself; excludes `reduction`.
        epsilon: LayerNorm's (timm's LayerNorm2d: 1e-6; GCNet's nn.LayerNorm: 1e-5).
        gate: "sigmoid" (timm) or "hard_sigmoid", for the "scale" fusion.
        start_as_identity: start as the identity: the MLPs' last convolutions
            at zero (for "scale" the gate becomes 2 * gate(0) = 1). timm
            zero-initialises the "add" MLP's last convolution always.
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor `(batch, height, width, channels)` or channels_first;
        height and width may be unknown.

    Output shape:
        Same as the input.

    Example:
    >>> y = GlobalContext(fusion="add")(keras.Input((14, 14, 64)))
    >>> y.shape
    (None, 14, 14, 64)
    """

    def __init__(
        self,
        fusion="scale",
        use_attn=True,
        reduction=None,
        hidden_channels=None,
        epsilon=1e-6,
        gate="sigmoid",
        start_as_identity=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(gate=gate, start_as_identity=start_as_identity, data_format=data_format, **kwargs)
        name = type(self).__name__
        fusions = (fusion,) if isinstance(fusion, str) else tuple(fusion)
        if not fusions or len(set(fusions)) != len(fusions) or any(f not in FUSIONS for f in fusions):
            raise ValueError(
                f"{name}: `fusion` must be 'scale', 'add' or ('scale', 'add') (how the context joins the "
                f"input); got {fusion!r}."
            )
        self.fusion = tuple(f for f in FUSIONS if f in fusions)
        self.use_attn = bool(use_attn)
        self.hidden_channels = v.check_hidden_channels(name, hidden_channels, reduction=reduction)
        self.reduction = v.check_int(name, "reduction", reduction, allow_none=True)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
            raise ValueError(f"{name}: `epsilon` must be a positive number (LayerNorm's); got {epsilon!r}.")
        self.epsilon = float(epsilon)

    def hidden_width(self, channels):
        """The bottleneck width for `channels` input channels (timm's rounding)."""
        if self.hidden_channels is not None:
            return self.hidden_channels
        return make_divisible(channels / (self.reduction or 8), 1)

    def build(self, input_shape):
        self.channels = v.channels_of(type(self).__name__, input_shape, self.data_format)
        self.input_spec = v.feature_map_spec(self.data_format, self.channels)
        dtype = accumulation_dtype(self)
        hidden = self.hidden_width(self.channels)
        if self.use_attn:
            # timm: kaiming normal (fan in) for the attention convolution.
            self.conv_attn = keras.layers.Conv2D(1, 1, kernel_initializer="he_normal", dtype=dtype, name="conv_attn")
            build_sublayer(self.conv_attn, (None, None, None, self.channels))
        for fusion in self.fusion:
            zeros = self.start_as_identity or fusion == "add"
            fc1 = keras.layers.Conv2D(hidden, 1, dtype=dtype, name=f"{fusion}_fc1")
            fc2 = keras.layers.Conv2D(
                self.channels,
                1,
                kernel_initializer="zeros" if zeros else "glorot_uniform",
                dtype=dtype,
                name=f"{fusion}_fc2",
            )
            build_sublayer(fc1, (None, 1, 1, self.channels))
            build_sublayer(fc2, (None, 1, 1, hidden))
            setattr(self, f"{fusion}_fc1", fc1)
            setattr(self, f"{fusion}_fc2", fc2)
            for weight, initializer in (("gamma", "ones"), ("beta", "zeros")):
                variable = self.add_weight(
                    name=f"{fusion}_norm_{weight}", shape=(hidden,), initializer=initializer, dtype=dtype
                )
                setattr(self, f"{fusion}_norm_{weight}", variable)
        self._build_quantization_points()
        self.built = True

    def quantization_points(self):
        if self.use_attn:
            points = ["attn_logits", "attn_shifted", "attn_weights", "weighted", "numerator", "denominator"]
        else:
            points = ["pooled"]
        for fusion in self.fusion:
            if self.use_attn:
                points += [f"{fusion}_projected", f"{fusion}_bias_scaled"]
            points += [f"{fusion}_reduced", *(f"{fusion}_norm_{p}" for p in GROUP_NORM_POINTS)]
            points += [f"{fusion}_hidden", f"{fusion}_logits"]
        if "scale" in self.fusion:
            points += [*self.gate_points(), *(["scaled"] if "add" in self.fusion else [])]
        return [*points, "output"]

    def _context(self, x):
        """(context, None) in float; under QAT (numerator, denominator) of the attention pooling."""
        if not self.use_attn:
            return self.at_point("pooled", mean(x, axis=(1, 2), keepdims=True)), None
        logits = self.at_point("attn_logits", self.convolve(self.conv_attn, x))  # (B, H, W, 1)
        peak = ops.stop_gradient(ops.amax(logits, axis=(1, 2), keepdims=True))  # softmax ignores the shift
        weights = self.at_point("attn_weights", ops.exp(self.at_point("attn_shifted", logits - peak)))
        numerator = self.at_point("numerator", mean(self.at_point("weighted", x * weights), axis=(1, 2), keepdims=True))
        denominator = self.at_point("denominator", mean(weights, axis=(1, 2), keepdims=True))
        if self.quantizing:
            return numerator, denominator
        return numerator / denominator, None

    def _transform(self, context, denominator, fusion, training=None):
        """The bottleneck MLP of one fusion: fc1, LayerNorm, ReLU, fc2."""
        fc1, fc2 = getattr(self, f"{fusion}_fc1"), getattr(self, f"{fusion}_fc2")
        if denominator is None:
            y = self.convolve(fc1, context)
        else:  # QAT: W c + b d, the division left to the LayerNorm (see the class docstring)
            kernel, bias = folded_parameters(fc1)
            projected = self.at_point(f"{fusion}_projected", fc1.convolution_op(context, kernel))
            # b d as a 1 -> hidden 1x1 convolution of d: an int8 CONV_2D whose per-channel kernel is b exactly.
            bias_kernel = quantize_kernel(ops.reshape(bias, (1, 1, 1, -1)), axis=-1)
            y = projected + self.at_point(f"{fusion}_bias_scaled", ops.conv(denominator, bias_kernel))
        y = self.at_point(f"{fusion}_reduced", y)
        gamma, beta = getattr(self, f"{fusion}_norm_gamma"), getattr(self, f"{fusion}_norm_beta")
        y = group_norm(self, y, gamma, beta, 1, self.epsilon, prefix=f"{fusion}_norm_", training=training)
        y = self.at_point(f"{fusion}_hidden", ops.relu(y))
        return self.at_point(f"{fusion}_logits", self.convolve(fc2, y))

    def call(self, inputs, training=None):
        v.check_floating(type(self).__name__, inputs)
        x = v.to_channels_last(ops.cast(inputs, accumulation_dtype(self)), self.data_format)
        context, denominator = self._context(x)
        out = inputs
        if "scale" in self.fusion:
            gate = v.from_channels_last(
                self.apply_gate(self._transform(context, denominator, "scale", training)), self.data_format
            )
            out = inputs * ops.cast(gate, inputs.dtype)
            if "add" in self.fusion:
                out = self.at_point("scaled", out)
        if "add" in self.fusion:
            added = v.from_channels_last(self._transform(context, denominator, "add", training), self.data_format)
            out = out + ops.cast(added, inputs.dtype)
        return self.at_point("output", out)

    def get_config(self):
        config = super().get_config()
        config.update(
            fusion=list(self.fusion),
            use_attn=self.use_attn,
            reduction=self.reduction,
            hidden_channels=self.hidden_channels,
            epsilon=self.epsilon,
        )
        return config
