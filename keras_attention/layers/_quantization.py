"""Named int8 quantization points: how a layer runs its own code under QAT.

A layer marks each tensor TFLite will hold in int8 with `self.at_point(name, x)`
and runs its convolutions through `self.convolve(conv, x, bn)`. In float
(`quantization=None`, the default) both are exactly the plain computation. A
layer made with `quantization="int8"` (what `keras_attention.quantization.
quantize_model` does under Keras 3) owns one `ActivationQuantizer` per point,
created in `build()` from `quantization_points()`, fake-quantizes its kernels per
output channel and folds an inner BatchNormalization into the convolution before
it, with frozen statistics, the way the TFLite converter will. So QAT runs the
layer's one forward pass, and the int8 file computes what QAT trained.

tfmot's QAT (tf_keras) runs the same forward pass: its QuantizeConfig hands the
layer one tfmot quantizer per point with `use_quantizers()`, and the kernels
are folded and fake-quantized here, as under Keras 3. A point is named once,
in the layer that computes it, for both engines.
"""

from keras_attention.backend import IS_LEGACY, build_sublayer, ops
from keras_attention.layers._validation import apply_gate, check_layer_kwargs
from keras_attention.layers.quantizers import (
    ActivationQuantizer,
    fixed_range,
    folded_parameters,
    kernel_of,
    quantize_kernel,
    quantized_call,
)

QUANTIZATIONS = (None, "int8")

# Activations with an int8 form, and the points inside each (beyond "output").
ACTIVATION_POINTS = {
    "linear": [],
    "relu": ["output"],
    "relu6": ["output"],
    "sigmoid": [],
    "softmax": [],
    "tanh": [],
    "hard_sigmoid": ["relu6", "output"],
    "swish": ["output"],
    "silu": ["output"],
    "hard_swish": ["output"],
    "hard_silu": ["output"],
}

# The hidden activations of the attention bottlenecks (coord, scoord, ecam; ela adds "linear"): the
# authors' h_swish (= timm's nn.Hardswish) and the usual others.
HIDDEN_ACTIVATIONS = ("hard_swish", "relu", "relu6", "swish")
# TFLite fuses these into the convolution before them: no int8 tensor between the two.
FUSED_ACTIVATIONS = ("relu", "relu6")


