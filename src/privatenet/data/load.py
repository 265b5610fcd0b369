"""Load a data set from its spec: the data package's one dispatcher, above every loader.

Parsing and checking a spec (:mod:`privatenet.data.spec`) sits below the loaders, which use
it; choosing the loader for a spec sits here, above them, so the package's imports run one way.
"""

from __future__ import annotations

from pathlib import Path

from privatenet.data.base import Dataset
from privatenet.data.cache import check_cache_dir
from privatenet.data.digits import digits_from_spec
from privatenet.data.manifest import load_manifest
from privatenet.data.rafdb import load_rafdb
from privatenet.data.spec import DataSpec, check_image_size, parse_spec
from privatenet.data.synthfaces import synthfaces_from_spec

__all__ = ["load_dataset"]


def load_dataset(spec: str | DataSpec, *, image_size: int | None = None,
                 cache_dir: str | Path | None = None, write_cache: bool = True) -> Dataset:
    """Load the data set named by ``spec`` with images decoded once to uint8 (N, 3, S, S).

    ``image_size`` (``None`` or 8..1024) resizes every image to S x S once, at decode time;
    ``None`` keeps the data set's native size, which must then be the same square size for every
    image. ``cache_dir`` keeps decoded images on disk between runs (ignored by synthfaces, which
    draws faster than it would load, and by digits, built from scikit-learn's 8x8 arrays in
    0.3 s at 64 px) but checked for every kind (:func:`~privatenet.data.cache.check_cache_dir`).
    ``write_cache=False`` (a dry run) reads an existing cache file but writes none. The result's
    ``spec`` and ``name`` (``str(spec)``) name exactly this data (for synthfaces and digits
    with ``image_size``, ``size`` becomes ``image_size``).
    """
    data_spec = parse_spec(spec)
    image_size = check_image_size(image_size)
    check_cache_dir(cache_dir)
    if data_spec.kind == "rafdb":
        return load_rafdb(data_spec.path, image_size=image_size, cache_dir=cache_dir,
                          write_cache=write_cache)
    if data_spec.kind == "manifest":
        return load_manifest(data_spec.path, image_size=image_size, cache_dir=cache_dir,
                             write_cache=write_cache)
    if data_spec.kind == "digits":
        return digits_from_spec(data_spec, image_size=image_size)
    return synthfaces_from_spec(data_spec, image_size=image_size)
