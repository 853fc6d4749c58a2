"""Reading a `.tflite` flatbuffer: op inventory, int8 coverage, degenerate scales, GPU delegate fit."""

import contextlib
import functools
import io
import os
from collections import Counter

import numpy as np

from keras_attention.tflite._common import _FLOAT_TYPES, _TFLITE_IDENTIFIER, InvalidTFLiteModelError, _tf


def load_flatbuffer(tflite_model):
    """The bytes of a `.tflite` model given as bytes or a path, checked to be a readable TFLite flatbuffer.

    Raises:
        FileNotFoundError: no file at the path.
        InvalidTFLiteModelError: not a TFLite flatbuffer, or corrupt/truncated.
    """
    source = "the given bytes"
    if isinstance(tflite_model, (str, os.PathLike)):
        source = os.fspath(tflite_model)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"keras_attention.tflite: no .tflite file at {source!r}.")
        with open(source, "rb") as handle:
            data = handle.read()
    elif isinstance(tflite_model, (bytes, bytearray, memoryview)):
        data = bytes(tflite_model)
    else:
        raise TypeError(
            "keras_attention.tflite: expected the .tflite model as bytes or a file path; got "
            f"{type(tflite_model).__name__}."
        )
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise InvalidTFLiteModelError(
            f"keras_attention.tflite: {source} ({len(data)} bytes) is not a TFLite model: a .tflite "
            f"flatbuffer carries the identifier {_TFLITE_IDENTIFIER!r} at bytes 4-8, found "
            f"{data[4:8]!r}. It is corrupt or truncated, or not a .tflite file; convert the model again."
        )
    try:
        # Every reader here, run once (cached): a damaged file fails now, with the clear error, and not
        # later inside one of them (a name that is not UTF-8, an offset past the end, a negative length).
        _walk(data)
        _inventory(data)
        _degenerate(data)
    except Exception as error:  # noqa: BLE001 - any parse failure means a damaged file
        raise InvalidTFLiteModelError(
            f"keras_attention.tflite: {source} ({len(data)} bytes) starts like a TFLite model but is "
            f"corrupt or truncated ({type(error).__name__}: {error}); convert the model again."
        ) from error
    return data


@functools.lru_cache(maxsize=8)  # verify() and convert() inspect one file several ways: walk and parse it once
def _walk(data):
    """Touches every table the tools here read; raises on a damaged flatbuffer."""
    model = _schema().Model.GetRootAsModel(data, 0)
    if model.Version() != 3:
        raise ValueError(f"schema version {model.Version()}, expected 3")
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()
            indices = [op.Inputs(i) for i in range(op.InputsLength())]
            indices += [op.Outputs(i) for i in range(op.OutputsLength())]
            for t in indices:
                if t >= 0:
                    tensor = graph.Tensors(int(t))
                    tensor.Type()
                    tensor.Name()
                    if tensor.Buffer() >= model.BuffersLength():
                        raise ValueError(f"tensor {t} points past the buffer table")


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - litert missing
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _enum_names(enum_class):
    return {
        value: name for name, value in vars(enum_class).items() if not name.startswith("_") and isinstance(value, int)
    }


def _parse(data):
    """(model, type_names, op_names) of a checked flatbuffer."""
    schema = _schema()
    return schema.Model.GetRootAsModel(data, 0), _enum_names(schema.TensorType), _enum_names(schema.BuiltinOperator)


def _is_constant(model, tensor):
    index = tensor.Buffer()
    if index <= 0 or index >= model.BuffersLength():
        return False
    buffer = model.Buffers(index)
    return buffer.DataLength() > 0 or buffer.Offset() > 1


def op_inventory(tflite_model):
    """Every operator of a `.tflite` model, in execution order.

    Returns a list of dicts: `op` (builtin name, or the custom name such as
    `FlexMatrixDeterminant`), `builtin`, `dtype` (the activation type, e.g.
    "int8" or "float32"; "float32->int8" for a type change such as QUANTIZE;
    "+int8 weights" when constant inputs have another type, as in hybrid ops),
    `subgraph`, `inputs`/`outputs` (runtime tensor dtypes) and `output_names`
    via `outputs`' TF name scopes.
    """
    return [dict(op) for op in _inventory(load_flatbuffer(tflite_model))]


