"""Named taps: intermediate outputs every model returns from ``forward_taps``.

Every registry model computes its taps in its own forward code (no hooks left behind):
``model.forward_taps(x) -> (logits, {tap: tensor})``, with the names in ``model.taps``.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from privatenet.errors import PrivatenetError

__all__ = ["require_tap", "tap_shapes"]


def require_tap(model: nn.Module, tap: str) -> str:
    """``tap`` if ``model`` has it, else a :class:`PrivatenetError` listing the model's taps."""
    taps = getattr(model, "taps", None)
    if taps is None or not hasattr(model, "forward_taps"):
        raise PrivatenetError(f"{type(model).__name__} has no named taps (no forward_taps)")
    if tap not in taps:
        name = getattr(model, "config", {}).get("name", type(model).__name__)
        raise PrivatenetError(f"model {name!r} has no tap {tap!r}; valid taps: {', '.join(taps)}")
    return tap


def tap_shapes(model: nn.Module, *, image_size: int | tuple[int, int], in_channels: int = 3
               ) -> dict[str, tuple[int, ...]]:
    """``{tap: shape without the batch dimension}`` for square (or (H, W)) inputs.

    One dummy forward of a single zero image in eval mode under ``no_grad`` on the model's
    device; every submodule's training flag is restored afterwards and no running statistic
    changes.
    """
    if not hasattr(model, "forward_taps"):
        raise PrivatenetError(f"{type(model).__name__} has no named taps (no forward_taps)")
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif (isinstance(image_size, (tuple, list)) and len(image_size) == 2
          and all(isinstance(s, int) for s in image_size)):
        size = tuple(image_size)
    else:
        raise PrivatenetError(f"image_size must be an int or (H, W), got {image_size!r}")
    if min(size) < 1 or in_channels < 1:
        raise PrivatenetError(
            f"image_size {image_size!r} and in_channels {in_channels} must be >= 1"
        )
    ref = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, in_channels, *size, device=device, dtype=dtype)
            _, taps = model.forward_taps(x)
    finally:
        for m, flag in flags.items():
            m.training = flag
    return {name: tuple(t.shape[1:]) for name, t in taps.items()}
