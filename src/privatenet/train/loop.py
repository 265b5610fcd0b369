"""The one training loop (docs/design.md §4).

:func:`fit` trains a model on a target column with cross-entropy, optionally regularised by a
:class:`~privatenet.regularizer.PrivacyRegularizer` on one tap (Eq. 8), or by one per private
attribute: the same object a user puts in their own loop. :func:`fit_adversary` trains an
adversary head on frozen, precomputed features. Both run through :func:`_run_epochs`, which
owns shuffling, learning-rate decay, checkpointing, metrics and resume.

Determinism: the shuffle, the augmentation and dropout of epoch ``e`` draw from generators seeded
by ``(seed, e)`` only, so a run resumed from the checkpoint of epoch ``e - 1`` repeats exactly the
computation of an uninterrupted run (on CPU).

Under torchrun (:mod:`privatenet.train.distributed`) every process draws the same shuffle and
takes every N-th row of each mini-batch, so the global batch is the one a single process would
use; torch's ``DistributedDataParallel`` averages the gradients, the epoch's metrics are summed
over the processes, batch-norm statistics are taken from rank 0 after each epoch, and rank 0
alone writes checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privatenet.data.base import MISSING, Split
from privatenet.data.transforms import augment, normalize, to_device
from privatenet.errors import PrivatenetError, SettingError
from privatenet.losses import total_loss
from privatenet.models.taps import require_tap
from privatenet.regularizer import PrivacyRegularizer
from privatenet.storage import (
    load_optimizer_state,
    load_training_checkpoint,
    optimizer_state,
    prefixed,
    save_training_checkpoint,
    training_checkpoint_exists,
    unprefixed,
    write_jsonl,
)
from privatenet.train import distributed
from privatenet.train.config import (
    TrainConfig,
    autocast_for,
    bf16_native,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)

__all__ = ["Callbacks", "extract", "fit", "fit_adversary", "predict_features"]

log = logging.getLogger(__name__)


@dataclass
class Callbacks:
    """Hooks for the caller (the CLI shows progress bars with them)."""

    on_step: Callable[[int, int], None] | None = None  # (step in epoch, steps per epoch)
    on_epoch: Callable[[dict], None] | None = None  # called with the epoch's metrics record


def _config(config: TrainConfig | None, settings: dict) -> TrainConfig:
    """``config`` (default :class:`TrainConfig`) with ``settings`` (its field names) replaced."""
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise PrivatenetError(f"unknown training setting {unknown[0]!r}; valid settings: "
                              f"{', '.join(sorted(names))}")
    if config is not None and not isinstance(config, TrainConfig):
        raise PrivatenetError(f"config must be a TrainConfig, got {type(config).__name__}")
    return replace(config or TrainConfig(), **settings)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % 2**63


@torch.no_grad()
def extract(model: nn.Module, images: torch.Tensor, *, tap: str | None = None,
            batch_size: int = 256, device: str | torch.device = "cpu",
            precision: str = "auto") -> torch.Tensor:
    """Logits (``tap=None``) or the features of ``tap`` of ``model`` in eval mode, float32 on CPU.

    ``images`` (N, C, H, W): uint8 images (as privatenet's data sets hold them) are normalised
    with the ImageNet statistics; float tensors are taken as already preprocessed. Never
    augmented. ``precision``: as :class:`~privatenet.train.config.TrainConfig`'s (``auto`` is
    bf16 autocast on CUDA, fp32 elsewhere); pass the run's, so ``fp32`` holds for evaluation too.
    """
    if tap is not None:
        require_tap(model, tap)
    device = torch.device(device)
    prepare = normalize if images.dtype == torch.uint8 else (lambda t: t)
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, images.shape[0], batch_size):
            x = prepare(images[i:i + batch_size].to(device))
            with autocast_for(device, precision):
                if tap is None:
                    y = model(x)
                else:
                    y = model.forward_taps(x)[1][tap]
            out.append(y.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def predict_features(head: nn.Module, features: torch.Tensor, *, batch_size: int = 1024,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Argmax predictions of an adversary head on precomputed features."""
    device = torch.device(device)
    was_training = head.training
    head.eval()
    try:
        preds = [head(features[i:i + batch_size].to(device)).argmax(1).cpu()
                 for i in range(0, features.shape[0], batch_size)]
    finally:
        head.train(was_training)
    return torch.cat(preds)


