"""The defences ``train`` and ``reproduce`` offer, and the privacy settings of a training run,
declared once (docs/design.md §2.2, §4)."""

from __future__ import annotations

from dataclasses import dataclass

from privatenet.bottleneck import VIB_CHANNELS, check_channels
from privatenet.errors import PrivatenetError, SettingError
from privatenet.losses import DEFAULT_LAM, LOSS_HELP, PRIVACY_LOSSES, check_lam
from privatenet.regularizer import ADVERSARY_UPDATES, check_update
from privatenet.settings import setting

__all__ = ["BOTTLENECKED", "DEFENCES", "ERASING", "PrivacyConfig", "TRAINED_THEN_ERASED",
           "check_defence"]

#: Every defence (docs/design.md §2.2): the regularizer's privacy losses, linear concept erasure
#: at the tap, and erasure after HSIC or vib training.
DEFENCES = (*PRIVACY_LOSSES, "leace", "hsic+leace", "vib+leace")
#: One line per defence, for the command line's help.
DEFENCE_HELP = {
    **LOSS_HELP,
    "leace": "LEACE at the tap (fitted on the starting network's train features, then the "
             "layers after the tap fine-tuned): linear attackers are blind on the fitting rows, "
             "not on fresh ones when the tap is wider than the train split",
    "hsic+leace": "hsic training, then LEACE on its features",
    "vib+leace": "vib training, then LEACE on its noisy code, which has far fewer numbers than "
                 "the train split has rows, so the erasure holds on fresh rows too",
}
#: The erasing defences that train with a privacy term first, and that term. They split the
#: control's epochs between the two steps, so every defence gets the same training budget.
TRAINED_THEN_ERASED = {"hsic+leace": "hsic", "vib+leace": "vib"}
#: Defences that erase the tap after (any) training with the privacy term.
ERASING = ("leace", *TRAINED_THEN_ERASED)
#: The defences that put a noisy bottleneck at the tap (and take ``channels``).
BOTTLENECKED = ("vib", "vib+leace")


def check_defence(name: str) -> str:
    """``name`` if it is one of :data:`DEFENCES`, else a one-line error."""
    if name not in DEFENCES:
        raise SettingError("defence", name, f"is unknown; use one of {', '.join(DEFENCES)}")
    return name


@dataclass
class PrivacyConfig:
    """What a training run protects, and how: all unset for plain training; else ``defence``,
    ``tap`` and ``private`` (one attribute or a list: one privacy term each) at least.
    Checked on creation, before any data is read; :meth:`job_settings` is the form
    :func:`~privatenet.app.jobs.train_job` records."""

    defence: str | None = setting(
        None, "; ".join(f"{k}: {v}" for k, v in DEFENCE_HELP.items()), choices=DEFENCES,
        aliases=("--loss",))
    tap: str | None = setting(None, "feature tap the defence acts on")
    private: list[str] | None = setting(
        None, "private attribute column, e.g. gender, or a comma list (gender,age): one "
              "privacy term each", list="str")
    lam: float | None = setting(None, f"privacy weight lambda in [0, 1] (Eq. 8; unset: "
                                      f"{DEFAULT_LAM})")
    adversary: list[str] | None = setting(
        None, "folder of a finished 'privatenet attack' run on the starting network: the known "
              "adversary (a comma list: one per private attribute); needed by confusion and "
              "adversarial, a member of ensemble, scored only by hsic and leace", list="str")
    adversary_update: str | None = setting(
        None, "fixed (unset: the paper's): the known adversary is held fixed; alternating: it "
              "is updated each step (min-max)", choices=ADVERSARY_UPDATES)
    bottleneck_channels: int | None = setting(
        None, f"defence vib or vib+leace: channels of the noisy code at the tap (unset: "
              f"{VIB_CHANNELS})")

    def __post_init__(self) -> None:
        for name in ("private", "adversary"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        core = {"defence": self.defence, "tap": self.tap, "private": self.private}
        if not self.enabled:
            for name in ("lam", "adversary_update", "bottleneck_channels"):
                if getattr(self, name) is not None:  # training without privacy would be worse
                    raise SettingError(name, getattr(self, name), "is only for privacy "
                                       "training; give {defence}, {tap} and {private} too, or "
                                       "drop it", mentions=("defence", "tap", "private"))
            return
        missing = [k for k, v in core.items() if v is None]
        if missing:
            raise SettingError(missing[0], None, "is missing; privacy training needs {defence}, "
                               "{tap} and {private} together (or none of them and no "
                               "{adversary})", mentions=("defence", "tap", "private", "adversary"))
        check_defence(self.defence)
        self.private = [str(p) for p in self.private]
        self.adversary = ([None] * len(self.private) if self.adversary is None
                          else [None if a is None else str(a) for a in self.adversary])
        if (not self.private or len(self.adversary) != len(self.private)
                or len(set(self.private)) != len(self.private)):
            raise PrivatenetError(f"give one known adversary per private attribute "
                                  f"({len(self.private)} attributes {self.private}, "
                                  f"{len(self.adversary)} adversaries), each attribute once")
        self.lam = check_lam(DEFAULT_LAM if self.lam is None else self.lam)
        self.adversary_update = check_update(self.adversary_update or "fixed")
        if self.defence in BOTTLENECKED:
            self.bottleneck_channels = check_channels(
                VIB_CHANNELS if self.bottleneck_channels is None else self.bottleneck_channels)
        elif self.bottleneck_channels is not None:
            raise SettingError("bottleneck_channels", self.bottleneck_channels,
                               f"applies to {{defence}} {' or '.join(BOTTLENECKED)} only, not "
                               f"{self.defence}; drop it", mentions=("defence",))

    @property
    def enabled(self) -> bool:
        """Whether any of defence, tap, private or adversary is given."""
        return any(v is not None for v in (self.defence, self.tap, self.private,
                                           self.adversary))

    @classmethod
    def from_job_settings(cls, privacy: dict) -> PrivacyConfig:
        """The settings from :meth:`job_settings`' form (``loss``, ``update``, ``channels``)."""
        names = {"loss": "defence", "update": "adversary_update",
                 "channels": "bottleneck_channels", "tap": "tap", "private": "private",
                 "lam": "lam", "adversary": "adversary"}
        unknown = sorted(set(privacy) - set(names))
        if unknown:
            raise PrivatenetError(f"privacy has unknown keys {unknown}; give "
                                  f"{', '.join(names)}")
        return cls(**{names[k]: v for k, v in privacy.items()})

    def job_settings(self) -> dict | None:
        """The privacy settings as a training run records them (``None``: no privacy)."""
        if not self.enabled:
            return None
        out = {"loss": self.defence, "tap": self.tap, "lam": self.lam,
               "update": self.adversary_update, "private": list(self.private),
               "adversary": list(self.adversary)}
        if self.defence in BOTTLENECKED:
            out["channels"] = self.bottleneck_channels
        return out
