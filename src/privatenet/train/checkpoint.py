"""Run directories: atomic writes, config/metrics/results files and safetensors checkpoints.

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
from privatenet.readers import brief, load_json

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
    from privatenet.data.base import check_carve
    from privatenet.data.spec import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, check_image_size
    from privatenet.models.registry import check_num_classes

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
    from privatenet.models import adversary_from_config, model_from_config

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
