"""CenterMask's Spatial Attention-Guided Mask head (Lee & Park, CVPR 2020)."""

from keras_attention.backend import build_sublayer, keras, ops, register
from keras_attention.layers import _validation as v
from keras_attention.layers._quantization import QuantizationPoints
from keras_attention.layers.spatial import SpatialAttention


def _msra_fill():
    # Detectron2's c2_msra_fill: He normal over fan-out, zero bias.
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


@register
class SAGMaskHead(QuantizationPoints, keras.layers.Layer):
    """SAG-Mask: CenterMask's mask head with spatial attention (Lee & Park, CVPR 2020).

    RoI features (14x14 from `RoIAlign`) -> `num_convs` 3x3 convolutions with
    `filters` channels and ReLU -> spatial attention (channel mean and max,
    concatenated, 3x3 convolution without bias and without BatchNorm, sigmoid,
    multiplied in: `SpatialAttention(kernel_size=3)`) -> 2x2 transposed
    convolution, stride 2, ReLU -> 1x1 convolution to per-class mask logits at
    twice the RoI size (28x28).

    Initialisation as the official code: He normal (fan-out) kernels and zero
    biases for the convolutions and the transposed convolution, normal(std 0.001)
    for the predictor.

    Args:
        num_classes: number of object classes (one mask channel each).
        filters: channels of the convolutions and the transposed convolution (256).
        num_convs: number of 3x3 convolutions before the attention (4).
        class_agnostic: predict one mask for every class (1 output channel).
        use_attention: `False` removes the spatial attention (the plain Mask R-CNN
            head, for ablations).
        data_format: "channels_last" (RoIs `(..., 14, 14, C)`) or "channels_first"
            (`(..., C, 14, 14)`); computed channels_last inside.
        quantization: None (float) or "int8": Keras 3 QAT, as set by
            `keras_attention.quantization.quantize_model`.

    Input shape:
        `(batch, num_boxes, size, size, C)` (what `RoIAlign` gives) or flattened
        RoIs `(num_rois, size, size, C)`; `size` is 14 in CenterMask, any size
        (also unknown) works.

    Output shape:
        `(batch, num_boxes, 2*size, 2*size, K)` or `(num_rois, 2*size, 2*size, K)`
        mask logits, `K = num_classes` (1 when `class_agnostic`).

    Example:
    >>> rois = keras.Input((8, 14, 14, 64))
    >>> SAGMaskHead(num_classes=3, filters=64)(rois).shape
    (None, 8, 28, 28, 3)
    """

    def __init__(
        self,
        num_classes,
        filters=256,
        num_convs=4,
        class_agnostic=False,
        use_attention=True,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**self._init_quantization(kwargs))
        name = type(self).__name__
        self.num_classes = v.check_int(name, "num_classes", num_classes)
        self.filters = v.check_int(name, "filters", filters)
        self.num_convs = v.check_int(name, "num_convs", num_convs, minimum=0)
        self.class_agnostic = bool(class_agnostic)
        self.use_attention = bool(use_attention)
        self.data_format = v.normalize_data_format(name, data_format)

    @property
    def num_outputs(self):
        return 1 if self.class_agnostic else self.num_classes

    def _check_shape(self, input_shape):
        name = type(self).__name__
        input_shape = tuple(input_shape)
        if len(input_shape) not in (4, 5):
            raise ValueError(
                f"{name}: expected RoI features (batch, num_boxes, size, size, channels) or "
                f"(num_rois, size, size, channels) ({self.data_format}); got shape {input_shape}."
            )
        channels = input_shape[-1] if self.data_format == "channels_last" else input_shape[-3]
        if channels is None:
            raise ValueError(f"{name}: the channel dimension must be known when built; got shape {input_shape}.")
        return input_shape, int(channels)

    def build(self, input_shape):
        _, channels = self._check_shape(input_shape)
        self.channels = channels
        channel_axis = -1 if self.data_format == "channels_last" else -3
        self.input_spec = keras.layers.InputSpec(min_ndim=4, max_ndim=5, axes={channel_axis: channels})
        self.convs = []
        width = channels
        for i in range(self.num_convs):
            conv = keras.layers.Conv2D(
                self.filters,
                3,
                padding="same",
                activation="relu",
                kernel_initializer=_msra_fill(),
                dtype=self.dtype_policy,
                name=f"mask_fcn{i + 1}",
            )
            build_sublayer(conv, (None, None, None, width))
            self.convs.append(conv)
            width = self.filters
        self.attention = None
        if self.use_attention:
            self.attention = SpatialAttention(
                kernel_size=3,
                use_batchnorm=False,
                use_bias=False,
                gate="sigmoid",
                data_format="channels_last",
                quantization=self.quantization,
                dtype=self.dtype_policy,
                name="sam",
            )
            build_sublayer(self.attention, (None, None, None, width))
        self.deconv = keras.layers.Conv2DTranspose(
            self.filters,
            2,
            strides=2,
            padding="valid",
            activation="relu",
            kernel_initializer=_msra_fill(),
            dtype=self.dtype_policy,
            name="deconv",
        )
        build_sublayer(self.deconv, (None, None, None, width))
        self.predictor = keras.layers.Conv2D(
            self.num_outputs,
            1,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            dtype=self.dtype_policy,
            name="predictor",
        )
        build_sublayer(self.predictor, (None, None, None, self.filters))
        self._build_quantization_points()
        self.built = True

    def quantization_points(self):
        # Each convolution's ReLU fuses into it; the attention quantizes its own tensors.
        return [conv.name for conv in self.convs] + ["deconv", "output"]

    def _flatten(self, inputs):
        """(..., C, S, S) or (..., S, S, C) -> (R, S, S, C) channels_last, and how to undo it."""
        x = inputs
        rank = len(x.shape)
        if self.data_format == "channels_first":
            x = ops.transpose(x, (0, 1, 3, 4, 2) if rank == 5 else (0, 2, 3, 1))
        if rank == 4:
            return x, None
        shape = ops.shape(x)
        lead = (shape[0], shape[1])
        return ops.reshape(x, (shape[0] * shape[1], shape[2], shape[3], self.channels)), lead

    def _unflatten(self, x, lead):
        if lead is not None:
            shape = ops.shape(x)
            x = ops.reshape(x, (lead[0], lead[1], shape[1], shape[2], self.num_outputs))
        if self.data_format == "channels_first":
            x = ops.transpose(x, (0, 1, 4, 2, 3) if lead is not None else (0, 3, 1, 2))
        return x

    def _features(self, x):
        for conv in self.convs:
            x = self.at_point(conv.name, self.convolve(conv, x))
        return x

    def call(self, inputs):
        v.check_floating(type(self).__name__, inputs)
        x, lead = self._flatten(inputs)
        x = self._features(x)
        if self.attention is not None:
            x = self.attention(x)
        x = self.at_point("deconv", self.convolve(self.deconv, x))
        return self._unflatten(self.at_point("output", self.convolve(self.predictor, x)), lead)

    def attention_map(self, inputs):
        """The spatial attention gate, `(batch, num_boxes, S, S)` or `(num_rois, S, S)`, float32.

        For pictures of where the head looks; `None`-free only with `use_attention=True`.
        """
        if self.attention is None:
            raise ValueError(f"{type(self).__name__}: built with use_attention=False; there is no attention map.")
        x, lead = self._flatten(ops.convert_to_tensor(inputs))
        gate = self.attention.compute_gate(self._features(ops.cast(x, self.compute_dtype)))[..., 0]
        if lead is not None:
            shape = ops.shape(gate)
            gate = ops.reshape(gate, (lead[0], lead[1], shape[1], shape[2]))
        return gate

    def compute_output_shape(self, input_shape):
        input_shape, _ = self._check_shape(input_shape)
        if self.data_format == "channels_last":
            *lead, h, w, _ = input_shape
            return tuple(lead) + (None if h is None else 2 * h, None if w is None else 2 * w, self.num_outputs)
        *lead, _, h, w = input_shape
        return tuple(lead) + (self.num_outputs, None if h is None else 2 * h, None if w is None else 2 * w)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            filters=self.filters,
            num_convs=self.num_convs,
            class_agnostic=self.class_agnostic,
            use_attention=self.use_attention,
            data_format=self.data_format,
            **self.quantization_config(),
        )
        return config
