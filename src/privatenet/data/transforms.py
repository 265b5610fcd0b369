"""Batch transforms on decoded uint8 images, on any device, reproducible from one generator.

The public ARM/RAF-DB training recipe (``docs/design.md`` §2) transforms one PIL image at a time in
data-loader workers. Here images are decoded once (:mod:`privatenet.data.cache`) and whole
batches are transformed with tensor operations, on the GPU when the batch is there, so data
preparation never limits training. Every random draw comes from one ``torch.Generator``, so a
seed reproduces a batch exactly.

The recipe, per sample: with p = 0.5 one of {horizontal flip, Gaussian noise of variance 30 on
0-255 pixels, clipped and truncated to integers}, chosen with p = 0.5 each; ImageNet
normalisation; then random erasing (p = 0.5, scale 0.02-0.1, ratio 0.3-3.3, value 0). One
difference: the public code adds the noise before resizing to 224 x 224, here it is added to the
already resized image (the images are decoded and resized once), so its grain is finer.
"""

from __future__ import annotations

import hashlib
import math

import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NOISE_VARIANCE",
    "normalize",
    "flip_or_noise",
    "random_erasing",
    "augment",
]

#: Per-channel (R, G, B) mean and std of ImageNet, as used by torchvision's pretrained models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Variance of the additive Gaussian noise on 0-255 pixel values (public recipe).
NOISE_VARIANCE = 30.0


def _check_images(x: object, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8 or x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(
            f"{name} must be uint8 images (N, 3, H, W) or (3, H, W), got {x.dtype} "
            f"{tuple(x.shape)}"
        )
    return x


def _check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator, got {type(generator).__name__}; create one "
            "with torch.Generator().manual_seed(seed)"
        )
    return generator


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    """``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD`` as float32, on ``x_uint8``'s device.

    Same operations in the same order as ``ToTensor`` then ``Normalize`` of torchvision, so the
    result equals theirs; batched (N, 3, H, W) or single (3, H, W) input, memory format kept.
    """
    x = _check_images(x_uint8, "x_uint8")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return x.to(torch.float32).div_(255).sub_(mean).div_(std)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (a small CPU tensor: indices, per-sample parameters) on ``device``. To a GPU it
    goes from pinned memory without waiting: a copy from ordinary (pageable) memory makes the
    host wait until the GPU has run everything queued before it, once per copy, so a training
    step with a few such copies could never run ahead of the GPU."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _draw(generator: torch.Generator, fn, *shape: int, device: torch.device) -> torch.Tensor:
    """A random tensor drawn on the generator's device, then moved to ``device``.

    Drawing where the generator lives (normally the CPU) keeps these draws identical on every
    device the images may be on (the noise itself is drawn on the images' device, :func:`_noise`).
    """
    return to_device(fn(shape, generator=generator, device=generator.device), device)


def _noise(generator: torch.Generator, shape: tuple[int, ...], device: torch.device
           ) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``.

    On the generator's device it is drawn from ``generator``. Elsewhere (a GPU) it is drawn on
    ``device`` from a generator seeded by a hash of ``generator``'s state, without consuming
    it: the noise of a batch at 224 px is megabytes (24 ms for 16 images on a 2-core CPU), so
    drawing it on the CPU and copying it would hold a GPU back, while every other draw (which
    samples, the flips, the erased boxes) stays the same on every device and a seed still gives
    the same batch on the same device.
    """
    if device.type == generator.device.type:
        return torch.randn(shape, generator=generator, device=device)
    state = generator.get_state().numpy().tobytes()
    seed = int.from_bytes(hashlib.blake2b(state, digest_size=8).digest(), "little") >> 1
    local = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=local, device=device)


def flip_or_noise(x_uint8: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Per sample, with p = 0.5 one of {horizontal flip, Gaussian noise}, p = 0.5 each.

    The noise has variance :data:`NOISE_VARIANCE` on 0-255 values; the result is clipped to
    [0, 255] and truncated to integers like the public recipe's ``np.clip(...).astype(uint8)``.
    Returns a new uint8 tensor of the same shape; ``x_uint8`` is not modified.
    """
    x = _check_images(x_uint8, "x_uint8")
    _check_generator(generator)
    single = x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    n = x.shape[0]
    # Two draws per sample, always, so later draws (erasing) do not depend on the outcome.
    apply = _draw(generator, torch.rand, n, device=torch.device("cpu")) < 0.5
    use_flip = _draw(generator, torch.rand, n, device=torch.device("cpu")) < 0.5
    flip_idx = (apply & use_flip).nonzero().flatten()
    noise_idx = (apply & ~use_flip).nonzero().flatten()

    out = x.clone()
    if len(flip_idx):
        fi = to_device(flip_idx, x.device)
        out[fi] = x[fi].flip(-1)
    if len(noise_idx):
        ni = to_device(noise_idx, x.device)
        # Noise only for the chosen samples: a quarter of the batch, not all of it.
        noise = _noise(generator, (len(noise_idx), *x.shape[1:]), x.device)
        noisy = x[ni].to(torch.float32) + noise.mul_(math.sqrt(NOISE_VARIANCE))
        # Clamped values are >= 0, so the float -> uint8 cast truncates exactly like numpy's
        # astype(uint8) after np.clip.
        out[ni] = noisy.clamp_(0, 255).to(torch.uint8)
    return out[0] if single else out


