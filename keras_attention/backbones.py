"""Attention inside existing models: `attach()` and the fine-tuning helpers.

`attach(model, ...)` walks the graph of a functional Keras model (a Keras
Applications backbone or your own), re-calls a fresh copy of every layer on new
inputs and inserts an attention layer after chosen "anchor" tensors. The
original model is left untouched; its weights are copied into the new one, so
pretrained (e.g. ImageNet) weights survive. With `preserve_outputs=True` the
inserted layers start as the identity, so the new model computes exactly what
the original did until fine-tuning moves them.

`freeze_backbone()` and `unfreeze()` implement the transfer-learning recipe:
train only the attention layers (and a new head) on a frozen backbone, then
unfreeze and fine-tune with a small learning rate; BatchNormalization layers
stay frozen, hence in inference mode, as Keras recommends.

The graph is read through the two Kerases' node APIs (Keras 3:
`node.operation`, `node.arguments`; tf_keras: `node.layer`, `node.call_args`),
told apart by duck typing on the node objects.
"""

import difflib
import inspect

import numpy as np

from keras_attention import _compat, _keras_hub
from keras_attention.backend import image_data_format, keras
from keras_attention.layers.factory import ATTENTIONS, NAME_DEFAULTS, get_attention

WHERE_CHOICES = ("residual", "stages", "blocks")

# Layers that only drop or perturb activations during training: a residual
# branch's anchor is looked up through them, so attention follows the last
# real layer of the branch (e.g. EfficientNet's `_project_bn`, not `_drop`).
_PASS_THROUGH = frozenset(
    {
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianDropout",
        "GaussianNoise",
        "AlphaDropout",
        "StochasticDepth",
        "Identity",
    }
)
_ADD_SYMBOLS = ("__operators__.add", "math.add", "add")  # tf_keras TFOpLambda spellings
_CONCAT_SYMBOLS = ("concat",)
_MISSING = object()
_PROBE_SIZE = 224  # stand-in for unknown spatial sizes when locating stages

try:  # Keras 3
    _tree = keras.tree
except AttributeError:  # tf_keras: TensorFlow's nest has the same two functions
    import tensorflow as _tf

    _tree = _tf.nest


# ----------------------------------------------------------------------------
# The functional graph
# ----------------------------------------------------------------------------


class _Node:
    """One call of a layer (or, in Keras 3, of an operation) in a functional graph."""

    def __init__(self, raw):
        if hasattr(raw, "operation"):  # Keras 3
            self.op = raw.operation
            self.args, self.kwargs = raw.arguments.args, raw.arguments.kwargs
            self.inputs = list(raw.input_tensors)
        else:  # tf_keras
            self.op = raw.layer
            self.args, self.kwargs = raw.call_args, raw.call_kwargs
            self.inputs = list(raw.keras_inputs)
        self.outputs = list(_tree.flatten(raw.outputs))
        self.is_input = bool(raw.is_input)
        self.kind = type(self.op).__name__


def _functional_of(model):
    """The functional graph behind `model`, or a ValueError naming what it got."""
    what = f"{type(model).__name__} {getattr(model, 'name', '')!r}".strip()
    if not isinstance(model, keras.Model):
        raise ValueError(f"attach: expected a functional keras.Model; got {what} ({type(model)!r}).")
    graph = _compat.sequential_graph(model)
    if isinstance(model, keras.Sequential) and graph is None and not _compat.is_graph_network(model, False):
        raise ValueError(
            f"attach: the Sequential model {model.name!r} has no input shape yet, so it cannot "
            "be traced. Start it with `keras.Input(shape)` (or call `build()`), or use the "
            "functional API."
        )
    graph = graph if graph is not None else model
    if not _compat.has_layer_graph(graph) or not _compat.is_graph_network(graph, True):
        raise ValueError(
            f"attach: {what} is a subclassed model, whose `call()` cannot be traced into a "
            "graph of layers. Rebuild it with the functional API (`keras.Model(inputs, "
            "outputs)`) or insert the attention layers in `call()` yourself."
        )
    return graph


