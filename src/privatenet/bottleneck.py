"""A noisy information bottleneck at a tap: the ``vib`` defence (docs/design.md §2.2).

The features at the tap are encoded into a code of ``channels`` numbers per position, Gaussian
noise of a learned scale is added, and the code is decoded back to the tap's shape for the
layers after it (a variational information bottleneck, Alemi et al., ICLR 2017, placed at the
cut instead of before the classifier)::

    mu, log_var = encode(h)                  # 1x1 convolution (maps) or linear (vectors)
    z = mu + exp(log_var / 2) * eps          # eps ~ N(0, I), drawn in training *and* deployment
    tap = decode(z)                          # back to the tap's shape

The network is trained with ``(1 - lam) * CE + lam * KL``, where ``KL`` is the mean over the
code's numbers of ``KL(N(mu, var) || N(0, 1))`` in nats (:attr:`TapBottleneck.last_kl`,
:func:`privatenet.regularizer.PrivacyRegularizer` with ``loss="vib"``).

**What it guarantees.** The tap carries at most what the noisy code carries: by the data-
processing inequality every attacker on the tap, linear or not, with any number of its own
rows, is bounded by the mutual information between the image and one noisy code, and the KL
term bounds that information from above (in expectation over the images, per code number in
nats). The term needs no private label: it removes what the task does not need, for every
attribute at once, including those nobody thought to protect.

**What it does not guarantee.** The bound is on information, not on accuracy at a level we can
state in advance: what is left can still be read, and an attacker is measured by the audit. The
noise must be drawn at deployment (it is the defence); an attacker who sees several codes of the
same face (video frames of one person) can average the noise away, by the square root of the
number of codes. The code leaves the information the task needs, and whatever the task needs
that correlates with the private attribute (the floor) stays.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from privatenet.errors import PrivatenetError, SettingError
from privatenet.models.registry import inner_from_config, register_wrapper
from privatenet.models.taps import TapWrapper, tap_layer, tap_shapes, wrapped_image_size

__all__ = ["VIB_CHANNELS", "BottleneckModel", "TapBottleneck", "bottleneck_at_tap",
           "bottleneck_from_config", "check_channels"]

#: Code channels of the ``vib`` defence unless given: 16 of the 512 channels of a ResNet-18
#: backbone map, 256 numbers per image at a 4x4 map, far fewer than the train split's rows
#: (chosen on defender rows of the demo data, docs/design.md §2.2).
VIB_CHANNELS = 16

#: The log-variance is clamped to this range: exp(+-8) spans 3e-4 to 3e3 in variance, wide
#: enough for any code and far from float32's overflow.
LOG_VAR_RANGE = (-8.0, 8.0)
#: Keys of a :class:`BottleneckModel` config.
_CONFIG_KEYS = ("name", "num_classes", "inner", "tap", "shape", "channels")


def check_channels(channels: object) -> int:
    """``channels`` if it is an integer >= 1, else a one-line :class:`PrivatenetError` (the
    tap's own width bounds it from above when the bottleneck is built)."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise SettingError("bottleneck_channels", channels, "is invalid; give an integer >= 1, "
                                                            "at most the tap's channels")
    return channels


class TapBottleneck(nn.Module):
    """A noisy ``channels``-wide code of features of ``shape`` ((C, H, W) maps or (D,) vectors).

    ``forward(h)`` returns the decoded noisy code (the shape of ``h``) and keeps the batch's KL
    term in :attr:`last_kl` (a scalar tensor in the graph). The noise is drawn from torch's
    global generator in every mode: seed it (``torch.manual_seed``) for reproducible features.
    """

    def __init__(self, *, shape: tuple[int, ...] | list[int], channels: int) -> None:
        super().__init__()
        shape = tuple(shape)
        if len(shape) not in (1, 3) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise PrivatenetError(f"a bottleneck needs a tap of shape (C, H, W) or (D,), got "
                                  f"{shape!r}")
        if check_channels(channels) > shape[0]:
            raise PrivatenetError(f"bottleneck channels={channels!r} is invalid; give an integer "
                                  f"1..{shape[0]} (the tap's {shape[0]} channels)")
        self.shape, self.channels = shape, channels
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if len(shape) == 3 else nn.Linear
        self.encode = layer(shape[0], 2 * channels)
        self.decode = layer(channels, shape[0])
        self.last_kl: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"shape={self.shape}, channels={self.channels}"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu, log_var = self.encode(h).chunk(2, dim=1)
        log_var = log_var.clamp(*LOG_VAR_RANGE)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
        self.last_kl = 0.5 * (mu.square() + log_var.exp() - log_var - 1).mean()
        return self.decode(z)


