"""Decode image files once into one uint8 (N, 3, S, S) tensor, optionally cached on disk.

Training reads every image hundreds of times (200 epochs in the paper), so images are decoded
and resized exactly once (DESIGN section 4.1) and augmentation then works on whole batches of
the decoded tensor (:mod:`privatenet.data.transforms`). With ``cache_dir`` the decoded tensor is
also kept on disk as a safetensors file, so a second run over the same files skips JPEG decoding
entirely.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from privatenet.data.base import Split
from privatenet.errors import PrivatenetError

__all__ = ["decode_images", "cache_key"]

log = logging.getLogger(__name__)

#: Decoding threads. PIL releases the GIL while decoding and resizing, so two threads use the
#: two cores of the reference machine without the start-up cost of worker processes.
DECODE_WORKERS = 2

# Part of the cache key: bump it when the decoded pixels of the same files would change (another
# resize filter, another colour conversion), so stale cache files are never read.
_CACHE_FORMAT = "privatenet-images-v1"


def check_image_size(image_size: object) -> int | None:
    """Return ``image_size`` if it is ``None`` or a positive int, else raise a one-line error."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise PrivatenetError(f"image size {image_size!r} is invalid; give a positive integer")
    return image_size


def check_cache_dir(cache_dir: object) -> Path | None:
    """Return ``cache_dir`` as a Path (or ``None``); raise if it names something else."""
    if cache_dir is None:
        return None
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a path or None, got {type(cache_dir).__name__}")
    path = Path(cache_dir)
    if path.exists() and not path.is_dir():
        raise PrivatenetError(
            f"cache directory {path} exists but is not a directory; give a directory path"
        )
    return path


def cache_key(paths: list[Path], *, image_size: int | None) -> str:
    """SHA-256 of the resolved paths, their sizes and modification times, and ``image_size``.

    Size and mtime (nanoseconds) change whenever a file is rewritten, so a replaced image gives
    a new key without hashing every file's bytes, which would cost as much as decoding them.
    Raises a one-line error for a missing file.
    """
    digest = hashlib.sha256()
    digest.update(f"{_CACHE_FORMAT}\n{image_size}\n{len(paths)}\n".encode())
    for p in paths:
        st = _stat(Path(p))
        digest.update(f"{Path(p).resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_images(
    paths: list[Path], *, image_size: int | None, cache_dir: str | Path | None = None
) -> torch.Tensor:
    """Decode ``paths`` into one uint8 tensor (N, 3, S, S), row ``i`` holding ``paths[i]``.

    Every image is converted to RGB (grayscale, RGBA and palette images become 3 channels; an
    alpha channel is dropped) and, if ``image_size`` is given, resized to ``image_size`` x
    ``image_size`` with PIL's bilinear filter, which is what ``torchvision.transforms.Resize``
    does to a PIL image in the public training recipe. With ``image_size=None`` every image
    keeps the size of the first one; images of another size are resized to it with one warning.

    ``cache_dir``: if given, the tensor is stored there as a safetensors file keyed by
    :func:`cache_key`, and later calls with the same unchanged files load it instead of
    decoding. The file is written atomically, so an interrupted run never leaves a half cache.

    Raises :class:`PrivatenetError` (one line naming the file) for a missing or unreadable image.
    """
    if isinstance(paths, (str, os.PathLike)) or not hasattr(paths, "__len__"):
        raise TypeError("paths must be a list of image paths")
    paths = [Path(p) for p in paths]
    image_size = check_image_size(image_size)
    cache_path = check_cache_dir(cache_dir)

    key = cache_key(paths, image_size=image_size)  # also reports the first missing file
    if cache_path is not None:
        cache_file = cache_path / f"images-{key}.safetensors"
        cached = _load_cache(cache_file, len(paths), image_size)
        if cached is not None:
            log.info("loaded %d decoded images from cache %s", len(paths), cache_file)
            return cached

    images = _decode_all(paths, image_size)

    if cache_path is not None:
        _save_cache(cache_file, images)
    return images


