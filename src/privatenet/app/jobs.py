"""Training and attack jobs: a dataset, a model and the training loop, with their run folder.

Used by the CLI (``privatenet train`` / ``attack``) and by every stage of the protocol. A job
checks every input first, then claims its folder (:func:`~privatenet.train.rundir.open_run`:
``run.json`` with the run's fingerprint, ``run.lock`` held while it works), and writes
``config.yaml`` (resolved settings), ``train/`` (checkpoints, ``metrics.jsonl``), the final
``model.*`` or ``adversary.*`` checkpoint and ``results.json``, written last: a folder with
``results.json`` is finished and is not redone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch

from privatenet.data.base import Dataset, Split
from privatenet.errors import PrivatenetError
from privatenet.metrics import leakage
from privatenet.models import (
    create_adversary,
    create_model,
    default_adversary,
    model_options,
    require_tap,
)
from privatenet.regularizer import PrivacyRegularizer
from privatenet.train.checkpoint import (
    atomic_write_bytes,
    atomic_write_text,
    checkpoint_digest,
    load_checkpoint_meta,
    load_module,
    read_json,
    save_module,
    write_json,
    write_yaml,
)
from privatenet.train.config import TrainConfig, resolve_device, seed_everything
from privatenet.train.loop import Callbacks, extract, fit, fit_adversary, predict_features
from privatenet.train.rundir import open_run

log = logging.getLogger(__name__)


def image_size_of(data: Dataset) -> int:
    """Side of the (square) decoded images of ``data``."""
    return int(next(iter(data.splits.values())).images.shape[-1])


def build_model(name: str, *, num_classes: int, image_size: int, **kwargs) -> torch.nn.Module:
    """``create_model`` with the input size passed to the models whose shape depends on it."""
    if "image_size" in model_options(name):
        kwargs["image_size"] = image_size
    return create_model(name, num_classes=num_classes, **kwargs)


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


def load_model(run: str | Path, *, expect: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The trained network of a ``train`` job folder (or a ``model`` checkpoint stem)."""
    return load_module(_model_stem(run), expect=expect)


def model_meta(run: str | Path) -> dict:
    """The plain values saved with the network of a ``train`` folder (data, classes, size)."""
    return load_checkpoint_meta(_model_stem(run))


def _adversary_stem(run: str | Path) -> Path:
    return _stem(run, "adversary", "attack")


def load_adversary(run: str | Path) -> tuple[torch.nn.Module, dict]:
    """The adversary head of an ``attack`` job folder (or an ``adversary`` checkpoint stem)."""
    return load_module(_adversary_stem(run))


def evaluate_task(model: torch.nn.Module, split: Split, column: str, num_classes: int,
                  config: TrainConfig) -> dict:
    """Every figure of docs/design.md §5 for ``model`` predicting ``split.labels[column]``
    (accuracy, balanced accuracy, majority rate, 1/K, normalised score, 95 % interval)."""
    device = resolve_device(config.device)
    model.to(device)
    pred = extract(model, split.images, batch_size=config.eval_batch_size,
                   device=device).argmax(1)
    return leakage(pred, split.labels[column], num_classes=num_classes, seed=config.seed)


def evaluate_adversary(head: torch.nn.Module, model: torch.nn.Module, split: Split, *, tap: str,
                       attribute: str, num_classes: int, config: TrainConfig) -> dict:
    """Leakage report of adversary ``head`` reading ``tap`` of ``model`` on ``split``."""
    device = resolve_device(config.device)
    model.to(device)
    feats = extract(model, split.images, tap=tap, batch_size=config.eval_batch_size,
                    device=device)
    pred = predict_features(head.to(device), feats, device=device)
    return leakage(pred, split.labels[attribute], num_classes=num_classes, seed=config.seed)


