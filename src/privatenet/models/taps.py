"""Named taps: intermediate outputs every model returns from ``forward_taps``.

``model.forward_taps(x) -> (logits, {tap: tensor})``, with the names in ``model.taps``. The
registry's own models compute their taps in their forward code; :func:`with_taps` gives the same
interface to any ``nn.Module`` (a torchvision model, a user's network) through forward hooks
that exist only for the duration of one ``forward_taps`` call.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import nn

from privatenet.errors import PrivatenetError

__all__ = ["TapWrapper", "TappedModel", "require_tap", "tap_layer", "tap_shapes", "with_taps"]


class TappedModel(nn.Module):
    """``module`` with named taps on its layers; see :func:`with_taps`.

    ``forward(x)`` is ``module(x)`` unchanged. ``forward_taps(x)`` runs the same forward with a
    hook on each tapped layer (removed again before it returns) and gives ``(output, {tap:
    layer output})``. The wrapped network is ``self.module``: its state dict is the
    wrapper's without the ``module.`` prefix.
    """

    def __init__(self, module: nn.Module, taps: Mapping[str, str]) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise PrivatenetError(f"with_taps needs an nn.Module, got {type(module).__name__}")
        if not isinstance(taps, Mapping) or not taps:
            raise PrivatenetError("taps must be a non-empty mapping {tap name: layer path}, "
                                  "e.g. {'backbone': 'layer4'}")
        layers = dict(module.named_modules())
        for name, path in taps.items():
            if not isinstance(name, str) or not name:
                raise PrivatenetError(f"tap name {name!r} must be a non-empty string")
            if not isinstance(path, str) or not path or path not in layers:
                top = ", ".join(n for n, _ in module.named_children())
                raise PrivatenetError(f"tap {name!r}: {type(module).__name__} has no layer "
                                      f"{path!r}; give a dotted path from named_modules(), "
                                      f"e.g. one of its top-level layers: {top}")
        self.module = module
        self.tap_layers = dict(taps)
        self.taps = tuple(taps)

    def extra_repr(self) -> str:
        return f"taps={self.tap_layers}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        found: dict[str, torch.Tensor] = {}
        handles = []

        def hook(name: str):
            def store(_module, _inputs, output) -> None:
                if not isinstance(output, torch.Tensor):
                    raise PrivatenetError(f"tap {name!r}: layer {self.tap_layers[name]!r} "
                                          f"returns a {type(output).__name__}, not a tensor; "
                                          "tap a layer that returns one tensor")
                found[name] = output  # a layer called twice keeps its last output
            return store

        try:
            for name, path in self.tap_layers.items():
                layer = self.module.get_submodule(path)
                handles.append(layer.register_forward_hook(hook(name)))
            out = self.module(x)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.taps if n not in found]
        if missing:
            raise PrivatenetError(f"tap {missing[0]!r}: layer {self.tap_layers[missing[0]]!r} "
                                  "was not called by the forward pass; tap a layer it uses")
        return out, found


def with_taps(model: nn.Module, taps: Mapping[str, str]) -> TappedModel:
    """Give any ``nn.Module`` named taps: ``with_taps(resnet, {"backbone": "layer4"})``.

    ``taps`` maps a tap name to a layer path as in ``model.named_modules()`` (``"layer4"``,
    ``"features.12"``). The result's ``forward`` is the model's, unchanged;
    ``forward_taps(x)`` returns ``(output, {tap: tensor})``, e.g. ``taps["backbone"]`` of shape
    (N, 512, h, w) for a torchvision ResNet-18. Unknown layer paths raise at once, listing the
    model's top-level layers.
    """
    return TappedModel(model, taps)


def require_tap(model: nn.Module, tap: str) -> str:
    """``tap`` if ``model`` has it, else a :class:`PrivatenetError` listing the model's taps."""
    taps = getattr(model, "taps", None)
    if taps is None or not hasattr(model, "forward_taps"):
        raise PrivatenetError(f"{type(model).__name__} has no named taps (no forward_taps)")
    if tap not in taps:
        name = getattr(model, "config", {}).get("name", type(model).__name__)
        raise PrivatenetError(f"model {name!r} has no tap {tap!r}; valid taps: {', '.join(taps)}")
    return tap


