"""Published PyTorch checkpoints into `keras_attention.models`, every tensor accounted for.

A checkpoint key is a PyTorch module path plus a parameter name
(`layer1.0.bn1.running_var`); the module path is the Keras layer's name with
underscores read as dots (`layer1_0_bn1`). The table below says which Keras variable each
parameter of each layer type is and how its layout changes. Before anything
is assigned, every key of the model must be in the file with a fitting shape
and finite values, and every key of the file must belong to the model (or be
one of the two kinds deliberately left out: BatchNorm's `num_batches_tracked`
counter, and the classifier (`fc`, `classifier`) when the model was built without it). Any
difference is an error naming the keys; the model is then left untouched.
"""

import dataclasses
import os
import tarfile

import numpy as np

from keras_attention._optional import first_line, require
from keras_attention.backend import keras
from keras_attention.layers import CBAM, CoordinateAttention, EfficientChannelAttention, SqueezeExcitation
from keras_attention.layers.quantizers import kernel_of


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not match the model's weights (missing, unexpected, wrong shape, not finite)."""


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What a load did: the file, the tensors assigned, and the keys left out on purpose (with why)."""

    path: str
    loaded: int
    skipped: dict  # key -> reason


# Layout changes, PyTorch -> Keras; each with its inverse for the error messages.
def _conv(w):  # (out, in, kh, kw) -> (kh, kw, in, out)
    return w.transpose(2, 3, 1, 0)


def _conv_inverse(shape):
    return (shape[3], shape[2], shape[0], shape[1])


def _linear(w):  # (out, in) -> (in, out)
    return w.T


def _linear_inverse(shape):
    return (shape[-1], shape[-2])


def _linear_as_1x1(w):  # nn.Linear (out, in) -> a 1x1 Conv2D kernel (1, 1, in, out)
    return w.T[None, None]


def _depthwise(w):  # (C * m, 1, kh, kw) -> (kh, kw, C, m), m = 1
    return w.transpose(2, 3, 0, 1)


def _depthwise_inverse(shape):
    return (shape[2] * shape[3], 1, shape[0], shape[1])


def _conv1d(w):  # ECA's nn.Conv1d(1, 1, k) weight (1, 1, k) -> Conv2D kernel (1, k, 1, 1)
    return w.reshape(1, -1, 1, 1)


def _conv1d_inverse(shape):
    return (1, 1, shape[1])


_SAME = (None, None)
_CONV = (_conv, _conv_inverse)
_LINEAR = (_linear, _linear_inverse)
_BATCHNORM = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def _batchnorm(prefix, layer):
    return {
        f"{prefix}.{torch_name}": (getattr(layer, keras_name), _SAME) for torch_name, keras_name in _BATCHNORM.items()
    }


def _kernel_and_bias(prefix, layer, layout=_CONV):
    tensors = {f"{prefix}.weight": (layer.kernel, layout)}
    if layer.use_bias:
        tensors[f"{prefix}.bias"] = (layer.bias, _SAME)
    return tensors


def _tensors_of(layer):
    """checkpoint key -> (Keras variable, (to_keras, torch_shape_of)) for one layer of the model."""
    name = layer.name.replace("_", ".")  # the module path: see keras_attention.models.resnet
    if isinstance(layer, CBAM):  # official names: ChannelGate.mlp (Flatten, Linear, ReLU, Linear), SpatialGate.spatial
        ca, sa = layer.channel_attention, layer.spatial_attention
        tensors = {}
        for index, conv in ((1, ca.mlp_reduce), (3, ca.mlp_expand)):
            tensors.update(_kernel_and_bias(f"{name}.ChannelGate.mlp.{index}", conv, (_linear_as_1x1, _linear_inverse)))
        tensors.update(_kernel_and_bias(f"{name}.SpatialGate.spatial.conv", sa.conv))
        if sa.use_batchnorm:
            tensors.update(_batchnorm(f"{name}.SpatialGate.spatial.bn", sa.bn))
        return tensors
    if isinstance(layer, SqueezeExcitation):  # timm's SEModule: fc1, fc2 as 1x1 convolutions
        return {
            **_kernel_and_bias(f"{name}.fc1", layer.mlp_reduce),
            **_kernel_and_bias(f"{name}.fc2", layer.mlp_expand),
        }
    if isinstance(layer, EfficientChannelAttention):  # timm's EcaModule: conv (Conv1d, no bias)
        return {f"{name}.conv.weight": (layer.conv.kernel, (_conv1d, _conv1d_inverse))}
    if isinstance(layer, CoordinateAttention):  # mbv2_ca.py's CoordAtt: conv1, bn1, conv2 (h), conv3 (w)
        tensors = {}
        for torch_name, conv in (("conv1", layer.conv1), ("conv2", layer.conv_h), ("conv3", layer.conv_w)):
            tensors.update(_kernel_and_bias(f"{name}.{torch_name}", conv))
        if layer.use_batchnorm:
            tensors.update(_batchnorm(f"{name}.bn1", layer.bn1))
        return tensors
    if isinstance(layer, keras.layers.BatchNormalization):
        return _batchnorm(name, layer)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return {f"{name}.weight": (kernel_of(layer), (_depthwise, _depthwise_inverse))}
    if isinstance(layer, keras.layers.Conv2D):
        return _kernel_and_bias(name, layer)
    if isinstance(layer, keras.layers.Dense):
        return _kernel_and_bias(name, layer, _LINEAR)
    if layer.weights:
        raise CheckpointMismatchError(
            f"keras_attention.models: layer {layer.name!r} ({type(layer).__name__}) has weights but no PyTorch "
            "counterpart; load checkpoints into the models of keras_attention.models (before attach or QAT)."
        )
    return {}


def expected_tensors(model):
    """Every checkpoint key `model` needs -> (Keras variable, layout)."""
    tensors = {}
    for layer in model.layers:
        tensors.update(_tensors_of(layer))
    return tensors


def _numpy_dtype(variable):
    return np.dtype(getattr(variable.dtype, "name", variable.dtype))  # tf_keras: a tf.DType


def _listing(keys, limit=8):
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# The classifier modules, left out of a model built with include_top=False.
CLASSIFIERS = ("fc", "classifier")
# Keys a published file spells otherwise than the model file published beside it: mbv2_ca.pth keys its
# classifier `classifier.weight` where mbv2_ca.py's nn.Sequential(Dropout, Linear) makes `classifier.1.weight`.
ALIASES = {"classifier.weight": "classifier.1.weight", "classifier.bias": "classifier.1.bias"}


def assign(model, arrays, path="<arrays>", caller="keras_attention.models.assign"):
    """Assigns a {key: NumPy array} dict in PyTorch layouts to `model`, all or nothing.

    Raises:
        CheckpointMismatchError: a key the model needs is missing, a key of the
            file belongs to no weight of the model, a tensor's shape does not fit,
            or a tensor holds NaN or infinity. Nothing is assigned then.
    """
    expected = expected_tensors(model)
    arrays = {(ALIASES[k] if ALIASES.get(k) in expected else k): v for k, v in arrays.items()}
    has_classifier = any(layer.name.split("_")[0] in CLASSIFIERS for layer in model.layers)
    skipped = {}
    for key in arrays:
        if key.endswith(".num_batches_tracked"):
            skipped[key] = "BatchNorm's step counter (no Keras counterpart)"
        elif key.split(".")[0] in CLASSIFIERS and not has_classifier:
            skipped[key] = "classifier; the model was built with include_top=False"
    missing = expected.keys() - arrays.keys()
    unexpected = arrays.keys() - expected.keys() - skipped.keys()
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights of the model are not in the file: {_listing(missing)}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} tensors of the file belong to no weight of the model: {_listing(unexpected)}"
        )
    values = {}
    for key in sorted(expected.keys() & arrays.keys()):
        variable, (to_keras, torch_shape_of) = expected[key]
        array = arrays[key]
        keras_shape = tuple(variable.shape)
        wanted = torch_shape_of(keras_shape) if torch_shape_of else keras_shape
        if tuple(array.shape) != tuple(wanted):
            problems.append(f"{key}: shape {tuple(array.shape)} in the file, the model needs {tuple(wanted)}")
            continue
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
            problems.append(f"{key}: not finite floating-point values (dtype {array.dtype})")
            continue
        values[key] = (variable, (to_keras(array) if to_keras else array).astype(_numpy_dtype(variable)))
    if problems:
        raise CheckpointMismatchError(
            f"{caller}: {os.fspath(path)!r} does not fit model {model.name!r}; nothing was loaded.\n- "
            + "\n- ".join(problems[:12])
            + (f"\n- ... {len(problems) - 12} more" if len(problems) > 12 else "")
        )
    for variable, value in values.values():
        variable.assign(value)
    return LoadReport(os.fspath(path), len(values), skipped)


def _check_file(path, caller):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{caller}: no checkpoint file at {path!r}.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{caller}: {path!r} is empty (an interrupted download?).")
    return path


def _unwrap_state_dict(checkpoint, path, caller):
    """The state dict inside what torch.save wrote: a bare one, or the official {'state_dict': ...}."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(
            f"{caller}: {path!r} holds {type(checkpoint).__name__}, not a state dict (a dict of tensors, "
            "bare or under 'state_dict')."
        )
    # nn.DataParallel saves every key under "module." (the official CBAM checkpoint does).
    if all(isinstance(key, str) and key.startswith("module.") for key in checkpoint):
        checkpoint = {key[len("module.") :]: value for key, value in checkpoint.items()}
    return checkpoint


