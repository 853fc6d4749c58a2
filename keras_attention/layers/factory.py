"""`get_attention(name, **kwargs)`: one entry point for every attention layer, under timm's `create_attn` names."""

from keras_attention.layers.cbam import CBAM, LightCBAM
from keras_attention.layers.channel import ChannelAttention, EfficientChannelAttention, SqueezeExcitation
from keras_attention.layers.channel_variants import (
    CircularEfficientChannelAttention,
    EffectiveSqueezeExcitation,
    EfficientChannelAttentionMLP,
)
from keras_attention.layers.coord import CoordinateAttention, SimpleCoordinateAttention
from keras_attention.layers.gather_excite import GatherExcite
from keras_attention.layers.global_context import GlobalContext
from keras_attention.layers.spatial import SpatialAttention
from keras_attention.layers.strip import EfficientLocalAttention, StripAttention

ATTENTIONS = {
    "cbam": CBAM,
    "channel": ChannelAttention,
    "spatial": SpatialAttention,
    "se": SqueezeExcitation,
    "eca": EfficientChannelAttention,
    "coord": CoordinateAttention,
    "ese": EffectiveSqueezeExcitation,
    "ceca": CircularEfficientChannelAttention,
    "ecam": EfficientChannelAttentionMLP,
    "lcbam": LightCBAM,
    "scoord": SimpleCoordinateAttention,
    "ela": EfficientLocalAttention,
    "strip": StripAttention,
    "ge": GatherExcite,
    "gc": GlobalContext,
    "gca": GlobalContext,
}

# Names that are a class with other defaults (timm's `partial(GlobalContext, fuse_add=True, fuse_scale=False)`).
NAME_DEFAULTS = {"gca": {"fusion": "add"}}


def get_attention(name, /, **kwargs):
    """Builds an attention layer by name.

    Args:
        name: (positional) a timm `create_attn` name: "se", "ese", "eca",
            "ecam", "ceca", "ge", "gc", "gca", "cbam", "lcbam", "coord",
            "scoord", "ela", "strip"; or "channel", "spatial" (CBAM's parts);
            case-insensitive. Or an attention class from this package.
        **kwargs: passed to the layer's constructor (`reduction`, `min_channels`,
            `kernel_size`, `gate`, `start_as_identity`, `name`, ...); they
            override a name's own defaults ("gca" is `fusion="add"`).

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
    return ATTENTIONS[key](**{**NAME_DEFAULTS.get(key, {}), **kwargs})
