"""Batch transforms: normalisation against torchvision, the augmentation recipe's statistics."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms as T

from privatenet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NOISE_VARIANCE,
    augment,
    flip_or_noise,
    normalize,
    random_erasing,
)


def _images(n: int, size: int = 16, seed: int = 0, low: int = 0, high: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_normalize_matches_torchvision():
    x = _images(4, 20)
    ours = normalize(x)
    ref = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(x.float() / 255)
    assert ours.dtype == torch.float32 and ours.shape == x.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # a single image (3, H, W) too, equal to ToTensor + Normalize on the PIL image
    pil = T.functional.to_pil_image(x[0])
    ref1 = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(pil)
    torch.testing.assert_close(normalize(x[0]), ref1, rtol=0, atol=1e-6)


def test_normalize_rejects_float_and_wrong_channels():
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))


def test_augment_shape_dtype_and_input_untouched():
    x = _images(8)
    before = x.clone()
    out = augment(x, generator=_gen(0))
    assert out.dtype == torch.float32 and out.shape == x.shape and out.device == x.device
    assert torch.equal(x, before)


def test_augment_deterministic_under_one_seed_and_not_another():
    x = _images(32)
    a = augment(x, generator=_gen(123))
    b = augment(x, generator=_gen(123))
    c = augment(x, generator=_gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_requires_generator():
    with pytest.raises(TypeError, match="torch.Generator"):
        augment(_images(2), generator=0)
    with pytest.raises(TypeError):
        augment(_images(2))  # keyword-only and required


def test_flip_and_noise_fractions_and_noise_variance():
    n = 4000
    # values away from 0 and 255 so the noise is rarely clipped and the variance is measurable
    x = _images(n, 8, low=40, high=216)
    out = flip_or_noise(x, generator=_gen(7))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1) & ~same
    noisy = ~same & ~flipped
    assert abs(flipped.float().mean().item() - 0.25) < 0.03
    assert abs(noisy.float().mean().item() - 0.25) < 0.03
    assert abs(same.float().mean().item() - 0.5) < 0.03
    diff = out[noisy].float() - x[noisy].float()
    # truncation toward zero shifts the mean by about -0.5 and adds ~1/12 variance
    assert abs(diff.mean().item() + 0.5) < 0.1
    assert abs(diff.var().item() - (NOISE_VARIANCE + 1 / 12)) < 0.1 * NOISE_VARIANCE


def test_noise_clips_and_truncates_like_numpy_astype():
    x = torch.full((400, 3, 4, 4), 254, dtype=torch.uint8)
    x[::2] = 1
    out = flip_or_noise(x, generator=_gen(1))
    assert out.dtype == torch.uint8  # values are clipped to 0..255, never wrap around
    changed = ~(out == x).flatten(1).all(1)
    high = out[1::2][changed[1::2]]
    low = out[::2][changed[::2]]
    assert high.numel() and low.numel()
    assert int(high.max()) == 255 and int(high.min()) > 200
    assert int(low.min()) == 0 and int(low.max()) < 50


def test_random_erasing_area_within_scale_and_probability():
    n, size = 2000, 64
    x = torch.ones(n, 3, size, size)
    out = random_erasing(x, generator=_gen(3))
    erased = (out == 0).all(1)  # (N, H, W): every channel set to 0
    frac = erased.flatten(1).float().mean(1)
    hit = frac > 0
    assert abs(hit.float().mean().item() - 0.5) < 0.04
    # rounding of height and width makes the area approximate at 64 x 64
    assert frac[hit].min().item() >= 0.02 * 0.8
    assert frac[hit].max().item() <= 0.1 * 1.2
    # each erased region is one axis-aligned rectangle: rows x cols
    for k in hit.nonzero().flatten()[:50].tolist():
        rows = erased[k].any(1)
        cols = erased[k].any(0)
        assert int(erased[k].sum()) == int(rows.sum()) * int(cols.sum())
    # aspect ratio (h / w) inside (0.3, 3.3), allowing for rounding
    for k in hit.nonzero().flatten()[:200].tolist():
        h = int(erased[k].any(1).sum())
        w = int(erased[k].any(0).sum())
        assert 0.3 * 0.7 <= h / w <= 3.3 / 0.7


def test_augment_erases_with_zero_after_normalization():
    x = _images(400, 32, low=1, high=255)
    out = augment(x, generator=_gen(5))
    # normalised integer pixels are never exactly 0.0, so zeros are erased pixels
    erased = (out == 0).all(1).flatten(1).any(1)
    assert abs(erased.float().mean().item() - 0.5) < 0.08
    kept = ~(out == 0).all(1, keepdim=True).expand_as(out)
    # outside the erased rectangles the values are normalised pixels of the (flipped/noisy) input
    std, mean = torch.tensor(IMAGENET_STD).view(3, 1, 1), torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    back = out * std + mean
    pixels = back[kept] * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)


def test_erasing_matches_torchvision_statistics():
    # same parameter distribution as torchvision's per-image RandomErasing
    torch.manual_seed(0)
    tv = T.RandomErasing(p=1.0, scale=(0.02, 0.1), ratio=(0.3, 3.3), value=0)
    size = 32
    ref = [float((tv(torch.ones(3, size, size)) == 0).all(0).float().mean()) for _ in range(1500)]
    ours = random_erasing(torch.ones(1500, 3, size, size), generator=_gen(9), p=1.0)
    ours = (ours == 0).all(1).flatten(1).float().mean(1)
    ref_t = torch.tensor(ref)
    assert abs(ours.mean().item() - ref_t.mean().item()) < 0.004
    assert abs(ours.std().item() - ref_t.std().item()) < 0.004


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_on_cuda_draws_its_noise_there_and_every_other_draw_as_on_cpu():
    x = _images(64, 24)
    cpu = augment(x, generator=_gen(11))
    gpu = augment(x.cuda(), generator=_gen(11))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(augment(x.cuda(), generator=_gen(11)), gpu, rtol=0, atol=0)
    # only the noised samples (p = 0.25) differ from the CPU's batch: same flips and erasures
    differ = (gpu.cpu() - cpu).abs().flatten(1).amax(1) > 1e-5
    assert 0 < differ.float().mean() < 0.5
    torch.testing.assert_close(normalize(x.cuda()).cpu(), normalize(x), rtol=0, atol=1e-6)
    channels_last = x.cuda().contiguous(memory_format=torch.channels_last)
    out = augment(channels_last, generator=_gen(11))
    torch.testing.assert_close(out, gpu, rtol=0, atol=1e-5)


def test_small_tensors_stay_where_they_are_on_a_cpu():
    from privatenet.data.transforms import to_device

    t = torch.arange(5)
    assert to_device(t, torch.device("cpu")) is t  # no copy, no pinned memory without CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_small_tensors_reach_the_gpu_from_pinned_memory_unchanged():
    from privatenet.data.transforms import to_device

    t = torch.arange(1000)
    moved = to_device(t, torch.device("cuda"))
    assert moved.device.type == "cuda" and torch.equal(moved.cpu(), t)


def test_single_image_input():
    x = _images(1)[0]
    out = augment(x, generator=_gen(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert math.isfinite(out.abs().max().item())


def test_random_erasing_inplace_flag():
    x = torch.ones(64, 3, 16, 16)
    out = random_erasing(x, generator=_gen(2))
    assert (x == 1).all() and (out == 0).any()
    same = random_erasing(x, generator=_gen(2), inplace=True)
    assert same.data_ptr() == x.data_ptr() and torch.equal(x, out)
