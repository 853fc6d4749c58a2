"""ThunderNet's detection parts (Qin et al., ICCV 2019).

`ContextEnhancement` (CEM) merges C4, C5 and the global context of C5 into one
thin feature map; `LightRPNHead` is ThunderNet's RPN on that map; and
`RPNGuidedSpatialAttention` (SAM) reweights the CEM map with the RPN's own
features, `F_SAM = F_CEM * sigmoid(theta(F_RPN))`, so that a detection head's
loss also trains the RPN features.

ThunderNet has no official code release; where the paper leaves details open,
these layers follow the first author's MMDetection reimplementation (1x1
convolutions with bias and no BatchNorm in the CEM; BatchNorm after the SAM's
1x1 convolution) and PyTorch's BatchNorm defaults (momentum 0.1, i.e. Keras
momentum 0.9, epsilon 1e-5).

All three take `quantization="int8"` (what `keras_attention.quantization.
quantize_model` sets under Keras 3): their convolutions then run with
fake-quantized, BatchNorm-folded kernels and every tensor the int8 TFLite file
holds gets its range; in float the same code runs without them.

All three layers compute in channels_last internally and transpose at their
edges for `data_format="channels_first"` (TensorFlow's CPU kernels reject
NCHW convolutions). Spatial sizes may be unknown; channel counts must be known.
"""

import warnings

from keras_attention.backend import accumulation_dtype, build_sublayer, keras, mean, ops, register
from keras_attention.layers import _validation as v
from keras_attention.layers._quantization import QuantizationPoints

# PyTorch's BatchNorm2d defaults (torch momentum 0.1 == Keras momentum 0.9).
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _shape_tuple(shape):
    """A shape (tuple, list, TensorShape) as a tuple of ints/None, or None if it is not a shape."""
    if hasattr(shape, "as_list"):  # tf.TensorShape
        try:
            return tuple(shape.as_list())
        except ValueError:  # unknown rank
            return None
    if isinstance(shape, (list, tuple)) and all(
        d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in shape
    ):
        return tuple(shape)
    return None


def _pair_of_shapes(layer_name, input_shape, names):
    """Checks that a layer got exactly two 4-D inputs; returns their shapes as tuples."""
    shapes = None
    if isinstance(input_shape, (list, tuple)) and len(input_shape) == 2:
        shapes = [_shape_tuple(s) for s in input_shape]
        if any(s is None for s in shapes):
            shapes = None
    if shapes is None:
        raise ValueError(
            f"{layer_name}: expected a list of two 4-D feature maps [{names[0]}, {names[1]}]; "
            f"got {_describe(input_shape)}."
        )
    return shapes


def _describe(input_shape):
    single = _shape_tuple(input_shape)
    if single is not None:
        return f"a single input of shape {single}"
    if isinstance(input_shape, (list, tuple)):
        return f"{len(input_shape)} inputs with shapes {[_shape_tuple(s) or s for s in input_shape]}"
    return repr(input_shape)


def _static_dim(d):
    if d is None or isinstance(d, int):
        return d
    try:
        return int(d)  # torch.onnx's tracer gives a torch.Size of 0-d tensors
    except Exception:  # noqa: BLE001 - JAX export's symbolic sizes ('batch') raise InconclusiveDimensionOperation
        return None


def _static_shape(x):
    shape = x.shape
    if not hasattr(shape, "as_list"):
        shape = tuple(_static_dim(d) for d in shape)
    return _shape_tuple(shape)


def _spatial(shape, data_format):
    """(height, width) of a 4-D shape tuple."""
    return tuple(shape[1:3]) if data_format == "channels_last" else tuple(shape[2:4])


def _output_shape(batch, spatial, channels, data_format):
    if data_format == "channels_last":
        return (batch,) + tuple(spatial) + (channels,)
    return (batch, channels) + tuple(spatial)


