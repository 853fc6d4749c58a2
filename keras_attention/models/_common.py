"""What the builders of keras_attention.models share: where the published checkpoints are, argument checks."""

import os

from keras_attention._checks import check_int

POOLINGS = (None, "avg", "max")

# Where each builder's published checkpoint is (README.md's table, docs/models.md); nothing is downloaded.
PUBLISHED = {
    "resnet50_cbam": "RESNET50_CBAM_new_name_wrap.pth from the official CBAM repository "
    "(github.com/Jongchan/attention-module, the link in its README; reading it needs torch)",
    "resnet101_cbam": "none is published (the CBAM authors released only ResNet-50 weights); pass a checkpoint "
    "you trained with the official code",
    "seresnet50": "model.safetensors of timm/seresnet50.ra2_in1k on the Hugging Face Hub",
    "ecaresnet50d": "model.safetensors of timm/ecaresnet50d.miil_in1k on the Hugging Face Hub",
    "ecaresnet101d": "model.safetensors of timm/ecaresnet101d.miil_in1k on the Hugging Face Hub",
    "mobilenetv2_ca": "mbv2_ca.pth from the Coordinate Attention repository (github.com/houqb/CoordAttention, "
    "linked in its README; reading it needs torch)",
}


def check_weights(caller, key, weights):
    """`weights` is None or the path of an existing file; names where the published file is otherwise."""
    if weights is None:
        return
    where = PUBLISHED.get(key, "docs/models.md lists the published checkpoints")
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"{caller}: `weights` must be None or the path of a checkpoint file; got {type(weights).__name__}."
        )
    path = os.fspath(weights)
    if os.path.isfile(path):
        return
    never = (
        "keras_attention.models never downloads anything: `weights` is None (random initialisation) or the "
        f"path of a checkpoint file you downloaded. For {key}: {where}."
    )
    if str(path).lower() in ("imagenet", "imagenet1k", "imagenet-1k", "pretrained", "default"):
        raise ValueError(f"{caller}: got weights={path!r}, a name, not a file. {never}")
    raise FileNotFoundError(f"{caller}: no checkpoint file at {path!r}. {never}")


def input_shape_of(caller, input_shape, include_top, data_format):
    """The model input's shape: 224 x 224 with the top, any size without it; checked."""
    if input_shape is None:
        size = (224, 224) if include_top else (None, None)
        return (*size, 3) if data_format == "channels_last" else (3, *size)
    shape = tuple(input_shape)
    channels = shape[-1] if data_format == "channels_last" else (shape[0] if shape else None)
    if len(shape) != 3 or any(d is not None and check_int(caller, "input_shape", d) < 1 for d in shape):
        raise ValueError(
            f"{caller}: `input_shape` must be (height, width, channels) for {data_format}; got {input_shape!r}."
        )
    if channels is None:
        raise ValueError(f"{caller}: the channel count of `input_shape` must be known; got {input_shape!r}.")
    return shape