@functools.lru_cache(maxsize=8)
def _inventory(data):
    model, type_names, op_names = _parse(data)
    ops = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        graph_inputs = set(graph.InputsAsNumpy().tolist()) if graph.InputsLength() else set()
        graph_outputs = set(graph.OutputsAsNumpy().tolist()) if graph.OutputsLength() else set()
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin_code = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = op_names.get(builtin_code, str(builtin_code))
            builtin = name != "CUSTOM"
            if not builtin:
                custom = code.CustomCode()
                name = custom.decode() if isinstance(custom, bytes) else str(custom)
            runtime_in, const_in, in_idx = [], [], []
            for t in op.InputsAsNumpy().tolist() if op.InputsLength() else []:
                if t < 0:
                    continue
                tensor = graph.Tensors(t)
                kind = type_names.get(tensor.Type(), str(tensor.Type())).lower()
                (const_in if _is_constant(model, tensor) else runtime_in).append(kind)
                if not _is_constant(model, tensor):
                    in_idx.append(t)
            out_types, out_names, out_idx = [], [], []
            for t in op.OutputsAsNumpy().tolist() if op.OutputsLength() else []:
                tensor = graph.Tensors(t)
                out_types.append(type_names.get(tensor.Type(), str(tensor.Type())).lower())
                raw = tensor.Name()
                out_names.append(raw.decode() if isinstance(raw, bytes) else str(raw))
                out_idx.append(t)
            first_in = runtime_in[0] if runtime_in else (const_in[0] if const_in else "none")
            first_out = out_types[0] if out_types else first_in
            dtype = first_in if first_in == first_out else f"{first_in}->{first_out}"
            # Weights of another type: int8 (dynamic range) or float16 consumed directly.
            other = sorted({t for t in const_in if t != first_in and t not in ("int32", "int64")})
            if other and name not in ("QUANTIZE", "DEQUANTIZE"):
                dtype += f"+{'/'.join(other)} weights"
            ops.append(
                dict(
                    op=name,
                    builtin=builtin,
                    dtype=dtype,
                    subgraph=s,
                    inputs=runtime_in,
                    constants=const_in,
                    output_types=out_types,
                    outputs=out_names,
                    reads_graph_input=any(t in graph_inputs for t in in_idx),
                    writes_graph_output=any(t in graph_outputs for t in out_idx),
                )
            )
    return tuple(ops)


# Ops whose multiply-adds are counted: the weight layers. Elementwise ops are counted apart (one op per
# output element) as `elementwise`: MUL, ADD, SUB, the activations, the pools' and means' outputs.
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL")
_ELEMENTWISE_OPS = (
    "ADD", "SUB", "MUL", "DIV", "LOGISTIC", "HARD_SWISH", "RELU", "RELU6", "EXP", "RSQRT",
    "SQUARED_DIFFERENCE", "MAXIMUM", "MINIMUM",
)  # fmt: skip


def multiply_adds(tflite_model):
    """Multiply-adds of a `.tflite` model per inference, counted from its graph (batch 1).

    Returns `{"weights": n, "elementwise": m, "by_op": {op: n}}`: `weights` is
    the multiply-adds of the weight layers (CONV_2D: H_out W_out C_out k_h k_w
    C_in / groups; DEPTHWISE_CONV_2D: H_out W_out C_out k_h k_w; FULLY_CONNECTED
    and BATCH_MATMUL: output size times the reduced dimension), what papers
    call MAdds or FLOPs / 2; `elementwise` counts one operation per output
    element of the elementwise ops (the gates' products, the activations), which
    papers leave out and phones pay for. Shapes are the file's; a free (-1)
    batch counts as 1.
    """
    model, _, op_names = _parse(load_flatbuffer(tflite_model))
    by_op, elementwise = {}, 0
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "")

            def shape(i, io, graph=graph):
                return [max(int(d), 1) for d in graph.Tensors(io(i)).ShapeAsNumpy()]

            if name in _ELEMENTWISE_OPS and op.OutputsLength():
                elementwise += int(np.prod(shape(0, op.Outputs)))
            if name not in _WEIGHT_OPS:
                continue
            out = shape(0, op.Outputs)
            if name == "CONV_2D":  # kernel (C_out, k_h, k_w, C_in / groups)
                count = np.prod(out) * np.prod(shape(1, op.Inputs)[1:])
            elif name == "DEPTHWISE_CONV_2D":  # kernel (1, k_h, k_w, C_out)
                count = np.prod(out) * np.prod(shape(1, op.Inputs)[1:3])
            elif name == "TRANSPOSE_CONV":  # inputs: output shape, kernel (C_out, k_h, k_w, C_in), input
                count = np.prod(shape(2, op.Inputs)) * np.prod(shape(1, op.Inputs))
            else:  # FULLY_CONNECTED, BATCH_MATMUL: the input's last dimension is reduced
                count = np.prod(out) * shape(0, op.Inputs)[-1]
            by_op[name] = by_op.get(name, 0) + int(count)
    return {"weights": sum(by_op.values()), "elementwise": elementwise, "by_op": by_op}


def op_counts(tflite_model):
    """`Counter` of `(op, dtype)` over the model's operators."""
    return Counter((op["op"], op["dtype"]) for op in op_inventory(tflite_model))


