"""One factory and one registry for every classifier (timm ``_factory.py`` style).

A model module registers its factory functions with :func:`register_model`; users create models
with :func:`create_model` by name. Every model created here carries a ``config`` dict of plain
values (``{"name": ..., "num_classes": ..., **options}``, defaults resolved) from which
:func:`model_from_config` re-creates the same architecture; the jobs store it in checkpoints.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from privatenet.errors import PrivatenetError
from privatenet.readers import brief

__all__ = ["create_model", "inner_from_config", "list_models", "model_from_config",
           "model_options", "model_taps", "register_family", "register_model", "register_wrapper"]


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    tags: frozenset[str]


_MODELS: dict[str, _Entry] = {}
#: Models that wrap another model (``"erased"``): name -> ``build(config, *,
#: load_backbone_weights)``. Only :func:`model_from_config` rebuilds them; they are neither
#: listed nor made by name.
_WRAPPERS: dict[str, Callable[..., nn.Module]] = {}
#: Families of models named ``"<prefix>:<arch>"``: prefix -> (factory maker, valid archs).
_FAMILIES: dict[str, tuple[Callable[[str], Callable[..., nn.Module]], Callable[[], list[str]]]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                   tags: tuple[str, ...] = ()):
    """Register a factory ``fn(num_classes, **options) -> nn.Module`` under its function name.

    Use bare (``@register_model``) or with options (``@register_model(tags=("arm",))``). The
    factory's keyword parameters other than ``num_classes`` are the options ``create_model``
    accepts; give each a default.
    """

    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODELS and _MODELS[key].fn is not f:
            raise ValueError(f"model {key!r} is registered twice")
        params = inspect.signature(f).parameters
        if ":" in key:
            raise ValueError(f"model name {key!r} must not contain ':' (family prefixes)")
        if "num_classes" not in params:
            raise ValueError(f"model factory {key!r} must take a num_classes parameter")
        _MODELS[key] = _Entry(f, frozenset(tags))
        return f

    return deco(fn) if fn is not None else deco


def register_family(prefix: str, make_factory: Callable[[str], Callable[..., nn.Module]],
                    archs: Callable[[], list[str]]) -> None:
    """Register models named ``"<prefix>:<arch>"`` (e.g. ``"torchvision:mobilenet_v3_small"``):
    ``make_factory(arch)`` returns a factory like those of :func:`register_model`, ``archs()``
    the valid architecture names."""
    _FAMILIES[prefix] = (make_factory, archs)


def register_wrapper(name: str, build: Callable[..., nn.Module]) -> None:
    """Register how :func:`model_from_config` rebuilds a wrapper model ``name`` (a model around
    another registry model, e.g. ``"erased"``): ``build(config, *, load_backbone_weights)``
    returns the model from its whole config. Wrappers are not in :func:`list_models` and
    :func:`create_model` does not make them: they are built from a trained model, then saved."""
    if name in _MODELS or (name in _WRAPPERS and _WRAPPERS[name] is not build):
        raise ValueError(f"model {name!r} is registered twice")
    _WRAPPERS[name] = build


def list_models(tag: str | None = None) -> list[str]:
    """Names of the registered models, sorted; only those carrying ``tag`` if given."""
    return sorted(k for k, e in _MODELS.items() if tag is None or tag in e.tags)


def _entry(name: str) -> _Entry:
    prefix, sep, arch = name.partition(":") if isinstance(name, str) else ("", "", "")
    if sep and prefix in _FAMILIES:
        make_factory, archs = _FAMILIES[prefix]
        valid = archs()
        if arch not in valid:
            raise PrivatenetError(f"unknown {prefix} model {brief(arch)}; valid: "
                                  f"{', '.join(valid)}")
        return _Entry(make_factory(arch), frozenset())
    if not isinstance(name, str) or name not in _MODELS:
        raise PrivatenetError(
            f"unknown model {brief(name)}; valid models: {', '.join(list_models())}"
            + "".join(f", {p}:<name>" for p in _FAMILIES)
        )
    return _MODELS[name]


def check_model_name(name: str) -> str:
    """``name`` if it is registered, else a :class:`PrivatenetError` listing the valid names."""
    _entry(name)
    return name


def model_options(name: str) -> dict[str, Any]:
    """The options model ``name`` accepts, with their defaults (``num_classes`` excluded)."""
    params = inspect.signature(_entry(name).fn).parameters
    return {k: p.default for k, p in params.items() if k != "num_classes"}


def _plain(value: Any) -> Any:
    """A config value as a plain (JSON/YAML-friendly) value: paths become strings."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def check_num_classes(num_classes: Any, what: str) -> int:
    """``num_classes`` as an int >= 2, or a one-line :class:`PrivatenetError`."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise PrivatenetError(f"{what}: num_classes must be an integer >= 2, got {num_classes!r}")
    return num_classes


def create_model(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """Create the registered model ``name`` with ``num_classes`` outputs.

    Every model has ``forward(x) -> logits``, a ``taps`` tuple of tap names,
    ``forward_taps(x) -> (logits, {tap: tensor})`` and a ``config`` dict of plain values.
    An unknown name or option raises :class:`PrivatenetError` listing the valid ones.
    """
    entry = _entry(name)
    sig = inspect.signature(entry.fn)
    valid = [k for k in sig.parameters if k != "num_classes"]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise PrivatenetError(
            f"model {name!r} has no option {unknown[0]!r}; valid options: "
            f"{', '.join(valid) if valid else '(none)'}"
        )
    check_num_classes(num_classes, f"model {name!r}")
    bound = sig.bind(num_classes=num_classes, **kwargs)
    bound.apply_defaults()
    model = entry.fn(**bound.arguments)
    model.config = {"name": name, **{k: _plain(v) for k, v in bound.arguments.items()}}
    return model


def model_taps(name: str) -> tuple[str, ...]:
    """The tap names of model ``name`` (default options), without data or weights: the model
    is built on the meta device, which allocates and initialises nothing (on the CPU if one
    cannot be built there). An unknown name is a :class:`PrivatenetError`."""
    import torch

    _entry(name)
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=2)
    except (RuntimeError, NotImplementedError):
        model = create_model(name, num_classes=2)
    return tuple(model.taps)


def check_tap(name: str, tap: str) -> str:
    """``tap`` if model ``name`` has it (:func:`model_taps`: no data needed, so a command checks
    it before any image is read), else a one-line error listing the model's taps."""
    taps = model_taps(name)
    if tap not in taps:
        raise PrivatenetError(f"model {name!r} has no tap {tap!r}; valid taps: {', '.join(taps)}")
    return tap


