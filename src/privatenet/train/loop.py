"""The one training loop.

:func:`fit` trains a model on a target column with cross-entropy, optionally with a privacy term
on one tap (Eq. 8) against a known adversary that is either held fixed (the paper's setting) or
updated every step (the alternating min-max of Edwards & Storkey). :func:`fit_adversary` trains
an adversary head on the frozen features of a model. Both run through :func:`_run_epochs`, which
owns shuffling, learning-rate decay, checkpointing, metrics and resume.

Determinism: the shuffle, the augmentation and dropout of epoch ``e`` draw from generators seeded
by ``(seed, e)`` only, so a run resumed from the checkpoint of epoch ``e - 1`` repeats exactly the
computation of an uninterrupted run (on CPU).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privatenet.data.base import Split
from privatenet.data.transforms import augment, normalize
from privatenet.errors import PrivatenetError
from privatenet.losses import PRIVACY_LOSSES, privacy_loss, total_loss
from privatenet.train.checkpoint import (
    checkpoint_exists,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    prefixed,
    save_checkpoint,
    unprefixed,
    write_jsonl,
)
from privatenet.train.config import TrainConfig, autocast_for, resolve_device

log = logging.getLogger(__name__)

from privatenet.regularizer import ADVERSARY_UPDATES  # noqa: E402


@dataclass
class Privacy:
    """The privacy term of Eq. 8 on tap ``tap`` against ``adversary`` for ``attribute``.

    ``update="fixed"`` holds the (known) adversary fixed: no gradient or optimizer state reaches
    it. ``"alternating"`` updates a copy of it each step on detached features (Edwards & Storkey).
    """

    loss: str
    tap: str
    attribute: str
    lam: float
    adversary: nn.Module
    update: str = "fixed"

    def __post_init__(self) -> None:
        if self.loss not in PRIVACY_LOSSES:
            raise PrivatenetError(f"privacy loss {self.loss!r} is unknown; use one of "
                                  f"{', '.join(PRIVACY_LOSSES)}")
        if not 0.0 <= self.lam <= 1.0:
            raise PrivatenetError(f"lambda {self.lam!r} is outside [0, 1]; 0 is the original "
                                  "network, 1 ignores the task")
        if self.update not in ADVERSARY_UPDATES:
            raise PrivatenetError(f"adversary update {self.update!r} is unknown; use one of "
                                  f"{', '.join(ADVERSARY_UPDATES)}")


@dataclass
class Callbacks:
    """Hooks for the caller (the CLI shows progress bars with them)."""

    on_step: Callable[[int, int], None] | None = None  # (step in epoch, steps per epoch)
    on_epoch: Callable[[dict], None] | None = None  # called with the epoch's metrics record


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % 2**63


@torch.no_grad()
def extract(model: nn.Module, images: torch.Tensor, *, tap: str | None = None,
            batch_size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """Logits (``tap=None``) or the features of ``tap`` of ``model`` in eval mode, float32 on CPU.

    Images are uint8 (N, 3, H, W); they are normalised, never augmented.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, images.shape[0], batch_size):
            x = normalize(images[i:i + batch_size].to(device))
            with autocast_for(device):
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
                callbacks: Callbacks | None) -> list[dict]:
    """Epochs of shuffled mini-batches; checkpoint + metrics after each epoch; resume."""
    callbacks = callbacks or Callbacks()
    history: list[dict] = []
    first = 0
    ckpt = run_dir / "checkpoint" if run_dir is not None else None
    if ckpt is not None and checkpoint_exists(ckpt):
        if not resume:
            raise PrivatenetError(f"{run_dir} already holds a training run; pass --resume to "
                                  "continue it or choose another output folder")
        tensors, meta = load_checkpoint(ckpt)
        if meta.get("signature") != signature:
            raise PrivatenetError(f"{run_dir} holds a run with other settings; resume it with "
                                  "the same options or choose another output folder")
        for name, m in modules.items():
            m.load_state_dict(unprefixed(f"module.{name}", tensors))
        for name, o in optimizers.items():
            load_optimizer_state(f"optim.{name}", o, tensors, meta["optimizers"][name])
        first, history = meta["epoch"] + 1, meta["history"]
        log.info("resuming %s at epoch %d", run_dir, first + 1)
    steps = max(1, -(-n // config.batch_size))
    for epoch in range(first, config.epochs):
        lr = config.lr * config.lr_decay ** epoch
        for o in optimizers.values():
            for g in o.param_groups:
                g["lr"] = lr
        gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch))
        torch.manual_seed(_epoch_seed(config.seed, epoch) + 1)  # dropout
        perm = torch.randperm(n, generator=gen)
        for m in modules.values():
            m.train()
        sums: dict[str, torch.Tensor] = {}
        seen, t0 = 0, time.perf_counter()
        for s in range(steps):
            idx = perm[s * config.batch_size:(s + 1) * config.batch_size]
            if idx.numel() < 2:  # BatchNorm cannot train on one sample
                continue
            logs = step(idx, gen)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() * idx.numel()
            seen += idx.numel()
            if callbacks.on_step:
                callbacks.on_step(s + 1, steps)
        record = {"epoch": epoch + 1, "lr": lr, "seconds": round(time.perf_counter() - t0, 3)}
        for k, v in sums.items():
            value = float(v) / seen
            if not np.isfinite(value):
                raise PrivatenetError(f"training diverged: {k} is {value} in epoch {epoch + 1}; "
                                      "lower the learning rate or the privacy weight")
            record[k] = value
        history.append(record)
        if ckpt is not None:
            tensors, opt_meta = {}, {}
            for name, m in modules.items():
                tensors.update(prefixed(f"module.{name}", m.state_dict()))
            for name, o in optimizers.items():
                t, opt_meta[name] = optimizer_state(f"optim.{name}", o)
                tensors.update(t)
            save_checkpoint(ckpt, tensors=tensors, meta={
                "epoch": epoch, "history": history, "signature": signature,
                "optimizers": opt_meta})
            write_jsonl(run_dir / "metrics.jsonl", history)
        log.info("epoch %d/%d %s", epoch + 1, config.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("epoch",)))
        if callbacks.on_epoch:
            callbacks.on_epoch(record)
    return history


