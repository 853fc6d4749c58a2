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
