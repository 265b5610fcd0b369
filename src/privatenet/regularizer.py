"""The method as one object for any training loop (docs/design.md §2).

:class:`PrivacyRegularizer` turns a task loss into Eq. 8, ``(1 - lam) * L_task + lam * L_priv``,
where ``L_priv`` is a privacy term on the features of one tap::

    reg = PrivacyRegularizer(known_adversary, loss="confusion", lam=0.5)
    logits, taps = model.forward_taps(x)
    loss = reg(F.cross_entropy(logits, y), taps["backbone"], private)
    loss.backward()

Modes (``loss=``):

- ``confusion`` (Eq. 7, the paper) and ``adversarial`` (Edwards & Storkey, bounded form) score
  the encoder against one adversary. ``update="fixed"`` (the paper) holds the known adversary
  truly fixed: the regularizer keeps its own copy in eval mode with no gradient and no
  optimizer, so neither the caller's adversary nor its batch-norm statistics ever change.
  ``update="alternating"`` (Edwards & Storkey) also trains that copy: each training call scores
  the encoder against the adversary as it is; :meth:`PrivacyRegularizer.adversary_step` then
  takes one Adam step of the adversary on the detached features.
- ``ensemble``: the confusion loss averaged over several adversaries of different capacity,
  each trained alternately and re-initialised in turn (see :class:`PrivacyRegularizer`).
- ``hsic``: no adversary; the normalised HSIC between the features and the private label
  (:func:`privatenet.losses.hsic_loss`).
- ``vib``: no adversary and no private label; the KL term of a noisy bottleneck at the tap
  (:class:`privatenet.bottleneck.TapBottleneck`, given as ``bottleneck=``), computed by the
  forward pass that produced the features.

:meth:`PrivacyRegularizer.privacy_term` gives ``L_priv`` alone, for losses that combine several
terms (``fit`` with several private attributes). The adversaries of ``alternating`` and
``ensemble`` step only when asked (:meth:`PrivacyRegularizer.adversary_step`, or
:meth:`PrivacyRegularizer.attach` to an optimizer); :func:`make_private` attaches a regularizer
to a user's model and optimizer in one call.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from privatenet.bottleneck import TapBottleneck
from privatenet.checks import check_seed, is_int
from privatenet.data.base import MISSING
from privatenet.errors import PrivatenetError, SettingError
from privatenet.losses import (
    DEFAULT_LAM,
    HSIC_BANDWIDTHS,
    LOSS_MODULES,
    check_bandwidths,
    check_lam,
    check_loss,
    confusion_loss,
    hsic_loss,
    total_loss,
)
from privatenet.models import adversary_from_config
from privatenet.models.taps import tap_layer
from privatenet.storage import (
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    prefixed,
    save_checkpoint,
    unprefixed,
)

__all__ = ["ADVERSARY_UPDATES", "DEFAULT_ENSEMBLE", "DEFAULT_REINIT_EVERY", "AdversaryRegularizer",
           "AlternatingRegularizer", "EnsembleRegularizer", "HsicRegularizer",
           "PrivacyRegularizer", "VibRegularizer", "make_private"]

log = logging.getLogger(__name__)

#: ``fixed``: the known adversary is held fixed (the paper); ``alternating``: it is updated on
#: detached features at every call (the min-max of Edwards & Storkey).
ADVERSARY_UPDATES = ("fixed", "alternating")

#: The members of an ``ensemble`` built when none are given: heads of three capacities
#: (options of :func:`privatenet.create_adversary`).
DEFAULT_ENSEMBLE = ({"kind": "linear"}, {"kind": "mlp", "hidden": 64},
                    {"kind": "mlp", "hidden": 256})

#: Adversary steps between two re-initialisations (of one member each) in ``ensemble`` mode.
DEFAULT_REINIT_EVERY = 100

def check_update(update: str) -> str:
    """``update`` if it is a known adversary update mode, else a one-line error."""
    if update not in ADVERSARY_UPDATES:
        raise SettingError("adversary_update", update,
                           f"is unknown; use one of {', '.join(ADVERSARY_UPDATES)}")
    return update


def _derived_seed(seed: int, key: int) -> int:
    """A seed for draw number ``key`` of a run seeded by ``seed``: a function of the two alone,
    so a resumed run redraws exactly what an uninterrupted one draws."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + key * 7_919 + 17) % 2**63)
    return int(torch.randint(0, 2**62, (1,), generator=gen))


