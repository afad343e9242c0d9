"""Argument checks shared by every public constructor and function.

The rule for exception types, everywhere in backendnn:
- `TypeError`: a value of the wrong kind ("3" where an int is needed, a list for a
  Layer);
- `ValueError`: the right kind with a wrong value (a negative size, p = 1.5);
- `ShapeError` (a ValueError): an array whose shape a layer or loss cannot take;
- `CheckpointError` (a ValueError): a file that cannot be read or does not fit.
Every message names the owner and the argument and says what is accepted.
NumPy integer and float scalars are accepted wherever a Python int or float is,
as in PyTorch; bools are not numbers here.
"""
from __future__ import annotations

import math
import numbers
import operator


def integer(owner: str, name: str, value, *, minimum: int | None = None) -> int:
    """`value` as a Python int (NumPy integers accepted), at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        try:
            if isinstance(value, bool) or not hasattr(value, "__index__"):
                raise TypeError
            value = operator.index(value)
        except TypeError:
            what = "a positive int" if minimum == 1 else "an int"
            msg = f"{owner}: `{name}` must be {what}, got {value!r} ({type(value).__name__})"
            raise TypeError(msg) from None
    value = int(value)
    if minimum is not None and value < minimum:
        what = "a positive int" if minimum == 1 else f"an int ≥ {minimum}"
        msg = f"{owner}: `{name}` must be {what}, got {value}"
        raise ValueError(msg)
    return value


def number(owner: str, name: str, value, *, low: float | None = None,
           high: float | None = None, low_open: bool = False) -> float:
    """`value` as a finite Python float in [low, high] ((low, high] with `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"{owner}: `{name}` must be a number, got {value!r} ({type(value).__name__})"
        raise TypeError(msg)
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and value > high
    if not math.isfinite(value) or below or above:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        msg = f"{owner}: `{name}` must be a number in {'(' if low_open else '['}{lo}, {hi}], got {value!r}"
        raise ValueError(msg)
    return value


def boolean(owner: str, name: str, value) -> bool:
    """`value` as a bool (Python or NumPy bool)."""
    if type(value).__name__ not in ("bool", "bool_"):
        msg = f"{owner}: `{name}` must be True or False, got {value!r}"
        raise TypeError(msg)
    return bool(value)


def pair(owner: str, name: str, value, *, minimum: int = 1) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, as a tuple of two ints ≥ `minimum`."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            msg = f"{owner}: `{name}` must be an int or an (h, w) pair, got {value!r}"
            raise ValueError(msg)
        return (integer(owner, f"{name}[0]", value[0], minimum=minimum),
                integer(owner, f"{name}[1]", value[1], minimum=minimum))
    v = integer(owner, name, value, minimum=minimum)
    return v, v
