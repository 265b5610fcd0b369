"""Run directories: atomic writes, config/metrics/results files and safetensors checkpoints.

A checkpoint is a pair ``<stem>.safetensors`` (tensors only) + ``<stem>.json`` (plain values,
including the SHA-256 of the tensor file). The JSON is renamed into place last, so it marks a
complete pair; loading checks the hash, so a pair torn by a kill or a corrupt file is reported,
never half-used. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from privatenet.errors import PrivatenetError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file is a one-line :class:`PrivatenetError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrivatenetError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrivatenetError(f"{path}: not valid JSON ({e}); the file is corrupt") from None


def write_yaml(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` (plain values) as YAML."""
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Atomically (re)write a JSON-lines file; the run keeps its history in memory."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def save_checkpoint(stem: str | Path, *, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Save tensors to ``stem.safetensors`` and plain values to ``stem.json``, atomically."""
    stem = Path(stem)
    blob = st_save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
    atomic_write_bytes(stem.with_suffix(".safetensors"), blob)
    meta = dict(meta, tensors_sha256=hashlib.sha256(blob).hexdigest())
    write_json(stem.with_suffix(".json"), meta)


def checkpoint_exists(stem: str | Path) -> bool:
    """Whether a complete checkpoint pair has been written at ``stem``."""
    return Path(stem).with_suffix(".json").exists()


def load_checkpoint(stem: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint pair written by :func:`save_checkpoint`, verifying its hash."""
    stem = Path(stem)
    meta_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or "tensors_sha256" not in meta:
        raise PrivatenetError(f"{meta_path}: not a privatenet checkpoint (no tensors_sha256)")
    try:
        blob = tensor_path.read_bytes()
    except FileNotFoundError:
        raise PrivatenetError(f"{tensor_path}: file not found; the checkpoint is incomplete") \
            from None
    if hashlib.sha256(blob).hexdigest() != meta["tensors_sha256"]:
        raise PrivatenetError(
            f"{tensor_path}: contents do not match {meta_path.name}; the checkpoint is corrupt "
            "(rerun the step that wrote it)"
        )
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as e:
        raise PrivatenetError(f"{tensor_path}: not a valid safetensors file ({e})") from None
    return tensors, meta


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{prefix.key: tensor}`` for one state dict inside a checkpoint."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict stored under ``prefix`` by :func:`prefixed`."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def optimizer_state(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split an optimizer state dict into checkpoint tensors and plain values."""
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v
            else:
                plain[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def load_optimizer_state(prefix: str, opt: torch.optim.Optimizer, tensors: dict, plain: dict
                         ) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict] = {}
    for key, v in unprefixed(prefix, tensors).items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in plain["plain"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g
              for g in plain["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_module(stem: str | Path, module: torch.nn.Module, meta: dict) -> None:
    """Save a model or adversary head: its weights plus ``module.config`` (how to rebuild it)
    and the caller's plain ``meta`` (classes, tap, data spec, ...)."""
    save_checkpoint(stem, tensors=module.state_dict(),
                    meta={"module": dict(module.config), **meta})


def load_module(stem: str | Path, *, expect: str | None = None
                ) -> tuple[torch.nn.Module, dict]:
    """Rebuild and load a module saved by :func:`save_module` (strict key and shape check).

    ``expect`` (a registry name) rejects a checkpoint of another architecture with a one-line
    error.
    """
    from privatenet.models import adversary_from_config, model_from_config

    tensors, meta = load_checkpoint(stem)
    cfg = meta.get("module")
    adversary = meta.get("role") == "adversary"
    arch = cfg.get("kind" if adversary else "name") if isinstance(cfg, dict) else None
    if arch is None:
        raise PrivatenetError(f"{Path(stem).with_suffix('.json')}: no module config; "
                              "not a privatenet model or adversary checkpoint")
    if expect is not None and arch != expect:
        raise PrivatenetError(f"{Path(stem).with_suffix('.json')} holds a {arch!r} "
                              f"network, not {expect!r}; pass a checkpoint of that architecture")
    build = adversary_from_config if adversary else model_from_config
    module = build(cfg)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise PrivatenetError(f"{Path(stem).with_suffix('.safetensors')} does not fit a "
                              f"{arch!r} network ({first})") from None
    return module, meta