class _Graph:
    """The nodes of a functional model in topological order, with tensor bookkeeping."""

    def __init__(self, model):
        self.model = model
        functional = _functional_of(model)
        by_depth = _compat.nodes_by_depth(functional)
        # Keras depths count from the outputs: deeper nodes run first.
        self.nodes = [_Node(raw) for depth in sorted(by_depth, reverse=True) for raw in by_depth[depth]]
        self.inputs_struct = _compat.nested_inputs(functional, functional.inputs)
        self.outputs_struct = _compat.nested_outputs(functional, functional.outputs)
        self.inputs = list(_tree.flatten(self.inputs_struct))
        self.outputs = list(_tree.flatten(self.outputs_struct))

        self.tensors = {}  # id -> tensor, in topological order
        self.producer = {}  # id -> (node, output index)
        self.consumers = {}  # id -> [nodes], a node once per use
        for node in self.nodes:
            for index, t in enumerate(node.outputs):
                self.tensors[id(t)] = t
                self.producer[id(t)] = (node, index)
                self.consumers.setdefault(id(t), [])
            for t in node.inputs:
                self.consumers.setdefault(id(t), []).append(node)
        self.position = {tid: i for i, tid in enumerate(self.tensors)}
        self.calls = {}  # op -> number of nodes calling it
        for node in self.nodes:
            self.calls[id(node.op)] = self.calls.get(id(node.op), 0) + 1

        # Longest path from an input and the set of ancestors (a bitset of positions).
        self.depth, self.ancestors = {}, {}
        for node in self.nodes:
            depth = 1 + max((self.depth[id(t)] for t in node.inputs), default=-1)
            ancestors = 0
            for t in node.inputs:
                ancestors |= self.ancestors[id(t)] | (1 << self.position[id(t)])
            for t in node.outputs:
                self.depth[id(t)], self.ancestors[id(t)] = depth, ancestors

    def is_ancestor(self, a, b):
        """True when tensor `a` is computed before, and used in computing, tensor `b`."""
        return bool(self.ancestors[id(b)] >> self.position[id(a)] & 1)

    def anchor_name(self, t):
        node, index = self.producer[id(t)]
        name = node.op.name
        if self.calls[id(node.op)] > 1:
            name += f"_call{[n for n in self.nodes if n.op is node.op].index(node)}"
        if len(node.outputs) > 1:
            name += f"_{index}"
        return name

    def trunk(self):
        """Tensors that every path from some input to some output goes through.

        A tensor t lies on all paths from input i to output o iff
        paths(i -> t) * paths(t -> o) == paths(i -> o). Python's integers keep the
        counts exact however many branches (ResNet, DenseNet) the model has.
        """
        trunk = set()
        for source in self.inputs:
            paths_in = {id(source): 1}
            for node in self.nodes:
                count = sum(paths_in.get(id(t), 0) for t in node.inputs)
                if count:
                    for t in node.outputs:
                        paths_in[id(t)] = count
            for sink in self.outputs:
                total = paths_in.get(id(sink), 0)
                if not total:
                    continue
                paths_out = {id(sink): 1}
                for node in reversed(self.nodes):
                    count = sum(paths_out.get(id(t), 0) for t in node.outputs)
                    if count:
                        for t in node.inputs:
                            paths_out[id(t)] = paths_out.get(id(t), 0) + count
                trunk.update(tid for tid, n in paths_in.items() if n * paths_out.get(tid, 0) == total)
        return [self.tensors[tid] for tid in self.tensors if tid in trunk]


# ----------------------------------------------------------------------------
# Where to insert
# ----------------------------------------------------------------------------


def _spatial_and_channels(shape, data_format):
    if data_format == "channels_last":
        return tuple(shape[1:3]), shape[3]
    return tuple(shape[2:4]), shape[1]


def _is_image(t):
    return len(t.shape) == 4


def _is_add(node):
    return node.kind == "Add" or (node.kind == "TFOpLambda" and getattr(node.op, "symbol", None) in _ADD_SYMBOLS)


def _is_concat(node):
    return node.kind == "Concatenate" or (
        node.kind == "TFOpLambda" and getattr(node.op, "symbol", None) in _CONCAT_SYMBOLS
    )


def _is_scaled_residual_sum(node):
    # InceptionResNetV2's residual sum is not an Add but its own layer (the same in Keras 3 and tf_keras).
    return node.kind == "CustomScaleLayer" and len(node.inputs) == 2 and hasattr(node.op, "scale")


def _is_pass_through(node):
    if node.kind in _PASS_THROUGH:
        return True
    if node.kind == "Activation":
        activation = node.op.get_config().get("activation")
        return activation in ("linear", None)
    return False


def _residual_anchors(graph):
    """The residual branch of every residual (Add) or dense (Concatenate) merge.

    Add: the shortcut is the input nearest to the model's inputs (fewest layers
    on its longest path; on a tie, the first input); every other input is a
    residual branch. Inception-ResNet's `CustomScaleLayer` (x + scale * r): r.
    Concatenate: a dense connection (DenseNet) when one input is computed from
    another; the inputs computed from another are the new features. The anchor
    is the branch's last layer, looked up through Dropout / StochasticDepth /
    linear Activation.
    """
    anchors = []
    for node in graph.nodes:
        inputs = node.inputs
        if len(inputs) < 2 or len(node.outputs) != 1 or not _is_image(node.outputs[0]):
            continue
        if _is_add(node):
            shortcut = min(range(len(inputs)), key=lambda i: graph.depth[id(inputs[i])])
            branches = [t for i, t in enumerate(inputs) if i != shortcut]
            # Only same-shape branches: a broadcast (e.g. a global-context) add is no residual block.
            branches = [t for t in branches if tuple(t.shape) == tuple(node.outputs[0].shape)]
        elif _is_scaled_residual_sum(node):
            branches = [inputs[1]]  # keras.applications' Inception-ResNet blocks compute x + scale * r
        elif _is_concat(node):
            branches = [t for t in inputs if any(s is not t and graph.is_ancestor(s, t) for s in inputs)]
        else:
            continue
        for t in branches:
            if _is_image(t):
                anchors.append(_through_pass_through(graph, t))
    return anchors


