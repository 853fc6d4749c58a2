"""Quantization-aware training in Keras 3 itself: any backend, `.keras` files, int8 TFLite.

`quantize_model(model)` rebuilds a functional (or Sequential) Keras 3 model so
that it computes what its full-integer TFLite file will compute:

* convolutions and Dense layers become `QuantizedConv` (per-channel symmetric
  kernels, a following BatchNormalization folded with frozen statistics and a
  following ReLU/ReLU6 fused, one int8 output);
* keras_attention layers are rebuilt with `quantization="int8"`: they run their
  own code with their named quantization points switched on;
* activations, standalone BatchNormalization, Rescaling and Normalization get
  their int8 forms (layers.py);
* every other layer that makes a new int8 tensor (Add, Multiply, Concatenate,
  average pooling, keras.ops nodes such as `x + 3.0`) gets an
  `ActivationQuantizer` after it; those TFLite runs at their input's scale (max
  pooling, padding, reshapes, dropout) get none;
* each float model input gets a quantizer (the QUANTIZE op of the file).

Ranges start on the first training batch. The result trains with `fit` (also
`jit_compile=True`) on TensorFlow, JAX and PyTorch, saves as `.keras`, reloads
with `safe_mode=True` after `import keras_attention`, and converts with
`keras_attention.tflite.convert(qat_model, "int8")` without representative data
(the converter reads the FakeQuant ranges).
"""

import warnings

import numpy as np

from keras_attention import _compat, backend
from keras_attention._inputs import warn_on_mismatched_range
from keras_attention.backend import keras
from keras_attention.layers._quantization import QuantizationPoints
from keras_attention.layers.quantizers import ActivationQuantizer, is_qat_model, quantizers, uncalibrated  # noqa: F401
from keras_attention.quantization.layers import (
    ACTIVATION_POINTS,
    FUSABLE_ACTIVATIONS,
    QuantizedActivation,
    QuantizedBatchNormalization,
    QuantizedConv,
    QuantizedNormalization,
    QuantizedRescaling,
    activation_name,
)
from keras_attention.quantization.tfmot_configs import UnsupportedLayerError

_CONVS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.Dense,
)
# TFLite runs these at their input's scale: no new int8 tensor, no quantizer.
_SAME_SCALE = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling1D,  # AVERAGE_POOL_2D requires its output at its input's scale
    keras.layers.AveragePooling2D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D,
    keras.layers.Reshape,
    keras.layers.Flatten,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.Permute,
    keras.layers.Identity,
    keras.layers.InputLayer,
)
# keras.ops nodes that only move values (CSPNet splits its channels): TFLite keeps the input's scale.
_SAME_SCALE_OPS = frozenset({"Split", "Reshape", "Transpose", "Squeeze", "ExpandDims", "GetItem", "Slice"})
# Layers kept as they are, with an ActivationQuantizer on their output.
_OUTPUT_QUANTIZED = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Concatenate,
    keras.layers.Maximum,
    keras.layers.Minimum,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.UpSampling2D,
    keras.layers.LeakyReLU,  # TFLite's LEAKY_RELU takes its own output scale (CSPNet, YOLO-style necks)
)


def _same_scale(layer):
    """True when TFLite runs `layer` at its input's scale (nearest upsampling only copies values)."""
    if isinstance(layer, keras.layers.UpSampling2D):
        return layer.interpolation == "nearest"
    return isinstance(layer, _SAME_SCALE)


def _is_attention_layer(layer):
    return (
        isinstance(layer, QuantizationPoints)
        and not getattr(layer, "quantization", None)
        and type(layer).__module__.startswith("keras_attention.layers")
    )


def supports(layer):
    """True when `quantize_model` has an int8 form for `layer`."""
    if isinstance(layer, _CONVS):
        return getattr(layer, "groups", 1) == 1 and activation_name(getattr(layer, "activation", None)) is not None
    if isinstance(layer, (keras.layers.Activation, keras.layers.ReLU, keras.layers.Softmax)):
        return activation_name(layer) is not None
    if isinstance(layer, keras.layers.Normalization):
        return not layer.invert
    return isinstance(
        layer,
        (
            *_SAME_SCALE,
            *_OUTPUT_QUANTIZED,
            keras.layers.BatchNormalization,
            keras.layers.Rescaling,
            ActivationQuantizer,
        ),
    ) or _is_attention_layer(layer)