class BottleneckModel(TapWrapper):
    """A model with a :class:`TapBottleneck` at one tap (:class:`~privatenet.models.taps.
    TapWrapper`); every layer stays trainable. ``forward_taps``'s ``tap`` output is the decoded
    noisy code (what an attacker at the tap reads); the bottleneck belongs to the part before
    the cut. Saved by ``save_module`` and rebuilt by ``model_from_config`` from :attr:`config`
    (``{"name": "bottleneck", "num_classes", "inner", "tap", "shape", "channels"}``) when
    ``inner`` came from the registry. Make one with :func:`bottleneck_at_tap`.
    """

    def __init__(self, inner: nn.Module, *, tap: str, bottleneck: TapBottleneck) -> None:
        if not isinstance(bottleneck, TapBottleneck):
            raise PrivatenetError(f"bottleneck must be a TapBottleneck, got "
                                  f"{type(bottleneck).__name__}")
        super().__init__(inner, tap=tap, module=bottleneck, what="bottleneck")
        self.bottleneck = bottleneck

    @property
    def config(self) -> dict[str, Any]:
        """Plain-value config from which ``model_from_config`` rebuilds this model."""
        inner = self.inner_config()
        return {"name": "bottleneck", "num_classes": inner["num_classes"], "inner": inner,
                "tap": self.tap, "shape": list(self.bottleneck.shape),
                "channels": self.bottleneck.channels}

    def extra_repr(self) -> str:
        return f"tap={self.tap!r}"


def bottleneck_at_tap(model: nn.Module, *, tap: str, channels: int,
                      image_size: int | tuple[int, int] | None = None) -> BottleneckModel:
    """A copy of ``model`` with a new (untrained) ``channels``-wide noisy bottleneck at ``tap``.

    ``model``: any model with taps and ``tap_layers`` (every registry model); it is deep-copied
    and not modified. ``image_size`` (default: the model config's) sizes the probe forward that
    finds the tap's shape. Train the result with ``fit(..., regularizer=PrivacyRegularizer(
    None, loss="vib", lam=..., bottleneck=result.bottleneck), tap=tap, private=...)``.
    """
    image_size = wrapped_image_size(model, image_size, who="bottleneck_at_tap")
    tap_layer(model, tap)  # unknown tap: fail before copying
    shape = tap_shapes(model, image_size=image_size)[tap]
    inner = copy.deepcopy(model)
    ref = next(iter(inner.parameters()), None)
    bottleneck = TapBottleneck(shape=shape, channels=channels)
    if ref is not None:
        bottleneck.to(ref.device)
    return BottleneckModel(inner, tap=tap, bottleneck=bottleneck)


def bottleneck_from_config(config: Mapping[str, Any], *, load_backbone_weights: bool = False
                           ) -> BottleneckModel:
    """Rebuild a :class:`BottleneckModel` from its ``config`` (``model_from_config`` calls this
    for ``name == "bottleneck"``); load the checkpoint's state dict into it for the weights."""
    inner = inner_from_config(config, keys=_CONFIG_KEYS, what="bottleneck",
                              load_backbone_weights=load_backbone_weights)
    shape = config["shape"]
    if not isinstance(shape, list):
        raise PrivatenetError(f"bottleneck model config: shape {shape!r} is not a list")
    bottleneck = TapBottleneck(shape=shape, channels=config["channels"])
    return BottleneckModel(inner, tap=config["tap"], bottleneck=bottleneck)


# model_from_config rebuilds saved bottleneck networks with this (the package imports this module).
register_wrapper("bottleneck", bottleneck_from_config)