def _through_pass_through(graph, t):
    while True:
        node, _ = graph.producer[id(t)]
        if node.is_input or not _is_pass_through(node) or len(node.inputs) != 1:
            return t
        source = node.inputs[0]
        if len(graph.consumers[id(source)]) != 1 or len(graph.consumers[id(t)]) != 1:
            return t
        t = source


def _is_block(op):
    """A layer built of other layers (keras-hub's InvertedResidualBlock, MBConvBlock, ...), not a model
    (looked into instead) and not one of our attention layers."""
    if isinstance(op, keras.Model) or type(op).__module__.startswith("keras_attention"):
        return False
    return _compat.has_sublayers(op)


def _block_anchors(graph):
    """The output of every block layer (`_is_block`) that computes one 4-D feature map."""
    return [
        node.outputs[0]
        for node in graph.nodes
        if not node.is_input and len(node.outputs) == 1 and _is_image(node.outputs[0]) and _is_block(node.op)
    ]


def _blocks_hint(graph):
    """For "residual matches nothing": the block layers that hide their residual sums, if any."""
    kinds = {}
    for t in _block_anchors(graph):
        kind = graph.producer[id(t)][0].kind
        kinds[kind] = kinds.get(kind, 0) + 1
    if not kinds:
        return ""
    listed = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    return (
        f" Its blocks are single layers ({listed}): any residual sum is inside them, out of attach's reach;"
        " where='blocks' puts attention on each block's output."
    )


def _has_kernel(op):
    return any("kernel" in w.name for w in getattr(op, "weights", ()))


def _stage_anchors(graph, data_format):
    """The last tensor of each resolution along the trunk of the model.

    The trunk is what every input-to-output path goes through (block outputs,
    not the inside of a block or a squeeze-excitation side branch). Walking it
    from the input, each run of one spatial resolution is a stage and its last
    tensor the anchor; padding layers are skipped, the walk stops at a global
    pooling or when the tensor is no longer 4-D (the classifier head), and a
    run with no convolution or dense kernel in it (the raw input, a final
    pooling) is no stage.
    """
    trunk = []
    for t in graph.trunk():
        node, _ = graph.producer[id(t)]
        if not _is_image(t) or node.kind.startswith("Global"):
            break
        if not node.kind.startswith(("ZeroPadding", "Cropping")):
            trunk.append(t)
    sizes = [_spatial_and_channels(t.shape, data_format)[0] for t in trunk]
    if any(d is None for size in sizes for d in size):
        sizes = _probe_sizes(graph, trunk, data_format)
    runs = []  # [size, last tensor]
    for t, size in zip(trunk, sizes):
        if runs and runs[-1][0] == size:
            runs[-1][1] = t
        else:
            runs.append([size, t])
    producers = [graph.producer[tid][0].op for tid in graph.tensors]  # by position
    anchors, previous = [], None
    for _, last in runs:
        # The stage's layers: those computing `last`, but not the previous stage's end.
        inside = graph.ancestors[id(last)] | 1 << graph.position[id(last)]
        if previous is not None:
            inside &= ~(graph.ancestors[id(previous)] | 1 << graph.position[id(previous)])
        if any(_has_kernel(producers[i]) for i in range(inside.bit_length()) if inside >> i & 1):
            anchors.append(last)
        previous = last
    return anchors


def _probe_sizes(graph, tensors, data_format):
    """Spatial sizes of `tensors` on a zero input of _PROBE_SIZE where the model leaves them unknown."""
    probe = keras.Model(graph.inputs, list(tensors))
    feeds = []
    for t in graph.inputs:
        shape = [1] + [_PROBE_SIZE if d is None else d for d in t.shape[1:]]
        feeds.append(np.zeros(shape, getattr(t.dtype, "as_numpy_dtype", t.dtype)))
    outputs = probe(feeds, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [_spatial_and_channels(tuple(o.shape), data_format)[0] for o in outputs]


def _named_anchors(graph, names):
    names = list(names)
    if not names:
        raise ValueError(f"attach: `where` is an empty list, which matches no layer of model {graph.model.name!r}.")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f"attach: `where` must hold layer names (strings); got {bad!r}.")
    known = {node.op.name for node in graph.nodes}
    missing = [n for n in names if n not in known]
    if missing:
        hints = {n: difflib.get_close_matches(n, sorted(known), n=3) for n in missing}
        hint = "; ".join(f"{n!r}: did you mean {h}?" for n, h in hints.items() if h)
        raise ValueError(
            f"attach: no layer named {missing} in model {graph.model.name!r}"
            + (f" ({hint})" if hint else "")
            + ". Layer names are listed by `model.summary()`."
        )
    wanted = set(names)
    return _outputs_of(graph, lambda node: node.op.name in wanted, "where")