def _adam(params, config: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def fit(*, model: nn.Module, train: Split, target: str, config: TrainConfig,
        privacy: Privacy | None = None, run_dir: str | Path | None = None,
        resume: bool = False, callbacks: Callbacks | None = None) -> list[dict]:
    """Train ``model`` in place on ``train.labels[target]`` (plus the privacy term, if given).

    Rows with an unknown target (or private attribute) must already be dropped
    (``Dataset.split(name, columns)``). Returns the per-epoch metrics history; with ``run_dir``,
    a checkpoint and ``metrics.jsonl`` are written after every epoch and ``resume`` continues
    from the last one.
    """
    if target not in train.labels:
        raise PrivatenetError(f"the training split has no label column {target!r}")
    if privacy is not None:
        if privacy.attribute not in train.labels:
            raise PrivatenetError(f"the training split has no label column "
                                  f"{privacy.attribute!r}")
        if privacy.tap not in model.taps:
            raise PrivatenetError(f"model has no tap {privacy.tap!r}; it has: "
                                  f"{', '.join(model.taps)}")
    device = resolve_device(config.device)
    model.to(device)
    images = train.images.to(device)
    y_all = train.labels[target].to(device)
    modules: dict[str, nn.Module] = {"model": model}
    optimizers = {"model": _adam(model.parameters(), config)}
    signature = {"kind": "fit", "config": asdict(config), "target": target, "n": len(train),
                 "model": getattr(model, "config", type(model).__name__)}
    adversary = None
    if privacy is not None:
        # A copy: the caller's known adversary must stay the one trained on the original
        # network, whatever happens to this one.
        adversary = copy.deepcopy(privacy.adversary).to(device)
        s_all = train.labels[privacy.attribute].to(device)
        signature["privacy"] = {k: v for k, v in asdict(privacy).items() if k != "adversary"}
        if privacy.update == "fixed":
            adversary.eval().requires_grad_(False)
        else:
            modules["adversary"] = adversary
            optimizers["adversary"] = _adam(adversary.parameters(), config)

    def step(idx: torch.Tensor, gen: torch.Generator) -> dict:
        idx_dev = idx.to(device)
        x = images[idx_dev]
        x = augment(x, generator=gen) if config.augment else normalize(x)
        y = y_all[idx_dev]
        logs = {}
        with autocast_for(device):
            logits, taps = model.forward_taps(x)
            ce = F.cross_entropy(logits.float(), y)
            loss = ce
            if privacy is not None:
                feats = taps[privacy.tap]
                s = s_all[idx_dev]
                if privacy.update == "alternating":
                    adversary.eval()  # the encoder step must not move the adversary's BN stats
                priv = privacy_loss(privacy.loss, adversary(feats), s)
                loss = total_loss(ce, priv, privacy.lam)
                logs["priv_loss"] = priv
        optimizers["model"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["model"].step()
        if privacy is not None and privacy.update == "alternating":
            adversary.train()
            with autocast_for(device):
                adv_ce = F.cross_entropy(adversary(feats.detach()).float(), s)
            optimizers["adversary"].zero_grad(set_to_none=True)
            adv_ce.backward()
            optimizers["adversary"].step()
            logs["adv_loss"] = adv_ce
        logs.update(loss=loss, task_loss=ce, train_acc=(logits.argmax(1) == y).float().mean())
        return logs

    return _run_epochs(n=len(train), step=step, modules=modules, optimizers=optimizers,
                       config=config, signature=signature,
                       run_dir=Path(run_dir) if run_dir is not None else None,
                       resume=resume, callbacks=callbacks)


def fit_adversary(*, head: nn.Module, features: torch.Tensor, labels: torch.Tensor,
                  config: TrainConfig, run_dir: str | Path | None = None, resume: bool = False,
                  callbacks: Callbacks | None = None) -> list[dict]:
    """Train an adversary ``head`` in place on frozen, precomputed ``features`` (see
    :func:`extract`) to predict ``labels``; augmentation does not apply."""
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows for {labels.shape[0]} labels")
    device = resolve_device(config.device)
    head.to(device)
    feats, y_all = features.to(device), labels.to(device)
    opt = _adam(head.parameters(), config)
    signature = {"kind": "adversary", "config": asdict(config), "n": int(labels.numel()),
                 "head": getattr(head, "config", type(head).__name__)}

    def step(idx: torch.Tensor, gen: torch.Generator) -> dict:
        idx_dev = idx.to(device)
        logits = head(feats[idx_dev])
        loss = F.cross_entropy(logits.float(), y_all[idx_dev])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss, "train_acc": (logits.argmax(1) == y_all[idx_dev]).float().mean()}

    return _run_epochs(n=int(labels.numel()), step=step, modules={"head": head},
                       optimizers={"head": opt}, config=config, signature=signature,
                       run_dir=Path(run_dir) if run_dir is not None else None,
                       resume=resume, callbacks=callbacks)
