"""Decode image files once into one uint8 (N, 3, S, S) tensor, optionally cached on disk.

Training reads every image hundreds of times (200 epochs in the paper), so images are decoded
and resized exactly once (``docs/design.md`` §4) and augmentation then works on whole batches of
the decoded tensor (:mod:`privatenet.data.transforms`). With ``cache_dir`` the decoded tensor is
also kept on disk as a safetensors file keyed by the files' content, so a second run over the
same files skips JPEG decoding entirely.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from privatenet.data.base import Split
from privatenet.data.spec import (
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    check_fits_in_memory,
    check_image_size,
)
from privatenet.errors import PrivatenetError, SettingError
from privatenet.runfiles import MARKER

__all__ = ["decode_images", "decode_splits", "cache_key", "file_hashes", "resolve_image_size"]

log = logging.getLogger(__name__)

#: Decoding threads. PIL releases the GIL while decoding and resizing, so two threads use the
#: two cores of the reference machine without the start-up cost of worker processes.
DECODE_WORKERS = 2

# Part of the cache key: bump it when the decoded pixels of the same files would change (another
# resize filter, another colour conversion), so stale cache files are never read.
# v2: keyed on file content; 16-bit and float images scaled instead of clipped to white.
_CACHE_FORMAT = "privatenet-images-v2"

# Modes holding more than 8 bits per grey sample. convert("RGB") clips their values to 255, so
# a 16-bit image decodes as (almost) all white; they are scaled to 8 bits instead.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

_HASH_CHUNK = 1 << 20


#: Where to keep decoded images instead, in the refusals of :func:`check_cache_dir`.
_CACHE_FIX = "keep decoded images in a separate folder such as ~/.cache/privatenet"


def check_cache_dir(cache_dir: object, *, out: str | os.PathLike | None = None) -> Path | None:
    """Return ``cache_dir`` as a Path (or ``None``); raise a one-line error if it names
    something else than a folder, or a folder that is not the cache's own.

    Refused (nothing is written before this check): a path that exists and is not a folder;
    one inside a privatenet run folder (a folder holding the run marker, itself or any of its
    parents: the cache file would be a foreign file in a finished run); and with ``out`` (the
    command's output folder) the output folder itself, a folder inside it or one containing
    it (the cache would fill the folder the run then refuses as not its own).
    """
    if cache_dir is None:
        return None
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a path or None, got {type(cache_dir).__name__}")
    if isinstance(cache_dir, str) and not cache_dir.strip():
        # Path("") is the current folder: an empty option must not write into it.
        raise SettingError("cache_dir", cache_dir, "is empty; give a folder path or leave it "
                                                   "out")
    path = Path(cache_dir)
    if path.exists() and not path.is_dir():
        raise PrivatenetError(
            f"cache directory {path} exists but is not a directory; give a directory path"
        )
    full = path.expanduser().resolve()
    if out is not None and not (isinstance(out, str) and not out.strip()):
        run = Path(out).expanduser().resolve()
        relation = ("is the output folder" if full == run else
                    f"is inside the output folder {out}" if full.is_relative_to(run) else
                    f"contains the output folder {out}" if run.is_relative_to(full) else None)
        if relation is not None:
            raise SettingError("cache_dir", str(path), f"{relation}; {_CACHE_FIX}")
    for folder in (full, *full.parents):
        try:
            marked = (folder / MARKER).is_file()
        except OSError:  # a parent we may not look into holds no run of ours
            marked = False
        if marked:
            where = "is" if folder == full else "is inside"
            raise SettingError("cache_dir", str(path), f"{where} the privatenet run folder "
                                                       f"{folder}; {_CACHE_FIX}")
    return path


def file_hashes(paths: list[Path]) -> list[str]:
    """SHA-256 (hex) of each file's bytes, in order; a one-line error names a missing file.

    Reading bytes costs far less than decoding them, and content (not path, size and mtime,
    which ``cp -p`` and rsync keep) is what decides whether cached pixels are still right.
    """
    paths = [Path(p) for p in paths]

    def one(path: Path) -> str:
        _stat(path)  # missing file, folder, no permission: a one-line error naming it
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(_HASH_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise PrivatenetError(f"cannot read image file {path}: {_one_line(exc)}") from None
        return digest.hexdigest()

    return _in_threads(one, paths)


def cache_key(paths: list[Path], *, image_size: int | None,
              hashes: list[str] | None = None) -> str:
    """SHA-256 of the files' content hashes (:func:`file_hashes`, or ``hashes`` if given, in
    the same order), their number and ``image_size``. Raises a one-line error for a missing
    file."""
    if hashes is None:
        hashes = file_hashes(paths)
    if len(hashes) != len(paths):
        raise ValueError(f"{len(hashes)} hashes for {len(paths)} paths")
    digest = hashlib.sha256()
    digest.update(f"{_CACHE_FORMAT}\n{image_size}\n{len(paths)}\n".encode())
    for h in hashes:
        digest.update(f"{h}\n".encode())
    return digest.hexdigest()


def resolve_image_size(paths: list[Path], image_size: int | None) -> int:
    """The side S of the decoded images: ``image_size``, or with ``None`` the one size that
    every image has, read from the file headers (PIL opens lazily, so nothing is decoded).

    Raises a one-line error if ``image_size`` is invalid, if with ``None`` the images differ in
    size (naming two files), are not square or are outside 8..1024 pixels, or if N x 3 x S x S
    bytes would not fit in memory (:func:`~privatenet.data.spec.check_fits_in_memory`).
    """
    image_size = check_image_size(image_size)
    paths = [Path(p) for p in paths]
    if image_size is not None or not paths:
        side = image_size or 0
    else:
        with _decoder_messages():
            sizes = _in_threads(_header_size, paths)
        first = sizes[0]
        for path, size in zip(paths, sizes, strict=True):
            if size != first:
                raise PrivatenetError(
                    f"images differ in size: {paths[0]} is {first[0]}x{first[1]} but {path} is "
                    f"{size[0]}x{size[1]}; pass image_size=N to resize every image to N x N"
                )
        width, height = first
        if width != height:
            raise PrivatenetError(
                f"images such as {paths[0]} are {width}x{height}, not square; pass "
                "image_size=N to resize every image to N x N"
            )
        if not MIN_IMAGE_SIZE <= width <= MAX_IMAGE_SIZE:
            raise PrivatenetError(
                f"images such as {paths[0]} are {width}x{height}, outside the supported "
                f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels; pass image_size=N with N in "
                f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} to resize them"
            )
        side = width
    if paths:
        check_fits_in_memory(len(paths), side, what=f"images such as {paths[0]}")
    return side


def decode_images(
    paths: list[Path], *, image_size: int | None, cache_dir: str | Path | None = None,
    hashes: list[str] | None = None, write_cache: bool = True,
) -> torch.Tensor:
    """Decode ``paths`` into one uint8 tensor (N, 3, S, S), row ``i`` holding ``paths[i]``.

    Every image is converted to RGB (grayscale, RGBA and palette images become 3 channels; an
    alpha channel is dropped). 16-bit grey images (Pillow modes ``I;16``, ``I;16B``, ...) are
    scaled to 8 bits as ``round(v / 257)``; modes ``I`` (32-bit integer) and ``F`` (float) are
    read the same way, as 16-bit samples clipped to 0..65535, since Pillow produces those modes
    from 16-bit files (a float image holding 0..1 therefore decodes black). If ``image_size`` is
    given, every image is resized to ``image_size`` x ``image_size`` with PIL's bilinear filter,
    which is what ``torchvision.transforms.Resize`` does to a PIL image in the public training
    recipe. With ``image_size=None`` all images must share one square size
    (:func:`resolve_image_size`), which is kept.

    ``cache_dir``: if given, the tensor is stored there as a safetensors file keyed by
    :func:`cache_key` (on the files' content; pass their :func:`file_hashes` as ``hashes`` if
    already computed), and later calls on files of the same content load it instead of
    decoding. The file is written atomically, so an interrupted run never leaves a half cache.
    With ``write_cache=False`` (a dry run) an existing cache file is read but none is written.

    Raises :class:`PrivatenetError` (one line naming the file) for a missing or unreadable image,
    and for the size and memory problems of :func:`resolve_image_size`, before decoding.
    """
    if isinstance(paths, (str, os.PathLike)) or not hasattr(paths, "__len__"):
        raise TypeError("paths must be a list of image paths")
    paths = [Path(p) for p in paths]
    cache_path = check_cache_dir(cache_dir)
    side = resolve_image_size(paths, image_size)
    if not paths:
        return torch.empty((0, 3, side, side), dtype=torch.uint8)

    if cache_path is not None:
        # Keyed on the resolved side, so image_size=None and the native size share one file.
        key = cache_key(paths, image_size=side, hashes=hashes)
        cache_file = cache_path / f"images-{key}.safetensors"
        cached = _load_cache(cache_file, len(paths), side)
        if cached is not None:
            log.info("loaded %d decoded images from cache %s", len(paths), cache_file)
            return cached

    images = _decode_all(paths, side)

    if cache_path is not None and write_cache:
        _save_cache(cache_file, images)
    return images


@contextlib.contextmanager
def _decoder_messages():
    """Keep the decoders' chatter off the terminal: Pillow's Python warnings ("Truncated File
    Read") and what libtiff and other C decoders write straight to file descriptor 2 are
    collected while images are read and logged as one INFO line (shown with ``-v``). A bad image
    is still reported, as one error line naming the file; a readable one is not worth a wall of
    decoder noise around it."""
    with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryFile() as sink:
        warnings.simplefilter("always")
        try:
            saved = os.dup(2)
        except OSError:  # no file descriptor 2 (a detached process): nothing to redirect
            saved = None
        if saved is not None:
            os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            lines = [line for line in sink.read(1 << 16).decode("utf-8", "replace").splitlines()
                     if line.strip()]
            lines += [f"{w.category.__name__}: {w.message}" for w in caught]
            if lines:
                log.info("image decoders reported %d message(s), first: %s", len(lines),
                         lines[0])


def _in_threads(fn, items: list) -> list:
    """``[fn(x) for x in items]`` on :data:`DECODE_WORKERS` threads; the first failure in list
    order is raised and the remaining work cancelled."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    pool = ThreadPoolExecutor(max_workers=min(DECODE_WORKERS, len(items)))
    try:
        # map() yields in order, so the first bad file in list order is the one reported.
        results = list(pool.map(fn, items))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


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


def _bad_image(path: Path, exc: BaseException) -> PrivatenetError:
    return PrivatenetError(
        f"cannot decode image {path} ({_one_line(exc)}); replace the file with a valid "
        "image or remove it from the label list"
    )


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    _stat(path)
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _bad_image(path, exc) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, scaling 16-bit, 32-bit integer and float grey to 8 bits."""
    if img.mode in _WIDE_GREY_MODES:
        wide = np.nan_to_num(np.asarray(img, dtype=np.float64))
        grey = np.rint(np.clip(wide, 0, 65535) / 257).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return img.convert("RGB")


def _open_rgb(path: Path) -> Image.Image:
    """Open ``path`` fully decoded as RGB, or raise a one-line error naming it."""
    try:
        with Image.open(path) as img:
            # load() forces the full decode, so a truncated file fails here, inside the
            # try, rather than later with an error that no longer names the file.
            img.load()
            return _to_rgb(img)
    except FileNotFoundError:
        raise PrivatenetError(
            f"image file {path} is missing; restore it or remove it from the label list"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _bad_image(path, exc) from None


def _to_chw(img: Image.Image) -> torch.Tensor:
    # np.array copies into a writable buffer (np.asarray of a PIL image is read-only, which
    # torch.from_numpy warns about).
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def _decode_all(paths: list[Path], side: int) -> torch.Tensor:
    """Decode ``paths`` into (N, 3, side, side), resizing images of another size."""
    target = (side, side)  # PIL sizes are (width, height)
    out = torch.empty((len(paths), 3, side, side), dtype=torch.uint8)

    def work(i: int) -> None:
        img = _open_rgb(paths[i])
        if img.size != target:
            img = img.resize(target, Image.Resampling.BILINEAR)
        out[i].copy_(_to_chw(img))

    log.info("decoding %d images with %d threads", len(paths), DECODE_WORKERS)
    with _decoder_messages():
        _in_threads(work, list(range(len(paths))))
    return out


def _load_cache(cache_file: Path, n: int, side: int) -> torch.Tensor | None:
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
    ok = images.dtype == torch.uint8 and tuple(images.shape) == (n, 3, side, side)
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
                  ids: list[str], image_size: int | None, cache_dir: str | Path | None = None,
                  write_cache: bool = True) -> dict[str, Split]:
    """Decode the images of every row and group rows, labels and ids into splits.

    Rows are decoded in split order, so each split is a contiguous slice of one tensor: no
    second copy of the images, and one cache file for the whole data set. Every file is read
    once for its content hash, which keys the cache and finds images that are in the train
    split and in another split too (also as copies under another name): a warning gives their
    count, since test accuracy on them measures memory, not generalisation.
    """
    order: dict[str, list[int]] = {}
    for i, split in enumerate(split_of):
        order.setdefault(split, []).append(i)
    flat = [i for idx in order.values() for i in idx]
    flat_paths = [paths[i] for i in flat]
    # Size and memory checks first: they read headers only, the hashes read every byte.
    side = resolve_image_size(flat_paths, image_size)
    hashes = file_hashes(flat_paths)
    by_row = dict(zip(flat, hashes, strict=True))
    _warn_shared_images(order, by_row, paths)
    images = decode_images(flat_paths, image_size=side, cache_dir=cache_dir, hashes=hashes,
                           write_cache=write_cache)
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


def _warn_shared_images(order: dict[str, list[int]], hash_of: dict[int, str],
                        paths: list[Path]) -> None:
    """Log one warning per split whose images also appear (by content) in the train split."""
    train = {hash_of[i]: i for i in order.get("train", [])}
    if not train:
        return
    for split, idx in order.items():
        if split == "train":
            continue
        shared = [i for i in idx if hash_of[i] in train]
        if shared:
            log.warning(
                "%d of %d %s images also appear in the train split (same file content, e.g. %s "
                "and %s); results on them measure memory, not generalisation: remove the "
                "duplicates from one split", len(shared), len(idx), split,
                paths[train[hash_of[shared[0]]]], paths[shared[0]],
            )
