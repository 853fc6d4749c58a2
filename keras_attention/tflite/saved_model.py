"""SavedModel export of Keras 3 models, and models given as a file or directory path."""

from keras_attention.backend import IS_LEGACY, keras
from keras_attention.tflite._common import (
    _dtype_name,
    _model_inputs,
    _natural_key,
    _pack_inputs,
    _saved_model_signature,
    _tf,
)


def _input_specs(model, batch_size):
    tf = _tf()
    specs = []
    for i, tensor in enumerate(_model_inputs(model)):
        shape = list(tensor.shape)
        shape[0] = batch_size
        specs.append(tf.TensorSpec(shape, _dtype_name(tensor.dtype), name=f"input_{i}"))
    return specs


def _serving_function(model):
    tf = _tf()

    def serve(*args):
        outputs = model(_pack_inputs(model, args), training=False)
        return {
            f"output_{i}": tf.cast(o, "float32") if _dtype_name(o.dtype) in ("float16", "bfloat16") else o
            for i, o in enumerate(tf.nest.flatten(outputs))
        }

    return serve


def export_saved_model(model, directory, batch_size=1, freeze=False):
    """Writes `model` as a SavedModel with one `serving_default` signature.

    Inputs are named `input_0, input_1, ...` (in `model.inputs` order) with the
    batch fixed to `batch_size` (None keeps it free); outputs are
    `output_0, output_1, ...` in flattened output order. Keras 3 goes through
    `keras.export.ExportArchive`; tf_keras through `tf.saved_model.save` of a
    module that tracks the model's variables.

    `freeze=True` (what `convert` uses) folds the weights into the graph as
    constants before saving: a file for conversion or serving, not for further
    training. The TFLite converter then has nothing to freeze and nothing walks
    the variables, so converting MobileNetV2 + CBAM takes a quarter of the
    time (its QAT model: 32 s -> 8 s on 2 CPU cores): the same graph, the same
    ops. A model whose variables TensorFlow cannot fold (`ValueError`) is
    written with its variables.
    """
    tf = _tf()
    specs = _input_specs(model, batch_size)
    serve = _serving_function(model)
    # No gradients in a file for conversion or serving: a custom gradient that captures a variable (keras-hub
    # EfficientNet's swish with a trainable beta) cannot be saved ("invalid capture ... custom gradients").
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    if freeze:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        try:
            frozen = convert_variables_to_constants_v2(
                tf.function(serve, input_signature=specs).get_concrete_function()
            )
        except ValueError:
            return export_saved_model(model, directory, batch_size)
        signature = tf.function(lambda *args: frozen(*args), input_signature=specs)
        tf.saved_model.save(
            tf.Module(), directory, signatures={"serving_default": signature.get_concrete_function()}, options=options
        )
    elif IS_LEGACY:
        module = tf.Module()
        module.model_variables = list(model.variables)
        function = tf.function(serve, input_signature=specs)
        tf.saved_model.save(
            module, directory, signatures={"serving_default": function.get_concrete_function()}, options=options
        )
    else:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve, input_signature=specs)
        archive.write_out(directory, options=options, verbose=False)
    return directory


def saved_model_input_specs(directory):
    """The serving signature's input specs, ordered by name (input_0, input_1, ...)."""
    _, signature = _saved_model_signature(directory)
    specs = signature.structured_input_signature[1]
    return [
        specs[name] if specs[name].name == name else _renamed(specs[name], name)
        for name in sorted(specs, key=_natural_key)
    ]


def _renamed(spec, name):
    return _tf().TensorSpec(spec.shape, spec.dtype, name=name)
