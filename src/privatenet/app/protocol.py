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
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from privatenet.app.defences import (
    BOTTLENECKED,
    DEFENCES,
    ERASING,
    TRAINED_THEN_ERASED,
    check_defence,
)
from privatenet.app.jobs import (
    attack_job,
    audit_job,
    build_model,
    file_digest,
    image_size_of,
    known_job,
    load_model,
    train_job,
)
from privatenet.app.latency import LATENCY_PRECISIONS, latency_ms
from privatenet.app.report import write_report
from privatenet.auditing import AUDIT_PROTOCOL, AuditConfig, check_audit_rows
from privatenet.bench import measure, variant_of
from privatenet.bottleneck import VIB_CHANNELS, check_channels
from privatenet.data import load_dataset
from privatenet.data.base import (
    ATTACKER_SPLIT,
    MISSING,
    Dataset,
    carve_attacker_split,
    check_attacker_share,
)
from privatenet.data.cache import check_cache_dir
from privatenet.data.config import DataConfig
from privatenet.data.spec import DataSpec
from privatenet.errors import PrivatenetError, SettingError
from privatenet.losses import DEFAULT_LAM, PAPER_LOSSES, check_lam, check_loss
from privatenet.metrics import robustness
from privatenet.models import default_adversary
from privatenet.models.config import ModelConfig
from privatenet.models.registry import check_tap, model_taps
from privatenet.regularizer import ADVERSARY_UPDATES, check_update
from privatenet.settings import same_setting, setting
from privatenet.storage import read_json, write_json, write_yaml
from privatenet.train import distributed
from privatenet.train.config import (
    TrainConfig,
    check_seeds,
    resolve_device,
)
from privatenet.train.loop import Callbacks
from privatenet.train.rundir import check_run_folder, open_shared_run, run_job

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

    data: DataSpec | str = same_setting(DataConfig, "data", "synthfaces")
    target: str = setting("emotion", "task column (default emotion)")
    private: list[str] = setting(help="comma list of private attributes (default gender,age)",
                                 factory=lambda: ["gender", "age"], list="str")
    model: str = same_setting(ModelConfig, "model", "arm_resnet18")
    taps: list[str] | None = setting(None, "comma list of taps to attack and protect (default: "
                                           "all of the model's)", list="str")
    losses: list[str] = setting(help="comma list of defences (default all: "
                                     f"{','.join(DEFENCES)}; --losses is the old name)",
                                factory=lambda: list(DEFENCES), list="str",
                                flag="--defences", aliases=("--losses",))
    lam: float = setting(DEFAULT_LAM, f"lambda of the Table 2 networks (default {DEFAULT_LAM})")
    lambdas: list[float] = setting(help="comma list for the Fig. 2 sweep (default "
                                        "0,0.1,0.3,0.5,0.7,0.9,1)", list="float",
                                   factory=lambda: [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    sweep_tap: str | None = None  # None: the first tap (backbone for the ARM network)
    sweep_attribute: str | None = None  # None: the last private attribute (age by default)
    sweep_loss: str = "confusion"
    init: str = setting("original", "privacy networks start from the original network "
                                    "(default) or from scratch", choices=("original", "scratch"))
    adversarial_update: str = setting(
        "fixed", "the adversarial loss's known adversary: fixed (default, the paper's) or "
                 "alternating (trained alongside; the report adds its accuracy)",
        choices=ADVERSARY_UPDATES, flag="--adversary-update", aliases=("--adversarial-update",))
    image_size: int | None = same_setting(DataConfig, "image_size", 224)
    backbone_weights: str | None = same_setting(ModelConfig, "backbone_weights")
    seeds: int = setting(1, "repeat Tables 1-2 and the sweep for seeds seed..seed+N-1 and "
                            "report mean and std (default 1, at most 100)")
    audit_zoo: str = setting("full", "attacker zoo of the audit column in Tables 1-2 (default "
                                     "full, the headline; the demo and smoke presets use quick, "
                                     "a preview; none leaves the column out)",
                             choices=("quick", "full", "none"))
    # Share of the train split carved out for the audit's attackers before anything is trained
    # (docs/design.md §5); 0, or a data set with its own attacker split, carves nothing.
    attacker_share: float = setting(
        0.2, "share of the train split carved out for the audit's attackers before any "
             "training (default 0.2, at most 0.5; 0: none, the audit cross-fits on the test "
             "rows); a data set's own attacker split is used as it is")
    vib_channels: int = setting(VIB_CHANNELS, "the vib and vib+leace defences' code channels "
                                              f"(default {VIB_CHANNELS})",
                                flag="--bottleneck-channels")
    audit_mdl: bool = False  # add the online description length to the audit column
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=200))
    adversary_epochs: int = setting(200, "adversary epochs")
    privacy_epochs: int = setting(200, "privacy-preserving network epochs")
    latency_repeats: int = 100
    latency_precision: str = setting("fp32", "Table 3 precision (default fp32, the paper's)",
                                     choices=LATENCY_PRECISIONS)
    cache_dir: str | None = same_setting(DataConfig, "cache_dir")

    def __post_init__(self) -> None:
        data = DataConfig(self.data, self.image_size, self.cache_dir)  # checked there
        self.data, self.image_size = data.data, data.image_size
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        for name, example in (("private", "gender, age"), ("taps", "backbone, arm"),
                              ("losses", "confusion, adversarial"), ("lambdas", "0, 0.5, 1")):
            _check_list(self, name, example)
        for loss in self.losses:
            check_defence(loss)
        check_loss(self.sweep_loss)
        check_update(self.adversarial_update)
        if self.init not in ("original", "scratch"):
            raise SettingError("init", self.init, "is unknown; use original or scratch")
        check_lam(self.lam)
        for lam in self.lambdas:
            try:
                check_lam(lam)
            except PrivatenetError:
                raise PrivatenetError(f"the lambdas list holds {lam!r}, outside [0, 1]; give "
                                      "each lambda in [0, 1]") from None
        if self.target in self.private:
            raise PrivatenetError(f"the private attributes include the task target "
                                  f"{self.target!r}; protect other columns than the task")
        # the network's settings, checked there (the name; a weights file it takes)
        self.backbone_weights = ModelConfig(self.model, self.backbone_weights).backbone_weights
        # The model's taps need no data: a bad tap is refused before anything is decoded.
        for tap in self.taps or ():
            check_tap(self.model, tap)
        _sweep_of(self, list(self.taps or model_taps(self.model)))
        self.stage_config(self.adversary_epochs)  # the same checks as the task's epochs
        self.stage_config(self.privacy_epochs)
        value = self.latency_repeats
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise SettingError("latency_repeats", value, "is invalid; give an integer >= 2")
        check_seeds(self.seeds, first=self.train.seed)
        if self.latency_precision not in LATENCY_PRECISIONS:
            raise SettingError("latency_precision", self.latency_precision,
                               f"is unknown; use one of {', '.join(LATENCY_PRECISIONS)}")
        if not isinstance(self.audit_mdl, bool):
            raise SettingError("audit_mdl", self.audit_mdl, "is invalid; give True or False")
        if self.audit_zoo != "none":
            AuditConfig(zoo=self.audit_zoo)
        self.attacker_share = check_attacker_share(self.attacker_share)
        check_channels(self.vib_channels)

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


def _check_list(config: ProtocolConfig, name: str, example: str) -> None:
    """Refuse a list setting that is not a list, is empty or repeats a value (``None``, where
    allowed, means the default); store it as a list."""
    values = getattr(config, name)
    if values is None and name == "taps":
        return
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise PrivatenetError(f"{name}={values!r} is not a list; give a list such as {example}")
    if not values:
        raise PrivatenetError(f"the {name} list is empty; give at least one value, such as "
                              f"{example}")
    seen = []
    for v in values:
        if v in seen:
            raise PrivatenetError(f"the {name} list gives {v!r} twice; give each value once")
        seen.append(v)
    setattr(config, name, list(values))


def _sweep_of(config: ProtocolConfig, taps: list[str]) -> tuple[str, str]:
    """The lambda sweep's tap and attribute, checked against ``taps`` and ``private``."""
    sweep_tap = config.sweep_tap or taps[0]
    sweep_attr = config.sweep_attribute or config.private[-1]
    if sweep_tap not in taps or sweep_attr not in config.private:
        raise PrivatenetError(f"the lambda sweep on {sweep_attr!r} from {sweep_tap!r} needs that "
                              "tap in taps and that attribute in private")
    return sweep_tap, sweep_attr


#: Named settings. ``paper`` is the paper's (arm_resnet18, 224x224, Adam 1e-3, 200 epochs,
#: RAF-DB, gender and age, taps backbone and arm, its two losses with the known adversary held
#: fixed; batch 256 and the rest of the recipe from the public ARM scripts; pass
#: ``backbone_weights`` for its ImageNet start); ``quick`` the same network with every defence
#: and 20 epochs; ``demo`` the CPU demo on synthfaces (3,000 faces, so that it runs in under 5
#: minutes on 2 cores; the backbone tap and age, the paper's two losses, leace and vib, a
#: three-point sweep); ``smoke`` a seconds-long check of the plumbing.
#: Without a preset, every defence is compared (:data:`~privatenet.app.defences.DEFENCES`).
PRESETS: dict[str, dict] = {
    "paper": {"model": "arm_resnet18", "image_size": 224, "epochs": 200,
              "adversary_epochs": 200, "privacy_epochs": 200, "batch_size": 256,
              "private": ["gender", "age"], "losses": list(PAPER_LOSSES),
              "adversarial_update": "fixed"},
    "quick": {"model": "arm_resnet18", "image_size": 224, "epochs": 20, "adversary_epochs": 20,
              "privacy_epochs": 20, "batch_size": 64, "latency_repeats": 50},
    # The demo draws 3,000 faces: with a fifth carved out for the attacker, its networks train
    # on about as many rows as 2,500 faces gave them before the carve.
    "demo": {"data": "synthfaces:n=3000,size=64", "model": "arm_small", "image_size": 64,
             "epochs": 8, "adversary_epochs": 15, "privacy_epochs": 4, "batch_size": 64,
             "lr": 2e-3, "private": ["age"], "taps": ["backbone"],
             "losses": ["confusion", "adversarial", "leace", "vib"],
             "lambdas": [0.0, 0.5, 1.0], "latency_repeats": 30,
             "audit_zoo": "quick"},  # the full zoo does not fit the demo's 5 minutes
    "smoke": {"model": "small_cnn", "image_size": 32, "epochs": 1, "adversary_epochs": 1,
              "privacy_epochs": 1, "batch_size": 32, "lambdas": [0.0, 1.0],
              "losses": list(PAPER_LOSSES), "latency_repeats": 3, "audit_zoo": "quick"},
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
    config = ProtocolConfig(**values, train=TrainConfig(**train))
    if preset == "paper" and config.backbone_weights is None:
        log.warning("the paper's network starts from ImageNet weights; without them these "
                    "numbers cannot be the paper's. Pass backbone_weights=PATH (torchvision's "
                    "resnet18-f37072fd.pth, read weights-only)")
    return config


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Stage:
    """One step of a run: ``job(folder)`` into ``folder``, named by ``name`` and ``digest``
    (of the stage's key: everything that changes its result, including the digests of the
    stages it starts from), with its image passes (training, forward-only) for the dry run's
    projection."""

    name: str
    digest: str
    folder: Path
    job: Callable[[Path], dict]
    passes: tuple[int, int] = (0, 0)


class _Plan:
    """The stages of a run, in the order a run meets them, each once (a stage met again, such
    as a sweep point that is a Table 2 network, is the same folder and the same stage)."""

    def __init__(self, out: Path) -> None:
        self.out, self.stages = out, {}

    def add(self, name: str, key: dict, job: Callable[[Path], dict],
            passes: tuple[int, int] = (0, 0)) -> Stage:
        digest = _digest(key)
        folder = self.out / "stages" / f"{name}-{digest}"
        return self.stages.setdefault(folder, Stage(name, digest, folder, job, passes))

    def cached(self, stage: Stage) -> bool:
        return (stage.folder / "results.json").exists()


def _run_plan(plan: _Plan, on_stage: Callable[[str, bool], None] | None
              ) -> tuple[dict[Path, dict], list[dict]]:
    """Run (or read back) every stage of ``plan`` in order: the results by folder, and the log
    (name, folder, cached, seconds) for ``results.json``.

    Under torchrun a stage with training passes runs in every process (``fit`` shards the
    batches); the others run in rank 0 alone while the rest wait and read what it wrote, and
    every process takes the branch rank 0 sees.
    """
    results, log_ = {}, []
    for stage in plan.stages.values():
        folder, name = stage.folder, stage.name
        cached = distributed.from_main(plan.cached(stage))
        if on_stage:
            on_stage(name, cached)
        entry = {"stage": name, "folder": str(folder.relative_to(plan.out)), "cached": cached}
        if cached:
            try:
                results[folder] = read_json(folder / "results.json")
            except PrivatenetError as e:
                raise PrivatenetError(f"{e}; delete the stage folder {folder} and run the same "
                                      "command again to recompute that stage") from None
        else:
            start = time.perf_counter()
            if stage.passes[0] or distributed.world()[1] == 1:
                results[folder] = stage.job(folder)
            else:
                results[folder] = _on_rank_zero(stage)
            entry["seconds"] = round(time.perf_counter() - start, 2)
        log_.append(entry)
    return results, log_


def _on_rank_zero(stage: Stage) -> dict:
    """``stage`` run by rank 0 alone; the other processes wait and read its results (a failure
    on rank 0 is raised in every process, so none waits for ever)."""
    error, failure, result = None, None, None
    if distributed.is_main():
        try:
            result = stage.job(stage.folder)
        except PrivatenetError as e:
            error = str(e)
        except Exception as e:  # a crash: the others must not wait for ever
            error, failure = f"rank 0 stopped in stage {stage.name}: {e}", e
    if failure is not None:
        distributed.from_main(error)  # the others raise it; rank 0 its own
        raise failure
    distributed.agree(error)
    return result if distributed.is_main() else read_json(stage.folder / "results.json")


def _report_row(r: dict) -> dict:
    return {k: r[k] for k in REPORT_KEYS}


def reproduce(*, config: ProtocolConfig, out: str | Path,
              on_stage: Callable[[str, bool], None] | None = None,
              callbacks: Callable[[str], Callbacks] | None = None) -> dict:
    """Run (or resume) the whole protocol into ``out``; returns and writes ``results.json``,
    ``report.md`` and the figures.

    ``on_stage(name, cached)`` is called as each stage starts; ``callbacks(name)`` gives the
    training-loop callbacks (progress bars) for a stage.

    Every input (the folder, the cache folder, the data, its splits and label columns, the
    taps) is checked before ``out`` is claimed, so a refused run leaves no folder behind.
    """
    ready = _prepare(config, out, dry=False)
    with open_shared_run(out, kind="reproduce", fingerprint=None, resume=True) as run:
        return _reproduce(config, run.path, ready, on_stage, callbacks or (lambda name: None))


@dataclass
class _Ready:
    """What a run needs that the checks before it claims its folder computed."""

    data: Dataset
    size: int
    taps: list[str]
    sweep_tap: str
    sweep_attr: str


def protocol_data(config: ProtocolConfig, *, write_cache: bool = True) -> Dataset:
    """The data of a ``reproduce`` run: ``config.data`` loaded and checked (train and test
    splits, every label column known somewhere in both, every class in train), with
    ``config.attacker_share`` of the train split carved out as the attacker split
    (:func:`~privatenet.data.base.carve_attacker_split`) before any stage reads it."""
    data = load_dataset(config.data, image_size=config.image_size, cache_dir=config.cache_dir,
                        write_cache=write_cache)
    columns = [config.target, *config.private]
    data.check_columns(columns)
    data.require_splits(("train", "test"))
    for c in columns:
        for split in ("train", "test"):
            if not bool((data.splits[split].labels[c] != MISSING).any()):
                raise PrivatenetError(f"dataset {data.name!r}: split {split!r} has no rows "
                                      f"with a known {c!r} label; label some or choose "
                                      "another column")
    data = carve_attacker_split(data, share=config.attacker_share, columns=columns)
    data.check_train_classes(columns)
    return data


def _prepare(config: ProtocolConfig, out: str | Path, *, dry: bool) -> _Ready:
    """Check every input of a run into ``out`` and load its data, writing nothing (a dry run
    reads an image cache that exists but never writes one): the folder (not another command's,
    :func:`check_run_folder`), the image cache folder (not in a run folder,
    :func:`check_cache_dir`), the data's splits, label columns and classes, and the taps."""
    check_run_folder(out, kind="reproduce")
    check_cache_dir(config.cache_dir, out=out)
    data = protocol_data(config, write_cache=not dry)
    if config.audit_zoo != "none":  # attackers train on their split, are scored on the test's
        for c in config.private:
            check_audit_rows(data.splits["test"].labels[c], what=f"{c!r} in the test split")
            if ATTACKER_SPLIT in data.splits:
                try:
                    check_audit_rows(data.splits[ATTACKER_SPLIT].labels[c],
                                     what=f"{c!r} in the attacker split")
                except PrivatenetError as e:
                    raise SettingError(
                        "attacker_share", config.attacker_share, f"leaves too few rows ({e}); "
                        "raise it or the data's rows, or give 0 to cross-fit the attackers on "
                        "the test rows") from None
    size = image_size_of(data)
    probe = build_model(config.model, num_classes=2, image_size=size)
    taps = list(config.taps or probe.taps)  # checked in ProtocolConfig
    return _Ready(data, size, taps, *_sweep_of(config, taps))


#: A forward pass costs about a third of a training step (the backward pass about twice the
#: forward); the dry run's projection of forward-only passes rests on this rule of thumb.
FORWARD_SHARE = 1 / 3


def plan(*, config: ProtocolConfig, out: str | Path, measure_steps: int = 3) -> dict:
    """What ``reproduce`` would do in ``out``, without doing it or writing anything: every
    stage with its folder, whether it is cached, its image passes (training and forward-only),
    and its projected seconds from a short measured training throughput of the model on the
    configured device (:func:`privatenet.bench.measure`, ``measure_steps`` timed steps on random
    tensors; forward-only passes at :data:`FORWARD_SHARE` of a training step's cost). The
    attacker fitting of audit stages is not projected; they are listed in ``not_projected``.
    Each stage is listed once, in the order a run meets it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrivatenetError(f"{out} is a file, not a run folder; give a folder")
    found = _reproduce(config, out, _prepare(config, out, dry=True), None, lambda name: None,
                       dry=True)
    device = resolve_device(config.train.device)
    variant = variant_of(precision=config.train.precision,
                         memory_format=config.train.memory_format,
                         compile=config.train.compile, device=device)
    speed = measure(model=config.model, image_size=found["image_size"],
                    batch_size=config.train.batch_size, device=config.train.device,
                    steps=measure_steps, warmup=1, latency_iters=1, variants=[variant],
                    compile=config.train.compile)
    ips = speed["variants"][0]["train_images_per_s"]
    for st in found["stages"]:
        st["projected_seconds"] = (st["train_passes"]
                                   + st["forward_passes"] * FORWARD_SHARE) / ips
    todo = [st for st in found["stages"] if not st["cached"]]
    return {"stages": found["stages"],
            "throughput": {"train_images_per_s": ips, "variant": variant,
                           "environment": speed["environment"],
                           "batch_size": config.train.batch_size,
                           "image_size": found["image_size"]},
            "to_run": len(todo),
            "train_passes": sum(st["train_passes"] for st in todo),
            "forward_passes": sum(st["forward_passes"] for st in todo),
            "projected_seconds": sum(st["projected_seconds"] for st in todo),
            "not_projected": [st["stage"] for st in todo if st["stage"].startswith("audit-")]}


def _reproduce(config: ProtocolConfig, out: Path, ready: _Ready,
               on_stage: Callable[[str, bool], None] | None,
               cb: Callable[[str], Callbacks | None], dry: bool = False) -> dict:
    """Plan every stage of the run, then (unless ``dry``) run them and assemble the tables
    from their results. A dry run returns the plan: each stage's name, folder, whether it is
    cached, and its image passes."""
    data, size, taps = ready.data, ready.size, ready.taps
    plan = _Plan(out)
    # The data's content is part of every stage's key: replaced images or labels under the same
    # spec recompute the stages instead of reusing numbers from other data. So is the starting
    # backbone's content (the from-scratch stages; every other stage keys on their hashes).
    base = {"data": data.name, "data_content": data.fingerprint(), "image_size": size,
            "model": config.model, "backbone_weights": None if config.backbone_weights is None
            else file_digest(config.backbone_weights)}
    seeds = [config.train.seed + i for i in range(config.seeds)]
    seed_plans = [_plan_seed(config, replace(config.train, seed=seed), data, taps,
                             ready.sweep_tap, ready.sweep_attr, base, plan, cb)
                  for seed in seeds]
    # Table 3 (the first seed's networks) -------------------------------------------------
    device = resolve_device(config.train.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    latency = []
    for name, stage in seed_plans[0].networks():
        key = {"network": stage.folder.name, "device": str(device), "device_name": device_name,
               "precision": config.latency_precision, "repeats": config.latency_repeats}
        latency.append((name, plan.add("latency-" + name.replace("/", "-"), key,
                                       lambda d, f=stage.folder: _latency_stage(d, f, size,
                                                                                config),
                                       (0, config.latency_repeats + 5))))
    if dry:
        return {"stages": [{"stage": st.name, "folder": str(st.folder.relative_to(out)),
                            "cached": plan.cached(st), "train_passes": st.passes[0],
                            "forward_passes": st.passes[1]} for st in plan.stages.values()],
                "image_size": size}
    writes = distributed.is_main()  # under torchrun, rank 0 writes
    if writes:
        write_yaml(out / "config.yaml", config.to_dict())
    done, stage_log = _run_plan(plan, on_stage)
    runs = [sp.tables(done) for sp in seed_plans]
    results = dict(runs[0])
    if len(runs) > 1:
        results["table1"], results["table2"], results["lambda_sweep"] = (
            _over_seeds([r[key] for r in runs]) for key in ("table1", "table2", "lambda_sweep"))
        results["utility"]["over_seeds"] = _stats(
            [r["utility"]["original"]["accuracy"] for r in runs])
    results.update({
        "config": config.to_dict() | {"taps": taps, "sweep_tap": ready.sweep_tap,
                                      "sweep_attribute": ready.sweep_attr, "seed_list": seeds},
        "classes": {c: data.classes[c] for c in [config.target, *config.private]},
        "rows": {name: len(split) for name, split in data.splits.items()},
        "latency_ms": [{"network": name, **done[st.folder]} for name, st in latency],
        "stages": stage_log})
    if writes:
        write_json(out / "results.json", results)
        write_report(results, out)
    return results


@dataclass
class _Row:
    """The stages of one Table 2 (or sweep) row: the network (``net``; for lambda = 0 the
    control), the known adversary on the original network (``known``) and, for the control,
    its score on the control's features (``known_now``), the unknown adversary retrained on
    the network's features (``unknown``) and the audit (``audit``, None without one)."""

    loss: str
    tap: str
    attr: str
    lam: float
    update: str | None
    net: Stage
    known: Stage
    known_now: Stage | None
    unknown: Stage
    audit: Stage | None

    def table(self, done: dict[Path, dict]) -> dict:
        net, k_res, unknown = (done[s.folder] for s in (self.net, self.known, self.unknown))
        k_now = done[self.known_now.folder] if self.known_now else net["known"]
        return {"attribute": self.attr, "tap": self.tap, "loss": self.loss, "lam": self.lam,
                "update": self.update, "utility": _report_row(net["utility"]),
                "known": _report_row(k_now), "unknown": _report_row(unknown),
                "co_trained": _report_row(net["co_trained"]) if "co_trained" in net else None,
                "audit": _audit_row(done, self.audit),
                "robustness_known": robustness(k_now["accuracy"], k_res["accuracy"]),
                "robustness_unknown": robustness(unknown["accuracy"], k_res["accuracy"]),
                "train_seconds": sum(h["seconds"] for h in net["history"]),
                "network": str(self.net.folder)}


def _audit_row(done: dict[Path, dict], stage: Stage | None) -> dict | None:
    """The audit's worst case (with its compression when measured), or None without one."""
    if stage is None:
        return None
    res = done[stage.folder]
    mdl = res.get("mdl")
    return res["worst"] | ({"compression": mdl["compression"]} if mdl else {})


@dataclass
class _SeedPlan:
    """The stages of one seed and how its tables are read off their results."""

    original: Stage
    table1: list[tuple[str, str, Stage, Stage | None]]  # (attribute, source, stage, audit)
    control: Stage
    table2: list[_Row]
    sweep: list[_Row]

    def networks(self) -> list[tuple[str, Stage]]:
        """Table 3's networks: the original, the control and every Table 2 defence."""
        return [("original", self.original), ("finetune", self.control)] + [
            (f"{r.loss}/{r.tap}/{r.attr}", r.net) for r in self.table2 if r.loss != "none"]

    def tables(self, done: dict[Path, dict]) -> dict:
        original = done[self.original.folder]
        table1 = []
        for attr, source, stage, audit in self.table1:
            res = done[stage.folder]
            if source == "image":
                table1.append({"attribute": attr, "source": "image",
                               **_report_row(res["utility"])})
            else:
                table1.append({"attribute": attr, "source": source, "head": res["head"],
                               "audit": _audit_row(done, audit), **_report_row(res)})
        sweep = []
        for r in (row.table(done) for row in self.sweep):
            sweep.append({"lam": r["lam"], "utility": r["utility"]["accuracy"],
                          "known": r["known"]["accuracy"], "unknown": r["unknown"]["accuracy"],
                          "utility_report": r["utility"], "known_report": r["known"],
                          "unknown_report": r["unknown"], "audit": r["audit"]})
        return {"utility": {"original": {k: original["utility"][k]
                                         for k in ("accuracy", "balanced_accuracy")},
                            "original_report": _report_row(original["utility"])},
                "table1": table1, "table2": [row.table(done) for row in self.table2],
                "lambda_sweep": sweep}


def _plan_seed(config: ProtocolConfig, task_cfg: TrainConfig, data, taps: list[str],
               sweep_tap: str, sweep_attr: str, base: dict, plan: _Plan,
               cb: Callable[[str], Callbacks | None]) -> _SeedPlan:
    """Every network and adversary of Tables 1 and 2 and the sweep for one seed, as stages of
    ``plan`` (each keyed on the digests of the stages it starts from)."""
    adv_cfg = replace(task_cfg, epochs=config.adversary_epochs)
    priv_cfg = replace(task_cfg, epochs=config.privacy_epochs)
    tag = "" if task_cfg.seed == config.train.seed else f"-seed{task_cfg.seed}"
    weights = {"backbone_weights": config.backbone_weights} if config.backbone_weights else {}
    rows = {c: {s: int((data.splits[s].labels[c] != MISSING).sum()) for s in ("train", "test")}
            for c in [config.target, *config.private]}  # rows with a known label, per split

    def trained(col: str, epochs: int, more: int = 0) -> tuple[int, int]:
        """A training stage's passes: epochs over the train rows, the test rows once."""
        return epochs * rows[col]["train"], rows[col]["test"] + more

    def extracted(col: str) -> tuple[int, int]:
        return 0, rows[col]["train"] + rows[col]["test"]

    # Original network (utility) ---------------------------------------------------------
    original = plan.add("original" + tag, {**base, "target": config.target,
                                           "train": task_cfg.key()}, lambda d: train_job(
        data=data, out=d, model=config.model, target=config.target, config=task_cfg,
        model_kwargs=weights, resume=True, callbacks=cb("original")),
        trained(config.target, task_cfg.epochs))

    def attack(name: str, net: Stage, tap: str, attr: str) -> Stage:
        head = default_adversary(config.model, tap)
        key = {"network": net.digest, "tap": tap, "attribute": attr, "head": head,
               "train": adv_cfg.key()}
        return plan.add(f"attack-{name}{tag}", key, lambda d: attack_job(
            data=data, model_run=net.folder, tap=tap, attribute=attr, head=head, config=adv_cfg,
            out=d, resume=True, callbacks=cb(f"attack {name}")), extracted(attr))

    def audit(name: str, net: Stage, tap: str, attr: str) -> Stage | None:
        if config.audit_zoo == "none":
            return None
        key = {"network": net.digest, "tap": tap, "attribute": attr, "zoo": config.audit_zoo,
               "seed": task_cfg.seed, "mdl": config.audit_mdl, "protocol": AUDIT_PROTOCOL}
        return plan.add(f"audit-{name}{tag}", key, lambda d: audit_job(
            data=data, model_run=net.folder, tap=tap, attribute=attr, config=task_cfg, out=d,
            zoo=config.audit_zoo, controls=False, mdl=config.audit_mdl), extracted(attr))

    # Table 1 ----------------------------------------------------------------------------
    table1, known = [], {}
    for attr in config.private:
        key = {**base, "target": attr, "train": task_cfg.key()}
        image = plan.add(f"image-{attr}{tag}", key, lambda d, a=attr: train_job(
            data=data, out=d, model=config.model, target=a, config=task_cfg,
            model_kwargs=weights, resume=True, callbacks=cb(f"image-{a}")),
            trained(attr, task_cfg.epochs))
        table1.append((attr, "image", image, None))
        for tap in taps:
            name = f"original-{tap}-{attr}"
            known[tap, attr] = attack(name, original, tap, attr)
            table1.append((attr, tap, known[tap, attr], audit(name, original, tap, attr)))

    # The lambda = 0 control: fine-tuned exactly like the privacy networks, no privacy term --
    init = original.folder if config.init == "original" else None
    control = plan.add("finetune" + tag, {"original": original.digest, "init": config.init,
                                          "train": priv_cfg.key()}, lambda d: train_job(
        data=data, out=d, model=config.model, target=config.target, config=priv_cfg,
        init_from=init, model_kwargs={} if init else weights, resume=True,
        callbacks=cb("finetune (lambda = 0 control)")), trained(config.target, priv_cfg.epochs))

    def row(loss: str, tap: str, attr: str, lam: float) -> _Row:
        """One network's Table 2 row: utility, the known adversary K, the unknown adversary U
        retrained on its features, the co-trained adversary, the audit's worst case."""
        k = known[tap, attr]
        if lam == 0.0:  # no privacy term: the control network, whatever the loss
            name, net, update = f"finetune-{tap}-{attr}", control, None
            known_now = plan.add(f"known-{name}{tag}", {"network": control.digest,
                                                         "known": k.digest},
                                 lambda d: known_job(data=data, model_run=control.folder,
                                                     adversary_run=k.folder, config=task_cfg,
                                                     out=d), (0, rows[attr]["test"]))
        else:
            update = config.adversarial_update if loss == "adversarial" else None
            privacy = {"loss": loss, "tap": tap, "private": attr, "lam": lam,
                       "update": update or "fixed", "adversary": str(k.folder)}
            key = {"original": original.digest, "known": k.digest, "loss": loss, "lam": lam,
                   "update": update, "init": config.init, "train": priv_cfg.key()}
            if loss == "adversarial":  # the bounded form replaced minus the cross-entropy
                key["form"] = "-log(1-p_true)"
            if loss in ERASING:  # dims constant on the fitting rows are left alone
                key["eraser"] = "constant-dims-kept"
            if loss in TRAINED_THEN_ERASED:  # the control's epochs, split between two steps
                key["budget"] = "equal"
            if loss in BOTTLENECKED:
                privacy["channels"] = key["channels"] = config.vib_channels
            name = f"private-{loss}-{tap}-{attr}-lam{lam:g}"
            net = plan.add(name + tag, key, lambda d: train_job(
                data=data, out=d, model=config.model, target=config.target, config=priv_cfg,
                init_from=init, model_kwargs={} if init else weights, privacy=privacy,
                resume=True, callbacks=cb(name)),
                trained(config.target, priv_cfg.epochs, rows[attr]["test"]
                        + (rows[attr]["train"] if loss in ERASING else 0)))
            known_now = None  # the privacy job scores the known adversary itself
        return _Row(loss, tap, attr, lam, update, net, k, known_now,
                    attack(name, net, tap, attr), audit(name, net, tap, attr))

    # Table 2: the control first, then every defence; then the sweep -----------------------
    table2 = [row("none", tap, attr, 0.0) for tap in taps for attr in config.private]
    table2 += [row(loss, tap, attr, config.lam)
               for loss in config.losses for tap in taps for attr in config.private]
    sweep = [row(config.sweep_loss, sweep_tap, sweep_attr, lam) for lam in config.lambdas]
    return _SeedPlan(original, table1, control, table2, sweep)


def _stats(values: list[float]) -> dict:
    """Mean, sample standard deviation and the values themselves."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def _over_seeds(tables: list[list[dict]]) -> list[dict]:
    """The first seed's rows, each with ``over_seeds``: mean and std over the seeds of every
    accuracy (utility, K, U, co-trained, the audit's worst case) of that row."""
    out = []
    for rows in zip(*tables, strict=True):
        first = dict(rows[0])
        stats = {}
        for key in ("utility", "known", "unknown", "co_trained"):
            if isinstance(first.get(key), dict):
                stats[key] = _stats([r[key]["accuracy"] for r in rows])
            elif isinstance(first.get(key), float):  # the sweep's plain accuracies
                stats[key] = _stats([r[key] for r in rows])
        if "accuracy" in first:  # Table 1
            stats["accuracy"] = _stats([r["accuracy"] for r in rows])
        if first.get("audit"):
            stats["audit"] = _stats([r["audit"]["accuracy"] for r in rows])
            stats["audit_leakage"] = _stats([r["audit"]["leakage"] for r in rows])
            if "compression" in first["audit"]:
                stats["compression"] = _stats([r["audit"]["compression"] for r in rows])
        if "train_seconds" in first:
            stats["train_seconds"] = _stats([r["train_seconds"] for r in rows])
        first["over_seeds"] = stats
        out.append(first)
    return out


def _latency_stage(folder: Path, network: Path, size: int, config: ProtocolConfig) -> dict:
    model, _ = load_model(network)
    return run_job(folder, kind="latency", fingerprint=None, resume=True, settings=None,
                   work=lambda run: latency_ms(
                       model, image_size=size, device=resolve_device(config.train.device),
                       repeats=config.latency_repeats, precision=config.latency_precision))