def model_from_config(config: Mapping[str, Any], *, load_backbone_weights: bool = False
                      ) -> nn.Module:
    """Re-create a model from its ``config`` (as stored in a checkpoint).

    This re-creates the architecture; the weights come from the checkpoint. A
    ``backbone_weights`` path in the config is therefore not read again unless
    ``load_backbone_weights`` is true (the file may have moved since training). The new model's
    ``config`` equals ``config``.
    """
    if not isinstance(config, Mapping) or "name" not in config or "num_classes" not in config:
        raise PrivatenetError(
            f"model config must be a mapping with 'name' and 'num_classes', got {config!r}"
        )
    if isinstance(config["name"], str) and config["name"] in _WRAPPERS:
        return _WRAPPERS[config["name"]](dict(config),
                                         load_backbone_weights=load_backbone_weights)
    options = dict(config)
    name = options.pop("name")
    num_classes = options.pop("num_classes")
    if not load_backbone_weights and options.get("backbone_weights") is not None:
        options["backbone_weights"] = None
    model = create_model(name, num_classes=num_classes, **options)
    model.config = dict(config)
    return model


def inner_from_config(config: Mapping[str, Any], *, keys: tuple[str, ...], what: str,
                      load_backbone_weights: bool = False) -> nn.Module:
    """The inner model of a wrapper's ``config`` (a model erased or bottlenecked at a tap),
    after checking that the config has exactly ``keys`` and that the inner model's number of
    classes is the wrapper's; ``what`` names the wrapper in the one-line errors."""
    if not isinstance(config, Mapping) or set(config) != set(keys):
        got = sorted(config) if isinstance(config, Mapping) else config
        raise PrivatenetError(f"{what} model config must have exactly the keys "
                              f"{', '.join(keys)}; got {got!r}")
    inner = model_from_config(config["inner"], load_backbone_weights=load_backbone_weights)
    if inner.config.get("num_classes") != config["num_classes"]:
        raise PrivatenetError(f"{what} model config: num_classes {config['num_classes']!r} "
                              f"differs from its inner model's {inner.config.get('num_classes')!r}")
    return inner
