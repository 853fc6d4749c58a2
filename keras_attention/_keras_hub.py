"""keras-hub image backbones that `attach()` refuses by rule, and why (keras-hub itself is optional:
classes are recognised by name and module, nothing here imports it).

The families `attach` serves (tests/test_keras_hub.py builds each): ResNet, CSPNet, Xception
(where="residual"), DenseNet (dense connections count as residual), VGG (where="stages"),
MobileNet (v3) and EfficientNetV2, whose blocks are single layers (where="blocks"); EfficientNet B0-B7 (v1
blocks) is a plain graph (where="residual").
"""

CNN_FAMILIES = ("ResNetBackbone", "MobileNetBackbone", "EfficientNetBackbone", "CSPNetBackbone", "DenseNetBackbone")

_TRANSFORMER = (
    "it is a vision transformer: its blocks work on sequences of tokens, not on feature maps, so there is no "
    "convolutional block for channel or spatial attention to sit in"
)
_ENCODER_DECODER = (
    "it is a {task} model built around an image encoder it takes as `image_encoder`: attach to the encoder "
    "(e.g. a ResNetBackbone; the result keeps its `pyramid_outputs`), then build the {name} from the result"
)
_ONE_LAYER_STAGES = (
    "it runs all its stages inside one layer ({inner}), whose `call()` attach cannot rewrite: there is no "
    "block or stage boundary in its graph"
)

REFUSED = {
    "ViTBackbone": _TRANSFORMER,
    "DeiTBackbone": _TRANSFORMER,
    "DINOV2Backbone": _TRANSFORMER,
    "DINOV3Backbone": _TRANSFORMER,
    "SwinTransformerBackbone": _TRANSFORMER,
    "MiTBackbone": _TRANSFORMER + " (SegFormer's Mix Transformer)",
    "ViTDetBackbone": _TRANSFORMER,
    "SAMBackbone": _TRANSFORMER + " (SAM's image encoder is a ViTDet)",
    "SAM3PromptableConceptBackbone": _TRANSFORMER,
    "SegFormerBackbone": _TRANSFORMER + " (a Mix Transformer encoder)",
    "DepthAnythingBackbone": _TRANSFORMER + " (a DINOv2 encoder)",
    "DFineBackbone": "it is a detection transformer (an HGNetV2 encoder and a transformer decoder)",
    "MobileNetV5Backbone": (
        "it is a hybrid of inverted-residual and multi-query-attention blocks (Gemma 3n's vision tower), built as "
        "nested stages of layers rather than a graph of blocks"
    ),
    "HGNetV2Backbone": _ONE_LAYER_STAGES.format(inner="HGNetV2Encoder"),
    "RetinaNetBackbone": _ENCODER_DECODER.format(task="detection", name="RetinaNetBackbone"),
    "DeepLabV3Backbone": _ENCODER_DECODER.format(task="segmentation", name="DeepLabV3Backbone"),
    "BASNetBackbone": _ENCODER_DECODER.format(task="segmentation", name="BASNetBackbone"),
}


def refusal(model):
    """Why `attach` cannot serve `model` by a rule, or None (not a refused keras-hub backbone)."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("keras_hub") and cls.__name__ in REFUSED:
            return (
                f"attach: model {model.name!r} (keras-hub {cls.__name__}) has no place for attention by a rule: "
                f"{REFUSED[cls.__name__]}. Use a "
                f"convolutional keras-hub backbone ({', '.join(CNN_FAMILIES)}, ...) or a Keras Applications "
                "model; a list of layer names or a callable still places attention after layers you choose."
            )
    return None