def _outputs_of(graph, match, what):
    anchors = []
    for node in graph.nodes:
        if not match(node):
            continue
        for t in node.outputs:
            if not _is_image(t):
                raise ValueError(
                    f"attach: {what} selects layer {node.op.name!r}, whose output has shape "
                    f"{tuple(t.shape)}; attention needs a 4-D feature map."
                )
            anchors.append(t)
    return anchors


def _select_anchors(graph, where, data_format, required=True):
    """The tensors `where` selects in `graph`; with `required=False` an empty list where it would say
    "matches nothing" (a model nested in another, whose other parts may match)."""
    model_name = graph.model.name
    if isinstance(where, str):
        if where == "residual":
            anchors = _residual_anchors(graph)
            if not anchors and required:
                raise ValueError(
                    f"attach: where='residual' matches nothing: model {model_name!r} has no residual "
                    "(Add, or Inception-ResNet's scaled sum) or dense (Concatenate) block on a 4-D feature "
                    "map." + _blocks_hint(graph) + " Use where='stages' (e.g. for VGG, InceptionV3), where='blocks', "
                    "a list of layer names or a callable."
                )
            return anchors
        if where == "blocks":
            anchors = _block_anchors(graph)
            if not anchors and required:
                raise ValueError(
                    f"attach: where='blocks' matches nothing: model {model_name!r} has no block layer (a layer "
                    "built of other layers) whose output is a 4-D feature map. Use where='residual' or 'stages'."
                )
            return anchors
        if where == "stages":
            anchors = _stage_anchors(graph, data_format)
            if not anchors and required:
                raise ValueError(
                    f"attach: where='stages' matches nothing: model {model_name!r} has no "
                    "convolutional stage on a 4-D feature map."
                )
            return anchors
        raise ValueError(
            f"attach: unknown `where` {where!r}; expected {list(WHERE_CHOICES)}, a list of layer "
            "names (e.g. where=[" + repr(where) + "]) or a callable(layer) -> bool."
        )
    if callable(where):
        anchors = _outputs_of(graph, lambda node: bool(where(node.op)), f"where={_describe(where)}")
        if not anchors and required:
            raise ValueError(f"attach: where={_describe(where)} matches no layer of model {model_name!r}.")
        return anchors
    if isinstance(where, (list, tuple, set, frozenset)):
        return _named_anchors(graph, where)
    raise ValueError(
        f"attach: `where` must be {list(WHERE_CHOICES)}, a list of layer names or a "
        f"callable(layer) -> bool; got {where!r} ({type(where).__name__})."
    )


def _describe(fn):
    return getattr(fn, "__qualname__", None) or repr(fn)


# ----------------------------------------------------------------------------
# Rebuilding
# ----------------------------------------------------------------------------


def _attention_class(attention):
    if isinstance(attention, type):
        if attention not in ATTENTIONS.values():
            raise ValueError(
                f"attach: `attention` must be one of {sorted(ATTENTIONS)} or one of their classes; got {attention!r}."
            )
        return attention, next(k for k, v in ATTENTIONS.items() if v is attention)
    key = str(attention).lower()
    if key not in ATTENTIONS:
        raise ValueError(f"attach: unknown `attention` {attention!r}; expected one of {sorted(ATTENTIONS)}.")
    return ATTENTIONS[key], key