def float_ops(tflite_model):
    """Operators that touch a float tensor, apart from the QUANTIZE of a graph input
    and the DEQUANTIZE of a graph output (the float interface of an int8 model)."""
    found = []
    for op in op_inventory(tflite_model):
        types = op["inputs"] + op["constants"] + op["output_types"]
        if not any(t in _FLOAT_TYPES for t in types):
            continue
        if op["op"] == "QUANTIZE" and op["reads_graph_input"]:
            continue
        if op["op"] == "DEQUANTIZE" and op["writes_graph_output"]:
            continue
        found.append(op)
    return found


def is_int8_end_to_end(tflite_model):
    """True when every op between input and output computes in int8 (full-integer)."""
    ops = op_inventory(tflite_model)
    has_int8 = any("int8" in op["dtype"] and "weights" not in op["dtype"] for op in ops)
    return has_int8 and not float_ops(tflite_model)


def quantization_kind(tflite_model):
    """Best guess of how a model was converted: float32, float16, dynamic or int8."""
    ops = op_inventory(tflite_model)
    if is_int8_end_to_end(tflite_model):
        return "int8"
    if any("int8 weights" in op["dtype"] for op in ops):
        return "dynamic"
    if any(op["op"] == "DEQUANTIZE" and op["dtype"].startswith("float16") for op in ops):
        return "float16"
    if any(op["dtype"].startswith("int8") for op in ops):
        return "int8 (partly float)"
    return "float32"


# An int8 activation whose calibrated range collapsed to (almost) a point gets a
# scale near 1e-8; the XNNPACK int8 kernels abort the process on such models
# ("double free or corruption"), e.g. a ChannelAttention still at its
# `start_as_identity` initialisation, whose logits are exactly 0 for every input.
DEGENERATE_SCALE = 1e-7


def degenerate_activations(tflite_model):
    """Names of quantized activation tensors whose scale is below `DEGENERATE_SCALE`, or not finite.

    Such a tensor never varied during calibration (constant activations: a
    layer at an identity initialisation, dead units, constant calibration
    data). XNNPACK's int8 kernels can crash the process on them, so `convert`
    and `verify` run such a model once in a child process first: a crash
    becomes a clear error, a model that runs gets a warning.
    """
    return list(_degenerate(load_flatbuffer(tflite_model)))


@functools.lru_cache(maxsize=8)
def _degenerate(data):
    model = _schema().Model.GetRootAsModel(data, 0)
    found = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            quant = tensor.Quantization()
            if quant is None or not quant.ScaleLength() or _is_constant(model, tensor):
                continue
            if tensor.Type() not in (_schema().TensorType.INT8, _schema().TensorType.UINT8, _schema().TensorType.INT16):
                continue
            scales = quant.ScaleAsNumpy()
            if not np.all(np.isfinite(scales)) or float(np.min(scales)) < DEGENERATE_SCALE:
                raw = tensor.Name()
                found.append(raw.decode() if isinstance(raw, bytes) else str(raw))
    return tuple(found)


# Builtin ops TensorFlow Lite's GPU delegate has a kernel for (the op list of
# tensorflow/lite/tools/versioning/gpu_compatibility.cc). The analyzer's own
# GPU check in TF 2.21 / ai-edge-litert 2.3 passes every model we tried, even
# TOPK_V2 or a CAST to int64 that this list lacks, so `verify` reports both.
GPU_DELEGATE_OPS = frozenset(
    """
ABS ADD ADD_N ATAN2 AVERAGE_POOL_2D BATCH_MATMUL CAST CEIL CONCATENATION CONV_2D COS CUMSUM DENSIFY
DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP FLOOR
FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GELU GREATER GREATER_EQUAL HARD_SWISH LEAKY_RELU LESS LESS_EQUAL
LOG LOGICAL_AND LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL ONE_HOT PACK PAD
PADV2 POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN REDUCE_PROD RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR
RESIZE_NEAREST_NEIGHBOR RSQRT SELECT SELECT_V2 SIGN SIN SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SPLIT_V SQRT
SQUARE SQUARED_DIFFERENCE STABLEHLO_CLAMP STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE TRANSPOSE_CONV
""".split()
)


def gpu_unsupported_ops(tflite_model):
    """Ops of the model that TensorFlow Lite's GPU delegate has no kernel for (sorted, unique)."""
    return sorted({op["op"] for op in op_inventory(tflite_model) if op["op"] not in GPU_DELEGATE_OPS})


def gpu_compatibility(tflite_model):
    """What TensorFlow Lite's analyzer says about the GPU delegate.

    Returns `(compatible, issues, text)`: the analyzer's verdict, its
    "GPU COMPATIBILITY WARNING" lines, and its whole printed report.
    """
    tf = _tf()
    data = load_flatbuffer(tflite_model)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        tf.lite.experimental.Analyzer.analyze(model_content=data, gpu_compatibility=True)
    text = buffer.getvalue()
    issues = [line.strip() for line in text.splitlines() if "GPU COMPATIBILITY WARNING" in line]
    compatible = "looks compatible with GPU delegate" in text and not issues
    return compatible, issues, text
