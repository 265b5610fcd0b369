"""Files of a run: atomic writes, config/metrics/results files and safetensors checkpoints.

A bottom-layer module (docs/design.md §4): it knows tensors and plain values, no network;
saving and rebuilding a network from its checkpoint is :mod:`privatenet.models.saving`.

A checkpoint is a pair ``<stem>.safetensors`` (tensors only) + ``<stem>.json`` (plain values).
The JSON carries two hashes: ``tensors_sha256`` of the tensor file and ``meta_sha256`` of its
own plain values (the canonical JSON of everything in it but ``meta_sha256``), so an edited
value (say ``epoch``) or a pair torn by a kill is reported, never half-used. The JSON is renamed
into place last, so it marks a complete pair. Nothing is ever unpickled.

Training checkpoints (written after every epoch, docs/design.md §4) are generation-numbered
pairs ``checkpoint-<epoch:06d>.*`` in the run's training folder; the last ``keep`` complete
ones are kept and loading falls back to the newest one that verifies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from privatenet.errors import PrivatenetError
from privatenet.readers import load_json

log = logging.getLogger(__name__)

#: Fields that :func:`save_checkpoint` adds to a checkpoint's JSON (not the caller's values).
HASH_FIELDS = ("tensors_sha256", "meta_sha256")


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
    """Read a JSON file with :func:`privatenet.readers.load_json` (a regular file of at most
    :data:`~privatenet.readers.MAX_JSON_BYTES`, nested at most
    :data:`~privatenet.readers.MAX_DEPTH` levels); a missing, special, oversize, malformed or
    too deeply nested file is a one-line :class:`PrivatenetError`."""
    return load_json(path)


def write_yaml(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` (plain values) as YAML."""
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Atomically (re)write a JSON-lines file; the run keeps its history in memory."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def _meta_digest(meta: dict) -> str:
    """SHA-256 of the canonical JSON of ``meta`` without ``meta_sha256``.

    The canonical form (sorted keys, no spaces) of the values as JSON reads them back, so the
    digest computed before writing equals the one computed after reading (tuples become lists,
    integer keys become strings).
    """
    plain = {k: v for k, v in meta.items() if k != "meta_sha256"}
    canonical = json.dumps(json.loads(json.dumps(plain)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def save_checkpoint(stem: str | Path, *, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Save tensors to ``stem.safetensors`` and plain values to ``stem.json``, atomically.

    The JSON gets ``tensors_sha256`` (of the tensor file) and ``meta_sha256`` (of its other
    values, ``tensors_sha256`` included, which binds the two files of the pair).
    """
    stem = Path(stem)
    reserved = [k for k in HASH_FIELDS if k in meta]
    if reserved:
        raise ValueError(f"checkpoint meta may not contain {reserved[0]!r}; save_checkpoint "
                         "adds it")
    blob = st_save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
    meta = dict(meta, tensors_sha256=hashlib.sha256(blob).hexdigest())
    meta["meta_sha256"] = _meta_digest(meta)
    # Tensors first, JSON last: the JSON's presence marks a complete pair.
    atomic_write_bytes(stem.with_suffix(".safetensors"), blob)
    write_json(stem.with_suffix(".json"), meta)


def checkpoint_exists(stem: str | Path) -> bool:
    """Whether a complete checkpoint pair has been written at ``stem``."""
    return Path(stem).with_suffix(".json").exists()


def _redo(path: Path) -> str:
    """How to recompute what a damaged file held (a reproduce stage is recomputed the same way:
    its folder removed, the same command run again)."""
    return f"(delete the folder {path.parent} and rerun the command that wrote it)"


def checkpoint_digest(stem: str | Path) -> str:
    """The SHA-256 of the tensors of the checkpoint at ``stem`` (checked JSON only): the
    identity of a saved network or adversary in a run's fingerprint."""
    return _verified_meta(Path(stem))["tensors_sha256"]


def _verified_meta(stem: Path) -> dict:
    """The checkpoint JSON at ``stem``, hash fields included, after checking ``meta_sha256``."""
    meta_path = Path(stem).with_suffix(".json")
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise PrivatenetError(f"{meta_path}: not a privatenet checkpoint (not a JSON object)")
    for key in HASH_FIELDS:
        if not isinstance(meta.get(key), str):
            raise PrivatenetError(
                f"{meta_path}: no {key}; not a privatenet checkpoint, or written by an older "
                "privatenet version " + _redo(meta_path))
    if _meta_digest(meta) != meta["meta_sha256"]:
        raise PrivatenetError(
            f"{meta_path}: values do not match its meta_sha256; the file was edited or is "
            "corrupt " + _redo(meta_path))
    return meta


def load_checkpoint_meta(stem: str | Path) -> dict:
    """The plain values of the checkpoint at ``stem``, after checking ``meta_sha256``.

    Reads only the JSON (cheap); :func:`load_checkpoint` also checks the tensor file. The
    returned dict holds the caller's values, without the hash fields.
    """
    meta = _verified_meta(Path(stem))
    return {k: v for k, v in meta.items() if k not in HASH_FIELDS}


def load_checkpoint(stem: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint pair written by :func:`save_checkpoint`, verifying both hashes.

    Returns ``(tensors, meta)``; ``meta`` holds the caller's values, without the hash fields.
    """
    stem = Path(stem)
    meta_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    meta = _verified_meta(stem)
    try:
        blob = tensor_path.read_bytes()
    except FileNotFoundError:
        raise PrivatenetError(f"{tensor_path}: file not found; the checkpoint is incomplete "
                              + _redo(tensor_path)) from None
    if hashlib.sha256(blob).hexdigest() != meta["tensors_sha256"]:
        raise PrivatenetError(
            f"{tensor_path}: contents do not match {meta_path.name}; the checkpoint is corrupt "
            "or torn by a kill " + _redo(tensor_path)
        )
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as e:
        raise PrivatenetError(f"{tensor_path}: not a valid safetensors file ({e})") from None
    return tensors, {k: v for k, v in meta.items() if k not in HASH_FIELDS}


# Training checkpoints ------------------------------------------------------------------------

_GENERATION = re.compile(r"checkpoint-(\d{6,})\.(json|safetensors)")


def _training_stem(run_dir: Path, epoch: int) -> Path:
    return run_dir / f"checkpoint-{epoch:06d}"


def _generations(run_dir: Path) -> dict[int, set[str]]:
    """``{epoch: {"json", "safetensors"}}`` of the training checkpoint files in ``run_dir``."""
    found: dict[int, set[str]] = {}
    if not run_dir.is_dir():
        return found
    for p in run_dir.iterdir():
        m = _GENERATION.fullmatch(p.name)
        if m:
            found.setdefault(int(m.group(1)), set()).add(m.group(2))
    return found


def _check_training_meta(meta: dict, where: str) -> None:
    """One-line error unless ``meta`` has the plain values a training checkpoint needs."""
    epoch = meta.get("epoch")
    # bool is an int subclass; ``"epoch": true`` is not an epoch.
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise PrivatenetError(f"{where}: 'epoch' is {epoch!r}, not an integer >= 0; the "
                              "checkpoint is corrupt")
    history = meta.get("history")
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise PrivatenetError(f"{where}: 'history' is not a list of records; the checkpoint is "
                              "corrupt " + _redo(Path(where)))


def training_checkpoint_exists(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds at least one complete training checkpoint pair (a JSON file;
    whether it verifies is for :func:`load_training_checkpoint` to say)."""
    return any("json" in kinds for kinds in _generations(Path(run_dir)).values())


def save_training_checkpoint(run_dir: str | Path, *, tensors: dict[str, torch.Tensor],
                             meta: dict, keep: int = 2) -> None:
    """Write the training checkpoint of epoch ``meta["epoch"]`` as ``checkpoint-<epoch>.*`` in
    ``run_dir``, then delete all but the newest ``keep`` complete pairs.

    ``meta`` needs ``epoch`` (int >= 0) and ``history`` (list of dicts). Older pairs are kept so
    that a corrupt or torn newest pair still leaves one to resume from.
    """
    if keep < 1:
        raise ValueError(f"keep={keep!r}; keep at least one training checkpoint")
    run_dir = Path(run_dir)
    try:
        _check_training_meta(meta, "save_training_checkpoint meta")
    except PrivatenetError as e:  # the caller's bug, not a user mistake
        raise ValueError(str(e)) from None
    epoch = meta["epoch"]
    save_checkpoint(_training_stem(run_dir, epoch), tensors=tensors, meta=meta)
    gens = _generations(run_dir)
    # Generations after ``epoch`` are from an abandoned attempt (resumed from an older pair).
    complete = sorted(g for g, kinds in gens.items() if "json" in kinds and g <= epoch)
    keep_set = set(complete[-keep:])
    for g in sorted(gens):
        if g in keep_set:
            continue
        stem = _training_stem(run_dir, g)
        # JSON first: a half-deleted pair must not look complete.
        stem.with_suffix(".json").unlink(missing_ok=True)
        stem.with_suffix(".safetensors").unlink(missing_ok=True)
    # Temporary files left by a kill in the middle of a write (only this run writes here).
    for p in run_dir.glob(".checkpoint-*.tmp"):
        p.unlink(missing_ok=True)


def load_training_checkpoint(run_dir: str | Path
                             ) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(tensors, meta)`` of the newest training checkpoint in ``run_dir`` that verifies, or
    ``None`` when there is no complete pair.

    A newer pair that does not verify (corrupt, edited, torn by a kill) is skipped with a
    warning; if none verifies this raises a one-line :class:`PrivatenetError`.
    """
    run_dir = Path(run_dir)
    complete = sorted((g for g, kinds in _generations(run_dir).items() if "json" in kinds),
                      reverse=True)
    if not complete:
        return None
    skipped: list[tuple[Path, PrivatenetError]] = []
    for g in complete:
        stem = _training_stem(run_dir, g)
        try:
            tensors, meta = load_checkpoint(stem)
            _check_training_meta(meta, str(stem.with_suffix(".json")))
            if meta["epoch"] != g:
                raise PrivatenetError(f"{stem.with_suffix('.json')}: holds epoch "
                                      f"{meta['epoch']}, not {g}; the file was renamed")
        except PrivatenetError as e:
            skipped.append((stem, e))
            continue
        for bad, e in skipped:
            log.warning("skipping training checkpoint %s (%s); fell back to the previous good "
                        "checkpoint %s", bad.name, e, stem.name)
        return tensors, meta
    raise PrivatenetError(
        f"{run_dir}: no training checkpoint verifies (newest: {skipped[0][1]}); delete its "
        "checkpoint-* files to train from the first epoch, or choose another folder")


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