def _run_epochs(*, n: int, step: Callable[[torch.Tensor, torch.Generator], dict],
                modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                config: TrainConfig, signature: dict, run_dir: Path | None, resume: bool,
                callbacks: Callbacks | None, shard: bool = False) -> list[dict]:
    """Epochs of shuffled mini-batches; checkpoint + metrics after each epoch; resume.

    ``shard``: the batches are shared among the torchrun processes (``fit``); otherwise this
    process trains alone on every row (``fit_adversary``, which rank 0 may run by itself)."""
    callbacks = callbacks or Callbacks()
    history: list[dict] = []
    first = 0
    if run_dir is not None and training_checkpoint_exists(run_dir):
        if not resume:
            raise SettingError("resume", False, f": {run_dir} already holds a training run; "
                               "pass {resume} to continue it, or choose another output folder",
                               mentions={"resume": "resume=True"})
        tensors, meta = load_training_checkpoint(run_dir)
        if meta.get("signature") != signature:
            raise PrivatenetError(f"{run_dir} holds a run with other settings; resume it with "
                                  "the same options or choose another output folder")
        for name, m in modules.items():
            m.load_state_dict(unprefixed(f"module.{name}", tensors))
        for name, o in optimizers.items():
            load_optimizer_state(f"optim.{name}", o, tensors, meta["optimizers"][name])
        first, history = meta["epoch"] + 1, meta["history"]
        log.info("resuming %s at epoch %d", run_dir, first + 1)
    rank, world = distributed.world() if shard else (0, 1)
    steps = max(1, -(-n // config.batch_size))
    for epoch in range(first, config.epochs):
        lr = config.lr * config.lr_decay ** epoch
        for o in optimizers.values():
            for g in o.param_groups:
                g["lr"] = lr
        gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch))
        torch.manual_seed(_epoch_seed(config.seed, epoch) + 1 + rank)  # dropout
        perm = torch.randperm(n, generator=gen)  # the same on every process
        # One process augments from the shuffle's generator; several each from their own.
        aug = gen if world == 1 else torch.Generator().manual_seed(
            _epoch_seed(config.seed, epoch) + 104_729 * (rank + 1))
        for m in modules.values():
            m.train()
        sums: dict[str, torch.Tensor] = {}
        seen, t0 = 0, time.perf_counter()
        for s in range(steps):
            idx = perm[s * config.batch_size:(s + 1) * config.batch_size]
            if idx.numel() < 2 * world:  # BatchNorm cannot train on one sample per process
                continue
            idx = idx[rank::world]
            logs = step(idx, aug)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() * idx.numel()
            seen += idx.numel()
            if callbacks.on_step:
                callbacks.on_step(s + 1, steps)
        if world > 1:
            keys = sorted(sums)
            total = distributed.all_sum(torch.stack([torch.as_tensor(sums[k]).cpu().double()
                                                     for k in keys] + [torch.tensor(seen)]))
            sums, seen = dict(zip(keys, total[:-1], strict=True)), float(total[-1])
            for m in modules.values():
                distributed.broadcast_buffers(m)
        # reading the sums waits for a GPU's queued steps, so the epoch's time includes them
        means = {k: float(v) / seen for k, v in sums.items()}
        record = {"epoch": epoch + 1, "lr": lr, "seconds": round(time.perf_counter() - t0, 3)}
        for k, value in means.items():
            if not np.isfinite(value):
                raise PrivatenetError(f"training diverged: {k} is {value} in epoch {epoch + 1}; "
                                      "lower the learning rate or the privacy weight")
            record[k] = value
        history.append(record)
        if run_dir is not None and rank == 0:
            tensors, opt_meta = {}, {}
            for name, m in modules.items():
                tensors.update(prefixed(f"module.{name}", m.state_dict()))
            for name, o in optimizers.items():
                t, opt_meta[name] = optimizer_state(f"optim.{name}", o)
                tensors.update(t)
            save_training_checkpoint(run_dir, tensors=tensors, meta={
                "epoch": epoch, "history": history, "signature": signature,
                "optimizers": opt_meta})
            write_jsonl(run_dir / "metrics.jsonl", history)
        log.info("epoch %d/%d %s", epoch + 1, config.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("epoch",)))
        if callbacks.on_epoch:
            callbacks.on_epoch(record)
    return history