def train_job(*, data: Dataset, out: str | Path, model: str, target: str, config: TrainConfig,
              model_kwargs: dict | None = None, init_from: str | Path | None = None,
              privacy: dict | None = None, resume: bool = False,
              callbacks: Callbacks | None = None) -> dict:
    """Train a network on ``target`` (optionally privacy-preserving) and evaluate it.

    ``privacy`` holds ``loss``, ``tap``, ``private``, ``lam``, ``adversary`` (an attack folder:
    the known adversary) and ``update`` (``fixed`` or ``alternating``). ``init_from`` starts
    from the weights of a finished train folder of the same architecture instead of from
    scratch. Every input is checked before ``out`` is claimed (:func:`open_run`): a resumed run
    must name the same data (content), starting network, adversary and settings. Returns (and
    writes) the results: task utility on the test split, and with ``privacy`` the known
    adversary's leakage on the new features.
    """
    model_kwargs = dict(model_kwargs or {})
    privacy = dict(privacy) if privacy else None
    if privacy is not None and privacy["private"] == target:
        raise PrivatenetError(f"the private attribute {target!r} is the task target; protect "
                              "another column than the one the network must predict")
    columns = [target] + ([privacy["private"]] if privacy else [])
    train, test = data.split("train", columns), data.split("test", columns)
    settings = {"job": "train", "data": data.name, "model": model, "model_kwargs": model_kwargs,
                "target": target, "train": asdict(config),
                "init_from": str(init_from) if init_from else None,
                "privacy": {k: str(v) for k, v in privacy.items()} if privacy else None}
    # Paths are left out of the fingerprint's settings: the data, the starting network and the
    # adversary are compared by content, so a moved folder still resumes.
    fingerprint = {"data": data_fingerprint(data), "init": None, "adversary": None,
                   "settings": {k: v for k, v in settings.items()
                                if k not in ("data", "init_from", "privacy")}
                   | {"privacy": {k: v for k, v in settings["privacy"].items()
                                  if k != "adversary"} if privacy else None}}
    # Check every input before anything is written.
    init = None
    if init_from is not None:
        init, init_meta = load_model(init_from, expect=model)
        check_classes(init_meta["classes"], data, target, init_from)
        fingerprint["init"] = checkpoint_digest(_model_stem(init_from))
    regularizer = None
    if privacy is not None:
        known, adv_meta = load_adversary(privacy["adversary"])
        check_classes(adv_meta["classes"], data, privacy["private"], privacy["adversary"])
        if adv_meta.get("tap") != privacy["tap"] or adv_meta.get("attribute") != \
                privacy["private"]:
            raise PrivatenetError(
                f"{privacy['adversary']} attacks {adv_meta.get('attribute')!r} on tap "
                f"{adv_meta.get('tap')!r}, not {privacy['private']!r} on {privacy['tap']!r}; "
                "pass the matching attack folder")
        regularizer = PrivacyRegularizer(known, loss=privacy["loss"], lam=float(privacy["lam"]),
                                         update=privacy.get("update", "fixed"), lr=config.lr,
                                         weight_decay=config.weight_decay)
        fingerprint["adversary"] = checkpoint_digest(_adversary_stem(privacy["adversary"]))
    seed_everything(config.seed)
    num_classes = len(data.classes[target])
    net = build_model(model, num_classes=num_classes, image_size=image_size_of(data),
                      **model_kwargs)
    if privacy is not None:
        require_tap(net, privacy["tap"])
    if init is not None:
        if init.config != net.config:
            raise PrivatenetError(f"{init_from} holds a network with other settings "
                                  f"({init.config}); it cannot initialise {net.config}")
        net.load_state_dict(init.state_dict())
    with open_run(out, kind="train", fingerprint=fingerprint, resume=resume) as run:
        if run.finished:
            return run.results()
        write_yaml(run.path / "config.yaml", settings)
        history = fit(model=net, train=train, target=target, config=config,
                      regularizer=regularizer, tap=privacy["tap"] if privacy else None,
                      private=privacy["private"] if privacy else None,
                      run_dir=run.path / "train", resume=resume, callbacks=callbacks)
        results = {"utility": evaluate_task(net, test, target, num_classes, config),
                   "history": history}
        if privacy is not None:
            results["known"] = evaluate_adversary(
                known, net, test, tap=privacy["tap"], attribute=privacy["private"],
                num_classes=len(data.classes[privacy["private"]]), config=config)
        save_module(run.path / "model", net.cpu(), {
            "role": "model", "data": data.name, "target": target,
            "classes": data.classes[target], "image_size": image_size_of(data)})
        write_json(run.path / "results.json", results)
    return results


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
    head = head or default_adversary(net.config["name"], tap)
    settings = {"job": "attack", "data": data.name, "model_run": str(model_run), "tap": tap,
                "attribute": attribute, "head": head, "train": asdict(config)}
    fingerprint = {"data": data_fingerprint(data),
                   "network": checkpoint_digest(_model_stem(model_run)),
                   "settings": {k: v for k, v in settings.items()
                                if k not in ("data", "model_run")}}
    with open_run(out, kind="attack", fingerprint=fingerprint, resume=resume) as run:
        if run.finished:
            return run.results()
        write_yaml(run.path / "config.yaml", settings)
        device = resolve_device(config.device)
        net.to(device)
        feats = extract(net, train.images, tap=tap, batch_size=config.eval_batch_size,
                        device=device)
        seed_everything(config.seed)
        num_classes = len(data.classes[attribute])
        adversary = create_adversary(head, tap_shape=tuple(feats.shape[1:]),
                                     num_classes=num_classes)
        history = fit_adversary(adversary, feats, train.labels[attribute], config=config,
                                run_dir=run.path / "train", resume=resume, callbacks=callbacks)
        results = evaluate_adversary(adversary, net, test, tap=tap, attribute=attribute,
                                     num_classes=num_classes, config=config)
        results = {"attribute": attribute, "tap": tap, "head": head, **results,
                   "history": history}
        save_module(run.path / "adversary", adversary.cpu(), {
            "role": "adversary", "tap": tap, "attribute": attribute,
            "classes": data.classes[attribute], "model_run": str(model_run)})
        write_json(run.path / "results.json", results)
    return results


