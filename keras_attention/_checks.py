"""Argument checks shared by every public function and layer of the package.

Each error names the function or layer, the argument, what it got and what it expects.
"""

import numpy as np


def is_int(value):
    """True for Python and NumPy integers; False for bools, which are ints to Python but never a count."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(where, arg, value, minimum=1, maximum=None, note="", allow_none=False):
    """Returns `value` as an int if it is an integer in [minimum, maximum]; raises ValueError otherwise."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
        expected = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"{where}: `{arg}` must be {expected}{note}; got {value!r}.")
    return int(value)