def load_torch_checkpoint(model, path):
    """Loads a PyTorch checkpoint (`torch.save` of a state dict) into a `keras_attention.models` model.

    Reads the official CBAM release (`{'state_dict': ...}` with `module.`
    prefixes, from nn.DataParallel) and bare state dicts alike, with
    `torch.load(..., weights_only=True)`: tensors and plain containers only, no
    code from the file runs.

    Args:
        model: a model built by `keras_attention.models` (e.g. `resnet50_cbam()`).
        path: the `.pth` / `.pth.tar` file.

    Returns:
        `LoadReport`: tensors loaded and the keys deliberately left out.

    Raises:
        ImportError: torch is not installed (`pip install "keras-vision-attention[torch]"`).
        ValueError: the file is missing, empty, or not a readable checkpoint.
        CheckpointMismatchError: the tensors do not fit the model (see `assign`).
    """
    caller = "keras_attention.models.load_torch_checkpoint"
    path = _check_file(path, caller)
    torch = require("torch", caller)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for damaged or foreign files
        raise ValueError(_unreadable_torch_file(path, caller, error)) from None
    state = _unwrap_state_dict(checkpoint, path, caller)
    arrays = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{caller}: {path!r}: entry {key!r} is {type(value).__name__}, not a tensor.")
        arrays[key] = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
    return assign(model, arrays, path, caller)


def _torch_reason(error):
    """What torch.load said, less its advice to retry with weights_only=False (which would run the file's code)."""
    lines = []
    for line in str(error).splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if not line or "weights_only" in line.lower() or line.startswith(("Check the documentation", "Weights only")):
            continue
        lines.append(line)
    return lines[0] if lines else type(error).__name__


def _unreadable_torch_file(path, caller, error):
    return (
        f"{caller}: cannot read {path!r} as a PyTorch checkpoint (tried torch.save's zip or pickle format, "
        f"read with torch.load(weights_only=True): tensors and plain containers only): {_torch_reason(error)}. "
        "It is not a readable PyTorch checkpoint: the file is damaged or incomplete, in another format, or "
        "holds Python objects besides tensors, which this loader never unpickles (they could run code). "
        "Download the checkpoint again (docs/models.md lists the published files)."
    )


def load_timm_safetensors(model, path):
    """Loads timm's `model.safetensors` (or any safetensors file with PyTorch names) into a model.

    Needs only the `safetensors` package and NumPy (the `[weights]` extra).

    Args:
        model: a model built by `keras_attention.models` (e.g. `seresnet50()`).
        path: the `.safetensors` file.

    Returns:
        `LoadReport`.

    Raises:
        ImportError: safetensors is not installed.
        ValueError: the file is missing, empty or damaged.
        CheckpointMismatchError: the tensors do not fit the model (see `assign`).
    """
    caller = "keras_attention.models.load_timm_safetensors"
    path = _check_file(path, caller)
    numpy_reader = require("safetensors.numpy", caller)
    try:
        arrays = numpy_reader.load_file(path)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise ValueError(
            f"{caller}: cannot read {path!r} as safetensors (an 8-byte header length, a JSON header, then the "
            f"tensors' bytes): {first_line(error)}. The file is damaged or incomplete: download it again."
        ) from None
    return assign(model, arrays, path, caller)


def load_checkpoint(model, path):
    """`load_timm_safetensors` or `load_torch_checkpoint`, chosen by the file's header (not its name).

    A file that starts like safetensors is read as safetensors; a zip or a
    pickle (what `torch.save` writes) as a PyTorch checkpoint. A file that
    starts like neither is an error naming both formats.
    """
    caller = "keras_attention.models.load_checkpoint"
    path = _check_file(path, caller)
    head = _head(path)
    if _looks_like_safetensors(head):
        return load_timm_safetensors(model, path)
    if not _looks_like_torch(head, path):
        raise ValueError(
            f"{caller}: {path!r} is neither a safetensors file (those start with an 8-byte header length, then "
            "'{') nor a PyTorch checkpoint (torch.save writes a zip, 'PK', or a pickle, byte 0x80); its first "
            f"bytes are {head[:12]!r}. The file is damaged or not a checkpoint: download it again "
            "(docs/models.md lists the published files)."
        )
    return load_torch_checkpoint(model, path)


def _head(path, size=12):
    with open(path, "rb") as handle:
        return handle.read(size)


def _looks_like_safetensors(head):
    """safetensors files start with an 8-byte little-endian header length, then a JSON object."""
    return len(head) >= 9 and head[8:9] == b"{"


def _looks_like_torch(head, path):
    """torch.save writes a zip (PyTorch >= 1.6) or a pickle (protocol 2 or newer: byte 0x80); a tar: before 0.4."""
    return head.startswith((b"PK\x03\x04", b"\x80")) or tarfile.is_tarfile(path)