class _Ensemble(nn.Module):
    """The members of an ``ensemble`` regularizer and its step counter. The counter is a
    buffer so that it lives in every state dict (``save``, ``fit``'s checkpoints) and a resumed
    run re-initialises at the same steps as an uninterrupted one."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))


class PrivacyRegularizer(nn.Module):
    """Eq. 8 with a privacy term on one tap's features; ``PrivacyRegularizer(...)`` builds the
    class of the mode that ``loss`` and ``update`` name (:class:`AdversaryRegularizer`,
    :class:`AlternatingRegularizer`, :class:`EnsembleRegularizer`, :class:`HsicRegularizer`,
    :class:`VibRegularizer`), all called the same way.

    Args:
        adversary: a module mapping tap features (N, *tap_shape) to private-class logits
            (N, K), for instance from :func:`privatenet.create_adversary` trained with
            :func:`privatenet.fit_adversary`; the regularizer works on a deep copy. Required
            for ``confusion`` and ``adversarial``; optional for ``ensemble`` (it then becomes
            one more member); ``None`` for ``hsic`` and ``vib``.
        loss: ``"confusion"`` (Eq. 7, the paper), ``"adversarial"`` (Edwards & Storkey, the
            bounded ``-log(1 - p_true)``), ``"ensemble"``, ``"hsic"`` or ``"vib"``
            (:data:`privatenet.losses.PRIVACY_LOSSES`).
        lam: the privacy weight in [0, 1]; 0 gives back the task loss exactly.
        update: ``"fixed"`` or ``"alternating"`` (see the module docstring); confusion and
            adversarial only.
        lr, weight_decay: Adam settings of the adversaries' own steps (alternating and
            ensemble). :func:`privatenet.fit` sets every optimizer's learning rate to its
            schedule (``config.lr * lr_decay ** epoch``), these included.
        num_classes: the number K of private classes (``hsic``: the one-hot width, since a
            batch may lack some classes; ``ensemble``: the members' outputs). Taken from the
            known adversary's ``config`` when ``ensemble`` is given one.
        tap_shape: the tap's shape without the batch dimension (``ensemble``: the members'
            inputs); taken from the known adversary's ``config`` likewise.
        members: ``ensemble``: the heads built besides the known adversary, each a kind of
            :func:`privatenet.create_adversary` or a dict ``{"kind": ..., **options}``;
            default :data:`DEFAULT_ENSEMBLE` (linear, MLPs of 64 and 256 hidden units).
        reinit_every: ``ensemble``: adversary steps between re-initialisations (default
            :data:`DEFAULT_REINIT_EVERY`; 0 never re-initialises).
        seed: ``ensemble``: seeds the members' initial weights and every re-initialisation
            (default 0), so a run is deterministic whatever the global random state.
        bandwidths: ``hsic``: the RBF bandwidths in multiples of the batch's median distance
            (default :data:`privatenet.losses.HSIC_BANDWIDTHS`).
        bottleneck: ``vib``: the :class:`~privatenet.bottleneck.TapBottleneck` in the model at
            the tap; the privacy term is its KL from the latest forward pass (call the model
            first), and ``features`` and ``private`` only fix the batch size.

    Call ``reg(task_loss, features, private)`` with ``private`` (N,) class indices, ``-1`` for
    an unknown label: those rows get no privacy term (a batch without any known label returns
    ``(1 - lam) * task_loss``). ``reg.privacy_term(features, private)`` returns ``L_priv``
    alone. ``last_privacy_loss`` and ``last_adversary_loss`` hold the latest values (detached)
    for logging. ``reg.to(device)`` moves the adversaries; ``save``/``load`` keep their
    weights, optimizer state and (ensemble) step counter in a safetensors checkpoint;
    ``trainable_modules()`` and ``optimizers()`` name what a training loop must checkpoint with
    its model.

    **The adversaries' own step is the caller's call.** A mode that trains adversaries
    (``alternating``, ``ensemble``) never steps inside the loss: in training mode a call
    scores the encoder against the adversaries as they are and keeps the batch's detached
    features; :meth:`adversary_step` then takes their one Adam step on them. Call it once per
    batch (before or after the encoder's backward and step: the encoder's graph uses a copy of
    the adversaries' weights), or :meth:`attach` it to the encoder's optimizer once
    (:func:`make_private` does both). A batch whose step was never taken is logged as a
    warning. In eval mode (``reg.eval()``) nothing is kept and nothing steps.
    """

    #: The keyword-only options this mode takes beyond loss, lam, update, lr, weight_decay.
    OPTIONS: tuple[str, ...] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> PrivacyRegularizer:
        if cls is PrivacyRegularizer:  # the base builds the class of the mode
            cls = _mode_class(kwargs.get("loss", "confusion"), kwargs.get("update", "fixed"))
        return super().__new__(cls)

    def __init__(self, adversary: nn.Module | None = None, *, loss: str = "confusion",
                 lam: float = DEFAULT_LAM, update: str = "fixed", lr: float = 1e-3,
                 weight_decay: float = 1e-4, **options: Any) -> None:
        super().__init__()
        if adversary is not None and not isinstance(adversary, nn.Module):
            raise PrivatenetError(f"adversary must be an nn.Module, got "
                                  f"{type(adversary).__name__}")
        self.loss, self.lam, self.update = check_loss(loss), check_lam(lam), check_update(update)
        for name, value in (("lr", lr), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                    name == "lr" and value == 0):
                raise PrivatenetError(f"{name}={value!r} is invalid; give a positive number"
                                      + (" or 0" if name == "weight_decay" else ""))
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        for name, value in options.items():
            if name not in _OPTION_MODES:
                raise TypeError(f"PrivacyRegularizer() got an unexpected keyword argument "
                                f"{name!r}")
            if value is not None and name not in self.OPTIONS:
                modes = " or ".join(repr(m) for m in _OPTION_MODES[name])
                raise PrivatenetError(f"{name}= applies to loss={modes} only, not "
                                      f"loss={loss!r}; drop it")
        self.adversary: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.ensemble: _Ensemble | None = None
        self.last_privacy_loss: torch.Tensor | None = None
        self.last_adversary_loss: torch.Tensor | None = None
        #: ensemble: each member's cross-entropy at its latest step (detached), for logging.
        self.last_member_losses: torch.Tensor | None = None
        # The batch whose adversary step is due (detached features, labels), or None.
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._warned = False

    # the call ---------------------------------------------------------------------------

    def forward(self, task_loss: torch.Tensor, features: torch.Tensor,
                private: torch.Tensor) -> torch.Tensor:
        """Eq. 8: ``(1 - lam) * task_loss + lam * privacy_term(features, private)``.

        ``task_loss``: a scalar; ``features``: (N, *tap_shape), still attached to the encoder's
        graph; ``private``: (N,) int64 class indices, -1 for unknown.
        """
        return total_loss(task_loss, self.privacy_term(features, private), self.lam)

    def privacy_term(self, features: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
        """``L_priv`` alone (a float32 scalar), for losses that combine several terms.

        ``features``: (N, *tap_shape), attached to the encoder's graph; ``private``: (N,) class
        indices, -1 for unknown (those rows are dropped; none left gives 0).
        """
        _check_rows(features, private)
        private = private.to(features.device)
        known = private != MISSING  # rows with an unknown attribute get no privacy term
        if not bool(known.all()):
            features, private = features[known], private[known]
        if features.shape[0] == 0:
            priv = torch.zeros((), device=features.device)
        else:
            priv = self._term(features, private)
        self.last_privacy_loss = priv.detach()
        return priv

    def _term(self, features: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
        """The mode's ``L_priv`` on rows with a known label (at least one)."""
        raise NotImplementedError

    def _keep_for_step(self, features: torch.Tensor, private: torch.Tensor) -> None:
        """Keep a training batch for :meth:`adversary_step` (batch norm cannot train on one
        row, so a single-row batch takes no step)."""
        if self._pending is not None and not self._warned:
            log.warning("%s: the adversaries' step of the previous batch was never taken; call "
                        "reg.adversary_step() once per batch, or reg.attach(optimizer)",
                        type(self).__name__)
            self._warned = True
        self._pending = (features.detach(), private) if features.shape[0] >= 2 else None

    def adversary_step(self) -> None:
        """Take the adversaries' one Adam step on the latest training batch's detached features
        (nothing for a mode without trained adversaries, or when no batch is due)."""
        if self._pending is None:
            return
        features, private = self._pending
        self._pending = None
        self._step(features, private)

    def _step(self, features: torch.Tensor, private: torch.Tensor) -> None:
        """The mode's adversary step (modes that train adversaries override it)."""

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Take :meth:`adversary_step` after every ``optimizer.step()``; returns the hook's
        handle (``handle.remove()`` detaches it)."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise PrivatenetError(f"attach needs a torch optimizer, got "
                                  f"{type(optimizer).__name__}")
        return optimizer.register_step_post_hook(lambda *_: self.adversary_step())

    # modes and checkpoints ----------------------------------------------------------------

    @property
    def members(self) -> nn.ModuleList | None:
        """The ensemble's adversaries (the known adversary first, if given); None otherwise."""
        return None if self.ensemble is None else self.ensemble.members

    def extra_repr(self) -> str:
        return f"loss={self.loss!r}, lam={self.lam}, update={self.update!r}"

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules this regularizer trains, by name: what a training loop must checkpoint
        with its model to resume exactly (empty for a fixed adversary, hsic and vib)."""
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers of :meth:`trainable_modules`, by name."""
        return {}

    def _saved_modules(self) -> dict[str, nn.Module]:
        return self.trainable_modules()

    def settings(self) -> dict:
        """Plain values of every setting that changes the result (the adversaries' weights
        aside): loss, lam and update, and each mode's own settings."""
        out = {"loss": self.loss, "lam": self.lam, "update": self.update, **self._settings()}
        # As JSON reads it back (tuples become lists), so a saved copy compares equal.
        return json.loads(json.dumps(out))

    def _settings(self) -> dict:
        return {}

    # save and load -------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the adversaries' weights, their optimizer state, the ensemble's step counter
        and the settings to ``path.safetensors`` + ``path.json`` (atomically; nothing is
        pickled)."""
        tensors: dict[str, torch.Tensor] = {}
        for name, module in self._saved_modules().items():
            tensors.update(prefixed(name, module.state_dict()))
        meta = {"regularizer": self.settings(), "optimizer": None}
        if self.optimizer is not None:
            opt_tensors, meta["optimizer"] = optimizer_state("optim", self.optimizer)
            tensors.update(opt_tensors)
        save_checkpoint(path, tensors=tensors, meta=meta)

    def load(self, path: str | Path) -> PrivacyRegularizer:
        """Restore what :meth:`save` wrote into this regularizer (same settings and adversary
        architectures, else a one-line error). Returns ``self``."""
        tensors, meta = load_checkpoint(path)
        saved = meta.get("regularizer")
        if saved != self.settings():
            raise PrivatenetError(f"{path} holds a regularizer with settings {saved}, not "
                                  f"{self.settings()}; build it with those settings")
        for name, module in self._saved_modules().items():
            try:
                module.load_state_dict(unprefixed(name, tensors), strict=True)
            except RuntimeError as e:
                raise PrivatenetError(f"{path} does not fit this regularizer's {name} "
                                      f"({str(e).strip().splitlines()[0]})") from None
        if self.optimizer is not None:
            load_optimizer_state("optim", self.optimizer, tensors, meta["optimizer"])
        return self


def _as_it_is(adversary: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``adversary``'s output on the encoder's ``features`` as the adversary is before its step:
    in eval mode, so that the encoder's step does not move its batch-norm statistics, and on a
    copy of its weights, so that its own step (in place) cannot invalidate the graph the
    caller's backward() still needs."""
    state = {k: v.detach().clone() for k, v in adversary.state_dict().items()}
    adversary.eval()
    return functional_call(adversary, state, (features,))


