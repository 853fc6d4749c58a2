"""Layer widths as the reference code rounds them."""


def make_divisible(value, divisor=8, min_value=None, round_limit=0.0):
    """timm's (and torchvision's) `make_divisible`: `value` rounded to a multiple of `divisor`, at least
    `min_value` (default: the divisor); when that falls below `round_limit * value`, one divisor more
    (torchvision's MobileNetV2 uses 0.9; timm's SE and CoordAttn 0)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded
