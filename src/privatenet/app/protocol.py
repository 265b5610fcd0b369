"""The paper's whole protocol as a resumable pipeline of cached stages.

Stages: the original task network; Table 1 (adversaries on the original network, from the image
and from each tap); Table 2 (a privacy-preserving network for each loss x tap x attribute, its
utility, the known adversary on its features and a fresh, unknown adversary trained on them);
Fig. 2 (a lambda sweep); Table 3 (inference latency). Each stage runs in
``OUT/stages/<name>-<hash>/`` where the hash covers the stage's settings and those of the stages
it depends on, so a rerun skips every finished stage, a killed stage resumes from its
checkpoint, and a changed setting recomputes exactly what it affects.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from privatenet.app.jobs import attack_job, build_model, image_size_of, load_model, train_job
from privatenet.app.latency import latency_ms
from privatenet.data import load_dataset
from privatenet.data.spec import DataSpec, check_image_size, parse_spec
from privatenet.errors import PrivatenetError
from privatenet.losses import PRIVACY_LOSSES, check_lam, check_loss
from privatenet.metrics import robustness
from privatenet.models import default_adversary, require_tap
from privatenet.models.registry import check_model_name
from privatenet.regularizer import check_update
from privatenet.train.checkpoint import read_json, write_json, write_yaml
from privatenet.train.config import TrainConfig, resolve_device
from privatenet.train.loop import Callbacks
from privatenet.train.rundir import open_run

log = logging.getLogger(__name__)

REPORT_KEYS = ("accuracy", "balanced_accuracy", "majority", "chance", "normalized_leakage",
               "ci95", "n")


@dataclass
class ProtocolConfig:
    """Every setting of a ``reproduce`` run (see :data:`PRESETS`), checked on creation.

    ``data`` is parsed once into a :class:`~privatenet.data.spec.DataSpec` (absolute paths).
    ``train`` holds the optimisation of the task networks; the adversaries and the privacy
    networks use the same settings with ``adversary_epochs`` and ``privacy_epochs``.
    """

    data: DataSpec | str = "synthfaces"
    target: str = "emotion"
    private: list[str] = field(default_factory=lambda: ["gender", "age"])
    model: str = "arm_resnet18"
    taps: list[str] | None = None  # None: every tap of the model
    losses: list[str] = field(default_factory=lambda: list(PRIVACY_LOSSES))
    lam: float = 0.5  # lambda of the Table 2 networks
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    sweep_tap: str | None = None  # None: the first tap (backbone for the ARM network)
    sweep_attribute: str | None = None  # None: the last private attribute (age by default)
    sweep_loss: str = "confusion"
    init: str = "original"  # privacy networks start from the original network's weights
    adversarial_update: str = "alternating"
    image_size: int | None = 224
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=200))
    adversary_epochs: int = 200
    privacy_epochs: int = 200
    latency_repeats: int = 100
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        self.data = parse_spec(self.data)
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        for loss in [*self.losses, self.sweep_loss]:
            check_loss(loss)
        check_update(self.adversarial_update)
        if self.init not in ("original", "scratch"):
            raise PrivatenetError(f"init={self.init!r} is unknown; use original or scratch")
        for lam in [self.lam, *self.lambdas]:
            check_lam(lam)
        if not self.private:
            raise PrivatenetError("give at least one private attribute, e.g. "
                                  "private=['gender', 'age']")
        if self.target in self.private:
            raise PrivatenetError(f"the private attributes include the task target "
                                  f"{self.target!r}; protect other columns than the task")
        check_image_size(self.image_size)
        check_model_name(self.model)
        self.stage_config(self.adversary_epochs)  # the same checks as the task's epochs
        self.stage_config(self.privacy_epochs)
        if isinstance(self.latency_repeats, bool) or not isinstance(self.latency_repeats, int) \
                or self.latency_repeats < 2:
            raise PrivatenetError(f"latency_repeats={self.latency_repeats!r} is invalid; give "
                                  "an integer >= 2")

    def stage_config(self, epochs: int) -> TrainConfig:
        """The task networks' optimisation settings with ``epochs`` epochs."""
        try:
            return replace(self.train, epochs=epochs)
        except PrivatenetError as e:
            raise PrivatenetError(str(e).replace("epochs=", "adversary_epochs/privacy_epochs=")
                                  if epochs is not self.train.epochs else str(e)) from None

    def to_dict(self) -> dict:
        """Plain values (for ``config.yaml`` and ``results.json``)."""
        return asdict(self) | {"data": str(self.data)}


#: Named settings. ``paper`` is the paper's (arm_resnet18, 224x224, Adam 1e-3, 200 epochs,
#: RAF-DB, gender and age, taps backbone and arm; batch 256 and the rest of the recipe from the
#: public ARM scripts); ``quick`` the same network and protocol with 20 epochs; ``demo`` the CPU
#: demo on synthfaces; ``smoke`` a seconds-long check of the plumbing.
PRESETS: dict[str, dict] = {
    "paper": {"model": "arm_resnet18", "image_size": 224, "epochs": 200,
              "adversary_epochs": 200, "privacy_epochs": 200, "batch_size": 256,
              "private": ["gender", "age"]},
    "quick": {"model": "arm_resnet18", "image_size": 224, "epochs": 20, "adversary_epochs": 20,
              "privacy_epochs": 20, "batch_size": 64, "latency_repeats": 50},
    "demo": {"data": "synthfaces:n=3000,size=64", "model": "arm_small", "image_size": 64,
             "epochs": 8, "adversary_epochs": 15, "privacy_epochs": 4, "batch_size": 64,
             "lr": 2e-3, "lambdas": [0.0, 0.3, 0.5, 0.7, 0.9, 1.0], "latency_repeats": 30},
    "smoke": {"model": "small_cnn", "image_size": 32, "epochs": 1, "adversary_epochs": 1,
              "privacy_epochs": 1, "batch_size": 32, "lambdas": [0.0, 1.0],
              "latency_repeats": 3},
}


def resolve_config(preset: str | None, overrides: dict) -> ProtocolConfig:
    """A preset's settings with ``overrides`` (non-``None`` values) applied on top. Keys are
    :class:`ProtocolConfig` fields or :class:`TrainConfig` fields (``epochs``, ``lr``, ...)."""
    if preset is not None and preset not in PRESETS:
        raise PrivatenetError(f"preset {preset!r} is unknown; use one of {', '.join(PRESETS)}")
    train_names = {f.name for f in fields(TrainConfig)}
    names = {f.name for f in fields(ProtocolConfig)} - {"train"}
    unknown = set(overrides) - names - train_names
    if unknown:
        raise PrivatenetError(f"unknown protocol setting {sorted(unknown)[0]!r}")
    values = dict(PRESETS.get(preset, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    train = {"epochs": 200} | {k: values.pop(k) for k in list(values) if k in train_names}
    return ProtocolConfig(**values, train=TrainConfig(**train))


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


class _Stages:
    """Runs stages in hashed folders, remembering which ran and which were cached."""

    def __init__(self, out: Path, on_stage: Callable[[str, bool], None] | None) -> None:
        self.out, self.on_stage, self.log = out, on_stage, []

    def run(self, name: str, key: dict, job: Callable[[Path], dict]) -> tuple[dict, Path, str]:
        digest = _digest(key)
        folder = self.out / "stages" / f"{name}-{digest}"
        cached = (folder / "results.json").exists()
        if self.on_stage:
            self.on_stage(name, cached)
        if cached:
            try:
                result = read_json(folder / "results.json")
            except PrivatenetError as e:
                raise PrivatenetError(f"{e}; delete the stage folder {folder} and run the same "
                                      "command again to recompute that stage") from None
        else:
            result = job(folder)
        self.log.append({"stage": name, "folder": str(folder.relative_to(self.out)),
                         "cached": cached})
        return result, folder, digest


def _report_row(r: dict) -> dict:
    return {k: r[k] for k in REPORT_KEYS}


def reproduce(*, config: ProtocolConfig, out: str | Path,
              on_stage: Callable[[str, bool], None] | None = None,
              callbacks: Callable[[str], Callbacks] | None = None) -> dict:
    """Run (or resume) the whole protocol into ``out``; returns and writes ``results.json``,
    ``report.md`` and the figures.

    ``on_stage(name, cached)`` is called as each stage starts; ``callbacks(name)`` gives the
    training-loop callbacks (progress bars) for a stage.
    """
    with open_run(out, kind="reproduce", fingerprint=None, resume=True) as run:
        return _reproduce(config, run.path, on_stage, callbacks or (lambda name: None))


def _reproduce(config: ProtocolConfig, out: Path,
               on_stage: Callable[[str, bool], None] | None,
               cb: Callable[[str], Callbacks | None]) -> dict:
    from privatenet.app.report import write_report

    data = load_dataset(config.data, image_size=config.image_size, cache_dir=config.cache_dir)
    data.check_columns([config.target, *config.private])
    size = image_size_of(data)
    probe = build_model(config.model, num_classes=2, image_size=size)
    taps = list(config.taps or probe.taps)
    for tap in taps:
        require_tap(probe, tap)
    sweep_tap = config.sweep_tap or taps[0]
    sweep_attr = config.sweep_attribute or config.private[-1]
    if sweep_tap not in taps or sweep_attr not in config.private:
        raise PrivatenetError(f"the lambda sweep on {sweep_attr!r} from {sweep_tap!r} needs that "
                              "tap in taps and that attribute in private")
    task_cfg = config.train
    adv_cfg = config.stage_config(config.adversary_epochs)
    priv_cfg = config.stage_config(config.privacy_epochs)
    write_yaml(out / "config.yaml", config.to_dict())
    stages = _Stages(out, on_stage)
    # The data's content is part of every stage's key: replaced images or labels under the same
    # spec recompute the stages instead of reusing numbers from other data.
    base = {"data": data.name, "data_content": data.fingerprint(), "image_size": size,
            "model": config.model}

    # Original network (utility) ---------------------------------------------------------
    orig_key = {**base, "target": config.target, "train": asdict(task_cfg)}
    original, orig_dir, orig_hash = stages.run("original", orig_key, lambda d: train_job(
        data=data, out=d, model=config.model, target=config.target, config=task_cfg,
        resume=True, callbacks=cb("original")))

    # Table 1 ----------------------------------------------------------------------------
    table1, known = [], {}
    for attr in config.private:
        key = {**base, "target": attr, "train": asdict(task_cfg)}
        res, _, _ = stages.run(f"image-{attr}", key, lambda d, a=attr: train_job(
            data=data, out=d, model=config.model, target=a, config=task_cfg, resume=True,
            callbacks=cb(f"image-{a}")))
        table1.append({"attribute": attr, "source": "image", **_report_row(res["utility"])})
        for tap in taps:
            head = default_adversary(config.model, tap)
            key = {"network": orig_hash, "tap": tap, "attribute": attr, "head": head,
                   "train": asdict(adv_cfg)}
            res, folder, digest = stages.run(f"attack-original-{tap}-{attr}", key,
                                             lambda d, t=tap, a=attr, h=head: attack_job(
                data=data, model_run=orig_dir, tap=t, attribute=a, head=h, config=adv_cfg,
                out=d, resume=True, callbacks=cb(f"attack {t} {a}")))
            known[tap, attr] = (res, folder, digest)
            table1.append({"attribute": attr, "source": tap, "head": head,
                           **_report_row(res)})

    # Privacy-preserving networks (Table 2 and the sweep) ---------------------------------
    def private_net(loss: str, tap: str, attr: str, lam: float) -> dict:
        k_res, k_dir, k_hash = known[tap, attr]
        update = "fixed" if loss == "confusion" else config.adversarial_update
        privacy = {"loss": loss, "tap": tap, "private": attr, "lam": lam, "update": update,
                   "adversary": str(k_dir)}
        key = {"original": orig_hash, "known": k_hash, "loss": loss, "lam": lam,
               "update": update, "init": config.init, "train": asdict(priv_cfg)}
        init = orig_dir if config.init == "original" else None
        name = f"private-{loss}-{tap}-{attr}-lam{lam:g}"
        net, net_dir, net_hash = stages.run(name, key, lambda d: train_job(
            data=data, out=d, model=config.model, target=config.target, config=priv_cfg,
            init_from=init, privacy=privacy, resume=True, callbacks=cb(name)))
        head = default_adversary(config.model, tap)
        key = {"network": net_hash, "tap": tap, "attribute": attr, "head": head,
               "train": asdict(adv_cfg)}
        unknown, _, _ = stages.run(f"attack-{name}", key, lambda d: attack_job(
            data=data, model_run=net_dir, tap=tap, attribute=attr, head=head, config=adv_cfg,
            out=d, resume=True, callbacks=cb(f"unknown {name}")))
        return {"attribute": attr, "tap": tap, "loss": loss, "lam": lam, "update": update,
                "utility": _report_row(net["utility"]), "known": _report_row(net["known"]),
                "unknown": _report_row(unknown),
                "robustness_known": robustness(net["known"]["accuracy"], k_res["accuracy"]),
                "robustness_unknown": robustness(unknown["accuracy"], k_res["accuracy"]),
                "network": str(net_dir)}

    table2 = [private_net(loss, tap, attr, config.lam)
              for loss in config.losses for tap in taps for attr in config.private]
    sweep = []
    for lam in config.lambdas:
        row = private_net(config.sweep_loss, sweep_tap, sweep_attr, lam)
        sweep.append({"lam": lam, "utility": row["utility"]["accuracy"],
                      "known": row["known"]["accuracy"], "unknown": row["unknown"]["accuracy"],
                      "utility_report": row["utility"], "known_report": row["known"],
                      "unknown_report": row["unknown"]})

    # Table 3 ----------------------------------------------------------------------------
    networks = [("original", orig_dir)] + [
        (f"{r['loss']}/{r['tap']}/{r['attribute']}", Path(r["network"])) for r in table2]
    latency = []
    for name, folder in networks:
        key = {"network": folder.name, "device": config.train.device,
               "repeats": config.latency_repeats}
        res, _, _ = stages.run("latency-" + name.replace("/", "-"), key,
                               lambda d, f=folder: _latency_stage(d, f, size, config))
        latency.append({"network": name, **res})

    results = {
        "config": config.to_dict() | {"taps": taps, "sweep_tap": sweep_tap,
                                      "sweep_attribute": sweep_attr},
        "classes": {c: data.classes[c] for c in [config.target, *config.private]},
        "utility": {"original": {k: original["utility"][k]
                                 for k in ("accuracy", "balanced_accuracy")},
                    "original_report": _report_row(original["utility"])},
        "table1": table1, "table2": table2, "lambda_sweep": sweep, "latency_ms": latency,
        "stages": stages.log,
    }
    write_json(out / "results.json", results)
    write_report(results, out)
    return results


def _latency_stage(folder: Path, network: Path, size: int, config: ProtocolConfig) -> dict:
    model, _ = load_model(network)
    with open_run(folder, kind="latency", fingerprint=None, resume=True) as run:
        res = latency_ms(model, image_size=size, device=resolve_device(config.train.device),
                         repeats=config.latency_repeats)
        write_json(run.path / "results.json", res)
    return res
