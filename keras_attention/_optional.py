"""Optional dependencies: imported on use; a missing one is an error naming the extra that installs it."""

import importlib

# module -> the extra of keras-vision-attention that installs it (pyproject.toml)
EXTRAS = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "tf2onnx": "onnx",
    "openvino": "openvino",
    "jax2onnx": "jax-onnx",
    "torch": "torch",
    "safetensors": "weights",
    "safetensors.numpy": "weights",
}


def require(module, caller):
    """Imports `module`; a missing one raises an ImportError naming `caller` and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = EXTRAS.get(module)
        how = f'pip install "keras-vision-attention[{extra}]"' if extra else f"pip install {module}"
        raise ImportError(f"{caller}: needs the `{module}` package ({error}); install it with {how}.") from None


def first_line(error):
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
