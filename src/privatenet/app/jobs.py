"""Training and attack jobs: a dataset, a model and the training loop, with their run folder.

Used by the CLI (``privatenet train`` / ``attack``) and by every stage of the protocol. A job
checks every input first, then runs in its folder through the one template,
:func:`~privatenet.train.rundir.run_job`: it claims the folder (``run.json`` with the run's
fingerprint, ``run.lock`` held while it works), writes ``config.yaml`` (resolved settings), lets
the job write ``train/`` (checkpoints, ``metrics.jsonl``) and the final ``model.*`` or
``adversary.*`` checkpoint, and writes ``results.json`` last: a folder with ``results.json`` is
finished and is not redone.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from privatenet.app.defences import BOTTLENECKED, ERASING, TRAINED_THEN_ERASED, PrivacyConfig
from privatenet.app.report import audit_markdown, plot_audit
from privatenet.auditing import AUDIT_PROTOCOL, AuditConfig, audit
from privatenet.bottleneck import bottleneck_at_tap
from privatenet.data.base import ATTACKER_SPLIT, Dataset, Split, carve_attacker_split
from privatenet.data.config import DataConfig
from privatenet.data.labels import EMOTIONS
from privatenet.data.transforms import normalize
from privatenet.erasure import erase_at_tap, fit_eraser
from privatenet.errors import PrivatenetError, SettingError
from privatenet.metrics import leakage
from privatenet.models import (
    create_adversary,
    create_model,
    default_adversary,
    model_from_config,
    model_options,
    require_tap,
    tap_shapes,
)
from privatenet.models.public import load_public_arm_checkpoint
from privatenet.models.saving import check_module_meta, load_module, save_module
from privatenet.regularizer import PrivacyRegularizer
from privatenet.storage import (
    atomic_write_bytes,
    atomic_write_text,
    checkpoint_digest,
    load_checkpoint_meta,
    read_json,
    write_json,
)
from privatenet.train import distributed
from privatenet.train.config import TrainConfig, resolve_device, seed_everything
from privatenet.train.loop import Callbacks, extract, fit, fit_adversary, predict_features
from privatenet.train.rundir import run_job

log = logging.getLogger(__name__)


def image_size_of(data: Dataset) -> int:
    """Side of the (square) decoded images of ``data``."""
    return int(next(iter(data.splits.values())).images.shape[-1])


def build_model(name: str, *, num_classes: int, image_size: int, **kwargs) -> torch.nn.Module:
    """``create_model`` with the input size passed to the models whose shape depends on it."""
    if "image_size" in model_options(name):
        kwargs["image_size"] = image_size
    return create_model(name, num_classes=num_classes, **kwargs)


def architecture(net: torch.nn.Module) -> str:
    """The registry name of ``net``'s architecture, looking through wrappers such as a
    network erased at a tap (whose taps are its inner network's)."""
    config = net.config
    while "inner" in config:
        config = config["inner"]
    return config["name"]


def check_classes(saved: list[str], data: Dataset, column: str, source: str | Path) -> None:
    """Refuse to combine a saved model or adversary with data whose class list for ``column``
    differs from the one it was trained with (the indices would mean other classes)."""
    have = data.classes[column]
    if list(saved) == list(have):
        return
    extra = [c for c in have if c not in saved]
    if extra:
        raise PrivatenetError(
            f"label {extra[0]!r} of column {column!r} in {data.name} is not in the class list "
            f"of {source} ({', '.join(saved)}); use data with those classes or train from "
            "scratch")
    raise PrivatenetError(
        f"{data.name} has classes ({', '.join(have)}) for {column!r}, but {source} was trained "
        f"with ({', '.join(saved)}); use data with the same class list")


def data_fingerprint(data: Dataset) -> dict:
    """The identity of ``data`` in a run's fingerprint: its spec and a hash of its content."""
    return {"spec": data.name, "content": data.fingerprint()}


def _stem(run: str | Path, name: str, command: str) -> Path:
    """The checkpoint stem ``name`` of a finished ``command`` folder (or ``run`` itself)."""
    run = Path(run)
    stem = run / name if run.is_dir() else run
    if not stem.with_suffix(".json").exists():
        raise PrivatenetError(f"{run}: no {name} here (expected {stem}.json); pass the folder "
                              f"of a finished 'privatenet {command}' run")
    return stem


def _model_stem(run: str | Path) -> Path:
    return _stem(run, "model", "train")


def load_model(run: str | Path, *, expect: str | None = None,
               required: tuple[str, ...] = ()) -> tuple[torch.nn.Module, dict]:
    """The trained network of a ``train`` job folder (or a ``model`` checkpoint stem); its
    values and tensors are checked by :func:`~privatenet.models.saving.load_module`
    (``required``: the keys of its meta the caller uses)."""
    return load_module(_model_stem(run), expect=expect, required=required)


def model_meta(run: str | Path) -> dict:
    """The plain values saved with the network of a ``train`` folder (data, classes, size),
    checked by :func:`~privatenet.models.saving.check_module_meta` before they size any
    data or network."""
    stem = _model_stem(run)
    return check_module_meta(load_checkpoint_meta(stem), stem.with_suffix(".json"),
                             required=("data",))


def data_of_run(run: str | Path, data: DataConfig, *, out: str | Path | None = None) -> Dataset:
    """The data set to attack the network of ``run`` on: ``data``'s settings where given, else
    the run's own (its spec holds absolute paths), with the attacker split carved again where
    the run carved one (``reproduce``), so that its train split is exactly the network's rows.
    ``out``: the folder the caller writes (checked against the cache folder)."""
    meta = model_meta(run)
    loaded = DataConfig(data.data or meta["data"], data.image_size or meta.get("image_size"),
                        data.cache_dir).load(out=out)
    carve = None if data.data else meta.get("attacker_carve")
    return carve_attacker_split(loaded, **carve) if carve else loaded


def _adversary_stem(run: str | Path) -> Path:
    return _stem(run, "adversary", "attack")


def load_adversary(run: str | Path) -> tuple[torch.nn.Module, dict]:
    """The adversary head of an ``attack`` job folder (or an ``adversary`` checkpoint stem)."""
    return load_module(_adversary_stem(run), required=("tap", "attribute", "classes"))


def evaluate_task(model: torch.nn.Module, split: Split, column: str, num_classes: int,
                  config: TrainConfig) -> dict:
    """Every figure of docs/design.md §5 for ``model`` predicting ``split.labels[column]``
    (accuracy, balanced accuracy, majority rate, 1/K, normalised score, 95 % interval)."""
    device = resolve_device(config.device)
    model.to(device)
    pred = extract(model, split.images, batch_size=config.eval_batch_size,
                   device=device, precision=config.precision).argmax(1)
    return leakage(pred, split.labels[column], num_classes=num_classes, seed=config.seed)


def evaluate_adversary(head: torch.nn.Module, model: torch.nn.Module, split: Split, *, tap: str,
                       attribute: str, num_classes: int, config: TrainConfig) -> dict:
    """Leakage report of adversary ``head`` reading ``tap`` of ``model`` on ``split``."""
    device = resolve_device(config.device)
    model.to(device)
    feats = extract(model, split.images, tap=tap, batch_size=config.eval_batch_size,
                    device=device, precision=config.precision)
    pred = predict_features(head.to(device), feats, device=device)
    return leakage(pred, split.labels[attribute], num_classes=num_classes, seed=config.seed)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (weights files in a run's fingerprint and stage keys)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_regularizer(privacy: dict, *, adversary: torch.nn.Module | None,
                     tap_shape: tuple[int, ...], num_classes: int, config: TrainConfig,
                     bottleneck: torch.nn.Module | None = None) -> PrivacyRegularizer:
    """The privacy term of one attribute for ``privacy`` (see :func:`train_job`). ``hsic``
    and ``vib`` (the KL of ``bottleneck``) take no adversary (a known one is only scored);
    ``ensemble`` starts from the known adversary, if any, beside members of other capacities;
    the adversaries' own steps use the run's Adam settings and seed."""
    loss, lam = privacy["loss"], float(privacy["lam"])
    if loss == "hsic":
        return PrivacyRegularizer(None, loss=loss, lam=lam, num_classes=num_classes)
    if loss == "vib":
        return PrivacyRegularizer(None, loss=loss, lam=lam, bottleneck=bottleneck)
    adam = {"lr": config.lr, "weight_decay": config.weight_decay}
    if loss == "ensemble":
        return PrivacyRegularizer(adversary, loss=loss, lam=lam, tap_shape=tap_shape,
                                  num_classes=num_classes, seed=config.seed, **adam)
    if adversary is None:
        raise PrivatenetError(f"the {loss} loss needs a known adversary: pass the folder of an "
                              "'attack' run on the starting network (adversary=...)")
    return PrivacyRegularizer(adversary, loss=loss, lam=lam,
                              update=privacy.get("update", "fixed"), **adam)


def co_trained_adversary(regularizer: PrivacyRegularizer) -> torch.nn.Module | None:
    """The adversary a regularizer trained alongside the network (alternating updates: its
    adversary; an ensemble: its first member, the known adversary where one was given), or
    None when its adversary stayed fixed or it has none."""
    if regularizer.members is not None:
        return regularizer.members[0]
    if regularizer.optimizer is not None:
        return regularizer.adversary
    return None


def train_job(*, data: Dataset, out: str | Path, model: str, target: str, config: TrainConfig,
              model_kwargs: dict | None = None, init_from: str | Path | None = None,
              privacy: PrivacyConfig | dict | None = None, resume: bool = False,
              callbacks: Callbacks | None = None) -> dict:
    """Train a network on ``target`` (optionally privacy-preserving) and evaluate it.

    ``privacy`` is a :class:`~privatenet.app.defences.PrivacyConfig`, or the dict of its
    :meth:`~privatenet.app.defences.PrivacyConfig.job_settings` (``loss``, ``tap``, ``lam``,
    ``update``, ``private``, ``adversary``, ``channels``), checked there. ``init_from``
    starts from the weights of a finished train folder of the same architecture instead of from
    scratch;
    ``model_kwargs`` may name ``backbone_weights`` (a file; its SHA-256 is in the fingerprint).
    Every input is checked before ``out`` is claimed (:func:`run_job`): a resumed run must
    name the same data (content), starting network, adversaries and settings.

    Utility is scored on every test row with a known target (docs/design.md §5); the task loss
    uses every train row and the privacy term only the rows whose private label is known.
    Returns (and writes) the results: task utility, and with ``privacy`` the known adversary's
    leakage on the new features (``known``, per attribute under ``known_by``) and, for an
    adversary trained during the run, the co-trained adversary's (``co_trained``).
    """
    model_kwargs = dict(model_kwargs or {})
    if isinstance(privacy, dict):
        privacy = PrivacyConfig.from_job_settings(privacy)
    privacy = privacy.job_settings() if privacy is not None else None
    private, adversaries = (privacy["private"], privacy["adversary"]) if privacy else ([], [])
    if target in private:
        raise PrivatenetError(f"the private attribute {target!r} is the task target; protect "
                              "another column than the one the network must predict")
    data.check_train_classes(private)
    train, test = data.split("train", [target]), data.split("test", [target])
    settings = {"job": "train", "data": data.name, "model": model, "model_kwargs": model_kwargs,
                "target": target, "train": config.key(),
                "init_from": str(init_from) if init_from else None,
                "privacy": privacy}
    # Paths are left out of the fingerprint's settings: the data, the starting network, the
    # weights file and the adversaries are compared by content, so a moved folder still resumes.
    fingerprint = {"data": data_fingerprint(data), "init": None, "adversary": None,
                   "backbone_weights": None,
                   "settings": {k: v for k, v in settings.items()
                                if k not in ("data", "init_from", "privacy", "model_kwargs")}
                   | {"model_kwargs": {k: v for k, v in model_kwargs.items()
                                       if k != "backbone_weights"},
                      "privacy": privacy and {k: v for k, v in settings["privacy"].items()
                                              if k != "adversary"}}}
    # Check every input before anything is written.
    if model_kwargs.get("backbone_weights") is not None:
        fingerprint["backbone_weights"] = file_digest(model_kwargs["backbone_weights"])
    init = None
    if init_from is not None:
        init, init_meta = load_model(init_from, expect=model, required=("classes",))
        check_classes(init_meta["classes"], data, target, init_from)
        fingerprint["init"] = checkpoint_digest(_model_stem(init_from))
    known: dict[str, torch.nn.Module | None] = {}
    if privacy is not None:
        fingerprint["adversary"] = []
        for p, adv_run in zip(private, adversaries, strict=True):
            if adv_run is None:
                known[p] = None
                fingerprint["adversary"].append(None)
                continue
            known[p], adv_meta = load_adversary(adv_run)
            check_classes(adv_meta["classes"], data, p, adv_run)
            if adv_meta.get("tap") != privacy["tap"] or adv_meta.get("attribute") != p:
                raise PrivatenetError(
                    f"{adv_run} attacks {adv_meta.get('attribute')!r} on tap "
                    f"{adv_meta.get('tap')!r}, not {p!r} on {privacy['tap']!r}; pass the "
                    "matching attack folder")
            fingerprint["adversary"].append(checkpoint_digest(_adversary_stem(adv_run)))
    seed_everything(config.seed)
    num_classes = len(data.classes[target])
    net = build_model(model, num_classes=num_classes, image_size=image_size_of(data),
                      **model_kwargs)
    if "backbone_weights" in net.config:
        # The weights are in the state dict now; a config naming the file would read it again
        # (or fail where it moved) each time the network is loaded.
        net.config = {**net.config, "backbone_weights": None}
    if init is not None:
        if init.config != net.config:
            raise PrivatenetError(f"{init_from} holds a network with other settings "
                                  f"({init.config}); it cannot initialise {net.config}")
        net.load_state_dict(init.state_dict())
    regularizers = []
    erase = privacy is not None and privacy["loss"] in ERASING
    if erase and (init is None or len(private) != 1):
        raise PrivatenetError(f"{privacy['loss']} erases one private attribute at the tap of a "
                              "trained network: pass init_from and a single private attribute")
    # One training budget for every defence (the lambda = 0 control's): the defences that
    # train, then erase, split its epochs between the two steps.
    first_term = TRAINED_THEN_ERASED.get(privacy["loss"]) if privacy is not None else None
    erase_epochs = config.epochs // 2 if first_term else config.epochs
    if first_term:
        fingerprint["epochs"] = {first_term: config.epochs - erase_epochs, "erased": erase_epochs}
    if privacy is not None and privacy["loss"] != "leace":
        require_tap(net, privacy["tap"])
        shape = tap_shapes(net, image_size=image_size_of(data))[privacy["tap"]]
        if privacy["loss"] in BOTTLENECKED:
            # The bottleneck's weights are drawn after seed_everything: a resumed run rebuilds
            # the same starting point, then loads its checkpoint.
            net = bottleneck_at_tap(net, tap=privacy["tap"], channels=privacy["channels"],
                                    image_size=image_size_of(data))
        term = dict(privacy, loss=first_term) if first_term else privacy
        regularizers = [make_regularizer(
            term, adversary=known[p], tap_shape=shape, num_classes=len(data.classes[p]),
            config=config, bottleneck=getattr(net, "bottleneck", None)) for p in private]
        fingerprint["regularizers"] = [r.settings() for r in regularizers]

    def work(run) -> dict:
        nonlocal net
        history = []
        if not erase or regularizers:
            first = dataclasses.replace(config, epochs=config.epochs - erase_epochs) if erase \
                else config
            history = fit(model=net, train=train, target=target, config=first,
                          regularizer=regularizers or None,
                          tap=[privacy["tap"]] * len(private) if regularizers else None,
                          private=private if regularizers else None,
                          run_dir=run.path / "train", resume=resume, callbacks=callbacks)
        if erase:
            net, more = _erase_and_finetune(net, train, data, privacy["tap"], private[0],
                                            target, config, erase_epochs, run.path / "erased",
                                            resume, callbacks)
            history += more
        results = {"utility": evaluate_task(net, test, target, num_classes, config),
                   "history": history}
        if privacy is not None:
            results.update(_privacy_results(net, test, data, privacy["tap"], private, known,
                                            regularizers, config))
        if distributed.is_main():
            save_module(run.path / "model", net.cpu(), {
                "role": "model", "data": data.name, "target": target,
                "classes": data.classes[target], "image_size": image_size_of(data)}
                | ({"attacker_carve": data.carve} if data.carve else {}))
        return results

    # Under torchrun every process trains (fit shards the batches); rank 0 alone writes.
    return run_job(out, kind="train", fingerprint=fingerprint, resume=resume,
                   settings=settings, work=work, shared=True)


def _erase_and_finetune(net: torch.nn.Module, train: Split, data: Dataset, tap: str,
                        attribute: str, target: str, config: TrainConfig, epochs: int,
                        run_dir: Path, resume: bool, callbacks: Callbacks | None
                        ) -> tuple[torch.nn.Module, list[dict]]:
    """LEACE at ``tap`` fitted on ``net``'s train features (docs/design.md §2.2), the layers
    before the tap frozen, then the layers after it fine-tuned for ``epochs`` (none for 0).
    The eraser is a deterministic function of the network, the data and the seed (a vib
    network's noise follows it), so a resumed run rebuilds the same one and continues the
    fine-tuning from its checkpoint. The layers before the tap include a vib bottleneck, whose
    noise stays: the eraser is fitted on noisy codes and applied to noisy codes."""
    device = resolve_device(config.device)
    seed_everything(config.seed)  # a vib network draws noise in every forward pass
    feats = extract(net.to(device), train.images, tap=tap, batch_size=config.eval_batch_size,
                    device=device, precision=config.precision)
    eraser = fit_eraser(feats, train.labels[attribute],
                        num_classes=len(data.classes[attribute]))
    del feats
    erased = erase_at_tap(net.cpu(), tap=tap, eraser=eraser, image_size=image_size_of(data))
    if epochs == 0:
        return erased, []
    history = fit(model=erased, train=train, target=target,
                  config=dataclasses.replace(config, epochs=epochs), run_dir=run_dir,
                  resume=resume, callbacks=callbacks)
    return erased, history


def _privacy_results(net, test: Split, data: Dataset, tap: str, private: list[str],
                     known: dict, regularizers: list, config: TrainConfig) -> dict:
    """The known adversaries' and the co-trained adversaries' leakage on the new features of
    the test rows whose private label is known (per attribute; the first one also at the top
    level, as for a single attribute)."""
    out: dict = {"known_by": {}, "co_trained_by": {}}
    for i, p in enumerate(private):
        k = len(data.classes[p])
        if known[p] is not None:
            out["known_by"][p] = evaluate_adversary(known[p], net, test, tap=tap, attribute=p,
                                                    num_classes=k, config=config)
        trained = co_trained_adversary(regularizers[i]) if regularizers else None
        if trained is not None:
            out["co_trained_by"][p] = evaluate_adversary(trained, net, test, tap=tap,
                                                         attribute=p, num_classes=k,
                                                         config=config)
    for key in ("known", "co_trained"):
        if private[0] in out[f"{key}_by"]:
            out[key] = out[f"{key}_by"][private[0]]
    return out


def _attacked_network(model_run: str | Path, data: Dataset, tap: str, attribute: str,
                      verb: str) -> tuple[torch.nn.Module, dict, Split, Split]:
    """The trained network of ``model_run`` and the train/test splits with ``attribute``, after
    checking the tap, the image size and that the attribute is not the network's own task."""
    net, meta = load_model(model_run)
    require_tap(net, tap)
    if meta.get("image_size") not in (None, image_size_of(data)):
        raise PrivatenetError(f"{model_run} was trained on {meta['image_size']}px images, the "
                              f"data here are {image_size_of(data)}px; pass "
                              f"image_size={meta['image_size']}")
    if attribute == meta.get("target"):
        raise PrivatenetError(f"{model_run} was trained to predict {attribute!r}; {verb} "
                              "another attribute than the network's own task")
    return net, meta, data.split("train", [attribute]), data.split("test", [attribute])


def attack_job(*, data: Dataset, model_run: str | Path, tap: str, attribute: str,
               config: TrainConfig, out: str | Path, head: str | None = None,
               resume: bool = False, callbacks: Callbacks | None = None) -> dict:
    """Train an adversary head on the frozen ``tap`` features of a trained network to predict
    ``attribute``; evaluate it on the test split (the leakage report of docs/design.md §5).
    A resumed attack must name the same data, network and settings."""
    net, meta, train, test = _attacked_network(model_run, data, tap, attribute, "attack")
    head = head or default_adversary(architecture(net), tap)
    settings = {"job": "attack", "data": data.name, "model_run": str(model_run), "tap": tap,
                "attribute": attribute, "head": head, "train": config.key()}
    fingerprint = {"data": data_fingerprint(data),
                   "network": checkpoint_digest(_model_stem(model_run)),
                   "settings": {k: v for k, v in settings.items()
                                if k not in ("data", "model_run")}}

    def work(run) -> dict:
        device = resolve_device(config.device)
        net.to(device)
        # Seeded before the features too: a vib network draws noise in every forward pass.
        seed_everything(config.seed)
        feats = extract(net, train.images, tap=tap, batch_size=config.eval_batch_size,
                        device=device, precision=config.precision)
        num_classes = len(data.classes[attribute])
        adversary = create_adversary(head, tap_shape=tuple(feats.shape[1:]),
                                     num_classes=num_classes)
        history = fit_adversary(adversary, feats, train.labels[attribute], config=config,
                                run_dir=run.path / "train", resume=resume, callbacks=callbacks)
        results = evaluate_adversary(adversary, net, test, tap=tap, attribute=attribute,
                                     num_classes=num_classes, config=config)
        save_module(run.path / "adversary", adversary.cpu(), {
            "role": "adversary", "tap": tap, "attribute": attribute,
            "classes": data.classes[attribute], "model_run": str(model_run)})
        return {"attribute": attribute, "tap": tap, "head": head, **results, "history": history}

    return run_job(out, kind="attack", fingerprint=fingerprint, resume=resume,
                   settings=settings, work=work)


def known_job(*, data: Dataset, model_run: str | Path, adversary_run: str | Path,
              config: TrainConfig, out: str | Path) -> dict:
    """Score a known adversary (an attack folder, trained on another network) on the tap
    features of the network of ``model_run``: how much of its accuracy survives the change of
    features (the paper's K column for a network trained without that adversary, such as the
    lambda = 0 control). Writes ``results.json``."""
    adversary, adv_meta = load_adversary(adversary_run)
    tap, attribute = adv_meta["tap"], adv_meta["attribute"]
    net, _, _, test = _attacked_network(model_run, data, tap, attribute, "score")
    check_classes(adv_meta["classes"], data, attribute, adversary_run)
    fingerprint = {"data": data_fingerprint(data),
                   "network": checkpoint_digest(_model_stem(model_run)),
                   "adversary": checkpoint_digest(_adversary_stem(adversary_run)),
                   "settings": {"job": "known", "seed": config.seed}}

    def work(run) -> dict:
        seed_everything(config.seed)  # a vib network draws noise in every forward pass
        return {"attribute": attribute, "tap": tap, **evaluate_adversary(
            adversary, net, test, tap=tap, attribute=attribute,
            num_classes=len(data.classes[attribute]), config=config)}

    return run_job(out, kind="known", fingerprint=fingerprint, resume=True, settings=None,
                   work=work)


def import_public_job(*, checkpoint: str | Path, data: Dataset, out: str | Path,
                      config: TrainConfig, calibrate: bool = True) -> dict:
    """Turn a public ARM ResNet-18 checkpoint into a ``train``-style folder (``model.*``,
    ``results.json``) that ``attack`` and ``init_from`` accept.

    The public checkpoints lack our running affinity mean: with ``calibrate`` it is estimated
    on the training split, so inference is batch-independent; without, the network keeps the
    public batch-dependent behaviour (a warning is logged).
    """
    if not Path(checkpoint).is_file():
        raise PrivatenetError(f"{checkpoint}: checkpoint not found; give the path of the public "
                              ".pth file")
    check_classes(list(EMOTIONS), data, "emotion", checkpoint)
    train, test = data.split("train", ["emotion"]), data.split("test", ["emotion"])
    settings = {"job": "import", "checkpoint": str(checkpoint), "data": data.name,
                "calibrate": calibrate}
    device = resolve_device(config.device)
    bs = config.eval_batch_size
    batches = (normalize(train.images[i:i + bs].to(device)) for i in range(0, len(train), bs))
    net = load_public_arm_checkpoint(checkpoint, num_classes=len(EMOTIONS),
                                     image_size=image_size_of(data),
                                     calibration=batches if calibrate else None)

    def work(run) -> dict:
        results = {"utility": evaluate_task(net, test, "emotion", len(EMOTIONS), config),
                   "source": str(checkpoint), "affinity": net.arm.affinity}
        save_module(run.path / "model", net.cpu(), {
            "role": "model", "data": data.name, "target": "emotion",
            "classes": list(EMOTIONS), "image_size": image_size_of(data)})
        return results

    return run_job(out, kind="import", fingerprint=None, resume=False, settings=settings,
                   work=work)


#: Side of the downsampled image of the audit's "image" control (the ceiling).
AUDIT_IMAGE_SIDE = 16


def audit_job(*, data: Dataset, model_run: str | Path, tap: str, attribute: str,
              config: TrainConfig, out: str | Path, zoo: str = "full", seeds: int = 1,
              folds: int = 5, controls: bool | str = True, mdl: bool = True,
              in_sample: bool = False, on_attacker=None) -> dict:
    """The worst-case leakage audit (:func:`privatenet.auditing.audit`) of ``tap`` of a trained
    network for ``attribute``, with attackers that never saw a defender row.

    The scoring rows are the test split. The attackers train on the data set's ``attacker``
    split when it has one (rows no part of a defence reads), else they are cross-fitted over
    ``folds`` stratified folds of the test split and the result says they are data-limited.
    The train split (the network's, and any known adversary's, eraser's or regularizer's rows)
    is never an attacker's, except in the labelled ``in_sample`` column. Three controls go
    through the same protocol: the task output (the logits a deployment reveals anyway: the
    floor), the same tap of a randomly initialised network of the same architecture, and the
    image itself at 16x16 pixels. Writes ``audit.json`` (with ``rows``: which split played which
    role), ``audit.md``, ``audit.png`` and ``results.json`` (the headline, written last) into
    ``out``; the same call again returns the finished audit. ``controls=False`` and
    ``mdl=False`` leave out the controls and the description length (Table 2's audit column
    needs neither); ``controls="floor"`` keeps the task output alone."""
    from torch.nn.functional import interpolate

    AuditConfig(zoo=zoo, seeds=seeds, folds=folds, in_sample=in_sample)
    if controls not in (True, False, "floor"):
        raise SettingError("controls", controls, "is invalid; give True, False or 'floor'")
    net, meta, train, test = _attacked_network(model_run, data, tap, attribute, "audit")
    fresh = ATTACKER_SPLIT in data.splits
    attackers = data.split(ATTACKER_SPLIT, [attribute]) if fresh else None
    settings = {"job": "audit", "data": data.name, "model_run": str(model_run), "tap": tap,
                "attribute": attribute, "zoo": zoo, "seeds": seeds, "seed": config.seed,
                "folds": folds, "controls": controls, "mdl": mdl, "in_sample": in_sample,
                "protocol": AUDIT_PROTOCOL}
    fingerprint = {"data": data_fingerprint(data),
                   "network": checkpoint_digest(_model_stem(model_run)),
                   "settings": {k: v for k, v in settings.items()
                                if k not in ("data", "model_run")}}
    device = resolve_device(config.device)

    def at(model, images, which):
        """``which`` tap's features (None: the logits) of ``model`` on ``images``."""
        return extract(model, images, tap=which, batch_size=config.eval_batch_size,
                       device=device, precision=config.precision)

    full: dict = {}  # the whole audit (results.json holds its headline)

    def work(run) -> dict:
        net.to(device)
        seed_everything(config.seed)  # a vib network draws noise in every forward pass

        def features(model, which, transform=None):
            """(attacker rows' or None, scoring rows') features of ``model`` at ``which``."""
            def one(split):
                if transform is not None:
                    return transform(split)
                return at(model, split.images, which)
            return (one(attackers) if fresh else None), one(test)

        control_features = None
        if controls:
            control_features = {"task output": features(net, None)}
        if controls is True:
            seed_everything(config.seed)
            random_net = model_from_config(net.config).to(device)

            def image(split):
                return interpolate(split.images.float() / 255.0, size=AUDIT_IMAGE_SIDE,
                                   mode="area").flatten(1)

            control_features.update({
                "random network": features(random_net, tap),
                f"image {AUDIT_IMAGE_SIDE}x{AUDIT_IMAGE_SIDE}": features(None, None, image),
            })
        att_feats, test_feats = features(net, tap)
        heads = {}
        if zoo == "full":  # the model's head for this tap retrained, and a deeper one on maps
            kinds = [default_adversary(architecture(net), tap)] + (
                ["conv"] if test_feats.dim() == 4 else [])
            heads = {f"head:{k}": (lambda shape, n, k=k: create_adversary(
                k, tap_shape=shape, num_classes=n)) for k in dict.fromkeys(kinds)}
        result = audit(
            scoring=(test_feats, test.labels[attribute]),
            attacker=(att_feats, attackers.labels[attribute]) if fresh else None,
            in_sample=((at(net, train.images, tap), train.labels[attribute]) if in_sample
                       else None),
            num_classes=len(data.classes[attribute]), zoo=zoo, seeds=seeds, folds=folds,
            controls=control_features, heads=heads, mdl=mdl, device=str(device),
            on_attacker=on_attacker)
        result["rows"] = {
            "scoring": {"split": "test", "rows": len(test)},
            "attacker": ({"split": ATTACKER_SPLIT, "rows": len(attackers)} if fresh else
                         {"split": "test", "rows": len(test),
                          "how": f"cross-fitted: {folds} stratified folds, each scored by "
                                 "attackers trained on the other folds only"}),
            "defender": {"split": "train", "rows": len(train),
                         "use": ("the in-sample column only" if in_sample else
                                 "none: no attacker trains, tunes or standardises on it")}}
        result.update(tap=tap, attribute=attribute, classes=list(data.classes[attribute]),
                      model_run=str(model_run), data=data.name)
        write_json(run.path / "audit.json", result)
        atomic_write_text(run.path / "audit.md", f"# Leakage audit: {attribute} from tap "
                          f"{tap!r} of {model_run}\n\n" + audit_markdown(result))
        atomic_write_bytes(run.path / "audit.png", plot_audit(result))
        full.update(result)
        return {"worst": result["worst"], "controls": {
            k: v["worst"] for k, v in result.get("controls", {}).items()},
            "mdl": result.get("mdl"), "protocol": result["protocol"],
            "data_limited": result["data_limited"], "rows": result["rows"], "tap": tap,
            "attribute": attribute}

    # An audit keeps no checkpoints: a rerun of the same command returns a finished audit and
    # redoes an interrupted one; other inputs in the same folder are refused.
    run_job(out, kind="audit", fingerprint=fingerprint, resume=True, settings=settings,
            work=work)
    return full or read_json(Path(out) / "audit.json")