def tap_layer(model: nn.Module, tap: str) -> str:
    """The path (as in ``model.named_modules()``) of the layer whose output is ``tap``.

    Models declare it in ``model.tap_layers`` (``{tap: layer path}``): the tap is that layer's
    output, or the same values flattened to (N, -1) (ARMNet's ``arm``, ResNet's ``pool``).
    :func:`with_taps` models have it by construction (their paths, relative to the wrapped
    module, are returned with the ``module.`` prefix). A :class:`PrivatenetError` names an
    unknown tap, or a model without ``tap_layers`` and the fix.
    """
    require_tap(model, tap)
    layers = getattr(model, "tap_layers", None)
    if not isinstance(layers, Mapping) or tap not in layers:
        raise PrivatenetError(f"{type(model).__name__} does not say which layer computes tap "
                              f"{tap!r} (no tap_layers entry); wrap it with with_taps(model, "
                              f"{{{tap!r}: '<layer path>'}})")
    path = layers[tap]
    if isinstance(model, TappedModel):  # its paths are inside the wrapped module
        path = f"module.{path}"
    try:
        model.get_submodule(path)
    except AttributeError:
        raise PrivatenetError(f"{type(model).__name__}.tap_layers[{tap!r}] = {path!r} is not a "
                              "layer of the model; fix its tap_layers") from None
    return path


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


def wrapped_image_size(model: nn.Module, image_size: object, *, who: str) -> object:
    """``image_size`` if given, else ``model``'s config's (the side of the images a wrapper's
    probe forward uses), else a one-line :class:`PrivatenetError` from ``who``."""
    if not isinstance(model, nn.Module):
        raise PrivatenetError(f"{who} needs an nn.Module, got {type(model).__name__}")
    if image_size is None:
        config = getattr(model, "config", None)
        image_size = config.get("image_size") if isinstance(config, Mapping) else None
        if image_size is None:
            name = config.get("name") if isinstance(config, Mapping) else type(model).__name__
            raise PrivatenetError(f"{who}: model {name!r} has no image_size in its config; "
                                  "pass image_size=<side of its input images>")
    return image_size


class _TapOutputHook:
    """Forward hook on the layer that computes a tap: its output replaced by ``module(output)``."""

    def __init__(self, module: nn.Module, tap: str, what: str) -> None:
        self.module, self.tap, self.what = module, tap, what

    def __call__(self, layer: nn.Module, inputs: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise PrivatenetError(f"tap {self.tap!r}: its layer returns a "
                                  f"{type(output).__name__}, not a tensor; put the {self.what} "
                                  "at a tap whose layer returns one tensor")
        return self.module(output)


class TapWrapper(nn.Module):
    """A model (``inner``) with ``module`` applied to one tap's output by a forward hook on the
    layer that computes it, so ``forward`` and ``forward_taps`` see the changed features
    downstream and ``forward_taps``'s ``tap`` output is the changed one (what an attacker at the
    tap reads). The base of the erased (:mod:`privatenet.erasure`) and bottlenecked
    (:mod:`privatenet.bottleneck`) networks; ``what`` names the module in messages.

    ``forward_from(tap, features)`` runs the inner model's layers after ``tap``: at the changed
    tap, ``features`` are the changed ones (the module belongs to the part before the cut), so
    ``forward_from(tap, forward_taps(x)[1][tap])`` equals the logits of the same pass.
    """

    def __init__(self, inner: nn.Module, *, tap: str, module: nn.Module, what: str) -> None:
        super().__init__()
        path = tap_layer(inner, tap)
        self.inner, self.tap, self.what = inner, tap, what
        self.taps = tuple(inner.taps)
        self.tap_layers = {t: f"inner.{tap_layer(inner, t)}"
                           for t in getattr(inner, "tap_layers", {})}
        inner.get_submodule(path).register_forward_hook(_TapOutputHook(module, tap, what))

    def inner_config(self) -> dict:
        """The inner model's registry config, or AttributeError (a wrapper of a model not made
        by ``create_model`` cannot be saved and rebuilt)."""
        inner = getattr(self.inner, "config", None)
        if not isinstance(inner, Mapping):
            raise AttributeError(f"{type(self).__name__} has no config: its inner "
                                 f"{type(self.inner).__name__} was not made by create_model, so "
                                 "it cannot be saved and rebuilt; wrap a registry model")
        return dict(inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.inner.forward_taps(x)

    def forward_from(self, tap: str, features: torch.Tensor) -> torch.Tensor:
        """The logits computed from ``tap``'s features by the inner model's ``forward_from``
        (see the class docstring for which features a tap holds)."""
        cut = getattr(self.inner, "forward_from", None)
        if cut is None:
            raise PrivatenetError(f"{type(self).__name__} around {type(self.inner).__name__} "
                                  "cannot be cut at a tap (its inner model has no "
                                  "forward_from); wrap a registry model (arm_resnet18, "
                                  "arm_small, resnet18, small_cnn)")
        return cut(tap, features)
