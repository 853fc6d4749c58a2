"""tfmot's side of keras_attention's QAT: a QuantizeConfig per public layer, created on first use.

Each config runs the layer's own forward pass with tfmot's quantizers at its
named int8 points (`layers/_quantization.py`); the Keras 3 engine runs the same
pass with its own quantizers. tensorflow_model_optimization is imported only
when a config is first needed: its import sets `TF_USE_LEGACY_KERAS=1`.
"""

from keras_attention import backend
from keras_attention.backend import keras
from keras_attention.layers import quantizers
from keras_attention.layers._quantization import point_layers

_FEATURE = "keras_attention.quantization"

CONFIG_NAMES = (
    "ChannelAttentionQuantizeConfig",
    "SqueezeExcitationQuantizeConfig",
    "EfficientChannelAttentionQuantizeConfig",
    "SpatialAttentionQuantizeConfig",
    "CBAMQuantizeConfig",
    "CoordinateAttentionQuantizeConfig",
    "EffectiveSqueezeExcitationQuantizeConfig",
    "CircularEfficientChannelAttentionQuantizeConfig",
    "EfficientChannelAttentionMLPQuantizeConfig",
    "LightCBAMQuantizeConfig",
    "SimpleCoordinateAttentionQuantizeConfig",
    "EfficientLocalAttentionQuantizeConfig",
    "StripAttentionQuantizeConfig",
    "GatherExciteQuantizeConfig",
    "GlobalContextQuantizeConfig",
    "ContextEnhancementQuantizeConfig",
    "LightRPNHeadQuantizeConfig",
    "RPNGuidedSpatialAttentionQuantizeConfig",
    "SAGMaskHeadQuantizeConfig",
)


class UnsupportedLayerError(ValueError):
    """The model holds layers that neither keras_attention nor tfmot can quantize."""


_QUANTIZE_MODEL = (
    "keras_attention.quantization.quantize_model(model) makes the QAT copy of a whole model (leave_float= "
    "keeps chosen layers in float), with no tfmot annotate/apply step"
)
# What each tfmot-only entry point is on Keras 3, where quantize_model has a native path (keras3.py).
_KERAS3_WAY = {
    "save_qat_model": "a QAT model from quantize_model saves with model.save('qat.keras') and reloads with "
    "keras.saving.load_model('qat.keras') after `import keras_attention`",
    "load_qat_model": "a QAT model saved with model.save('qat.keras') reloads with "
    "keras.saving.load_model('qat.keras') after `import keras_attention`",
    "load_keras3_weights": "the model is a Keras 3 model already: model.load_weights(path) reads Keras 3 weights",
    "float32_model": "quantize_model quantizes a mixed-precision model as its float32 copy by itself; "
    "keras_attention.tflite.float32_copy(model) makes that copy",
    "quantize_scope": "a QAT .keras file reloads with keras.saving.load_model after `import keras_attention` "
    "(no scope needed)",
}


def _require_tf_keras(entry):
    """Raises, under Keras 3, an error naming `entry`'s Keras 3 counterpart (tfmot needs tf_keras)."""
    if backend.IS_LEGACY:
        return
    way = _KERAS3_WAY.get(entry, _QUANTIZE_MODEL)
    raise RuntimeError(
        f"{_FEATURE}.{entry} is for tf_keras QAT models (tensorflow-model-optimization supports only Keras 2: "
        f"TF_USE_LEGACY_KERAS=1 and the [qat] extra); on Keras 3 (Keras {backend.KERAS_VERSION} on "
        f"{backend.BACKEND}) {way}."
    )


def _require(entry):
    """tfmot, after checking that tf_keras is active (the error naming `entry`'s Keras 3 way otherwise)."""
    _require_tf_keras(entry)
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{_FEATURE} needs tensorflow-model-optimization 0.8.1: pip install 'keras-vision-attention[qat]'"
        ) from error
    return tfmot


# --------------------------------------------------------------------------
# Which layers: every public layer with named quantization points runs its own
# forward pass under tfmot, fed tfmot's quantizers (layers/_quantization.py).
# --------------------------------------------------------------------------

# layer class name -> its QuantizeConfig's class name
_CONFIGS = {config[: -len("QuantizeConfig")]: config for config in CONFIG_NAMES}

# Public layers without a QuantizeConfig, and why (quantize_model says so).
NOT_QUANTIZED = {
    "RoIAlign": (
        "RoIAlign samples feature maps at box coordinates, which int8 cannot hold (a 1-pixel error "
        "per 256/255 pixels of image size), and tfmot would fake-quantize its box input. Keep "
        "RoIAlign in float and quantize the mask head on RoI features: e.g. a model "
        "keras.Model(rois, SAGMaskHead(...)(rois)) whose input is RoIAlign's output."
    ),
}


def _layer_classes():
    """{class name: class} of the public keras_attention layers QAT supports."""
    from keras_attention import layers

    return {name: getattr(layers, name) for name in _CONFIGS if hasattr(layers, name)}


def supported_layers():
    """The keras_attention layer classes `quantize_model` has a QuantizeConfig for."""
    return tuple(_layer_classes().values())


def _quantized_class(layer):
    """The name of the public layer class `layer` is (most derived first), or None."""
    classes = _layer_classes()
    for cls in type(layer).__mro__:
        if classes.get(cls.__name__) is cls:
            return cls.__name__
    return None


# --------------------------------------------------------------------------
# tfmot classes, created on first use (tfmot is imported lazily)
# --------------------------------------------------------------------------

_CLASSES = {}