def random_erasing(
    x: torch.Tensor,
    *,
    generator: torch.Generator,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.1),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float = 0.0,
    inplace: bool = False,
) -> torch.Tensor:
    """torchvision's ``RandomErasing`` applied independently to each sample of a batch.

    Per sample with probability ``p``, one rectangle of area ``scale`` x H x W (uniform) and
    aspect ratio ``ratio`` (log-uniform) is set to ``value``; like torchvision, up to 10 tries
    find a rectangle that fits, and a sample without one is left unchanged. Vectorised: all
    tries of all samples are drawn at once and the rectangles are applied as one mask. ``x``: any
    dtype, (N, C, H, W) or (C, H, W); returns a new tensor unless ``inplace``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        raise ValueError("x must be a tensor of images (N, C, H, W) or (C, H, W)")
    _check_generator(generator)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"scale and ratio must be increasing positive pairs, got {scale}, {ratio}")
    single = x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    n, _, height, width = x.shape
    tries = 10
    cpu = torch.device("cpu")
    # Parameters are drawn and computed in float64 on the CPU: they are a few numbers per
    # sample, and float64 matches torchvision's Python-float arithmetic for the rounding below.
    erase = _draw(generator, torch.rand, n, device=cpu) < p
    area = height * width * (scale[0] + (scale[1] - scale[0])
                             * _draw(generator, torch.rand, n, tries, device=cpu).double())
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0])
                       * _draw(generator, torch.rand, n, tries, device=cpu).double())
    # torch.round rounds half to even, like Python's round() in torchvision.
    h = torch.sqrt(area * aspect).round().long()
    w = torch.sqrt(area / aspect).round().long()
    fits = (h < height) & (w < width)
    found = fits.any(dim=1)
    first = fits.long().argmax(dim=1, keepdim=True)  # first try that fits
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    u = _draw(generator, torch.rand, n, 2, device=cpu).double()
    # floor(u * (H - h + 1)) is uniform on 0..H - h, torchvision's randint(0, H - h + 1).
    top = (u[:, 0] * (height - h + 1)).floor().long().clamp_(max=height - h)
    left = (u[:, 1] * (width - w + 1)).floor().long().clamp_(max=width - w)
    erase &= found

    # The mask is built where the images are, from 5 numbers a sample: an (N, H, W) mask made
    # on the CPU would be megabytes to copy every step.
    top, left, h, w, erase = (to_device(t, x.device) for t in (top, left, h, w, erase))
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None])[:, None]
    out = x.masked_fill_(mask, value) if inplace else x.masked_fill(mask, value)
    return out[0] if single else out


def augment(x_uint8: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """The public training recipe on a batch: :func:`flip_or_noise`, :func:`normalize`, then
    :func:`random_erasing` (p = 0.5, scale 0.02-0.1, ratio 0.3-3.3, value 0).

    ``x_uint8``: uint8 (N, 3, H, W) on any device. ``generator``: the source of every random
    draw (normally on the CPU; draws are moved to ``x_uint8``'s device), so the same seed gives
    the same batch. Returns float32 (N, 3, H, W) on ``x_uint8``'s device.
    """
    _check_images(x_uint8, "x_uint8")
    _check_generator(generator)
    x = flip_or_noise(x_uint8, generator=generator)
    # normalize() returns a fresh tensor, so erasing may write into it instead of copying it.
    return random_erasing(normalize(x), generator=generator, inplace=True)