def _check_model(model):
    name = "keras_attention.quantization.quantize_model"
    if backend.IS_LEGACY:  # pragma: no cover - the caller dispatches
        raise RuntimeError(f"{name}: the Keras 3 path runs on Keras 3; tf_keras takes the tfmot path.")
    if not isinstance(model, keras.Model):
        raise TypeError(f"{name}: expected a keras.Model; got {type(model).__name__}.")
    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise ValueError(
                f"{name}: the Sequential model {model.name!r} has no Input; build it with an "
                "`keras.Input(shape)` first."
            )
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not _compat.has_layer_graph(model) or not getattr(model, "inputs", None):
        raise TypeError(
            f"{name}: {model.name!r} is a subclassed model ({type(model).__name__}); QAT rebuilds the layer "
            "graph, which only functional and Sequential models expose. Build it with the functional API."
        )
    if any(
        getattr(layer, "quantization", None) or isinstance(layer, ActivationQuantizer)
        for layer in backend.all_layers(model)
    ):
        raise ValueError(f"{name}: {model.name!r} is already a QAT model.")
    return model


def _own_layers(model):
    """Layers of `model`, nested functional models flattened."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model) and _compat.has_layer_graph(layer):
            found.extend(_own_layers(layer))
        else:
            found.append(layer)
    return found


def _consumers(model):
    """id(tensor) -> operations of `model` (one level) reading it; model outputs count as a consumer."""
    consumers = {}
    for depth_nodes in _compat.nodes_by_depth(model).values():
        for node in depth_nodes:
            if node.operation is None or node.is_input:
                continue
            for tensor in node.input_tensors:
                consumers.setdefault(id(tensor), []).append(node.operation)
    for tensor in model.outputs:
        consumers.setdefault(id(tensor), []).append(None)
    return consumers


def _single_use_output(layer, consumers):
    """The one consumer of `layer`'s output when it has exactly one (and the layer one call), else None."""
    if _compat.call_count(layer) != 1:
        return None
    users = consumers.get(id(layer.output), [])
    return users[0] if len(users) == 1 and users[0] is not None and _compat.call_count(users[0]) == 1 else None


def _fusion_plan(model):
    """{conv: (bn, activation layer)} and the set of layers folded into a convolution."""
    consumers = _consumers(model)
    plan, absorbed = {}, set()
    for layer in model.layers:
        if not isinstance(layer, _CONVS) or not supports(layer):
            continue
        bn = activation = None
        nxt = _single_use_output(layer, consumers)
        own = activation_name(getattr(layer, "activation", None))
        if (
            own == "linear"
            and isinstance(nxt, keras.layers.BatchNormalization)
            and not isinstance(layer, keras.layers.Dense)
        ):
            channel_axis = -1 if getattr(layer, "data_format", "channels_last") == "channels_last" else 1
            if nxt.axis % 4 == channel_axis % 4:
                bn, nxt = nxt, _single_use_output(nxt, consumers)
        if (
            own == "linear"
            and nxt is not None
            and activation_name(nxt) in FUSABLE_ACTIVATIONS
            and isinstance(nxt, (keras.layers.Activation, keras.layers.ReLU))
        ):
            activation = nxt
        plan[id(layer)] = (bn, activation)
        absorbed.update(id(x) for x in (bn, activation) if x is not None)
    return plan, absorbed


def _identity(*args, **kwargs):
    return args[0]


def _is_left_float(layer, leave_float):
    return layer.name in leave_float or any(isinstance(c, type) and isinstance(layer, c) for c in leave_float)