def _clone(op):
    """A fresh copy of a layer, from its config, under the same name; stateless operations are shared.

    A custom layer whose `get_config()` returns only its own arguments (Keras'
    automatic config of the constructor's arguments does) has no "name": its
    copy would get a new one (`custom_layer_1`), and a model of the copies would
    lose the original's layer names. Such a config is given the name back when
    the constructor takes it (`**kwargs`); a layer with weights whose copy still
    cannot be made under its name is an error naming it and the fix.
    """
    cls_name = type(op).__name__
    try:
        config = op.get_config()
        copy = op.__class__.from_config(config)
        if copy.name != op.name and isinstance(config, dict) and "name" not in config:
            copy = op.__class__.from_config({**config, "name": op.name})
    except Exception as error:  # noqa: BLE001 - any failure to round-trip the config
        if getattr(op, "weights", None):
            raise ValueError(
                f"attach: layer {op.name!r} ({cls_name}) cannot be re-created from its config "
                f"({type(error).__name__}: {error}); give it a working `get_config()`: "
                f"`return {{**super().get_config(), <its __init__ arguments>}}`, with `**kwargs` in __init__ "
                "passed on to super().__init__."
            ) from None
        return op  # holds no weights: sharing it with the original is harmless
    if copy.name != op.name:
        if not getattr(op, "weights", None):
            return op
        # A constructor that derives its name from the one it is given (keras-hub's DepthwiseConvBlock
        # appends "_0"): Keras 3 lets the name be set back; a functional model reloads a layer under the
        # name its config records, so the copy saves and reloads as the original does.
        try:
            copy.name = op.name
        except (AttributeError, TypeError):
            pass
    if copy.name != op.name:
        raise ValueError(
            f"attach: layer {op.name!r} ({cls_name}) comes back from its config as {copy.name!r}: its "
            "`get_config()` leaves out the layer's name, so attach could neither keep the name nor copy the "
            f"weights to it. In {cls_name}, return `{{**super().get_config(), <its __init__ arguments>}}` from "
            "get_config and take `**kwargs` in __init__, passing them on to super().__init__."
        )
    return copy


def _new_input(t, layer_name):
    dtype = getattr(t.dtype, "name", t.dtype)
    return keras.Input(batch_shape=tuple(t.shape), dtype=dtype, name=layer_name)


def _checked_attention_kwargs(model, cls, preserve_outputs, attention_kwargs):
    """`attach`'s checks before it touches the graph; returns the kwargs with `min_channels` defaulted."""
    attention_kwargs = dict(attention_kwargs)
    for reserved in ("name", "start_as_identity"):
        if reserved in attention_kwargs:
            raise ValueError(
                f"attach: do not pass `{reserved}`: inserted layers are named after their anchor, "
                "and `preserve_outputs` sets `start_as_identity`."
            )
    if "min_channels" in inspect.signature(cls.__init__).parameters and "hidden_channels" not in attention_kwargs:
        attention_kwargs.setdefault("min_channels", 8)
    get_attention(cls, start_as_identity=preserve_outputs, **attention_kwargs)  # bad arguments fail here

    existing = attention_layers(model) if isinstance(model, keras.Model) else []
    if existing:
        raise ValueError(
            f"attach: {getattr(model, 'name', 'the model')!r} already has {len(existing)} attention layer(s) "
            f"({', '.join(repr(layer.name) for layer in existing[:3])}{', ...' if len(existing) > 3 else ''}); "
            "attaching again would stack a second block on each. Call attach once, on the plain backbone."
        )
    return attention_kwargs


def _within_size(anchors, max_size, data_format, model_name):
    """(the anchors whose feature map is at most `max_size` x `max_size`, the largest side of each map)."""
    sizes = [_spatial_and_channels(tuple(t.shape), data_format)[0] for t in anchors]
    if any(None in size for size in sizes):
        raise ValueError(
            f"attach: max_size={max_size} places attention by feature-map size, but model {model_name!r} has "
            "maps of unknown size (its input size is free). Build it with a fixed input_shape, e.g. "
            "input_shape=(224, 224, 3), or choose the blocks with `where`."
        )
    return [t for t, size in zip(anchors, sizes) if max(size) <= max_size], [max(size) for size in sizes]


def _called_models(graph):
    """The functional models `graph` calls as layers (a backbone in a task model or a Sequential), once each."""
    found = {}
    for node in graph.nodes:
        if not node.is_input and isinstance(node.op, keras.Model):
            found.setdefault(id(node.op), node.op)
    return list(found.values())


def _split_names(where, graph):
    """A list of names split by level: (this model's names, {nested model name: names inside it})."""
    if not isinstance(where, (list, tuple, set, frozenset)):
        return where, {}
    here, inside = [], {}
    nested = {m.name for m in _called_models(graph)}
    for name in where:
        head, sep, rest = name.partition("/") if isinstance(name, str) else (name, "", "")
        if not sep:
            here.append(name)
        elif head in nested:
            inside.setdefault(head, []).append(rest)
        else:
            raise ValueError(
                f"attach: `where` names {name!r}, but model {graph.model.name!r} calls no model named {head!r}"
                + (f" (it calls {sorted(nested)})" if nested else " (it calls no nested model)")
                + ". A layer inside a nested model is spelt 'model_name/layer_name'."
            )
    return here, inside


def _traceable(model):
    try:
        _functional_of(model)
    except ValueError:
        return False
    return True


