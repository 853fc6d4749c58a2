"""Attention backbones whose published ImageNet checkpoints load exactly (docs/models.md)."""

from keras_attention.models.checkpoints import (
    CheckpointMismatchError,
    LoadReport,
    assign,
    load_checkpoint,
    load_timm_safetensors,
    load_torch_checkpoint,
)
from keras_attention.models.mobilenet import mobilenetv2_ca
from keras_attention.models.resnet import (
    RECIPES,
    ecaresnet50d,
    ecaresnet101d,
    resnet50_cbam,
    resnet101_cbam,
    seresnet50,
)

__all__ = [
    "CheckpointMismatchError",
    "LoadReport",
    "assign",
    "RECIPES",
    "ecaresnet50d",
    "ecaresnet101d",
    "load_checkpoint",
    "load_timm_safetensors",
    "load_torch_checkpoint",
    "mobilenetv2_ca",
    "resnet50_cbam",
    "resnet101_cbam",
    "seresnet50",
]