class _Rewriter:
    def __init__(self, leave_float):
        self.leave_float = leave_float
        self.copies = []  # (float layer, QAT layer, how to copy)
        self.left_float = []

    def rewrite(self, model, inputs):
        plan, absorbed = _fusion_plan(model)
        return _compat.run_through_graph(model, inputs, lambda op: self.operation(op, plan, absorbed))

    def operation(self, op, plan, absorbed):
        if not isinstance(op, keras.layers.Layer):
            if type(op).__name__ in _SAME_SCALE_OPS:
                return op
            # A keras.ops node (e.g. MobileNetV3's `x + 3.0`): the same op, then a quantizer.
            return self._then_quantize(op, f"{op.name}_quant")
        if isinstance(op, keras.Model) and _compat.has_layer_graph(op):
            return lambda *args, **kwargs: self.rewrite(op, args[0] if len(args) == 1 else list(args))
        if id(op) in absorbed:
            return _identity
        if _is_left_float(op, self.leave_float):
            self.left_float.append(f"{op.name} ({type(op).__name__})")
            return self._clone(op)
        if id(op) in plan:
            bn, activation = plan[id(op)]
            new = QuantizedConv(
                op.__class__.from_config(op.get_config()),
                batch_norm=bn.__class__.from_config(bn.get_config()) if bn is not None else None,
                activation=activation_name(activation) if activation is not None else "linear",
                name=op.name,
            )
            self.copies.append((op, new.layer, "weights"))
            if bn is not None:
                self.copies.append((bn, new.batch_norm, "weights"))
            return new
        if _is_attention_layer(op):
            new = op.__class__.from_config({**op.get_config(), "quantization": "int8"})
            self.copies.append((op, new, "paths"))
            return new
        if isinstance(op, (keras.layers.Activation, keras.layers.ReLU, keras.layers.Softmax)):
            return QuantizedActivation(activation_name(op), name=op.name)
        if isinstance(op, keras.layers.BatchNormalization):
            new = QuantizedBatchNormalization(op.__class__.from_config(op.get_config()), name=op.name)
            self.copies.append((op, new.layer, "weights"))
            return new
        if isinstance(op, keras.layers.Rescaling):
            return QuantizedRescaling(op.scale, op.offset, name=op.name)
        if isinstance(op, keras.layers.Normalization):
            new = QuantizedNormalization(op.__class__.from_config(op.get_config()), name=op.name)
            self.copies.append((op, new.layer, "weights"))
            return new
        if _same_scale(op):
            return self._clone(op)
        if isinstance(op, _OUTPUT_QUANTIZED):
            return self._then_quantize(self._clone(op), f"{op.name}_quant")
        raise AssertionError(f"unplanned layer {op.name}")  # pragma: no cover - supports() screens first

    def _clone(self, layer):
        new = layer.__class__.from_config(layer.get_config())
        if layer.weights:
            self.copies.append((layer, new, "weights"))
        return new

    @staticmethod
    def _then_quantize(op, name):
        quantizer = ActivationQuantizer(name=name)

        def call(*args, **kwargs):
            # An op with several outputs (keras.ops.split in CSPNet) shares one range: they are slices of one input.
            return keras.tree.map_structure(quantizer, op(*args, **kwargs))

        return call


def _unsupported(model, leave_float):
    return [layer for layer in _own_layers(model) if not supports(layer) and not _is_left_float(layer, leave_float)]


def _blocks_note(unsupported):
    """For unsupported layers built of other layers (keras-hub's MobileNet and EfficientNetV2 blocks): the way out."""
    blocks = [layer.name for layer in unsupported if _compat.has_sublayers(layer)]
    if not blocks:
        return ""
    return (
        f" {blocks[0]!r}{' and others' if len(blocks) > 1 else ''} are layers built of other layers, whose "
        "`call()` QAT cannot place quantization points in: post-training int8 converts them end to end "
        "(`keras_attention.tflite.convert(model, 'int8', representative_data=images)`)."
    )


def _relative(variable):
    return variable.path.split("/", 1)[1] if "/" in variable.path else variable.path


def _copy_weights(copies):
    for source, target, how in copies:
        if how == "weights":
            target.set_weights(source.get_weights())
            continue
        targets = {_relative(v): v for v in target.weights}
        for variable in source.weights:
            key = _relative(variable)
            if key not in targets:  # pragma: no cover - a layer whose QAT form renamed a variable
                raise RuntimeError(f"quantize_model: {source.name!r} has {key!r}, which its QAT form lacks.")
            # A copy: assigning the variable itself would alias its JAX array, which the float
            # model's next jitted step donates (deletes) under the QAT model's feet.
            targets[key].assign(keras.ops.convert_to_numpy(variable))