def import_public_job(*, checkpoint: str | Path, data: Dataset, out: str | Path,
                      config: TrainConfig, calibrate: bool = True) -> dict:
    """Turn a public ARM ResNet-18 checkpoint into a ``train``-style folder (``model.*``,
    ``results.json``) that ``attack`` and ``init_from`` accept.

    The public checkpoints lack our running affinity mean: with ``calibrate`` it is estimated
    on the training split, so inference is batch-independent; without, the network keeps the
    public batch-dependent behaviour (a warning is logged).
    """
    from privatenet.data.labels import EMOTIONS
    from privatenet.data.transforms import normalize
    from privatenet.models.public import load_public_arm_checkpoint

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
    with open_run(out, kind="import", fingerprint=None, resume=False) as run:
        write_yaml(run.path / "config.yaml", settings)
        results = {"utility": evaluate_task(net, test, "emotion", len(EMOTIONS), config),
                   "source": str(checkpoint), "affinity": net.arm.affinity}
        save_module(run.path / "model", net.cpu(), {
            "role": "model", "data": data.name, "target": "emotion",
            "classes": list(EMOTIONS), "image_size": image_size_of(data)})
        write_json(run.path / "results.json", results)
    return results


#: Side of the downsampled image of the audit's "image" control (the ceiling).
AUDIT_IMAGE_SIDE = 16


def audit_job(*, data: Dataset, model_run: str | Path, tap: str, attribute: str,
              config: TrainConfig, out: str | Path, zoo: str = "quick", seeds: int = 1,
              on_attacker=None) -> dict:
    """The worst-case leakage audit (:func:`privatenet.audit.audit`) of ``tap`` of a trained
    network for ``attribute``, with three controls: the task output (the logits a deployment
    reveals anyway: the floor), the same tap of a randomly initialised network of the same
    architecture, and the image itself at 16x16 pixels (the ceiling). Writes ``audit.json``,
    ``audit.md``, ``audit.png`` and ``results.json`` (the headline, written last) into ``out``;
    the same call again returns the finished audit."""
    from torch.nn.functional import interpolate

    from privatenet.app.report import audit_markdown, plot_audit
    from privatenet.audit import audit, check_audit_settings
    from privatenet.models import model_from_config

    check_audit_settings(zoo=zoo, seeds=seeds)
    net, meta, train, test = _attacked_network(model_run, data, tap, attribute, "audit")
    settings = {"job": "audit", "data": data.name, "model_run": str(model_run), "tap": tap,
                "attribute": attribute, "zoo": zoo, "seeds": seeds, "seed": config.seed}
    fingerprint = {"data": data_fingerprint(data),
                   "network": checkpoint_digest(_model_stem(model_run)),
                   "settings": {k: v for k, v in settings.items()
                                if k not in ("data", "model_run")}}
    device = resolve_device(config.device)
    bs = config.eval_batch_size
    # An audit keeps no checkpoints: a rerun of the same command returns a finished audit and
    # redoes an interrupted one; other inputs in the same folder are refused.
    with open_run(out, kind="audit", fingerprint=fingerprint, resume=True) as run:
        if run.finished:
            return read_json(run.path / "audit.json")
        write_yaml(run.path / "config.yaml", settings)
        net.to(device)

        def features(model, split, which):
            return extract(model, split.images, tap=which, batch_size=bs, device=device)

        seed_everything(config.seed)
        random_net = model_from_config(net.config).to(device)

        def image(split):
            return interpolate(split.images.float() / 255.0, size=AUDIT_IMAGE_SIDE,
                               mode="area").flatten(1)

        controls = {
            "task output": (features(net, train, None), features(net, test, None)),
            "random network": (features(random_net, train, tap),
                               features(random_net, test, tap)),
            f"image {AUDIT_IMAGE_SIDE}x{AUDIT_IMAGE_SIDE}": (image(train), image(test)),
        }
        train_feats, test_feats = features(net, train, tap), features(net, test, tap)
        heads = {}
        if zoo == "full":  # the model's head for this tap retrained, and a deeper one on maps
            kinds = [default_adversary(net.config["name"], tap)] + (
                ["conv"] if train_feats.dim() == 4 else [])
            heads = {f"head:{k}": (lambda shape, n, k=k: create_adversary(
                k, tap_shape=shape, num_classes=n)) for k in dict.fromkeys(kinds)}
        result = audit(train_feats, train.labels[attribute], test_feats,
                       test.labels[attribute], num_classes=len(data.classes[attribute]),
                       zoo=zoo, seeds=seeds, controls=controls, heads=heads,
                       device=str(device), on_attacker=on_attacker)
        result.update(tap=tap, attribute=attribute, classes=list(data.classes[attribute]),
                      model_run=str(model_run), data=data.name)
        write_json(run.path / "audit.json", result)
        atomic_write_text(run.path / "audit.md", f"# Leakage audit: {attribute} from tap "
                          f"{tap!r} of {model_run}\n\n" + audit_markdown(result))
        atomic_write_bytes(run.path / "audit.png", plot_audit(result))
        headline = {"worst": result["worst"], "controls": {
            k: v["worst"] for k, v in result["controls"].items()},
            "mdl": result.get("mdl"), "tap": tap, "attribute": attribute}
        write_json(run.path / "results.json", headline)
    return result