def _plan(model, where, data_format, max_size, opaque):
    """{id(m): (graph of m, anchors in m)} for `model` and each functional model it calls, by the same
    `where`, and the map sizes `max_size` compared (for its error); `opaque` collects the names of the
    called models that cannot be traced."""
    why_not = _keras_hub.refusal(model) if isinstance(where, str) else None
    if why_not:
        raise ValueError(why_not)
    graph = _Graph(model)
    here, inside = _split_names(where, graph)
    is_names = isinstance(where, (list, tuple, set, frozenset))
    anchors = _select_anchors(graph, here, data_format, required=False) if (here or not is_names) else []
    nested = _called_models(graph)
    if where == "stages":  # a nested backbone's last map is its own last stage, not one of this model's
        anchors = [t for t in anchors if not isinstance(graph.producer[id(t)][0].op, keras.Model)]
    sizes = []
    if max_size is not None and anchors:
        anchors, sizes = _within_size(anchors, max_size, data_format, model.name)
    plan = {id(model): (graph, anchors)}
    for sub in nested:
        if is_names and sub.name not in inside:
            continue
        if not is_names and not _traceable(sub):
            opaque.append(sub.name)  # a subclassed model: nothing to rewrite; named if nothing matches
            continue
        sub_plan, sub_sizes = _plan(sub, inside.get(sub.name, where), data_format, max_size, opaque)
        if any(found for _, found in sub_plan.values()) and graph.calls[id(sub)] > 1:
            raise ValueError(
                f"attach: model {sub.name!r} is called {graph.calls[id(sub)]} times in model {model.name!r} "
                "(shared by several branches), so attention inserted in it would be shared too. Attach to "
                f"{sub.name!r} itself, then build {model.name!r} around the result."
            )
        plan.update(sub_plan)
        sizes += sub_sizes
    return plan, sizes


def _nothing_matched(model, where, data_format, max_size, sizes, opaque):
    """The error for a plan with no anchor anywhere: `where`'s own message, max_size's, or the
    subclassed models that kept `where` from looking inside."""
    if opaque:
        raise ValueError(
            f"attach: where={_describe(where)} matches nothing in model {model.name!r}, which calls the "
            f"subclassed model(s) {opaque}: a subclassed model's `call()` cannot be traced into a graph of "
            "layers. Build that backbone with the functional API (keras.applications and keras-hub backbones "
            "are), or insert the attention layers in its `call()` yourself."
        )
    if max_size is not None and sizes:
        smallest = min(sizes)
        raise ValueError(
            f"attach: max_size={max_size} leaves none of the {len(sizes)} blocks where={_describe(where)} "
            f"selects in model {model.name!r}: their maps are {smallest}x{smallest} and larger. Use "
            f"max_size >= {smallest}."
        )
    _select_anchors(_Graph(model), where, data_format)  # raises "matches nothing"
    raise ValueError(  # `where` matched only layers whose blocks max_size removed, or nothing nested
        f"attach: where={_describe(where)} matches nothing in model {model.name!r} or the models it calls."
    )


