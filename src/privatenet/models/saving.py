"""Save a network or adversary head with its config, and rebuild it from the checkpoint.

A checkpoint (:func:`privatenet.storage.save_checkpoint`) holds the module's weights, its
``config`` (how to rebuild it from the registry) and the caller's plain values; loading checks
every value and every tensor shape against the network the config describes before building it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from privatenet.data.base import check_carve
from privatenet.data.spec import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, check_image_size
from privatenet.errors import PrivatenetError
from privatenet.models.adversaries import adversary_from_config
from privatenet.models.registry import check_num_classes, model_from_config
from privatenet.readers import brief
from privatenet.storage import load_checkpoint, save_checkpoint

__all__ = ["check_module_meta", "load_module", "save_module"]


def save_module(stem: str | Path, module: torch.nn.Module, meta: dict) -> None:
    """Save a model or adversary head: its weights plus ``module.config`` (how to rebuild it)
    and the caller's plain ``meta`` (classes, tap, data spec, ...)."""
    save_checkpoint(stem, tensors=module.state_dict(),
                    meta={"module": dict(module.config), **meta})


def _edited(path: Path, problem: str) -> PrivatenetError:
    """The error for a checkpoint whose values (hashes recomputed, or of another version) are
    not ones privatenet writes."""
    return PrivatenetError(f"{path}: {problem}; the file was edited or is from another "
                           "privatenet version (restore it, or rerun the command that wrote it)")


def _configs(cfg: dict) -> list[dict]:
    """``cfg`` and the configs of the networks it wraps (``inner``), outermost first."""
    out = [cfg]
    while isinstance(out[-1].get("inner"), dict) and len(out) <= 8:
        out.append(out[-1]["inner"])
    return out


def check_module_meta(meta: dict, path: str | Path, *, required: tuple[str, ...] = ()) -> dict:
    """``meta`` (the plain values of a :func:`save_module` checkpoint, read back from ``path``)
    if it holds values privatenet itself writes, else a one-line :class:`PrivatenetError`
    naming the file: the hashes only tell corruption, so an edited file with recomputed hashes
    (or one of another version) is caught here, before any value sizes an allocation.

    Checked: ``module`` (a config with a name or kind; its ``num_classes`` and every
    ``image_size`` in it and the configs it wraps, as :func:`~privatenet.models.registry.
    check_num_classes` and :func:`~privatenet.data.spec.check_image_size` check them when
    training), ``classes`` (distinct names, as many as the network's ``num_classes``),
    ``image_size`` (as the data and model code check it, equal to the config's), the strings
    ``data``, ``target``, ``tap``, ``attribute`` and ``model_run``, ``attacker_carve`` (as
    :func:`~privatenet.data.base.check_carve` checks it), and that every key of ``required``
    is present. The shapes of the tensors are :func:`load_module`'s to check.
    """
    path = Path(path)
    for key in required:
        if key not in meta:
            raise _edited(path, f"no {key!r}")
    cfg = meta.get("module")
    arch_key = "kind" if meta.get("role") == "adversary" else "name"
    if not isinstance(cfg, dict) or not isinstance(cfg.get(arch_key), str):
        raise _edited(path, "no module config (not a privatenet model or adversary checkpoint)")

    def image_size(value: object, where: str) -> int:
        try:
            if value is None:
                raise PrivatenetError("None")
            return check_image_size(value)
        except PrivatenetError:
            raise _edited(path, f"{where!r} is {brief(value)}, not an integer "
                                f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}") from None

    def num_classes(value: object, where: str) -> int:
        try:
            return check_num_classes(value, where)
        except PrivatenetError:
            raise _edited(path, f"{where!r} is {brief(value)}, not an integer >= 2") from None

    for depth, c in enumerate(_configs(cfg)):
        where = "module" + ".inner" * depth
        if "num_classes" in c:
            num_classes(c["num_classes"], f"{where}.num_classes")
        size = c.get("image_size")
        if isinstance(size, list) and len(size) == 2:  # (H, W) of an erased network
            for side in size:
                image_size(side, f"{where}.image_size")
        elif size is not None:
            image_size(size, f"{where}.image_size")
    classes = meta.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not classes or not all(
                isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
            raise _edited(path, f"'classes' is {brief(classes)}, not a list of distinct names")
        if len(classes) != cfg.get("num_classes"):
            raise _edited(path, f"{len(classes)} 'classes' for a network of "
                                f"{brief(cfg.get('num_classes'))} outputs")
    if meta.get("image_size") is not None:
        size = image_size(meta["image_size"], "image_size")
        if isinstance(cfg.get("image_size"), int) and cfg["image_size"] != size:
            raise _edited(path, f"'image_size' is {size}, the network's is "
                                f"{brief(cfg['image_size'])}")
    for key in ("data", "target", "tap", "attribute", "model_run"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise _edited(path, f"{key!r} is {brief(value)}, not a non-empty string")
    if "attacker_carve" in meta:
        try:
            check_carve(meta["attacker_carve"])
        except PrivatenetError:
            raise _edited(path, f"'attacker_carve' is {brief(meta['attacker_carve'])}, not a "
                                "record of an attacker split") from None
    return meta


def _skeleton(build, cfg: dict, path: Path) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of the network ``cfg`` describes, built on the meta device (which
    allocates nothing, whatever sizes an edited config names)."""
    try:
        with torch.device("meta"):
            module = build(cfg)
    except PrivatenetError as e:
        raise _edited(path, f"its module config is invalid ({str(e).split(';')[0][:200]})"
                      ) from None
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError, NotImplementedError,
            OverflowError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise _edited(path, f"its module config cannot be built ({first})") from None
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_module(stem: str | Path, *, expect: str | None = None,
                required: tuple[str, ...] = ()) -> tuple[torch.nn.Module, dict]:
    """Rebuild and load a module saved by :func:`save_module` (strict key and shape check).

    ``expect`` (a registry name) rejects a checkpoint of another architecture with a one-line
    error. The plain values are checked by :func:`check_module_meta` (``required``: keys the
    caller needs), then the shape of every tensor in the file against the network the config
    describes, built first on the meta device: an edited config (say a huge ``num_classes``)
    is a one-line error naming the file, never an allocation.
    """
    stem = Path(stem)
    meta_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    tensors, meta = load_checkpoint(stem)
    check_module_meta(meta, meta_path, required=required)
    cfg = meta["module"]
    adversary = meta.get("role") == "adversary"
    arch = cfg["kind" if adversary else "name"]
    if expect is not None and arch != expect:
        raise PrivatenetError(f"{meta_path} holds a {brief(arch)} network, not {expect!r}; "
                              "pass a checkpoint of that architecture")
    build = adversary_from_config if adversary else model_from_config
    expected = _skeleton(build, cfg, meta_path)
    for key, shape in expected.items():
        if key not in tensors:
            raise _edited(tensor_path, f"no tensor {brief(key)}, which the {brief(arch)} "
                                       f"network of {meta_path.name} has")
        if tuple(tensors[key].shape) != shape:
            raise _edited(tensor_path, f"tensor {brief(key)} has shape "
                                       f"{tuple(tensors[key].shape)}, the {brief(arch)} network "
                                       f"of {meta_path.name} needs {shape}")
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise _edited(tensor_path, f"tensor {brief(extra[0])} is not part of the {brief(arch)} "
                                   f"network of {meta_path.name}")
    module = build(cfg)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise PrivatenetError(f"{tensor_path} does not fit a {brief(arch)} network "
                              f"({first})") from None
    return module, meta