def _check_rows(features: torch.Tensor, private: torch.Tensor) -> None:
    if features.shape[0] != private.shape[0]:
        raise PrivatenetError(f"{features.shape[0]} feature rows for {private.shape[0]} "
                              "private labels; pass one label per row (-1 if unknown)")


def _check_num_classes(num_classes: Any) -> int:
    if not is_int(num_classes) or num_classes < 2:
        raise SettingError("num_classes", num_classes, "is invalid; give the number of "
                                                       "private classes, an integer >= 2")
    return num_classes


class AdversaryRegularizer(PrivacyRegularizer):
    """``confusion`` or ``adversarial`` against one adversary held fixed (the paper): the
    regularizer's own copy, in eval mode, with no gradient and no optimizer, so neither the
    caller's adversary nor its batch-norm statistics ever change."""

    def __init__(self, adversary: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(adversary, **kwargs)
        if adversary is None:
            raise SettingError("loss", self.loss, "needs an adversary module (e.g. from "
                                  "create_adversary and fit_adversary); or use loss='hsic' or "
                                                  "'ensemble'")
        self.criterion = LOSS_MODULES[self.loss]()
        # A copy: the caller's adversary (the known adversary trained on the original network)
        # must stay what it is, whatever this regularizer does to its own.
        self.adversary = copy.deepcopy(adversary)
        self.adversary.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> AdversaryRegularizer:
        """Set the training flag; the fixed adversary stays in eval mode whatever the mode."""
        super().train(mode)
        self.adversary.eval()
        return self

    def _saved_modules(self) -> dict[str, nn.Module]:
        # A fixed adversary is saved too, so a file says what it ran against.
        return {"adversary": self.adversary}

    def _settings(self) -> dict:
        # The adversarial loss changed from -CE to this bounded form; a run of the old form
        # must not resume under the new one.
        return {"form": "-log(1-p_true)"} if self.loss == "adversarial" else {}

    def _term(self, features: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
        return self.criterion(self.adversary(features), private)


class AlternatingRegularizer(AdversaryRegularizer):
    """``confusion`` or ``adversarial`` against an adversary trained alongside (the min-max of
    Edwards & Storkey): in training mode each call scores the encoder against the adversary as
    it is, and :meth:`adversary_step` then takes its one Adam step on the detached features."""

    def __init__(self, adversary: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(adversary, **kwargs)
        self.adversary.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.adversary.parameters(), lr=self.lr,
                                          weight_decay=self.weight_decay)

    def train(self, mode: bool = True) -> AlternatingRegularizer:
        return nn.Module.train(self, mode)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"adversary": self.adversary}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adversary": self.optimizer}

    def _settings(self) -> dict:
        return {**super()._settings(), "lr": self.lr, "weight_decay": self.weight_decay}

    def _term(self, features: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super()._term(features, private)
        priv = self.criterion(_as_it_is(self.adversary, features), private)
        self._keep_for_step(features, private)
        return priv

    def _step(self, features: torch.Tensor, private: torch.Tensor) -> None:
        self.adversary.train()
        adv_ce = F.cross_entropy(self.adversary(features).float(), private)
        self.optimizer.zero_grad(set_to_none=True)
        adv_ce.backward()
        self.optimizer.step()
        self.last_adversary_loss = adv_ce.detach()


class EnsembleRegularizer(PrivacyRegularizer):
    """``ensemble``: the confusion loss (Eq. 7) averaged over several adversaries of different
    capacity, each trained alongside the encoder and re-initialised in turn.

    The encoder must make every member unsure at once instead of fooling one opponent; the
    uniform target (the maximum-entropy adversary output of MaxEnt-ARL, Roy & Boddeti, CVPR
    2019) cannot be "read back" like the confidently wrong output the adversarial loss aims at.
    A single adversary trained alongside tends to be beaten while the information stays
    recoverable by a fresh attacker (Elazar & Goldberg, EMNLP 2018); hence several capacities,
    and every ``reinit_every`` steps one member (round-robin) is re-initialised from scratch, so
    a fresh attacker is always in training while the others stay trained. Each training call
    scores the encoder against the members as they are (in eval mode, on copied weights);
    :meth:`adversary_step` then takes one Adam step of every member on the detached features.
    The known adversary, if given, is the first member and is re-initialised in its turn like
    the others (rebuilt from its ``config`` when it has one, else by its layers'
    ``reset_parameters``).
    """

    OPTIONS = ("members", "reinit_every", "seed", "tap_shape", "num_classes")

    def __init__(self, adversary: nn.Module | None = None, *,
                 num_classes: int | None = None, tap_shape: Sequence[int] | None = None,
                 members: Sequence[str | Mapping[str, Any]] | None = None,
                 reinit_every: int | None = None, seed: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(adversary, num_classes=num_classes, tap_shape=tap_shape,
                         members=members, reinit_every=reinit_every, seed=seed, **kwargs)
        known_config = getattr(adversary, "config", None)
        if not isinstance(known_config, Mapping) or "kind" not in known_config:
            known_config = None
        if num_classes is not None:
            _check_num_classes(num_classes)
        if tap_shape is not None and (
                not isinstance(tap_shape, (tuple, list)) or not tap_shape
                or not all(is_int(s) and s >= 1 for s in tap_shape)):
            raise SettingError("tap_shape", tap_shape, "is invalid; give the tap's shape "
                                  "without the batch dimension, e.g. (512, 7, 7)")
        # Shapes come from the caller or from the known adversary's config; both must agree.
        for name, given in (("num_classes", num_classes), ("tap_shape", tap_shape)):
            inferred = known_config.get(name) if known_config else None
            if given is None and inferred is None:
                raise PrivatenetError(f"loss='ensemble' needs {name}= (or a known adversary "
                                      f"whose config holds it)")
            if given is not None and inferred is not None and (
                    list(given) if name == "tap_shape" else given) != inferred:
                raise PrivatenetError(f"{name}={given!r} does not match the known adversary's "
                                      f"{inferred!r}; drop {name}= or pass a matching value")
        self.num_classes = _check_num_classes(
            num_classes if num_classes is not None else known_config["num_classes"])
        self.tap_shape = tuple(tap_shape if tap_shape is not None else known_config["tap_shape"])
        self.reinit_every = DEFAULT_REINIT_EVERY if reinit_every is None else reinit_every
        if not is_int(self.reinit_every) or self.reinit_every < 0:
            raise SettingError("reinit_every", reinit_every, "is invalid; give an integer "
                                                             ">= 0 (0 never re-initialises)")
        self.seed = check_seed(0 if seed is None else seed)
        specs = DEFAULT_ENSEMBLE if members is None else members
        if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence):
            raise SettingError("members", members, "is invalid; give a list of adversary "
                                                   "kinds or {'kind': ..., **options} dicts")
        self.member_specs = [self._check_member(s) for s in specs]
        if not self.member_specs and adversary is None:
            raise PrivatenetError("loss='ensemble' needs at least one member; give members= "
                                  "or a known adversary")
        # How to rebuild each member from scratch: a spec ({"kind": ..., **options}), or None
        # for a known adversary without config (reset by its layers' reset_parameters).
        self._rebuild: list[dict | None] = []
        built: list[nn.Module] = []
        if adversary is not None:
            built.append(copy.deepcopy(adversary))
            self._rebuild.append(None if known_config is None else dict(known_config))
        for spec in self.member_specs:
            self._rebuild.append({**spec, "tap_shape": list(self.tap_shape),
                                  "num_classes": self.num_classes})
            built.append(self._fresh(len(built), _derived_seed(self.seed, len(built)),
                                     template=None))
        self.known = (None if adversary is None else
                      dict(known_config) if known_config else type(adversary).__name__)
        self.ensemble = _Ensemble(built)
        self.ensemble.requires_grad_(True)
        # One Adam over all members: Adam is per parameter and the members share none, so one
        # step on the sum of their losses is one independent step of each.
        self.optimizer = torch.optim.Adam(self.ensemble.members.parameters(), lr=self.lr,
                                          weight_decay=self.weight_decay)

    @staticmethod
    def _check_member(spec: Any) -> dict:
        if isinstance(spec, str):
            spec = {"kind": spec}
        if not isinstance(spec, Mapping) or not isinstance(spec.get("kind"), str):
            raise PrivatenetError(f"ensemble member {spec!r} is invalid; give an adversary kind "
                                  "or a dict {'kind': ..., **options}")
        clash = [k for k in ("tap_shape", "num_classes") if k in spec]
        if clash:
            raise PrivatenetError(f"ensemble member {dict(spec)!r} sets {clash[0]}; drop it, "
                                  "the regularizer's tap_shape and num_classes apply")
        return dict(spec)

    def _fresh(self, index: int, seed: int, *, template: nn.Module | None) -> nn.Module:
        """A newly initialised member ``index``, its weights drawn from ``seed`` alone (on CPU
        in a forked random state, so neither the device nor the global RNG matters)."""
        spec = self._rebuild[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if spec is not None:
                return adversary_from_config(spec)
            fresh = copy.deepcopy(template).cpu()
            for layer in fresh.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
            return fresh

    def trainable_modules(self) -> dict[str, nn.Module]:
        # The ensemble's module holds its step counter as a buffer.
        return {"ensemble": self.ensemble}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"ensemble": self.optimizer}

    def _settings(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay,
                "num_classes": self.num_classes, "tap_shape": list(self.tap_shape),
                "known": self.known, "members": [dict(s) for s in self.member_specs],
                "reinit_every": self.reinit_every, "seed": self.seed}

    def _term(self, features: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
        members = self.ensemble.members
        if not self.training:
            return torch.stack([confusion_loss(m(features)) for m in members]).mean()
        terms = [confusion_loss(_as_it_is(m, features)) for m in members]
        self._keep_for_step(features, private)
        return torch.stack(terms).mean()

    def _step(self, features: torch.Tensor, private: torch.Tensor) -> None:
        members = self.ensemble.members
        members.train()
        ces = torch.stack([F.cross_entropy(m(features).float(), private) for m in members])
        self.optimizer.zero_grad(set_to_none=True)
        ces.sum().backward()
        self.optimizer.step()
        self.last_adversary_loss = ces.mean().detach()
        self.last_member_losses = ces.detach()
        self._count_step()

    def _count_step(self) -> None:
        calls = int(self.ensemble.calls) + 1
        self.ensemble.calls.fill_(calls)
        if self.reinit_every and calls % self.reinit_every == 0:
            event = calls // self.reinit_every  # 1, 2, ...: member 0, 1, ... round-robin
            self._reinit((event - 1) % len(self.ensemble.members), event)

    def _reinit(self, index: int, event: int) -> None:
        member = self.ensemble.members[index]
        seed = _derived_seed(self.seed, len(self.ensemble.members) + event)
        fresh = self._fresh(index, seed, template=member)
        with torch.no_grad():
            # In place (values copied to the member's device), so the optimizer keeps pointing
            # at the member's parameters; their Adam moments belonged to the old weights.
            member.load_state_dict(fresh.state_dict())
        for p in member.parameters():
            self.optimizer.state.pop(p, None)
        log.debug("ensemble: re-initialised member %d after %d steps", index,
                  event * self.reinit_every)


class HsicRegularizer(PrivacyRegularizer):
    """``hsic``: no adversary; the normalised HSIC between the features and the private label
    (:func:`privatenet.losses.hsic_loss`)."""

    OPTIONS = ("num_classes", "bandwidths")

    def __init__(self, adversary: nn.Module | None = None, *, num_classes: int | None = None,
                 bandwidths: Sequence[float] | None = None, **kwargs: Any) -> None:
        super().__init__(adversary, num_classes=num_classes, bandwidths=bandwidths, **kwargs)
        if adversary is not None:
            raise PrivatenetError("loss='hsic' uses no adversary; pass None as the adversary")
        self.num_classes = _check_num_classes(num_classes)
        self.bandwidths = check_bandwidths(HSIC_BANDWIDTHS if bandwidths is None else bandwidths)

    def _settings(self) -> dict:
        return {"num_classes": self.num_classes, "bandwidths": list(self.bandwidths),
                "normalized": True}

    def _term(self, features: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
        return hsic_loss(features, private, num_classes=self.num_classes,
                         bandwidths=self.bandwidths)


class VibRegularizer(PrivacyRegularizer):
    """``vib``: no adversary and no private label; the KL term of the noisy bottleneck at the
    tap (:class:`privatenet.bottleneck.TapBottleneck`, given as ``bottleneck=``), computed by
    the forward pass that produced the features, on every row."""

    OPTIONS = ("bottleneck",)

    def __init__(self, adversary: nn.Module | None = None, *,
                 bottleneck: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(adversary, bottleneck=bottleneck, **kwargs)
        if adversary is not None:
            raise PrivatenetError("loss='vib' uses no adversary; pass None as the adversary")
        if not isinstance(bottleneck, TapBottleneck):
            raise PrivatenetError("loss='vib' needs bottleneck=<the TapBottleneck at the tap> "
                                  "(privatenet.bottleneck_at_tap(model, ...).bottleneck)")
        # Held in a tuple, not as a submodule: its weights are the model's, trained and saved
        # with it, not a second copy in this regularizer.
        self._bottleneck = (bottleneck,)

    def _settings(self) -> dict:
        b = self._bottleneck[0]
        return {"channels": b.channels, "shape": list(b.shape), "kl": "mean nats per code number"}

    def privacy_term(self, features: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
        _check_rows(features, private)
        kl = self._bottleneck[0].last_kl
        if kl is None:
            raise PrivatenetError("loss='vib': the bottleneck has no KL term from this forward "
                                  "pass; call the model with the bottleneck before the "
                                  "regularizer")
        self.last_privacy_loss = kl.detach().float()
        return kl.float()


# Which modes take each option (for the one-line error when another mode is given it).
_OPTION_MODES = {"members": ("ensemble",), "reinit_every": ("ensemble",), "seed": ("ensemble",),
                 "tap_shape": ("ensemble",), "num_classes": ("ensemble", "hsic"),
                 "bandwidths": ("hsic",), "bottleneck": ("vib",)}


def _mode_class(loss: Any, update: Any) -> type[PrivacyRegularizer]:
    """The class of the mode ``loss`` and ``update`` name (one-line errors otherwise)."""
    check_loss(loss)
    check_update(update)
    if loss in ("ensemble", "hsic", "vib") and update != "fixed":
        raise SettingError("update", update, f"does not apply to loss={loss!r} "
                                             "(it trains no single adversary); drop update=")
    if loss == "ensemble":
        return EnsembleRegularizer
    if loss == "hsic":
        return HsicRegularizer
    if loss == "vib":
        return VibRegularizer
    return AlternatingRegularizer if update == "alternating" else AdversaryRegularizer


class PrivateLoss:
    """Eq. 8 attached to a user's model and optimizer (made by :func:`make_private`).

    ``private_loss(task_loss, private)`` is ``regularizer(task_loss, features, private)`` with
    the features of the tap from the model's latest forward pass (the output of the layer that
    computes the tap, read by a forward hook), and the regularizer's adversaries step after
    every ``optimizer.step()``. :meth:`remove` takes both hooks off.
    """

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 regularizer: PrivacyRegularizer, tap: str) -> None:
        if not isinstance(regularizer, PrivacyRegularizer):
            raise PrivatenetError(f"regularizer must be a PrivacyRegularizer, got "
                                  f"{type(regularizer).__name__}")
        layer = model.get_submodule(tap_layer(model, tap))
        self.regularizer, self.tap = regularizer, tap
        self._features: torch.Tensor | None = None
        self._handles = [layer.register_forward_hook(self._capture),
                         regularizer.attach(optimizer)]

    def _capture(self, _layer: nn.Module, _inputs: object, output: object) -> None:
        if not isinstance(output, torch.Tensor):
            raise PrivatenetError(f"tap {self.tap!r}: its layer returns a "
                                  f"{type(output).__name__}, not a tensor; choose a tap whose "
                                  "layer returns one tensor")
        self._features = output

    def __call__(self, task_loss: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
        if self._features is None:
            raise PrivatenetError(f"no forward pass of the model since the last loss: call the "
                                  f"model on the batch first (tap {self.tap!r} is read from it)")
        features, self._features = self._features, None
        # A tap is its layer's output or the same values flattened (models/taps.py): flatten
        # where the adversaries read vectors.
        reg = self.regularizer
        shape = getattr(reg, "tap_shape", None) or getattr(reg.adversary, "tap_shape", None)
        if shape is not None and len(shape) == 1 and features.dim() > 2:
            features = features.flatten(1)
        return reg(task_loss, features, private)

    def remove(self) -> None:
        """Take the forward hook and the optimizer hook off."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def make_private(*, model: nn.Module, optimizer: torch.optim.Optimizer,
                 regularizer: PrivacyRegularizer, tap: str) -> PrivateLoss:
    """Attach ``regularizer`` to a training loop in one call, the loop otherwise unchanged::

        private_loss = pn.make_private(model=net, optimizer=opt, regularizer=reg, tap="backbone")
        for x, y, s in batches:
            loss = private_loss(F.cross_entropy(net(x), y), s)   # the one changed line
            opt.zero_grad(); loss.backward(); opt.step()          # adversaries step after it

    ``model``: any model whose taps name their layers (every registry model, and
    :func:`privatenet.with_taps` models); ``tap``: the tap the privacy term acts on;
    ``optimizer``: the model's, after whose every step the regularizer's adversaries take theirs
    (:meth:`PrivacyRegularizer.attach`). Returns the :class:`PrivateLoss`.
    """
    return PrivateLoss(model=model, optimizer=optimizer, regularizer=regularizer, tap=tap)
