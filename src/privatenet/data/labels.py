"""RAF-DB's class names, in one place for the RAF-DB loader and the synthfaces stand-in.

Index ``i`` of each tuple is class ``i`` of that label column (see ``docs/design.md`` §4.2).
Tuples, so that no caller can change the shared names by appending to them; loaders put
``list(...)`` copies into ``Dataset.classes``.
"""

from __future__ import annotations

__all__ = ["EMOTIONS", "GENDERS", "AGE_GROUPS", "RACES"]

#: Emotion label L (1..7) of RAF-DB is class index L - 1.
EMOTIONS = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
#: Gender codes 0 and 1; RAF-DB's code 2 ("unsure") becomes ``MISSING``, not a class.
GENDERS = ("male", "female")
#: Age codes 0..4. The paper prints "60-69" for code 3; the data set's group is 40-69
#: (``docs/design.md`` §2 errata).
AGE_GROUPS = ("0-3", "4-19", "20-39", "40-69", "70+")
#: Race codes 0..2.
RACES = ("caucasian", "african-american", "asian")