def _classes(entry="quantize_config_for"):
    """tfmot's quantizer and QuantizeConfig subclasses for our layers, defined on first use.

    Long because the classes subclass tfmot's, and importing tfmot imports
    tf_keras: defined at module level they would make `import keras_attention`
    load tf_keras and tfmot in every Keras 3 session. One function keeps them
    defined once and cached in `_CLASSES`.
    """
    if _CLASSES:
        return _CLASSES
    tfmot = _require(entry)
    import tensorflow as tf

    qk = tfmot.quantization.keras

    class _ActivationQuantizer(qk.quantizers.Quantizer):
        """tfmot's side of `layers.quantizers.ActivationQuantizer`: the same range rule, tfmot's variables.

        The range starts from the first training batch's min/max (widened to
        include 0, as TFLite requires) and then follows an exponential moving
        average; before any training it is tfmot's default [-6, 6].
        """

        def __init__(self, name, decay=quantizers.RANGE_DECAY):
            self.name, self.decay = name, decay

        def build(self, tensor_shape, name, layer):
            def weight(suffix, value):
                return layer.add_weight(
                    f"{self.name}_{suffix}", shape=(), trainable=False, initializer=keras.initializers.Constant(value)
                )

            return {"min_var": weight("min", -6.0), "max_var": weight("max", 6.0), "seen": weight("seen", 0.0)}

        def __call__(self, inputs, training, weights, **kwargs):
            low, high = weights["min_var"], weights["max_var"]
            if training:
                low, high = quantizers.updated_range(tf.cast(inputs, "float32"), low, high, weights["seen"], self.decay)
                low, high = weights["min_var"].assign(low), weights["max_var"].assign(high)
                with tf.control_dependencies([low, high]):
                    weights["seen"].assign(1.0)
            return quantizers.fake_quant_activation(inputs, low, high)

        def get_config(self):
            return {"name": self.name, "decay": self.decay}

    class _AttentionQuantizeConfig(qk.QuantizeConfig):
        """QuantizeConfig of a keras_attention layer: the layer's own forward pass, tfmot's quantizers.

        tfmot's wrapper asks it for "activations": one linear activation per
        named quantization point of the layer and of the layers inside it
        (`point_layers`), each with its own range variables;
        `set_quantize_activations` hands them to the layers, whose `at_point`
        then runs them. Kernels are folded and fake-quantized by the layer
        itself (`convolve`), as under Keras 3, so no weight quantizers and no
        output quantizers (the layer's "output" point covers its outputs).
        """

        layer_class_name = None

        def _points(self, layer):
            if _CONFIGS.get(_quantized_class(layer)) != type(self).__name__:
                raise ValueError(
                    f"{type(self).__name__} quantizes {self.layer_class_name} layers; got "
                    f"{type(layer).__name__} {layer.name!r}. Use quantize_config_for(layer)."
                )
            return [(prefix, sub, sub.quantization_points()) for prefix, sub in point_layers(layer)]

        def get_weights_and_quantizers(self, layer):
            self._points(layer)
            return []

        def get_activations_and_quantizers(self, layer):
            return [
                (keras.activations.linear, _ActivationQuantizer(prefix + name))
                for prefix, _, names in self._points(layer)
                for name in names
            ]

        def set_quantize_weights(self, layer, quantize_weights):
            if quantize_weights:
                raise ValueError(f"{type(self).__name__}: {layer.name!r} quantizes its own kernels.")

        def set_quantize_activations(self, layer, quantize_activations):
            points = self._points(layer)
            expected = sum(len(names) for _, _, names in points)
            if expected != len(quantize_activations):
                raise ValueError(
                    f"{type(self).__name__}: expected {expected} quantization points, got {len(quantize_activations)}."
                )
            remaining = iter(quantize_activations)
            for _, sublayer, names in points:
                sublayer.use_quantizers({name: next(remaining) for name in names})

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

        def __eq__(self, other):
            return type(self) is type(other)

        def __ne__(self, other):
            return not self.__eq__(other)

        __hash__ = object.__hash__

    classes = {}
    for layer_name, config_name in _CONFIGS.items():
        cls = type(
            config_name,
            (_AttentionQuantizeConfig,),
            {
                "layer_class_name": layer_name,
                "__doc__": f"tfmot QuantizeConfig for keras_attention's {layer_name} (int8 end to end in TFLite).",
                "__module__": __name__,
            },
        )
        classes[config_name] = keras.saving.register_keras_serializable(package="keras_attention")(cls)
    classes["_ActivationQuantizer"] = _ActivationQuantizer
    _CLASSES.update(classes)
    return _CLASSES


def __getattr__(name):  # PEP 562: the config classes exist once tfmot is imported
    if name in CONFIG_NAMES:
        return _classes(name)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def quantize_config_for(layer):
    """A new QuantizeConfig for a keras_attention layer, or None for any other layer."""
    name = _quantized_class(layer)
    return None if name is None else _classes()[_CONFIGS[name]]()


def _custom_objects():
    classes = _classes()
    objects = {name: classes[name] for name in CONFIG_NAMES}
    objects.update(_layer_classes())
    return objects


def quantize_scope(*extra):
    """tfmot's `quantize_scope` with keras_attention's layers and QuantizeConfigs in it.

    Use it to load a QAT model saved as `.h5` or a SavedModel directory:
    `with quantize_scope(): model = tf_keras.models.load_model(path)`.
    """
    tfmot = _require("quantize_scope")
    return tfmot.quantization.keras.quantize_scope(_custom_objects(), *extra)
