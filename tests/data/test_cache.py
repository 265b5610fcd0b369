"""decode_images: RGB conversion, resizing, errors naming the file, and the on-disk cache."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import privatenet.data.cache as cache
from privatenet.data.cache import cache_key, decode_images
from privatenet.errors import PrivatenetError


def _png(path, value: int, size=(16, 16), mode="RGB"):
    """A solid image whose pixels encode ``value`` (PNG is lossless, so decoding is exact)."""
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[..., 0] = value
    arr[..., 1] = 255 - value
    arr[..., 2] = (np.arange(size[0])[None, :] * 7 % 256).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


@pytest.fixture
def images(tmp_path):
    return [_png(tmp_path / f"img{i}.png", 10 * i) for i in range(6)]


def test_decode_exact_pixels_order_and_dtype(images):
    out = decode_images(images, image_size=None)
    assert out.dtype == torch.uint8 and out.shape == (6, 3, 16, 16)
    for i, p in enumerate(images):
        ref = torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(out[i], ref)
        assert int(out[i, 0, 0, 0]) == 10 * i


def test_resize_is_bilinear_like_torchvision_resize(tmp_path):
    p = _png(tmp_path / "a.png", 77, size=(30, 20))
    out = decode_images([p], image_size=24)
    assert out.shape == (1, 3, 24, 24)
    ref = T.PILToTensor()(T.Resize((24, 24))(Image.open(p).convert("RGB")))
    assert torch.equal(out[0], ref)


def test_gray_rgba_palette_become_three_channels(tmp_path):
    paths = [
        _png(tmp_path / "g.png", 100, mode="L"),
        _png(tmp_path / "a.png", 100, mode="RGBA"),
        _png(tmp_path / "p.png", 100, mode="P"),
        _png(tmp_path / "la.png", 100, mode="LA"),
    ]
    out = decode_images(paths, image_size=16)
    assert out.shape == (4, 3, 16, 16)
    gray = out[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_mixed_sizes_resized_to_first_with_one_warning(tmp_path, caplog):
    paths = [_png(tmp_path / "0.png", 1, size=(20, 18))]
    paths += [_png(tmp_path / f"{i}.png", i, size=(16, 16)) for i in range(1, 4)]
    with caplog.at_level(logging.WARNING, logger="privatenet.data.cache"):
        out = decode_images(paths, image_size=None)
    assert out.shape == (4, 3, 18, 20)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 of 4" in warnings[0].getMessage()


def test_missing_file_names_path(images, tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(PrivatenetError, match="nope.png") as exc:
        decode_images([*images, missing], image_size=None)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_corrupt_image_names_path(tmp_path, images, content):
    bad = tmp_path / "bad.jpg"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
            tmp_path / "full.jpg")
        bad.write_bytes((tmp_path / "full.jpg").read_bytes()[:400])
    else:
        bad.write_bytes(content)
    with pytest.raises(PrivatenetError, match="bad.jpg") as exc:
        decode_images([*images[:2], bad, *images[2:]], image_size=16)
    assert "\n" not in str(exc.value)


def test_invalid_image_size(images):
    for size in (0, -3, 2.5, True, "16"):
        with pytest.raises(PrivatenetError, match="image size"):
            decode_images(images, image_size=size)
    with pytest.raises(TypeError):
        decode_images(images)  # image_size is keyword-only and required


def test_empty_list():
    assert decode_images([], image_size=8).shape == (0, 3, 8, 8)


def test_cache_miss_then_hit(images, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = decode_images(images, image_size=12, cache_dir=cache_dir)
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"
    assert cache_key(images, image_size=12) in files[0].name

    def fail(*args, **kwargs):
        raise AssertionError("decoded again despite a cache hit")

    monkeypatch.setattr(cache, "_decode_all", fail)
    second = decode_images(images, image_size=12, cache_dir=str(cache_dir))
    assert torch.equal(first, second)
    # another image size is another key, so it decodes (here: fails) rather than reuse
    with pytest.raises(AssertionError, match="decoded again"):
        decode_images(images, image_size=10, cache_dir=cache_dir)


def test_changed_file_invalidates_cache(images, tmp_path):
    cache_dir = tmp_path / "cache"
    first = decode_images(images, image_size=None, cache_dir=cache_dir)
    key = cache_key(images, image_size=None)
    st = images[3].stat()
    _png(images[3], 200)  # new content at the same path
    os.utime(images[3], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert cache_key(images, image_size=None) != key
    second = decode_images(images, image_size=None, cache_dir=cache_dir)
    assert int(first[3, 0, 0, 0]) == 30 and int(second[3, 0, 0, 0]) == 200
    assert torch.equal(first[:3], second[:3])
    assert len(list(cache_dir.glob("*.safetensors"))) == 2
    assert not list(cache_dir.glob("*.tmp"))  # atomic write leaves no temporary file


def test_unreadable_cache_file_is_redecoded(images, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    first = decode_images(images, image_size=None, cache_dir=cache_dir)
    (cache_file,) = cache_dir.iterdir()
    cache_file.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="privatenet.data.cache"):
        again = decode_images(images, image_size=None, cache_dir=cache_dir)
    assert torch.equal(first, again)
    assert any("unreadable image cache" in r.getMessage() for r in caplog.records)
    assert cache_file.stat().st_size > 100  # rewritten


def test_cache_dir_that_is_a_file(images, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(PrivatenetError, match="afile"):
        decode_images(images, image_size=None, cache_dir=f)