class _TapsForward(nn.Module):
    """``forward`` = the model's ``forward_taps``: DistributedDataParallel and torch.compile wrap
    ``forward``, and training needs the taps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_taps(x)


def _training_device(config: TrainConfig) -> torch.device:
    """The configured device; under torchrun on CUDA, this process's own GPU."""
    device = resolve_device(config.device)
    if device.type == "cuda" and distributed.world()[1] > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _forward(model: nn.Module, device: torch.device, config: TrainConfig):
    """The training forward pass ``x -> (logits, taps)``: the model itself, wrapped in
    DistributedDataParallel under torchrun, compiled with ``config.compile``."""
    forward: nn.Module = _TapsForward(model)
    if distributed.world()[1] > 1:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        forward = torch.compile(forward)
    return forward


def _adam(params, config: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _privacy_terms(regularizer, tap, private, model: nn.Module, train: Split
                   ) -> list[tuple[PrivacyRegularizer, str, str]]:
    """``[(regularizer, tap, attribute), ...]`` from ``fit``'s arguments, each checked: one
    triple for single values, one per attribute for lists of one length; ``[]`` for none."""
    given = {"regularizer": regularizer, "tap": tap, "private": private}
    if all(v is None for v in given.values()):
        return []
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise PrivatenetError(f"privacy training needs {', '.join(missing)} as well (or "
                              "none of regularizer, tap, private)")
    is_list = [isinstance(v, (list, tuple)) for v in given.values()]
    if any(is_list):
        lengths = ", ".join(f"{k}: {len(v) if isinstance(v, (list, tuple)) else 'one value'}"
                            for k, v in given.items())
        if not all(is_list) or len({len(v) for v in given.values()}) != 1 or not regularizer:
            raise PrivatenetError(f"for several private attributes regularizer, tap and private "
                                  f"must be non-empty lists of one length (got {lengths}); give "
                                  "one regularizer and one tap per private column")
        terms = list(zip(regularizer, tap, private, strict=True))
    else:
        terms = [(regularizer, tap, private)]
    for reg, t, attr in terms:
        if not isinstance(reg, PrivacyRegularizer):
            raise PrivatenetError("regularizer must be a PrivacyRegularizer, got "
                                  f"{type(reg).__name__}")
        if not isinstance(attr, str) or attr not in train.labels:
            raise PrivatenetError(f"the training split has no label column {attr!r}")
        require_tap(model, t)
    if len({id(reg) for reg, _, _ in terms}) != len(terms):
        raise PrivatenetError("the same regularizer is given for two attributes; build one "
                              "PrivacyRegularizer per attribute (each trains its own adversaries)")
    attrs = [attr for _, _, attr in terms]
    twice = sorted({a for a in attrs if attrs.count(a) > 1})
    if twice:
        raise PrivatenetError(f"private attribute {twice[0]!r} is given twice; give each "
                              "attribute once")
    if len({reg.lam for reg, _, _ in terms}) > 1:
        lams = ", ".join(f"{attr}={reg.lam}" for reg, _, attr in terms)
        raise PrivatenetError(f"all regularizers must have the same lam, Eq. 8 weighs the mean "
                              f"privacy term (got {lams}); build them with one lam")
    return terms


def fit(*, model: nn.Module, train: Split, target: str, config: TrainConfig | None = None,
        regularizer: PrivacyRegularizer | Sequence[PrivacyRegularizer] | None = None,
        tap: str | Sequence[str] | None = None, private: str | Sequence[str] | None = None,
        run_dir: str | Path | None = None, resume: bool = False,
        callbacks: Callbacks | None = None, **settings) -> list[dict]:
    """Train ``model`` in place on ``train.labels[target]`` with Adam and cross-entropy, plus
    the privacy term of ``regularizer`` on tap ``tap`` for the label column ``private``.

    Several private attributes at once: lists of one length, ``regularizer=[reg_g, reg_a],
    tap=["backbone", "backbone"], private=["gender", "age"]``, one privacy term per attribute,
    combined as ``(1 - lam) * CE + lam * mean_a L_priv,a``; every regularizer must have the
    same ``lam`` and each attribute may appear once.

    ``model`` needs ``forward_taps(x) -> (logits, {tap: features})`` (every registry model, or
    :func:`privatenet.with_taps`). ``config`` (a :class:`TrainConfig`) and ``settings`` (its
    fields, e.g. ``epochs=5``) set the optimisation. Rows with an unknown target must already be
    dropped (``Dataset.split(name, columns)``); an unknown private label (-1) only drops the
    row from that attribute's privacy term. The adversaries a regularizer trains (alternating,
    ensemble) are trained in place, their learning rate follows the same schedule as the
    model's, and their weights, optimizer state and (ensemble) step counter are checkpointed
    with the model's.

    Logged per epoch: ``loss``, ``task_loss``, ``train_acc``, ``priv_loss`` (the mean privacy
    term) and, where adversaries are trained, ``adv_loss``; with several attributes also
    ``priv_loss/<attribute>`` and ``adv_loss/<attribute>``.

    Speed: ``config.precision`` (bf16 autocast), ``memory_format`` (channels_last) and
    ``compile`` (torch.compile of the forward pass), each ``auto`` by device type
    (docs/design.md §4.4). Under torchrun the model is wrapped in DistributedDataParallel and the
    batches are shared among the processes (module docstring).

    Returns the per-epoch metrics history; with ``run_dir``, a checkpoint and ``metrics.jsonl``
    are written after every epoch and ``resume=True`` continues from the last one.
    """
    config = _config(config, settings)
    if target not in train.labels:
        raise PrivatenetError(f"the training split has no label column {target!r}")
    terms = _privacy_terms(regularizer, tap, private, model, train)
    several = len(terms) > 1
    if distributed.world()[1] > 1 and any(reg.trainable_modules() for reg, _, _ in terms):
        raise PrivatenetError("adversaries trained during training (alternating update, "
                              "ensemble) are not supported with several processes; use a "
                              "fixed adversary, hsic or leace, or run one process")
    device = _training_device(config)
    precision = resolve_precision(config.precision, device)
    if precision == "bf16" and not bf16_native(device):
        log.warning("precision=bf16 on %s, which has no native bf16 (a CPU needs AVX512-BF16 "
                    "or AMX): it is emulated and usually much slower than fp32; 'privatenet "
                    "bench' measures it on this machine", device)
    memory_format = resolve_memory_format(config.memory_format, device)
    model.to(device=device, memory_format=memory_format)
    forward = _forward(model, device, config)
    images = train.images.to(device)
    y_all = train.labels[target].to(device)
    modules: dict[str, nn.Module] = {"model": model}
    optimizers = {"model": _adam(model.parameters(), config)}
    signature = {"kind": "fit", "config": config.key(), "target": target, "n": len(train),
                 "model": getattr(model, "config", type(model).__name__)}
    s_all: dict[str, torch.Tensor] = {}
    for i, (reg, _, attr) in enumerate(terms):
        reg.to(device)
        s_all[attr] = train.labels[attr].to(device)
        # One attribute keeps the names it always had, so its checkpoints stay readable.
        prefix = f"privacy{i}." if several else ""
        modules.update({prefix + k: m for k, m in reg.trainable_modules().items()})
        optimizers.update({prefix + k: o for k, o in reg.optimizers().items()})
    if terms:
        privacy = [{"tap": t, "attribute": attr, **reg.settings()} for reg, t, attr in terms]
        signature["privacy"] = privacy if several else privacy[0]

    def step(idx: torch.Tensor, gen: torch.Generator) -> dict:
        idx_dev = to_device(idx, device)
        x = images[idx_dev]
        x = augment(x, generator=gen) if config.augment else normalize(x)
        x = x.contiguous(memory_format=memory_format)
        y = y_all[idx_dev]
        with autocast_for(device, precision):
            logits, taps = forward(x)
            ce = F.cross_entropy(logits.float(), y)
            loss = ce
            for reg, _, _ in terms:
                reg.train()
            if len(terms) == 1:
                reg, t, attr = terms[0]
                loss = reg(ce, taps[t], s_all[attr][idx_dev])
            elif several:
                priv = torch.stack([reg.privacy_term(taps[t], s_all[attr][idx_dev])
                                    for reg, t, attr in terms]).mean()
                loss = total_loss(ce, priv, terms[0][0].lam)
            for reg, _, _ in terms:  # the adversaries' own step, on this batch's features
                reg.adversary_step()
        optimizers["model"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["model"].step()
        logs = {"loss": loss, "task_loss": ce, "train_acc": (logits.argmax(1) == y).float().mean()}
        if terms:
            logs["priv_loss"] = torch.stack([reg.last_privacy_loss for reg, _, _ in terms]).mean()
            adv = {attr: reg.last_adversary_loss for reg, _, attr in terms
                   if reg.last_adversary_loss is not None}
            if adv:
                logs["adv_loss"] = torch.stack(list(adv.values())).mean()
            if several:
                for reg, _, attr in terms:
                    logs[f"priv_loss/{attr}"] = reg.last_privacy_loss
                logs.update({f"adv_loss/{attr}": v for attr, v in adv.items()})
        return logs

    try:
        return _run_epochs(n=len(train), step=step, modules=modules, optimizers=optimizers,
                           config=config, signature=signature,
                           run_dir=Path(run_dir) if run_dir is not None else None,
                           resume=resume, callbacks=callbacks, shard=True)
    finally:
        # Whoever uses the trained network next expects the usual layout.
        model.to(memory_format=torch.contiguous_format)


def fit_adversary(adversary: nn.Module, features: torch.Tensor, labels: torch.Tensor, *,
                  config: TrainConfig | None = None, run_dir: str | Path | None = None,
                  resume: bool = False, callbacks: Callbacks | None = None,
                  **settings) -> list[dict]:
    """Train ``adversary`` in place to predict ``labels`` (N,) from frozen, precomputed
    ``features`` (N, *tap_shape), e.g. from :func:`extract`; rows labelled -1 (unknown) are
    skipped and augmentation does not apply.

    ``config`` and ``settings`` (:class:`TrainConfig` fields, e.g. ``epochs=10``) set Adam and
    the schedule; ``run_dir``/``resume`` as in :func:`fit`. Returns the per-epoch history.
    """
    config = _config(config, settings)
    if not isinstance(adversary, nn.Module):
        raise PrivatenetError(f"adversary must be an nn.Module, got {type(adversary).__name__}")
    features, labels = torch.as_tensor(features), torch.as_tensor(labels)
    if features.dim() < 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise PrivatenetError(f"features {tuple(features.shape)} and labels "
                              f"{tuple(labels.shape)} do not match; pass (N, ...) features "
                              "and (N,) labels")
    known = labels != MISSING
    if not bool(known.all()):
        features, labels = features[known], labels[known]
    if labels.numel() < 2:
        raise PrivatenetError(f"only {labels.numel()} feature rows with a known label; an "
                              "adversary needs at least 2")
    device = resolve_device(config.device)
    adversary.to(device)
    feats, y_all = features.to(device), labels.long().to(device)
    opt = _adam(adversary.parameters(), config)
    signature = {"kind": "adversary", "config": config.key(), "n": int(labels.numel()),
                 "head": getattr(adversary, "config", type(adversary).__name__)}

    def step(idx: torch.Tensor, gen: torch.Generator) -> dict:
        idx_dev = to_device(idx, device)
        logits = adversary(feats[idx_dev])
        loss = F.cross_entropy(logits.float(), y_all[idx_dev])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss, "train_acc": (logits.argmax(1) == y_all[idx_dev]).float().mean()}

    return _run_epochs(n=int(labels.numel()), step=step, modules={"head": adversary},
                       optimizers={"head": opt}, config=config, signature=signature,
                       run_dir=Path(run_dir) if run_dir is not None else None,
                       resume=resume, callbacks=callbacks)
