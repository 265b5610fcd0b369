"""Datasets selected by one spec string everywhere (``docs/design.md`` §4.2).

``rafdb:PATH`` (RAF-DB basic root), ``manifest:FILE.csv`` (any dataset),
``synthfaces[:key=value,...]`` (the built-in generated faces) and ``digits[:key=value,...]``
(scikit-learn's real handwritten digits, with private attributes ink and width); see
:mod:`privatenet.data.spec` (parsing) and :mod:`privatenet.data.load` (loading).
"""

from __future__ import annotations

from privatenet.data.base import MISSING, Dataset, Split
from privatenet.data.load import load_dataset
from privatenet.data.spec import DataSpec, check_image_size, parse_spec

__all__ = [
    "MISSING",
    "DataSpec",
    "Dataset",
    "Split",
    "check_image_size",
    "load_dataset",
    "parse_spec",
]
