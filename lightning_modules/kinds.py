"""What kind a value read from a config, a checkpoint or a message is: one definition of "a whole number" and "a
number" for every check of the project (``bool`` is neither: YAML's ``true`` must not pass as 1; NaN is no number).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["is_number", "is_whole"]


def is_whole(value: Any) -> bool:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any, allow_inf: bool = False) -> bool:
    """A real number, not a bool, not NaN, and finite unless ``allow_inf``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    return not math.isnan(value) and (allow_inf or math.isfinite(value))
