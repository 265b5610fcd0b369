"""The paper's method as one object: the privacy term of Eq. 8 against an adversary."""

from __future__ import annotations

#: ``fixed``: the known adversary is held fixed (the paper); ``alternating``: it is updated on
#: detached features after every encoder step (the min-max of Edwards & Storkey).
ADVERSARY_UPDATES = ("fixed", "alternating")