class QuantizationPoints:
    """Mixin for layers with named quantization points (the identity in float)."""

    def _init_quantization(self, kwargs):
        """Pops `quantization` from the constructor's kwargs and validates it."""
        quantization = kwargs.pop("quantization", None)
        name = type(self).__name__
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"{name}: unknown `quantization` {quantization!r}; expected None or 'int8'.")
        if quantization and IS_LEGACY:
            raise ValueError(
                f"{name}: quantization='int8' is Keras 3 QAT; under tf_keras use "
                "keras_attention.quantization.quantize_model (the tfmot path)."
            )
        self.quantization = quantization
        self._quantizers = {}
        return check_layer_kwargs(self, kwargs)

    @property
    def quantizing(self):
        """True while the layer runs fake-quantized: Keras 3 QAT, or tfmot's quantizers in use."""
        return bool(self.quantization) or "_tfmot_quantizers" in self.__dict__

    def use_quantizers(self, quantizers):
        """Runs the layer's points through `quantizers` ({point: callable}): tfmot's QAT engine.

        Set outside Keras' attribute tracking: the quantizers belong to tfmot's
        wrapper, which owns (and saves) their range variables.
        """
        missing = sorted(set(self.quantization_points()) - set(quantizers))
        if missing:
            raise ValueError(f"{type(self).__name__} {self.name!r}: no quantizer for the points {missing}.")
        self.__dict__["_tfmot_quantizers"] = dict(quantizers)

    def quantization_points(self):
        """Names of the int8 tensors inside the layer (subclasses list theirs)."""
        return ()

    gate_only = False  # True when a parent uses only the gate (compute_gate), not call()

    def output_point(self):
        return [] if self.gate_only else ["output"]

    def _build_quantization_points(self):
        """Creates one quantizer per point; call at the end of `build()`."""
        if not self.quantization:
            return
        for name in self.quantization_points():
            if name not in self._quantizers:
                quantizer = ActivationQuantizer(name=f"quant_{name}")
                build_sublayer(quantizer, ())
                self._quantizers[name] = quantizer

    def at_point(self, name, x):
        """`x` at the int8 point `name`: the identity in float."""
        if not self.quantizing:
            return x
        quantizers = self.__dict__.get("_tfmot_quantizers", self._quantizers)
        try:
            return quantizers[name](x)
        except KeyError:
            raise RuntimeError(
                f"{type(self).__name__}: quantization point {name!r} is not among "
                f"{list(quantizers)}; quantization_points() must list it."
            ) from None

    def at_fixed_range(self, x, kind):
        """`x` at TFLite's fixed int8 output range of `kind` ("sigmoid"): the identity in float."""
        if not self.quantizing:
            return x
        return fixed_range(x, kind)

    def conv_parameters(self, conv, bn=None):
        """(kernel, bias) of a one-output-channel `conv`; under QAT with `bn` folded in.

        The kernel is not fake-quantized: pass it through `kernel_quantizer()`
        after any rearrangement (a kernel with one output channel is quantized
        per tensor, so quantizing a rearranged copy with zeros gives the same grid).
        """
        if not self.quantizing:
            return kernel_of(conv), (conv.bias if conv.use_bias else None)
        return folded_parameters(conv, bn, quantize=False)

    def kernel_quantizer(self):
        """Per-tensor symmetric int8 fake quantization of a kernel under QAT; the identity in float."""
        if not self.quantizing:
            return lambda kernel: kernel
        return lambda kernel: quantize_kernel(kernel, axis=None)

    def convolve(self, conv, x, bn=None, training=None):
        """`bn(conv(x))` (bn optional); under QAT with the quantized, BN-folded kernel."""
        if not self.quantizing:
            y = conv(x)
            return y if bn is None else bn(y, training=training)
        return quantized_call(conv, x, bn)

    def gate_points(self, prefix="gate"):
        """The points `apply_gate` uses for this layer's gate."""
        names = []
        if self.gate == "hard_sigmoid":
            names += [f"{prefix}_relu6", prefix]
        if self.gate_scale != 1.0:
            names.append(f"{prefix}_scaled")
        return names

    @property
    def gate_scale(self):
        """2 for a layer that starts as the identity (its zero logits give gate 0.5, and 2 x 0.5 = 1), else 1."""
        return 2.0 if getattr(self, "start_as_identity", False) else 1.0

    def apply_gate(self, logits, prefix="gate"):
        """gate(logits) times `gate_scale`, at the layer's int8 points."""
        return apply_gate(
            logits,
            self.gate,
            self.gate_scale,
            point=lambda suffix, x: self.at_point(prefix + suffix, x),
            fixed_range=self.at_fixed_range,
        )

    def quantization_config(self):
        """The config entry (only when quantized, so float configs stay as they were)."""
        return {"quantization": self.quantization} if self.quantization else {}


def point_layers(layer, prefix=""):
    """[(prefix, layer)] for `layer` and each QuantizationPoints layer inside it, outermost first.

    The prefixes ("channel_attention_" for CBAM's channel gate) make the point
    names of a composite layer unique, for engines that hold them in one list.
    """
    found = [(prefix, layer)] if isinstance(layer, QuantizationPoints) else []
    for sublayer in layer._flatten_layers(include_self=False, recursive=False):
        found += point_layers(sublayer, f"{prefix}{sublayer.name}_")
    return found


def run_activation(layer, kind, x, prefix=""):
    """`kind` applied to `x` with `layer`'s int8 points (named `prefix + point`)."""
    point = lambda name, y: layer.at_point(prefix + name, y)  # noqa: E731
    if kind == "linear":
        return x
    if kind == "relu":
        return point("output", ops.relu(x))
    if kind == "relu6":
        return point("output", ops.relu6(x))
    if kind in ("sigmoid", "softmax", "tanh"):
        fn = {"sigmoid": ops.sigmoid, "softmax": ops.softmax, "tanh": ops.tanh}[kind]
        return layer.at_fixed_range(fn(x), kind)
    if kind == "hard_sigmoid":
        return point("output", point("relu6", ops.relu6(x + 3.0)) * (1.0 / 6.0))
    if kind in ("swish", "silu"):
        return point("output", x * layer.at_fixed_range(ops.sigmoid(x), "sigmoid"))
    # hard_swish: written as the pattern the converter fuses into one HARD_SWISH op.
    return point("output", x * ops.relu6(x + 3.0) * (1.0 / 6.0))
