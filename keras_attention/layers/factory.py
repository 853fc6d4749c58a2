"""`get_attention(name, **kwargs)`: one entry point for every attention layer."""

from keras_attention.layers.cbam import CBAM
from keras_attention.layers.channel import ChannelAttention, EfficientChannelAttention, SqueezeExcitation
from keras_attention.layers.channel_variants import CircularEfficientChannelAttention, EffectiveSqueezeExcitation
from keras_attention.layers.coord import CoordinateAttention
from keras_attention.layers.spatial import SpatialAttention

ATTENTIONS = {
    "cbam": CBAM,
    "channel": ChannelAttention,
    "spatial": SpatialAttention,
    "se": SqueezeExcitation,
    "eca": EfficientChannelAttention,
    "coord": CoordinateAttention,
    "ese": EffectiveSqueezeExcitation,
    "ceca": CircularEfficientChannelAttention,
}


def get_attention(name, /, **kwargs):
    """Builds an attention layer by name.

    Args:
        name: (positional) one of "cbam", "channel", "spatial", "se", "eca", "coord", "ese",
            "ceca" (case-insensitive; timm's `create_attn` names),
            or an attention class from this package.
        **kwargs: passed to the layer's constructor (`reduction`, `min_channels`,
            `kernel_size`, `gate`, `start_as_identity`, `name`, ...).

    Returns:
        A new, unbuilt layer.

    Example:
    >>> layer = get_attention("cbam", reduction=8)
    """
    if isinstance(name, type) and name in ATTENTIONS.values():
        return name(**kwargs)
    key = str(name).lower()
    if key not in ATTENTIONS:
        raise ValueError(f"get_attention: unknown attention {name!r}; expected one of {sorted(ATTENTIONS)}.")
    return ATTENTIONS[key](**kwargs)
