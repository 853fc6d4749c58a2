"""The private APIs of Keras, tf_keras, TensorFlow and LiteRT the package relies on, in one place.

None of these has a public equivalent. Each function says what it is for and
what breaks without it; all were checked on Keras 3.15.1, tf_keras 2.21,
TensorFlow 2.21 and ai-edge-litert 2.3. When an upgrade moves one, this file is
the one to change (tfmot's wrapper classes stay in `quantization/tfmot.py`, the
only module that may import tfmot).
"""


# ----------------------------------------------------------------------------- the layer graph
# `attach` and Keras 3 QAT rebuild a model layer by layer. Keras offers the layers
# (`model.layers`) but not the graph between them; both Kerases keep it in a
# functional model's `_nodes_by_depth` ({depth: [Node]}, depth 0 at the outputs).


def has_layer_graph(model):
    """True for a functional model (or a built Sequential's graph): one whose layer graph can be read."""
    return hasattr(model, "_nodes_by_depth")


def nodes_by_depth(model):
    return model._nodes_by_depth


def is_graph_network(model, default):
    """tf_keras marks functional (and built Sequential) models `_is_graph_network`; Keras 3 has no such flag."""
    return getattr(model, "_is_graph_network", default)


def sequential_graph(model):
    """The functional model Keras 3 keeps inside a built Sequential (`_functional`; None before it is built)."""
    return getattr(model, "_functional", None)


def nested_inputs(model, default):
    """The model's inputs in the structure it was built with (a dict or nested list), not flattened."""
    return _first_attribute(model, ("_inputs_struct", "_nested_inputs"), default)  # Keras 3, tf_keras


def nested_outputs(model, default):
    return _first_attribute(model, ("_outputs_struct", "_nested_outputs"), default)


def _first_attribute(obj, names, default):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return default


def call_count(layer):
    """How many times `layer` was called in a graph (a layer shared by two calls cannot be fused)."""
    return len(layer._inbound_nodes)


def outer_call(layer, model):
    """`(input_tensors, output_tensors)` of the call of `layer` in `model`'s graph, or None.

    A nested model (a backbone inside a task model or a Sequential) answers
    `.input`/`.output` with its own graph's tensors; the tensors of its call in
    the enclosing graph are kept only on that graph's node (Keras 3 and
    tf_keras). Used to look inside nested models (visualize). None when
    `layer` is not called exactly once in `model`.
    """
    graph = sequential_graph(model) or model
    if not has_layer_graph(graph):
        return None
    in_graph = {id(node) for nodes in nodes_by_depth(graph).values() for node in nodes}
    calls = [node for node in layer._inbound_nodes if id(node) in in_graph]
    return (calls[0].input_tensors, calls[0].output_tensors) if len(calls) == 1 else None


def run_through_graph(model, inputs, operation_fn):
    """Keras 3 `Functional._run_through_graph`: re-runs the graph with each layer replaced by
    `operation_fn(layer)`, which is how QAT swaps layers without re-tracing user code."""
    return model._run_through_graph(inputs, operation_fn=operation_fn)


def has_been_called(model):
    """Keras 3's exporters (`model.export`) refuse a model that was never called (`_called`), even a
    functional one whose graph is complete; there is no public flag."""
    return bool(getattr(model, "_called", True))


def has_sublayers(layer):
    """True for a layer built of other layers (its own attributes hold layers), e.g. keras-hub's blocks."""
    flatten = getattr(layer, "_flatten_layers", None)
    return flatten is not None and any(True for _ in flatten(include_self=False, recursive=False))


def flatten_layers(model):
    """Every layer inside `model`, recursively (sub-layers of custom layers too), or None where Keras
    lacks `_flatten_layers` (what it uses itself to collect them; `model.layers` stops at one level)."""
    if not hasattr(model, "_flatten_layers"):
        return None
    try:
        return list(model._flatten_layers(include_self=False, recursive=True))
    except TypeError:  # pragma: no cover - an older signature
        return None


# ----------------------------------------------------------------------------- TensorFlow


def in_xla_context():
    """True while TensorFlow traces a function for XLA (`jit_compile=True`); there is no public test.
    Layers use it to pick formulations XLA compiles well (see `backend.xla_compiling`)."""
    import tensorflow as tf

    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - TensorFlow moved its internals: the plain layers run
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


# ----------------------------------------------------------------------------- LiteRT


def interpreter_signatures(interpreter):
    """{signature: {"inputs": {name: index}, "outputs": {...}}}: names a model's inputs in the order
    they were declared, which `get_input_details()` does not keep."""
    return interpreter._get_full_signature_list()


def interpreter_ops(interpreter):
    """The executed ops after delegation: a "DELEGATE" op means XNNPACK took part of the graph."""
    return interpreter._get_ops_details()
