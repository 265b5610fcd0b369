"""The data settings every command that reads images takes, declared once."""

from __future__ import annotations

import os
from dataclasses import dataclass

from privatenet.data.base import Dataset
from privatenet.data.cache import check_cache_dir
from privatenet.data.load import load_dataset
from privatenet.data.spec import DataSpec, check_image_size, parse_spec
from privatenet.settings import setting

__all__ = ["DataConfig"]


@dataclass
class DataConfig:
    """Which data set, decoded to which size, cached where; checked on creation (the spec's
    syntax and options, the size, the cache folder), before a single image is read."""

    data: DataSpec | str | None = setting(
        None, "dataset spec: rafdb:PATH (RAF-DB 'basic' root), manifest:FILE.csv (header "
              "path,split,<label columns>), synthfaces[:n=5000,size=64,seed=0] (built-in "
              "generated faces) or digits[:...] (scikit-learn's handwritten digits)")
    image_size: int | None = setting(
        None, "decode every image once to SxS pixels, 8..1024 (unset: the data set's native "
              "size; the paper uses 224)")
    cache_dir: str | None = setting(None, "keep decoded images here between runs (unset: "
                                          "decode each run)")

    def __post_init__(self) -> None:
        if self.data is not None:
            self.data = parse_spec(self.data)
        self.image_size = check_image_size(self.image_size)
        check_cache_dir(self.cache_dir)

    def load(self, *, out: str | os.PathLike | None = None) -> Dataset:
        """The data set. ``out``, the folder the command writes, is checked against the cache
        folder first: a cache inside it would fill it before the run claims it."""
        check_cache_dir(self.cache_dir, out=out)
        return load_dataset(self.data, image_size=self.image_size, cache_dir=self.cache_dir)