def attach(model, attention="cbam", where="residual", preserve_outputs=True, max_size=None, **attention_kwargs):
    """A copy of a functional model with attention layers inserted.

    Walks the model's graph, re-creates every layer from its config, re-calls
    it on new inputs and inserts `get_attention(attention, ...)` after each
    anchor tensor; then copies every original layer's weights into its copy
    (by layer name), so ImageNet weights survive. The original model is not
    modified and shares no weights with the result.

    Args:
        model: a functional `keras.Model` (e.g. from `keras.applications`, any
            input size, `include_top` True or False), or a Sequential with a
            known input shape. Functional models it calls as layers (a
            backbone inside a classifier or a Sequential) are rewritten by the
            same `where`, and the outer model keeps its other layers and
            weights; a nested model called more than once is refused (its
            attention would be shared), and a subclassed one cannot be looked
            into. keras-hub backbones and task models are functional too;
            the families with no place for attention by a rule (vision
            transformers, HGNetV2, detection and segmentation models built
            around an image encoder) are refused with the reason.
        attention: a name `get_attention` knows ("cbam", the default; "se",
            "eca", "coord", "gc", ... : timm's `create_attn` names), or one of
            their classes.
        where: where to insert.
            - "residual" (default): on the residual branch of every residual
              block, just before the addition (the CBAM paper's placement:
              after the branch's last BatchNorm). The shortcut is the input of
              the Add nearest to the model's input; Dropout/StochasticDepth just
              before the Add are looked through (attention goes before them).
              A dense connection (DenseNet's Concatenate of a block's input and
              its new features) counts too: attention goes on the new features;
              so does InceptionResNetV2's scaled sum `x + scale * r` (on r).
              NASNet's cells sum pairs of branches: each sum's deeper input
              gets attention. Families without such merges (VGG, MobileNet,
              InceptionV3) are refused with a pointer to "stages".
            - "stages": after the last layer of each resolution stage of the
              backbone's trunk (before each downsampling, and on the last
              feature map), e.g. VGG, which has no residual blocks.
            - "blocks": after every block that is a single layer built of
              other layers (keras-hub's MobileNet and EfficientNetV2 build each
              inverted-residual block so, the residual sum inside, where
              "residual" cannot reach it): on each block's output.
            - a list of layer names: after exactly those layers; a layer of a
              nested model as a path, "backbone/conv2_block1_out".
            - a callable `f(layer) -> bool`: after every layer it accepts.
        max_size: only blocks whose feature map is at most `max_size` on each
            side (e.g. 14: the last two stages of a 224x224 MobileNetV2),
            among those `where` selects. A block's latency on a phone grows with
            the map it pools and multiplies, its parameters with the channels:
            the small late maps carry most of the parameters at a fraction of
            the elementwise work (`benchmarks/attention_cost.py --max-size`
            measures what a placement costs). None: every block.
        preserve_outputs: True (default): attention starts as the identity
            (`start_as_identity=True`), so the new model computes exactly what
            the original did, while every attention weight still receives
            gradient in the first step. False: the paper's initialisation.
        **attention_kwargs: passed to every attention layer (`reduction`,
            `kernel_size`, `gate`, ...). A layer with a `min_channels` argument
            ("cbam", "se", "coord", ...) gets `min_channels=8` unless given (or
            `hidden_channels` is), so thin layers (MobileNet's 16- or
            24-channel blocks) get a hidden width of at least 8 instead
            of an error; ResNet's blocks (256+ channels) are unaffected.

    Returns:
        A new functional model with the same inputs, outputs, layer names and
        weights, plus one attention layer per anchor, named
        `"<anchor layer>_<attention>"` (e.g. "conv2_block1_3_bn_cbam").

    Raises:
        ValueError: a model that cannot be traced (subclassed, or a Sequential
            without input shape), an unknown attention, an unknown layer name in
            `where`, a `where` that matches nothing, a layer whose output is
            not a 4-D feature map, or a model that already holds attention
            layers (attach once, on the plain backbone).

    Example:
    >>> backbone = keras.applications.ResNet50(weights=None, include_top=False,
    ...                                        input_shape=(64, 64, 3))
    >>> model = attach(backbone, "cbam", where="residual", reduction=16)
    >>> len([l for l in model.layers if l.name.endswith("_cbam")])
    16
    """
    cls, suffix = _attention_class(attention)
    attention_kwargs = {**NAME_DEFAULTS.get(suffix, {}), **attention_kwargs}
    attention_kwargs = _checked_attention_kwargs(model, cls, preserve_outputs, attention_kwargs)
    data_format = attention_kwargs.get("data_format") or image_data_format()
    if max_size is not None:
        from keras_attention._checks import check_int

        max_size = check_int("attach", "max_size", max_size)
    opaque = []
    plan, sizes = _plan(model, where, data_format, max_size, opaque)
    if not any(anchors for _, anchors in plan.values()):
        _nothing_matched(model, where, data_format, max_size, sizes, opaque)

    def make_layer(name):
        return get_attention(cls, start_as_identity=preserve_outputs, name=name, **attention_kwargs)

    return _rebuild(model, plan, make_layer, suffix)


def _rebuild(model, plan, make_layer, suffix):
    """A copy of `model` with attention after its planned anchors; a called model with anchors of its
    own in `plan` is rebuilt the same way, any other layer copied from its config with its weights."""
    graph, selected = plan[id(model)]
    anchors = {id(t): t for t in selected}
    taken = {node.op.name for node in graph.nodes}
    clones, tensor_map = {}, {}

    def insert_after(t, new_t):
        name = f"{graph.anchor_name(t)}_{suffix}"
        while name in taken:
            name += "_"
        taken.add(name)
        try:
            return make_layer(name)(new_t)
        except ValueError as error:
            raise ValueError(f"attach: cannot insert {suffix!r} after {graph.anchor_name(t)!r}: {error}") from None

    def substitute(x):
        return tensor_map[id(x)] if graph.tensors.get(id(x), _MISSING) is x else x

    for node in graph.nodes:
        if node.is_input:
            (t,) = node.outputs
            new_outputs = [_new_input(t, node.op.name)]
        else:
            if id(node.op) not in clones:
                if id(node.op) in plan and _holds_anchors(node.op, plan):
                    clones[id(node.op)] = (node.op, _rebuild(node.op, plan, make_layer, suffix), False)
                else:
                    clones[id(node.op)] = (node.op, _clone(node.op), True)
            new_op = clones[id(node.op)][1]
            args = _tree.map_structure(substitute, node.args)
            kwargs = _tree.map_structure(substitute, node.kwargs)
            new_outputs = list(_tree.flatten(new_op(*args, **kwargs)))
        for t, new_t in zip(node.outputs, new_outputs):
            tensor_map[id(t)] = insert_after(t, new_t) if id(t) in anchors else new_t

    new_model = keras.Model(
        _tree.map_structure(substitute, graph.inputs_struct),
        _tree.map_structure(substitute, graph.outputs_struct),
        name=model.name,
    )
    pyramid = getattr(model, "pyramid_outputs", None)
    if isinstance(pyramid, dict) and all(graph.tensors.get(id(t), _MISSING) is t for t in pyramid.values()):
        # keras-hub's backbones name their stage outputs; its detection and segmentation backbones
        # (RetinaNet, DeepLabV3, BASNet) are built from an encoder's `pyramid_outputs`.
        new_model.pyramid_outputs = {level: tensor_map[id(t)] for level, t in pyramid.items()}
    # Every copy kept its original's name (_clone) and is the layer the new model calls; a rebuilt
    # nested model copied its own layers' weights.
    for original, copy, copy_weights in clones.values():
        if copy_weights and copy is not original and getattr(original, "weights", None):
            copy.set_weights(original.get_weights())
    return new_model


