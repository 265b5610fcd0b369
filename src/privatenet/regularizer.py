"""The paper's method as one object for any training loop (docs/design.md §2).

:class:`PrivacyRegularizer` turns a task loss into Eq. 8, ``(1 - lam) * L_task + lam * L_priv``,
where ``L_priv`` is a privacy loss of an adversary's view of the features of one tap::

    reg = PrivacyRegularizer(known_adversary, loss="confusion", lam=0.5)
    logits, taps = model.forward_taps(x)
    loss = reg(F.cross_entropy(logits, y), taps["backbone"], private)
    loss.backward()

``update="fixed"`` (the paper) holds the known adversary truly fixed: the regularizer keeps its
own copy in eval mode with no gradient and no optimizer, so neither the caller's adversary nor
its batch-norm statistics ever change. ``update="alternating"`` (Edwards & Storkey) also trains
that copy: each call scores the encoder against the adversary as it is, then takes one Adam
step of the adversary on the detached features.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from privatenet.data.base import MISSING
from privatenet.errors import PrivatenetError
from privatenet.losses import LOSS_MODULES, check_lam, check_loss, total_loss

__all__ = ["ADVERSARY_UPDATES", "PrivacyRegularizer"]

#: ``fixed``: the known adversary is held fixed (the paper); ``alternating``: it is updated on
#: detached features at every call (the min-max of Edwards & Storkey).
ADVERSARY_UPDATES = ("fixed", "alternating")


def check_update(update: str) -> str:
    """``update`` if it is a known adversary update mode, else a one-line error."""
    if update not in ADVERSARY_UPDATES:
        raise PrivatenetError(f"adversary update {update!r} is unknown; use one of "
                              f"{', '.join(ADVERSARY_UPDATES)}")
    return update


class PrivacyRegularizer(nn.Module):
    """Eq. 8 against ``adversary`` on one tap's features.

    Args:
        adversary: a module mapping tap features (N, *tap_shape) to private-class logits
            (N, K), for instance from :func:`privatenet.create_adversary` trained with
            :func:`privatenet.fit_adversary`. The regularizer works on a deep copy.
        loss: ``"confusion"`` (Eq. 7, the paper) or ``"adversarial"`` (Edwards & Storkey).
        lam: the privacy weight in [0, 1]; 0 gives back the task loss exactly.
        update: ``"fixed"`` or ``"alternating"`` (see the module docstring).
        lr, weight_decay: Adam settings of the adversary's own steps (alternating only).

    Call ``reg(task_loss, features, private)`` with ``private`` (N,) class indices, ``-1`` for
    an unknown label: those rows get no privacy term (a batch without any known label returns
    ``(1 - lam) * task_loss``). In eval mode (``reg.eval()``) an alternating adversary is not
    updated. ``last_privacy_loss`` and ``last_adversary_loss`` hold the latest values (detached)
    for logging. ``reg.to(device)`` moves the adversary; ``save``/``load`` keep its weights and
    optimizer state in a safetensors checkpoint.
    """

    def __init__(self, adversary: nn.Module, *, loss: str = "confusion", lam: float = 0.5,
                 update: str = "fixed", lr: float = 1e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        if not isinstance(adversary, nn.Module):
            raise PrivatenetError(f"adversary must be an nn.Module, got "
                                  f"{type(adversary).__name__}")
        self.loss = check_loss(loss)
        self.lam = check_lam(lam)
        self.update = check_update(update)
        for name, value in (("lr", lr), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                    name == "lr" and value == 0):
                raise PrivatenetError(f"{name}={value!r} is invalid; give a positive number"
                                      + (" or 0" if name == "weight_decay" else ""))
        self.criterion = LOSS_MODULES[loss]()
        # A copy: the caller's adversary (the known adversary trained on the original network)
        # must stay what it is, whatever this regularizer does to its own.
        self.adversary = copy.deepcopy(adversary)
        self.optimizer: torch.optim.Optimizer | None = None
        if update == "fixed":
            self.adversary.eval().requires_grad_(False)
        else:
            self.adversary.requires_grad_(True)
            self.optimizer = torch.optim.Adam(self.adversary.parameters(), lr=lr,
                                              weight_decay=weight_decay)
        self.last_privacy_loss: torch.Tensor | None = None
        self.last_adversary_loss: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"loss={self.loss!r}, lam={self.lam}, update={self.update!r}"

    def train(self, mode: bool = True) -> PrivacyRegularizer:
        """Set the training flag; a fixed adversary stays in eval mode whatever the mode."""
        super().train(mode)
        if self.update == "fixed":
            self.adversary.eval()
        return self

    def forward(self, task_loss: torch.Tensor, features: torch.Tensor,
                private: torch.Tensor) -> torch.Tensor:
        """Eq. 8: ``(1 - lam) * task_loss + lam * L_priv(adversary(features), private)``.

        ``task_loss``: a scalar; ``features``: (N, *tap_shape), still attached to the encoder's
        graph; ``private``: (N,) int64 class indices, -1 for unknown.
        """
        if features.shape[0] != private.shape[0]:
            raise PrivatenetError(f"{features.shape[0]} feature rows for {private.shape[0]} "
                                  "private labels; pass one label per row (-1 if unknown)")
        private = private.to(features.device)
        known = private != MISSING  # rows with an unknown attribute get no privacy term
        if not bool(known.all()):
            features, private = features[known], private[known]
        if features.shape[0] == 0:
            priv = task_loss.new_zeros(())
        elif self.update == "alternating" and self.training:
            priv = self._encoder_loss_then_adversary_step(features, private)
        else:
            priv = self.criterion(self.adversary(features), private)
        self.last_privacy_loss = priv.detach()
        return total_loss(task_loss, priv, self.lam)

    def _encoder_loss_then_adversary_step(self, features: torch.Tensor,
                                          private: torch.Tensor) -> torch.Tensor:
        # The encoder is scored against the adversary as it is before its step, in eval mode so
        # that the encoder's step does not move its batch-norm statistics. The adversary's
        # weights are copied for that graph, so its own step below (in place) cannot invalidate
        # the graph that the caller's backward() still needs.
        state = {k: v.detach().clone() for k, v in self.adversary.state_dict().items()}
        self.adversary.eval()
        priv = self.criterion(functional_call(self.adversary, state, (features,)), private)
        if features.shape[0] >= 2:  # batch norm cannot train on one row
            self.adversary.train()
            adv_ce = F.cross_entropy(self.adversary(features.detach()).float(), private)
            self.optimizer.zero_grad(set_to_none=True)
            adv_ce.backward()
            self.optimizer.step()
            self.last_adversary_loss = adv_ce.detach()
        return priv

    def save(self, path: str | Path) -> None:
        """Write the adversary's weights, its optimizer state and the settings to
        ``path.safetensors`` + ``path.json`` (atomically; nothing is pickled)."""
        from privatenet.train.checkpoint import optimizer_state, prefixed, save_checkpoint

        tensors = prefixed("adversary", self.adversary.state_dict())
        meta = {"regularizer": self.settings(), "optimizer": None}
        if self.optimizer is not None:
            opt_tensors, meta["optimizer"] = optimizer_state("optim", self.optimizer)
            tensors.update(opt_tensors)
        save_checkpoint(path, tensors=tensors, meta=meta)

    def load(self, path: str | Path) -> PrivacyRegularizer:
        """Restore what :meth:`save` wrote into this regularizer (same settings and adversary
        architecture, else a one-line error). Returns ``self``."""
        from privatenet.train.checkpoint import (
            load_checkpoint,
            load_optimizer_state,
            unprefixed,
        )

        tensors, meta = load_checkpoint(path)
        saved = meta.get("regularizer")
        if saved != self.settings():
            raise PrivatenetError(f"{path} holds a regularizer with settings {saved}, not "
                                  f"{self.settings()}; build it with those settings")
        try:
            self.adversary.load_state_dict(unprefixed("adversary", tensors), strict=True)
        except RuntimeError as e:
            raise PrivatenetError(f"{path} does not fit this adversary "
                                  f"({str(e).strip().splitlines()[0]})") from None
        if self.optimizer is not None:
            load_optimizer_state("optim", self.optimizer, tensors, meta["optimizer"])
        return self

    def settings(self) -> dict:
        """The settings that define this regularizer: loss, lam and update."""
        return {"loss": self.loss, "lam": self.lam, "update": self.update}
