"""Broken `.tflite` files made on purpose, for the tests and `tools/bad_input_battery.py`."""

import numpy as np


def with_last_activation_scale(flatbuffer, scale):
    """The flatbuffer with the scale of its last int8 activation (per-tensor) replaced by `scale`."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=flatbuffer).get_tensor_details()
    old = [
        d["quantization_parameters"]["scales"][0]
        for d in details
        if d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) == 1
    ][-1]
    pattern = np.float32(old).tobytes()
    assert pattern in flatbuffer  # control: the scale is stored where we patch it
    return flatbuffer.replace(pattern, np.float32(scale).tobytes())


def with_tensor_name_not_utf8(flatbuffer):
    """The flatbuffer with the first byte of its last tensor's name replaced by 0xFF (never valid UTF-8)."""
    from ai_edge_litert.interpreter import Interpreter

    name = Interpreter(model_content=flatbuffer).get_tensor_details()[-1]["name"].encode()
    assert flatbuffer.count(name) >= 1  # control: the name is stored where we patch it
    at = flatbuffer.rindex(name)
    return flatbuffer[:at] + b"\xff" + flatbuffer[at + 1 :]


def with_byte_flipped(flatbuffer, position):
    """The flatbuffer with every bit of one byte inverted (a tampered structure offset, length or name)."""
    data = bytearray(flatbuffer)
    data[position] ^= 0xFF
    return bytes(data)


def output_steps(flatbuffer):
    """The int8 step (scale) of each model output, read where the int8 value leaves the graph: the
    input of its DEQUANTIZE (float outputs) or the output tensor itself (int8 outputs)."""
    from ai_edge_litert.interpreter import Interpreter

    from keras_attention import _compat

    interpreter = Interpreter(model_content=flatbuffer)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    dequantized_from = {
        op["outputs"][0]: op["inputs"][0]
        for op in _compat.interpreter_ops(interpreter)
        if op["op_name"] == "DEQUANTIZE"
    }
    steps = []
    for output in interpreter.get_output_details():
        source = details[dequantized_from.get(output["index"], output["index"])]
        scales = source["quantization_parameters"]["scales"]
        assert len(scales) == 1, f"output {output['name']} is not per-tensor int8: {scales}"
        steps.append(float(scales[0]))
    return steps


def assert_within_int8_steps(report, flatbuffer, steps):
    """The LiteRT outputs are within `steps` int8 steps of Keras' everywhere (cosine ignores scale: a wrong
    output scale or zero point keeps the cosine and fails this)."""
    step = max(output_steps(flatbuffer))
    assert report.max_abs_error <= steps * step, (
        f"max |tflite - keras| {report.max_abs_error:.4g} is {report.max_abs_error / step:.1f} int8 steps "
        f"({step:.4g}); expected at most {steps}\n{report}"
    )