def _stat(path: Path) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PrivatenetError(
            f"image file {path} is missing; restore it or remove it from the label list"
        ) from None
    except OSError as exc:
        raise PrivatenetError(f"cannot access image file {path}: {_one_line(exc)}") from None
    if not path.is_file():
        raise PrivatenetError(f"image path {path} is not a file; point it at an image file")
    return st


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (PIL messages sometimes carry newlines)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _open_rgb(path: Path) -> Image.Image:
    """Open ``path`` fully decoded as RGB, or raise a one-line error naming it."""
    try:
        with Image.open(path) as img:
            # convert() forces the full decode, so a truncated file fails here, inside the
            # try, rather than later with an error that no longer names the file.
            return img.convert("RGB")
    except FileNotFoundError:
        raise PrivatenetError(
            f"image file {path} is missing; restore it or remove it from the label list"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PrivatenetError(
            f"cannot decode image {path} ({_one_line(exc)}); replace the file with a valid "
            "image or remove it from the label list"
        ) from None


def _to_chw(img: Image.Image) -> torch.Tensor:
    # np.array copies into a writable buffer (np.asarray of a PIL image is read-only, which
    # torch.from_numpy warns about).
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def _decode_all(paths: list[Path], image_size: int | None) -> torch.Tensor:
    n = len(paths)
    if n == 0:
        side = image_size or 0
        return torch.empty((0, 3, side, side), dtype=torch.uint8)

    if image_size is not None:
        target = (image_size, image_size)  # PIL sizes are (width, height)
        first = None
    else:
        # The first image fixes the size of every row; decode it here to learn it.
        first = _open_rgb(paths[0])
        target = first.size
    out = torch.empty((n, 3, target[1], target[0]), dtype=torch.uint8)
    resized_other: list[int] = []  # list.append is atomic, so threads can share it

    def work(i: int) -> None:
        img = first if (i == 0 and first is not None) else _open_rgb(paths[i])
        if img.size != target:
            if image_size is None:
                resized_other.append(i)
            img = img.resize(target, Image.Resampling.BILINEAR)
        out[i].copy_(_to_chw(img))

    log.info("decoding %d images with %d threads", n, DECODE_WORKERS)
    pool = ThreadPoolExecutor(max_workers=min(DECODE_WORKERS, n))
    try:
        # map() yields in order, so the first bad file in list order is the one reported.
        for _ in pool.map(work, range(n)):
            pass
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)

    if resized_other:
        first_bad = paths[min(resized_other)]
        log.warning(
            "%d of %d images differ in size from the first image %s (%dx%d), e.g. %s; they "
            "were resized to it (pass an image size to resize all images explicitly)",
            len(resized_other), n, paths[0], target[0], target[1], first_bad,
        )
    return out


def _load_cache(cache_file: Path, n: int, image_size: int | None) -> torch.Tensor | None:
    """The cached tensor, or ``None`` on a miss or an unusable cache file (then re-decoded)."""
    if not cache_file.is_file():
        log.debug("image cache miss: %s", cache_file)
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        images = load_file(str(cache_file))["images"]
    except (OSError, KeyError, SafetensorError, RuntimeError) as exc:
        log.warning("ignoring unreadable image cache %s (%s)", cache_file, _one_line(exc))
        return None
    ok = images.dtype == torch.uint8 and images.dim() == 4 and images.shape[:2] == (n, 3)
    if ok and image_size is not None:
        ok = images.shape[2:] == (image_size, image_size)
    if not ok:
        log.warning("ignoring image cache %s of unexpected shape %s", cache_file,
                    tuple(images.shape))
        return None
    return images


def _save_cache(cache_file: Path, images: torch.Tensor) -> None:
    """Write ``images`` to ``cache_file`` atomically; a failure only costs the cache."""
    from safetensors.torch import save_file

    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # The temporary file lives in the same directory so that os.replace is an atomic
        # rename on the same file system: readers see the old state or the complete file.
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=".images-", suffix=".tmp")
        os.close(fd)
        save_file({"images": images.contiguous()}, tmp, metadata={"format": _CACHE_FORMAT})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, cache_file)
        tmp = None
        log.info("cached %d decoded images in %s", images.shape[0], cache_file)
    except OSError as exc:
        log.warning("could not write image cache %s (%s); continuing without it",
                    cache_file, _one_line(exc))
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def decode_splits(*, paths: list[Path], split_of: list[str], labels: dict[str, list[int]],
                  ids: list[str], image_size: int | None, cache_dir: str | Path | None = None
                  ) -> dict[str, Split]:
    """Decode the images of every row and group rows, labels and ids into splits.

    Rows are decoded in split order, so each split is a contiguous slice of one tensor: no
    second copy of the images, and one cache file for the whole data set.
    """
    order: dict[str, list[int]] = {}
    for i, split in enumerate(split_of):
        order.setdefault(split, []).append(i)
    flat = [i for idx in order.values() for i in idx]
    images = decode_images([paths[i] for i in flat], image_size=image_size, cache_dir=cache_dir)
    splits: dict[str, Split] = {}
    start = 0
    for split, idx in order.items():
        stop = start + len(idx)
        splits[split] = Split(
            images=images[start:stop],
            labels={c: torch.tensor([v[i] for i in idx], dtype=torch.long)
                    for c, v in labels.items()},
            ids=[ids[i] for i in idx],
        )
        start = stop
    return splits
