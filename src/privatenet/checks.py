"""Checks of plain values that several layers share (a bottom-layer module, docs/design.md §4).

Each returns the value, or raises a one-line :class:`~privatenet.errors.SettingError` that
names it and says what to give instead.
"""

from __future__ import annotations

import numbers

from privatenet.errors import SettingError

__all__ = ["MAX_SEED", "check_seed", "is_int"]

#: The largest seed every generator we seed accepts (NumPy's legacy seeding takes
#: [0, 2**32 - 1]); one range for every seed of the package: training, the regularizer's
#: adversaries, the data specs, the attacker split, the audit.
MAX_SEED = 2**32 - 1


def is_int(value: object) -> bool:
    """True for an integer that is not a bool (True is 1 to Python, never a seed or a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_seed(value: object, *, name: str = "seed") -> int:
    """``value`` as an int in [0, :data:`MAX_SEED`]; ``name`` is how the user wrote it
    (``seed``, ``synthfaces:seed``)."""
    if not is_int(value) or not 0 <= value <= MAX_SEED:
        raise SettingError(name, value, f"is invalid; give an integer in [0, {MAX_SEED}]")
    return int(value)