def _check_same_batch(layer_name, names, shapes):
    a, b = shapes[0][0], shapes[1][0]
    if a is not None and b is not None and a != b:
        raise ValueError(
            f"{layer_name}: {names[0]} and {names[1]} must have the same batch size; "
            f"got {a} ({names[0]} {shapes[0]}) and {b} ({names[1]} {shapes[1]})."
        )


def _checked_pair(layer, input_shape):
    """Shapes and channel counts of a two-input layer's inputs, after the checks both layers share."""
    name = type(layer).__name__
    shapes = _pair_of_shapes(name, input_shape, layer._names)
    channels = [v.channels_of(f"{name} ({n})", s, layer.data_format) for n, s in zip(layer._names, shapes)]
    _check_same_batch(name, layer._names, shapes)
    return shapes, channels


def _dims(x):
    """Per-axis sizes of `x`: Python ints where static, scalar tensors where not."""
    dynamic = None
    dims = []
    for axis, size in enumerate(x.shape):
        size = _static_dim(size)
        if size is not None:
            dims.append(size)
        else:
            if dynamic is None:
                dynamic = ops.shape(x)
            dims.append(dynamic[axis])
    return dims


@register
class ContextEnhancement(QuantizationPoints, keras.layers.Layer):
    """ThunderNet's Context Enhancement Module (CEM).

    `F_CEM = conv1x1(C4) + up2(conv1x1(C5)) + broadcast(conv1x1(GAP(C5)))`:
    three 1x1 convolutions (with bias, no BatchNorm, no activation, as in the
    first author's reimplementation) bring C4, C5 and the global average of C5
    to `filters`; the C5 branch is upsampled x2 by nearest neighbour to C4's
    size and the global branch is broadcast over it; the three are summed. The
    global average pool and its 1x1 convolution run in float32 under mixed
    precision; the output has the layer's compute dtype.

    C5 must be at half C4's resolution: `ceil(H4 / 2) x ceil(W4 / 2)`, what a
    stride-2 stage with 'same' padding gives. For an odd C4 (21x21 with an
    11x11 C5) the upsampled C5 is 22x22 and is cropped to 21x21 at the bottom
    and right, so C4 pixel `(i, j)` receives C5 pixel `(i // 2, j // 2)` —
    the pixel whose receptive field it lies under.

    Args:
        filters: output channels (245 = 5 x 7 x 7 in ThunderNet, so that the
            map can feed position-sensitive RoI pooling with 7x7 bins and 5
            channels per bin). The package's word for an output width, as in
            `LightRPNHead` and `SAGMaskHead`.
        data_format: "channels_last" or "channels_first"; default: Keras'
            global image data format.
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.
        channels: deprecated name of `filters` (until 0.3); it warns.

    Input shape:
        A list `[C4, C5]` of 4-D tensors, C4 `(batch, H4, W4, c4)` and C5
        `(batch, ceil(H4/2), ceil(W4/2), c5)` (or channels_first). Spatial
        sizes may be unknown.

    Output shape:
        `(batch, H4, W4, filters)` (or channels_first).

    Example:
    >>> c4, c5 = keras.Input((20, 20, 96)), keras.Input((10, 10, 192))
    >>> ContextEnhancement(filters=245)([c4, c5]).shape
    (None, 20, 20, 245)
    """

    _names = ("C4", "C5")

    def __init__(self, filters=245, data_format=None, channels=None, **kwargs):
        super().__init__(**self._init_quantization(kwargs))
        name = type(self).__name__
        if channels is not None:  # the 0.1 name; also what configs saved by 0.1 hold
            warnings.warn(
                f"{name}: `channels` is deprecated and will be removed in 0.3; use `filters` (the package's "
                "word for an output width).",
                DeprecationWarning,
                stacklevel=2,
            )
            filters = channels
        self.filters = v.check_int(name, "filters", filters)
        self.data_format = v.normalize_data_format(name, data_format)

    def _check_shapes(self, input_shape):
        name = type(self).__name__
        shapes, channels = _checked_pair(self, input_shape)
        (h4, w4), (h5, w5) = (_spatial(s, self.data_format) for s in shapes)
        for axis, big, small in (("height", h4, h5), ("width", w4, w5)):
            if big is None or small is None:
                continue
            if small >= big and big > 1:
                raise ValueError(
                    f"{name}: C5 must be coarser than C4 (at half its resolution); got C4 {axis} {big} "
                    f"and C5 {axis} {small}, reading the shapes {shapes} as {self.data_format}. Pass the "
                    "inputs as [C4, C5], in the layer's data_format."
                )
            if small != -(-big // 2):
                raise ValueError(
                    f"{name}: C5 must be at half C4's resolution, ceil({axis} / 2) = {-(-big // 2)} for a "
                    f"C4 {axis} of {big}; got a C5 {axis} of {small}, reading the shapes {shapes} as "
                    f"{self.data_format}."
                )
        return shapes, channels

    def build(self, input_shape):
        _, (c4_channels, c5_channels) = self._check_shapes(input_shape)
        policy = self.dtype_policy

        def conv(name, dtype=policy):
            return keras.layers.Conv2D(
                self.filters, 1, use_bias=True, data_format="channels_last", dtype=dtype, name=name
            )

        self.c4_lateral = conv("c4_lateral")
        self.c5_lateral = conv("c5_lateral")
        # A 1x1 conv on a (batch, 1, 1, c5) vector: float32 costs nothing here.
        self.global_context = conv("global_context", dtype=accumulation_dtype(self))
        build_sublayer(self.c4_lateral, (None, None, None, c4_channels))
        build_sublayer(self.c5_lateral, (None, None, None, c5_channels))
        build_sublayer(self.global_context, (None, 1, 1, c5_channels))
        self._build_quantization_points()
        self.built = True

    def quantization_points(self):
        return ["c4_lateral", "c5_lateral", "pooled", "global_context", "c4_plus_c5", "output"]

    def call(self, inputs):
        v.check_floating(type(self).__name__, inputs)
        static = [_static_shape(x) for x in inputs] if isinstance(inputs, (list, tuple)) else inputs
        self._check_shapes(static)
        c4 = v.to_channels_last(inputs[0], self.data_format)
        c5 = v.to_channels_last(inputs[1], self.data_format)
        lateral4 = self.at_point("c4_lateral", self.convolve(self.c4_lateral, c4))
        lateral5 = self.at_point("c5_lateral", self.convolve(self.c5_lateral, c5))
        # Nearest x2: C4 pixel (i, j) takes C5 pixel (i // 2, j // 2).
        up5 = ops.repeat(ops.repeat(lateral5, 2, axis=1), 2, axis=2)
        _, h4, w4, _ = _dims(c4)
        _, h5, w5, _ = _dims(c5)
        if not (isinstance(h4, int) and isinstance(h5, int) and h4 == 2 * h5):
            up5 = up5[:, :h4]
        if not (isinstance(w4, int) and isinstance(w5, int) and w4 == 2 * w5):
            up5 = up5[:, :, :w4]
        pooled = self.at_point("pooled", mean(ops.cast(c5, accumulation_dtype(self)), axis=(1, 2), keepdims=True))
        context = ops.cast(self.at_point("global_context", self.convolve(self.global_context, pooled)), lateral4.dtype)
        merged = self.at_point("c4_plus_c5", lateral4 + up5)
        return v.from_channels_last(self.at_point("output", merged + context), self.data_format)

    def compute_output_shape(self, input_shape):
        shapes, _ = self._check_shapes(input_shape)
        return _output_shape(shapes[0][0], _spatial(shapes[0], self.data_format), self.filters, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, data_format=self.data_format, **self.quantization_config())
        return config


@register
class LightRPNHead(QuantizationPoints, keras.layers.Layer):
    """ThunderNet's light-weight RPN head.

    `F_RPN = ReLU(BN(conv1x1(ReLU(BN(dwconv5x5(F))))))` with `filters`
    channels (256 in the paper), then two 1x1 heads on `F_RPN`: objectness
    (one logit per anchor, for a sigmoid — MMDetection's `use_sigmoid_cls`)
    and box deltas (4 per anchor, anchor-major: channel `4 * a + k` is
    coordinate `k` of anchor `a`). The depthwise and pointwise convolutions
    have no bias (BatchNorm follows); the heads have biases and are initialised
    as in MMDetection (normal, std 0.01, zero bias). `F_RPN` is the feature map
    `RPNGuidedSpatialAttention` consumes.

    Args:
        num_anchors: anchors per location (25 in the paper: 5 scales x 5
            aspect ratios).
        filters: channels of the RPN feature map (256).
        kernel_size: size of the depthwise convolution (5), odd.
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        4-D tensor `(batch, H, W, C)` (or channels_first), usually the CEM map.

    Output shape:
        A list `[rpn_features, objectness, box_deltas]`, shaped
        `(batch, H, W, filters)`, `(batch, H, W, num_anchors)` and
        `(batch, H, W, 4 * num_anchors)` (or channels_first).

    Training on both heads: Keras names a model's outputs after the layer
    that made them, so with `objectness` and `box_deltas` as two outputs of a
    model compiled with a loss each, Keras 3 logs a single
    `light_rpn_head_loss` (the last head's; the total `loss` still sums both)
    and tf_keras `light_rpn_head_loss` and `light_rpn_head_1_loss`. That is
    Keras' naming of any layer with several outputs, not something the layer
    can set. Name the outputs: a dict of outputs, or `keras.layers.Identity`
    layers with names, as in the example; each loss is then logged by name.

    Example:
    >>> features, objectness, deltas = LightRPNHead(num_anchors=25)(keras.Input((20, 20, 245)))
    >>> features.shape, objectness.shape, deltas.shape
    ((None, 20, 20, 256), (None, 20, 20, 25), (None, 20, 20, 100))
    >>> inputs = keras.Input((8, 8, 16))
    >>> _, objectness, deltas = LightRPNHead(num_anchors=3, filters=8)(inputs)
    >>> objectness = keras.layers.Identity(name="objectness")(objectness)
    >>> deltas = keras.layers.Identity(name="deltas")(deltas)
    >>> model = keras.Model(inputs, [objectness, deltas])
    >>> model.compile(loss=["binary_crossentropy", "huber"])
    >>> x, y = np.zeros((2, 8, 8, 16)), [np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 12))]
    >>> sorted(model.evaluate(x, y, return_dict=True, verbose=0))
    ['deltas_loss', 'loss', 'objectness_loss']
    """

    def __init__(self, num_anchors, filters=256, kernel_size=5, data_format=None, **kwargs):
        super().__init__(**self._init_quantization(kwargs))
        name = type(self).__name__
        self.num_anchors = v.check_int(name, "num_anchors", num_anchors)
        self.filters = v.check_int(name, "filters", filters)
        self.kernel_size = v.check_odd_kernel_size(name, kernel_size)
        self.data_format = v.normalize_data_format(name, data_format)

    def build(self, input_shape):
        name = type(self).__name__
        if _shape_tuple(input_shape) is None:
            raise ValueError(f"{name}: expected one 4-D feature map; got {_describe(input_shape)}.")
        channels = v.channels_of(name, input_shape, self.data_format)
        self.input_spec = v.feature_map_spec(self.data_format, channels)
        policy = self.dtype_policy

        def bn(bn_name):
            return keras.layers.BatchNormalization(
                axis=-1, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, dtype=policy, name=bn_name
            )

        self.depthwise = keras.layers.DepthwiseConv2D(
            self.kernel_size,
            padding="same",
            use_bias=False,
            data_format="channels_last",
            dtype=policy,
            name="depthwise",
        )
        self.depthwise_bn = bn("depthwise_bn")
        self.pointwise = keras.layers.Conv2D(
            self.filters,
            1,
            use_bias=False,
            data_format="channels_last",
            dtype=policy,
            name="pointwise",
        )
        self.pointwise_bn = bn("pointwise_bn")

        def head(head_name, channels_out):
            # MMDetection's RPN head init: normal(std=0.01), zero bias.
            return keras.layers.Conv2D(
                channels_out,
                1,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                data_format="channels_last",
                dtype=policy,
                name=head_name,
            )

        self.objectness = head("objectness", self.num_anchors)
        self.box_deltas = head("box_deltas", 4 * self.num_anchors)
        build_sublayer(self.depthwise, (None, None, None, channels))
        build_sublayer(self.depthwise_bn, (None, None, None, channels))
        build_sublayer(self.pointwise, (None, None, None, channels))
        build_sublayer(self.pointwise_bn, (None, None, None, self.filters))
        build_sublayer(self.objectness, (None, None, None, self.filters))
        build_sublayer(self.box_deltas, (None, None, None, self.filters))
        self._build_quantization_points()
        self.built = True

    def quantization_points(self):
        # ReLU fuses into the convolution before it: one int8 tensor after each.
        return ["depthwise", "features", "objectness", "box_deltas"]

    def call(self, inputs, training=None):
        v.check_floating(type(self).__name__, inputs)
        x = v.to_channels_last(inputs, self.data_format)
        x = self.at_point("depthwise", ops.relu(self.convolve(self.depthwise, x, self.depthwise_bn, training)))
        features = self.at_point("features", ops.relu(self.convolve(self.pointwise, x, self.pointwise_bn, training)))
        objectness = self.at_point("objectness", self.convolve(self.objectness, features))
        deltas = self.at_point("box_deltas", self.convolve(self.box_deltas, features))
        return [v.from_channels_last(t, self.data_format) for t in (features, objectness, deltas)]

    def compute_output_shape(self, input_shape):
        shape = _shape_tuple(input_shape)
        if shape is None:
            raise ValueError(f"{type(self).__name__}: expected one 4-D feature map; got {_describe(input_shape)}.")
        batch, spatial = shape[0], _spatial(shape, self.data_format)
        return [
            _output_shape(batch, spatial, c, self.data_format)
            for c in (self.filters, self.num_anchors, 4 * self.num_anchors)
        ]

    def get_config(self):
        config = super().get_config()
        config.update(
            num_anchors=self.num_anchors,
            filters=self.filters,
            kernel_size=self.kernel_size,
            data_format=self.data_format,
            **self.quantization_config(),
        )
        return config


@register
class RPNGuidedSpatialAttention(QuantizationPoints, keras.layers.Layer):
    """ThunderNet's Spatial Attention Module (SAM), guided by the RPN.

    `F_SAM = F_CEM * gate(BN(theta(F_RPN)))`, theta a 1x1 convolution from the
    RPN's channels to the CEM's. With `use_batchnorm=True` (default, the first
    author's reimplementation) theta has no bias and BatchNorm follows; with
    `use_batchnorm=False` theta is the paper's plain 1x1 convolution (with
    bias). The gate is differentiable in `F_RPN`, so a loss on the SAM output
    (the detection head's) sends gradient back into the RPN features — the
    paper's second purpose of SAM. BatchNorm and the gate run in float32 under
    mixed precision; the output has the layer's compute dtype.

    The paper's gate has one channel per CEM channel, so it can open a channel
    on the foreground and close another one there: its mean over channels is
    not a foreground map (on the package's shapes data it ends up lower on the
    shapes than around them, while single channels separate them strongly).
    `per_channel=False` makes theta produce one spatial map shared by all CEM
    channels; then the only way to pass an object's features on is to open the
    gate on the object, and the map is a picture of where the head looks (see
    `examples/thundernet_sam.py`).

    Args:
        use_batchnorm: BatchNorm after theta (reimplementation) or not (paper).
        gate: "sigmoid" (paper) or "hard_sigmoid" (relu6(x + 3) / 6, cheaper on
            some mobile delegates).
        per_channel: True (paper): theta maps F_RPN to as many channels as
            F_CEM; False: to one channel, broadcast over F_CEM's channels.
        data_format: "channels_last" or "channels_first".
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        A list `[cem_features, rpn_features]` of 4-D tensors with the same
        batch and spatial size, e.g. `(batch, H, W, 245)` and
        `(batch, H, W, 256)` (or channels_first).

    Output shape:
        Same as `cem_features`.

    Example:
    >>> cem, rpn = keras.Input((20, 20, 245)), keras.Input((20, 20, 256))
    >>> RPNGuidedSpatialAttention()([cem, rpn]).shape
    (None, 20, 20, 245)
    """

    _names = ("cem", "rpn")

    def __init__(self, use_batchnorm=True, gate="sigmoid", per_channel=True, data_format=None, **kwargs):
        super().__init__(**self._init_quantization(kwargs))
        name = type(self).__name__
        self.use_batchnorm = bool(use_batchnorm)
        self.gate = v.check_choice(name, "gate", gate, v.GATES)
        self.per_channel = bool(per_channel)
        self.data_format = v.normalize_data_format(name, data_format)

    def _check_shapes(self, input_shape):
        name = type(self).__name__
        shapes, channels = _checked_pair(self, input_shape)
        for (axis, a), b in zip(
            zip(("height", "width"), _spatial(shapes[0], self.data_format)), _spatial(shapes[1], self.data_format)
        ):
            if a is not None and b is not None and a != b:
                raise ValueError(
                    f"{name}: cem and rpn features must have the same spatial size; got {axis} {a} "
                    f"(cem {shapes[0]}) and {b} (rpn {shapes[1]})."
                )
        return shapes, channels

    def build(self, input_shape):
        _, (cem_channels, rpn_channels) = self._check_shapes(input_shape)
        self.channels = cem_channels
        gate_channels = cem_channels if self.per_channel else 1
        self.theta = keras.layers.Conv2D(
            gate_channels,
            1,
            use_bias=not self.use_batchnorm,
            data_format="channels_last",
            dtype=self.dtype_policy,
            name="theta",
        )
        build_sublayer(self.theta, (None, None, None, rpn_channels))
        if self.use_batchnorm:
            self.theta_bn = keras.layers.BatchNormalization(
                axis=-1,
                momentum=_BN_MOMENTUM,
                epsilon=_BN_EPSILON,
                dtype=accumulation_dtype(self),
                name="theta_bn",
            )
            build_sublayer(self.theta_bn, (None, None, None, gate_channels))
        self._build_quantization_points()
        self.built = True

    def quantization_points(self):
        return ["logits", *self.gate_points(), *self.output_point()]

    def compute_gate(self, inputs, training=None):
        """The attention `gate(BN(theta(rpn)))` in `accumulation_dtype`, shaped like `cem` (in the layer's data format),
        or with one channel when `per_channel=False`."""
        self._check_shapes([_static_shape(x) for x in inputs] if isinstance(inputs, (list, tuple)) else inputs)
        rpn = v.to_channels_last(inputs[1], self.data_format)
        # theta_bn is float32: it casts theta's output (float16 under mixed precision) on the way in.
        logits = self.convolve(self.theta, rpn, self.theta_bn if self.use_batchnorm else None, training)
        logits = self.at_point("logits", ops.cast(logits, accumulation_dtype(self)))
        return v.from_channels_last(self.apply_gate(logits), self.data_format)

    def call(self, inputs, training=None):
        v.check_floating(type(self).__name__, inputs)
        gate = self.compute_gate(inputs, training=training)
        cem = inputs[0]
        return self.at_point("output", cem * ops.cast(gate, cem.dtype))

    def compute_output_shape(self, input_shape):
        shapes, _ = self._check_shapes(input_shape)
        return shapes[0]

    def get_config(self):
        config = super().get_config()
        config.update(
            use_batchnorm=self.use_batchnorm,
            gate=self.gate,
            per_channel=self.per_channel,
            data_format=self.data_format,
            **self.quantization_config(),
        )
        return config
