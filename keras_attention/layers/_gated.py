"""The base every attention layer shares: a float32 (or float64) gate, multiplied into the input."""

from keras_attention.backend import keras, ops
from keras_attention.layers import _validation as v
from keras_attention.layers._quantization import QuantizationPoints


def blend_avg_max(layer, average, maximum, prefix):
    """timm's light pooling (average + maximum) / 2 at `layer`'s int8 points `prefix + "sum"`, `prefix + "avg_max"`.

    `average` is already an int8 tensor of its own; the max of int8 values keeps the input's scale.
    """
    summed = layer.at_point(prefix + "sum", average + maximum)
    # Under QAT the 1/2 is an int8 constant (exact): a float operand would leave the MUL in float.
    half = layer.kernel_quantizer()(ops.convert_to_tensor(0.5, summed.dtype))
    return layer.at_point(prefix + "avg_max", summed * half)


BLEND_POINTS = ("sum", "avg_max")


class GatedAttention(QuantizationPoints, keras.layers.Layer):
    """`output = inputs * gate(inputs)`, with the arguments every gate has.

    Subclasses implement `compute_gate(inputs, training)`, a gate in
    `accumulation_dtype(self)` (float32, or float64 in a float64 model) shaped
    to broadcast against the input, and add their own arguments to `__init__`
    and `get_config()`. The multiplication is the layer's int8 "output" point.
    """

    def __init__(self, gate="sigmoid", start_as_identity=False, data_format=None, **kwargs):
        super().__init__(**self._init_quantization(kwargs))
        name = type(self).__name__
        self.gate = v.check_choice(name, "gate", gate, v.GATES)
        self.start_as_identity = bool(start_as_identity)
        self.data_format = v.normalize_data_format(name, data_format)
        self.supports_masking = True

    def compute_gate(self, inputs, training=None):
        raise NotImplementedError

    def call(self, inputs, training=None):
        v.check_floating(type(self).__name__, inputs)
        gate = self.compute_gate(inputs, training=training)
        return self.at_point("output", inputs * ops.cast(gate, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            gate=self.gate,
            start_as_identity=self.start_as_identity,
            data_format=self.data_format,
            **self.quantization_config(),
        )
        return config