def _holds_anchors(model, plan):
    graph, anchors = plan[id(model)]
    return bool(anchors) or any(id(m) in plan and _holds_anchors(m, plan) for m in _called_models(graph))


def attention_layers(model):
    """The attention blocks `attach` inserts (CBAM, channel, spatial, SE, ECA) in `model`, nested models
    included, in order. ThunderNet's and CenterMask's layers are heads a model is built with, not blocks
    `attach` inserts, so they are not listed (and do not stop `attach` on a model that has them)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, tuple(ATTENTIONS.values())):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(attention_layers(layer))
    return found


# ----------------------------------------------------------------------------
# Fine-tuning
# ----------------------------------------------------------------------------


def _set_trainable(model, decide):
    """`decide(layer)` -> True/False, or None to recurse into a nested model."""
    model.trainable = True  # so that the children's own flags count
    for layer in model.layers:
        verdict = decide(layer)
        if verdict is None and isinstance(layer, keras.Model):
            _set_trainable(layer, decide)
        else:
            layer.trainable = bool(verdict)


def _layer_matcher(model, layers, what):
    if layers is None:
        return lambda layer: False
    if callable(layers):
        return lambda layer: bool(layers(layer))
    names = [layers] if isinstance(layers, str) else list(layers)
    known = set()
    stack = [model]
    while stack:
        for layer in stack.pop().layers:
            known.add(layer.name)
            if isinstance(layer, keras.Model):
                stack.append(layer)
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"{what}: no layer named {missing} in model {model.name!r}.")
    wanted = set(names)
    return lambda layer: layer.name in wanted


def freeze_backbone(model, train_attention=True, keep_trainable=None):
    """Freezes every layer except the attention layers (and `keep_trainable`).

    The first step of fine-tuning a backbone after `attach()`: with the
    pretrained layers frozen, only the new attention layers and a new head
    learn. Frozen BatchNormalization layers run in inference mode (their
    moving statistics are used and not updated), as Keras recommends. Compile
    the model after calling this (Keras reads `trainable` at compile time).

    Args:
        model: a Keras model; nested models (e.g. a backbone inside a
            classifier) are handled layer by layer.
        train_attention: keep the keras_attention layers trainable (True).
        keep_trainable: layers that stay trainable too (e.g. the new head): a
            list of layer names or a callable `f(layer) -> bool`.

    Returns:
        `model`, for chaining.

    Example:
    >>> freeze_backbone(model, keep_trainable=["head"])  # doctest: +SKIP
    """
    keep = _layer_matcher(model, keep_trainable, "freeze_backbone")
    attention_types = tuple(ATTENTIONS.values())

    def decide(layer):
        if (train_attention and isinstance(layer, attention_types)) or keep(layer):
            return True
        return None if isinstance(layer, keras.Model) else False

    _set_trainable(model, decide)
    return model


def unfreeze(model, keep_batchnorm_frozen=True):
    """Makes every layer trainable again, BatchNormalization excepted by default.

    The second step of fine-tuning: train the whole network with a small
    learning rate. Keeping BatchNormalization frozen keeps it in inference mode
    (Keras' advice: updating its statistics on a small dataset destroys what
    the model learned). Compile the model after calling this.

    Args:
        model: a Keras model; nested models are handled layer by layer.
        keep_batchnorm_frozen: leave BatchNormalization layers frozen (True).

    Returns:
        `model`, for chaining.
    """

    def decide(layer):
        if isinstance(layer, keras.Model):
            return None
        return not (keep_batchnorm_frozen and isinstance(layer, keras.layers.BatchNormalization))

    _set_trainable(model, decide)
    return model