def quantize_model(model, leave_float=()):
    """The QAT copy of a Keras 3 functional or Sequential model (TensorFlow, JAX or PyTorch backend).

    Args:
        model: a built functional or Sequential `keras.Model`. A mixed-precision
            model is quantized as its float32 copy (with a warning): fake
            quantization computes in float32, and so does the int8 file.
        leave_float: layer names or classes to keep in float (the converter
            then puts DEQUANTIZE/QUANTIZE around them); each is named in a
            warning. Everything else must be quantizable.

    Returns:
        A new functional model with the float model's weights; train it with
        `fit` for a few epochs, then `keras_attention.tflite.convert(qat, "int8")`.

    Raises:
        TypeError: a subclassed model, or not a model.
        UnsupportedLayerError: a layer with no int8 form; the message names
            each layer and its class.
        ValueError: the model is already a QAT model, or a Sequential model
            without an Input.
    """
    model = _check_model(model)
    leave_float = tuple(leave_float or ())
    unsupported = _unsupported(model, leave_float)
    if unsupported:
        named = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in unsupported)
        raise UnsupportedLayerError(
            "keras_attention.quantization.quantize_model: no int8 QAT form for "
            f"{named}. Supported: Conv1D/2D, DepthwiseConv2D, SeparableConv2D, "
            "Conv2DTranspose, Dense, BatchNormalization, ReLU/ReLU6/Softmax/Activation "
            f"({', '.join(sorted(ACTIVATION_POINTS))}), Add, Subtract, Multiply, Concatenate, Maximum, "
            "Minimum, LeakyReLU, pooling, ZeroPadding, Cropping, UpSampling2D, Rescaling, Normalization, Reshape, "
            "Flatten, Permute, Dropout, keras.ops arithmetic and every keras_attention layer. Pass "
            "leave_float=[names] to keep those layers in float." + _blocks_note(unsupported)
        )
    if backend.is_mixed_precision(model):
        warnings.warn(
            f"quantize_model: {model.name!r} uses a mixed-precision policy; its QAT copy computes in float32 "
            "(fake quantization is float32, and so is every float op of the int8 file).",
            stacklevel=2,
        )
        model = backend.float32_copy(model, "keras_attention.quantization.quantize_model")
    rewriter = _Rewriter(leave_float)
    inputs = [keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=t.name) for t in model.inputs]
    quantized_inputs = [
        ActivationQuantizer(name=f"{t.name}_quant")(t) if "float" in str(t.dtype) else t for t in inputs
    ]
    outputs = rewriter.rewrite(model, quantized_inputs)
    qat = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)
    _copy_weights(rewriter.copies)
    if rewriter.left_float:
        warnings.warn(
            "quantize_model: left in float (not int8 in the TFLite file): " + ", ".join(rewriter.left_float),
            stacklevel=2,
        )
    return qat


def calibrate(model, data, batch_size=32, steps=None):
    """Sets a QAT model's ranges from `data` without changing a weight.

    Runs `model(x, training=True)` batch by batch: each quantizer updates its
    range, while folded BatchNormalizations keep their frozen statistics and no
    optimizer step is taken. Use it before `fit` to start from calibrated
    ranges, or to convert a QAT model that was never trained (then the file
    equals post-training quantization with these ranges). `data` must be
    preprocessed as at run time: a batch whose range contradicts the model's
    first layers (raw 0-255 pixels without an in-model `Rescaling`, or
    [-1, 1] data with one) gets a warning, as in `tflite.convert`.
    """
    arrays = data if isinstance(data, (list, tuple)) else [data]
    if len(arrays) == 1:
        warn_on_mismatched_range(model, np.asarray(arrays[0][:32]), "keras_attention.quantization.calibrate")
    count = len(arrays[0])
    for step, start in enumerate(range(0, count, batch_size)):
        if steps is not None and step >= steps:
            break
        batch = [np.asarray(a[start : start + batch_size]) for a in arrays]
        model(batch if len(batch) > 1 else batch[0], training=True)
    return model
