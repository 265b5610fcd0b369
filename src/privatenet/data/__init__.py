"""Datasets selected by one spec string everywhere (DESIGN section 4.2).

``rafdb:PATH`` (RAF-DB basic root), ``manifest:FILE.csv`` (any dataset) and
``synthfaces[:key=value,...]`` (the built-in generated faces).
"""

from __future__ import annotations

from pathlib import Path

from privatenet.data.base import MISSING, Dataset, Split
from privatenet.errors import PrivatenetError

__all__ = ["MISSING", "Dataset", "Split", "load_dataset", "parse_spec"]


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``kind:argument`` into its parts; raise a one-line error for an unknown kind."""
    kind, _, arg = spec.partition(":")
    if kind not in ("rafdb", "manifest", "synthfaces"):
        raise PrivatenetError(
            f"unknown dataset spec {spec!r}; use rafdb:PATH, manifest:FILE.csv or "
            "synthfaces[:n=5000,size=64,seed=0]"
        )
    if kind in ("rafdb", "manifest") and not arg:
        raise PrivatenetError(f"dataset spec {spec!r} needs a path after the colon")
    return kind, arg


def load_dataset(spec: str, *, image_size: int | None = None, cache_dir: str | Path | None = None
                 ) -> Dataset:
    """Load the dataset named by ``spec`` with images decoded once to uint8 (N, 3, S, S).

    ``image_size`` resizes every image to S x S once, at decode time (``None`` keeps the data
    set's native size). ``cache_dir`` keeps decoded images on disk between runs.
    """
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise PrivatenetError(f"image size {image_size!r} is invalid; give an integer >= 8")
    kind, arg = parse_spec(spec)
    if kind == "rafdb":
        from privatenet.data.rafdb import load_rafdb

        return load_rafdb(Path(arg), image_size=image_size, cache_dir=cache_dir)
    if kind == "manifest":
        from privatenet.data.manifest import load_manifest

        return load_manifest(Path(arg), image_size=image_size, cache_dir=cache_dir)
    from privatenet.data.synthfaces import synthfaces_from_spec

    return synthfaces_from_spec(arg, image_size=image_size)
