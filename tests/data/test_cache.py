"""decode_images: RGB conversion, resizing, size and memory checks, errors naming the file, and
the on-disk cache keyed on file content."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import privatenet.data.cache as cache
import privatenet.data.spec as spec
from privatenet.data.cache import cache_key, decode_images, file_hashes
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


def test_mixed_sizes_need_image_size(tmp_path, monkeypatch):
    """Sizes differ: refused before decoding, naming two files; image_size resizes them all."""
    paths = [_png(tmp_path / f"{i}.png", i, size=(16, 16)) for i in range(3)]
    paths.append(_png(tmp_path / "odd.png", 9, size=(20, 20)))
    with monkeypatch.context() as m:
        m.setattr(cache, "_decode_all", lambda *a: pytest.fail("decoded before the size check"))
        with pytest.raises(PrivatenetError) as exc:
            decode_images(paths, image_size=None)
    msg = str(exc.value)
    assert "0.png is 16x16" in msg and "odd.png is 20x20" in msg and "image_size=" in msg
    assert "\n" not in msg
    assert decode_images(paths, image_size=16).shape == (4, 3, 16, 16)


def test_tiny_first_image_does_not_shrink_the_data_set(tmp_path):
    """The old code took the first image's size for all: a 1x1 first image gave 1 px images."""
    paths = [_png(tmp_path / "dot.png", 1, size=(1, 1)), _png(tmp_path / "a.png", 2)]
    with pytest.raises(PrivatenetError, match="dot.png is 1x1"):
        decode_images(paths, image_size=None)
    with pytest.raises(PrivatenetError, match=r"dot.png are 1x1, outside the supported 8\.\.1024"):
        decode_images(paths[:1], image_size=None)


def test_native_size_must_be_square(tmp_path):
    paths = [_png(tmp_path / f"{i}.png", i, size=(20, 18)) for i in range(2)]
    with pytest.raises(PrivatenetError, match="20x18, not square; pass image_size=N"):
        decode_images(paths, image_size=None)
    assert decode_images(paths, image_size=8).shape == (2, 3, 8, 8)


def test_sixteen_bit_and_float_grey_are_scaled_not_white(tmp_path):
    """convert("RGB") clipped 16-bit samples to 255: such images decoded (almost) all white."""
    wide = (np.arange(256, dtype=np.int64).reshape(16, 16) * 257)  # 16-bit values of 0..255
    wide[0, 1] = 300  # 300 / 257 = 1.17 -> 1
    wide[0, 2] = 400  # 400 / 257 = 1.56 -> 2
    want = np.rint(wide / 257).astype(np.uint8)
    files = {
        "I;16": (wide.astype("<u2"), tmp_path / "le.png"),
        "I;16B": (wide.astype(">u2"), tmp_path / "be.tiff"),
        "I": (wide.astype(np.int32), tmp_path / "i32.tiff"),
        "F": (wide.astype(np.float32), tmp_path / "f32.tiff"),
    }
    for mode, (arr, path) in files.items():
        Image.fromarray(arr).save(path)
        with Image.open(path) as img:
            assert img.mode == mode  # the test really covers this mode
    out = decode_images([p for _, p in files.values()], image_size=None)
    for k, mode in enumerate(files):
        for c in range(3):
            assert np.array_equal(out[k, c].numpy(), want), mode


def test_image_bigger_than_memory_refused_before_decoding(images, monkeypatch):
    monkeypatch.setattr(spec, "physical_memory", lambda: 64 * 2**20)  # a 64 MiB machine
    monkeypatch.setattr(cache, "_decode_all", lambda *a: pytest.fail("decoded anyway"))
    with pytest.raises(PrivatenetError) as exc:
        decode_images(images * 1000, image_size=1024)  # 6000 x 3 MiB = 17.6 GiB
    msg = str(exc.value)
    assert "17.6 GiB" in msg and "image_size=54 fits" in msg and "img0.png" in msg
    assert "\n" not in msg


def test_memory_check_skipped_when_unknown(images, monkeypatch):
    monkeypatch.setattr(spec, "physical_memory", lambda: None)
    assert decode_images(images, image_size=8).shape == (6, 3, 8, 8)


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
    for size in (0, -3, 1, 7, 1025, 100000, 2.5, True, "16"):
        with pytest.raises(PrivatenetError, match=rf"image_size={size!r} .*8\.\.1024") as exc:
            decode_images(images, image_size=size)
        assert "\n" not in str(exc.value)
    assert decode_images(images, image_size=np.int64(8)).shape == (6, 3, 8, 8)
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
    """A file replaced by one of the same size and mtime (cp -p, rsync) is a new key: the key
    is the content, where the old key (path, size, mtime) kept the stale pixels."""
    cache_dir = tmp_path / "cache"
    first = decode_images(images, image_size=None, cache_dir=cache_dir)
    key = cache_key(images, image_size=None)
    st = images[3].stat()
    _png(images[3], 200)  # new content at the same path
    os.utime(images[3], ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p keeps
    assert images[3].stat().st_size == st.st_size  # same length: only the content tells
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


def test_cache_key_follows_content_not_path(images, tmp_path, monkeypatch):
    copies = []
    for p in images:
        q = tmp_path / "copy" / p.name
        q.parent.mkdir(exist_ok=True)
        q.write_bytes(p.read_bytes())
        copies.append(q)
    assert cache_key(copies, image_size=12) == cache_key(images, image_size=12)
    hashes = file_hashes(images)
    assert cache_key(images, image_size=12, hashes=hashes) == cache_key(images, image_size=12)
    assert len(set(hashes)) == len(images)
    first = decode_images(images, image_size=12, cache_dir=tmp_path / "c")
    monkeypatch.setattr(cache, "_decode_all", lambda *a: pytest.fail("moved files re-decoded"))
    assert torch.equal(decode_images(copies, image_size=12, cache_dir=tmp_path / "c"), first)


def test_native_size_shares_the_cache_file_with_that_image_size(images, tmp_path):
    decode_images(images, image_size=None, cache_dir=tmp_path / "c")
    decode_images(images, image_size=16, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 1


def test_file_hashes_missing_file(images, tmp_path):
    with pytest.raises(PrivatenetError, match="nope.png is missing"):
        file_hashes([*images, tmp_path / "nope.png"])
