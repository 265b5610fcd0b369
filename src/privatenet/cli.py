"""The ``privatenet`` command line. Only this module prints, shows progress bars and exits.

User mistakes (:class:`PrivatenetError`) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from privatenet.errors import PrivatenetError

log = logging.getLogger("privatenet")


# ---------------------------------------------------------------- argument groups

def _data_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, required=required,
                   help="dataset spec: rafdb:PATH (RAF-DB 'basic' root), manifest:FILE.csv "
                        "(header path,split,<label columns>) or synthfaces[:n=5000,size=64,"
                        "seed=0] (built-in generated faces)"
                        + ("" if required else "; default: the data of the attacked run"))
    g.add_argument("--image-size", type=int, default=None,
                   help="decode every image once to SxS pixels (default: the data set's "
                        "native size; the paper uses 224)")
    g.add_argument("--cache-dir", default=None,
                   help="keep decoded images here between runs (default: decode each run)")


def _optim_args(p: argparse.ArgumentParser, *, epochs: int, batch_size: int) -> None:
    g = p.add_argument_group("optimisation (defaults follow the public ARM scripts)")
    g.add_argument("--epochs", type=int, default=epochs,
                   help=f"training epochs (default {epochs}; the paper trains 200)")
    g.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"mini-batch size (default {batch_size})")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper: 1e-3)")
    g.add_argument("--weight-decay", type=float, default=1e-4,
                   help="Adam weight decay (public scripts: 1e-4)")
    g.add_argument("--lr-decay", type=float, default=0.9,
                   help="exponential learning-rate decay per epoch (public scripts: 0.9)")
    g.add_argument("--no-augment", action="store_true",
                   help="disable the public augmentation recipe (flip or Gaussian noise with "
                        "p=0.5, random erasing 2-10%%)")
    g.add_argument("--seed", type=int, default=0, help="seed: one seed gives the same numbers "
                                                       "on CPU")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA when present, with bf16 autocast), cpu, or cuda[:N]")


def _out_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", default=default, required=default is None,
                   help="run folder: config.yaml, train/metrics.jsonl, checkpoints, "
                        "results.json" + (f" (default {default})" if default else ""))
    g.add_argument("--resume", action="store_true",
                   help="continue a killed run in --out from its last checkpoint (finished "
                        "steps are not redone)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from privatenet.losses import PRIVACY_LOSSES
    from privatenet.models import ADVERSARY_KINDS, list_models
    from privatenet.regularizer import ADVERSARY_UPDATES

    parser = argparse.ArgumentParser(
        prog="privatenet",
        description="Train classifiers whose features do not reveal private attributes, and "
                    "measure how much they still reveal (Li & Cavallaro, ICASSP 2022).")
    parser.add_argument("--config", default=None,
                        help="YAML file of option values (keys as the long options with _ for "
                             "-); command-line options override it")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a task network, optionally privacy-preserving",
                       description="Train a network on --target. With --loss, add the privacy "
                                   "term of Eq. 8 on --tap against a known adversary.")
    _data_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="arm_resnet18", choices=list_models(),
                   help="network from the registry (arm_resnet18 is the paper's)")
    g.add_argument("--target", default="emotion", help="label column to learn")
    g.add_argument("--init-from", default=None,
                   help="start from the weights of this finished train folder (same "
                        "architecture) instead of from scratch")
    g = p.add_argument_group("privacy (all of --loss, --tap, --private, --adversary)")
    g.add_argument("--loss", choices=PRIVACY_LOSSES, default=None,
                   help="confusion (Eq. 7, the paper's) or adversarial (Edwards & Storkey)")
    g.add_argument("--tap", default=None, help="feature tap the privacy term acts on")
    g.add_argument("--private", default=None, help="private attribute column, e.g. gender")
    g.add_argument("--lam", type=float, default=0.5,
                   help="privacy weight lambda in [0, 1] (Eq. 8; default 0.5)")
    g.add_argument("--adversary", default=None,
                   help="folder of a finished 'privatenet attack' run on the original "
                        "network: the known adversary")
    g.add_argument("--adversary-update", choices=ADVERSARY_UPDATES, default="fixed",
                   help="fixed: the known adversary is held fixed (the paper); alternating: "
                        "it is updated each step (min-max)")
    _optim_args(p, epochs=10, batch_size=64)
    _out_args(p)

    p = sub.add_parser("attack", help="train an adversary on a tap of a trained network",
                       description="Train an adversary head on the frozen features of a "
                                   "trained network and report how much they leak.")
    g = p.add_argument_group("target of the attack")
    g.add_argument("--run", required=True, help="folder of a finished 'privatenet train' run")
    g.add_argument("--tap", required=True, help="feature tap to attack (see the model's taps)")
    g.add_argument("--private", required=True, help="private attribute column to predict")
    g.add_argument("--head", choices=ADVERSARY_KINDS, default=None,
                   help="adversary head (default: the paper's head for this tap: arm_fc on "
                        "an ARM backbone map, fc on the arm vector, else mlp)")
    _data_args(p, required=False)
    _optim_args(p, epochs=10, batch_size=128)
    _out_args(p)

    p = sub.add_parser("reproduce", help="the paper's whole protocol: Tables 1-3 and Fig. 2",
                       description="Train the original network, attack it (Table 1), train "
                                   "privacy-preserving networks and attack them with the known "
                                   "and an unknown adversary (Table 2), sweep lambda (Fig. 2) "
                                   "and time inference (Table 3). Stages are cached in --out: a "
                                   "rerun skips finished ones and resumes a killed one.")
    p.add_argument("--preset", choices=("paper", "quick", "demo", "smoke"), default=None,
                   help="paper: arm_resnet18, 224 px, Adam 1e-3, 200 epochs, gender and age, "
                        "taps backbone and arm; quick: the same with 20 epochs; demo: the CPU "
                        "demo on synthfaces; smoke: a seconds-long plumbing check. Options "
                        "below override the preset")
    g = p.add_argument_group("what to reproduce")
    g.add_argument("--data", required=True, help="dataset spec (rafdb:PATH for the paper)")
    g.add_argument("--image-size", type=int, default=None, help="decode size (paper: 224)")
    g.add_argument("--cache-dir", default=None, help="keep decoded images here between runs")
    g.add_argument("--target", default=None, help="task column (default emotion)")
    g.add_argument("--private", default=None,
                   help="comma list of private attributes (default gender,age)")
    g.add_argument("--model", default=None, choices=list_models(),
                   help="network (default arm_resnet18, the paper's)")
    g.add_argument("--taps", default=None,
                   help="comma list of taps to attack and protect (default: all of the model's)")
    g.add_argument("--losses", default=None,
                   help="comma list of privacy losses (default confusion,adversarial)")
    g.add_argument("--lam", type=float, default=None,
                   help="lambda of the Table 2 networks (default 0.5)")
    g.add_argument("--lambdas", default=None,
                   help="comma list for the Fig. 2 sweep (default 0,0.1,0.3,0.5,0.7,0.9,1)")
    g.add_argument("--init", choices=("original", "scratch"), default=None,
                   help="privacy networks start from the original network (default) or from "
                        "scratch")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="task network epochs")
    g.add_argument("--adversary-epochs", type=int, default=None, help="adversary epochs")
    g.add_argument("--privacy-epochs", type=int, default=None,
                   help="privacy-preserving network epochs")
    g.add_argument("--batch-size", type=int, default=None, help="mini-batch size")
    g.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    g.add_argument("--device", default=None, help="auto (default), cpu or cuda[:N]")
    g.add_argument("--out", required=True, help="run folder (stages/, results.json, report.md, "
                                                "fig2_lambda_sweep.png)")

    p = sub.add_parser("demo", help="the paper's protocol on synthfaces, on a CPU, in minutes",
                       description="Run 'reproduce --preset demo' on the built-in synthfaces "
                                   "data and print the tables.")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=None, help="seed (default 0)")

    p = sub.add_parser("import-checkpoint",
                       help="make a public ARM ResNet-18 checkpoint usable by attack/train",
                       description="Load a public ARM checkpoint ({'model_state_dict': ...}) "
                                   "strictly, calibrate its running affinity mean on the "
                                   "training split (so inference no longer depends on the "
                                   "batch), evaluate it and save it as a run folder.")
    p.add_argument("checkpoint", help="the public .pth file (read with weights_only=True)")
    _data_args(p)
    p.add_argument("--no-calibrate", action="store_true",
                   help="keep the public batch-dependent affinity (not recommended)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--out", required=True, help="run folder to create")

    p = sub.add_parser("data-info", help="sizes and label distributions of a dataset",
                       description="Print split sizes, class counts per label column and the "
                                   "majority-class rate (the accuracy of always answering the "
                                   "most frequent class).")
    p.add_argument("spec", help="dataset spec, e.g. synthfaces or rafdb:/data/RAF-DB/basic")
    p.add_argument("--image-size", type=int, default=None, help="decode size (default native)")
    return parser


# ---------------------------------------------------------------- helpers

def _load_config_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Apply a ``--config`` YAML file as defaults of the chosen subcommand."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    path = Path(known.config)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise PrivatenetError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise PrivatenetError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise PrivatenetError(f"{path}: must be a mapping of option: value")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for sp in subparsers.choices.values():
        dests = {a.dest for a in sp._actions}
        sp.set_defaults(**{k: v for k, v in values.items() if k in dests})
    every = {a.dest for sp in subparsers.choices.values() for a in sp._actions}
    unknown = sorted(set(values) - every)
    if unknown:
        raise PrivatenetError(f"{path}: unknown option {unknown[0]!r}; use the long option "
                              "names of the subcommand")


def _train_config(args):
    from privatenet.train.config import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, lr_decay=args.lr_decay, seed=args.seed,
                       augment=not args.no_augment, device=args.device)


class _Progress:
    """A tqdm bar per epoch, fed by the engine's callbacks."""

    def __init__(self, label: str) -> None:
        from tqdm import tqdm

        from privatenet.train.loop import Callbacks

        self.tqdm, self.label, self.bar, self.epoch = tqdm, label, None, 0
        self.callbacks = Callbacks(on_step=self.step, on_epoch=self.end)

    def step(self, done: int, total: int) -> None:
        if self.bar is None:
            self.epoch += 1
            self.bar = self.tqdm(total=total, desc=f"{self.label} epoch {self.epoch}", leave=False,
                            file=sys.stderr, dynamic_ncols=True,
                            disable=not sys.stderr.isatty())
        self.bar.update(done - self.bar.n)

    def end(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.epoch = record["epoch"]
        log.info("%s epoch %d: %s", self.label, record["epoch"],
                 ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                           if k not in ("epoch", "seconds", "lr")))


def _fmt_leakage(title: str, r: dict) -> str:
    lo, hi = r["ci95"]
    return (f"{title}\n"
            f"  accuracy            {r['accuracy']:.4f}  (95% CI {lo:.4f}-{hi:.4f}, "
            f"n={r['n']})\n"
            f"  balanced accuracy   {r['balanced_accuracy']:.4f}\n"
            f"  majority-class rate {r['majority']:.4f}\n"
            f"  chance (1/K)        {r['chance']:.4f}\n"
            f"  normalised leakage  {r['normalized_leakage']:+.4f}  "
            f"((acc - majority) / (1 - majority); 0 = no leak beyond the majority class)")


# ---------------------------------------------------------------- commands

def cmd_train(args) -> int:
    from privatenet.app.jobs import train_job
    from privatenet.data import load_dataset

    privacy = None
    given = {k: getattr(args, k) for k in ("loss", "tap", "private", "adversary")}
    if any(v is not None for v in given.values()):
        missing = [f"--{k}" for k, v in given.items() if v is None]
        if missing:
            raise PrivatenetError(f"privacy training needs {', '.join(missing)} as well "
                                  "(or none of --loss/--tap/--private/--adversary)")
        privacy = dict(given, lam=args.lam, update=args.adversary_update)
    config = _train_config(args)
    data = load_dataset(args.data, image_size=args.image_size, cache_dir=args.cache_dir)
    res = train_job(data=data, out=args.out, model=args.model, target=args.target,
                    config=config, init_from=args.init_from, privacy=privacy,
                    resume=args.resume, callbacks=_Progress("train").callbacks)
    u = res["utility"]
    print(f"{args.target} on the test split: accuracy {u['accuracy']:.4f}, balanced accuracy "
          f"{u['balanced_accuracy']:.4f}")
    if privacy:
        print(_fmt_leakage(f"known adversary ({args.private} from {args.tap}) on the new "
                           "features:", res["known"]))
    print(f"run folder: {args.out}")
    return 0


def cmd_attack(args) -> int:
    from privatenet.app.jobs import attack_job, model_meta
    from privatenet.data import load_dataset

    meta = model_meta(args.run)
    data = load_dataset(args.data or meta["data"],
                        image_size=args.image_size or meta.get("image_size"),
                        cache_dir=args.cache_dir)
    res = attack_job(data=data, model_run=args.run, tap=args.tap, attribute=args.private,
                     head=args.head, config=_train_config(args), out=args.out,
                     resume=args.resume, callbacks=_Progress("attack").callbacks)
    print(_fmt_leakage(f"adversary {res['head']} on tap {args.tap!r} predicting "
                       f"{args.private!r} (test split):", res))
    print(f"run folder: {args.out}")
    return 0


def cmd_import_checkpoint(args) -> int:
    from privatenet.app.jobs import import_public_job
    from privatenet.data import load_dataset
    from privatenet.train.config import TrainConfig

    data = load_dataset(args.data, image_size=args.image_size, cache_dir=args.cache_dir)
    res = import_public_job(checkpoint=args.checkpoint, data=data, out=args.out,
                            config=TrainConfig(device=args.device),
                            calibrate=not args.no_calibrate)
    u = res["utility"]
    print(f"emotion on the test split: accuracy {u['accuracy']:.4f}, balanced accuracy "
          f"{u['balanced_accuracy']:.4f} (affinity {res['affinity']})")
    print(f"run folder: {args.out}")
    return 0


def cmd_data_info(args) -> int:
    from privatenet.data import load_dataset

    data = load_dataset(args.spec, image_size=args.image_size)
    print(f"dataset {data.name}")
    for name, split in data.splits.items():
        print(f"\nsplit {name}: {len(split)} images, {tuple(split.images.shape[1:])} uint8")
        for col, classes in data.classes.items():
            counts = data.distribution(name, col)
            known = sum(v for k, v in counts.items() if k != "?")
            top = max((v for k, v in counts.items() if k != "?"), default=0)
            dist = ", ".join(f"{k} {v}" for k, v in counts.items())
            rate = top / known if known else float("nan")
            print(f"  {col} ({len(classes)} classes): {dist}; majority rate {rate:.3f}"
                  + (f" of {known} known" if "?" in counts else ""))
    return 0


def _split_list(value: str | None, cast=str) -> list | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise PrivatenetError(
            f"cannot read the list {value!r}; give comma-separated values") from None


def _run_protocol(config, out: str) -> int:
    """Run ``reproduce`` with stage lines and progress bars, then print the tables."""
    from privatenet.app.protocol import reproduce
    from privatenet.app.report import tables_markdown

    def on_stage(name: str, cached: bool) -> None:
        print(f"[{'cached' if cached else 'run'}] {name}", file=sys.stderr, flush=True)

    results = reproduce(config=config, out=out, on_stage=on_stage,
                        callbacks=lambda name: _Progress(name).callbacks)
    print(tables_markdown(results))
    print(f"report: {Path(out) / 'report.md'}")
    return 0


def cmd_reproduce(args) -> int:
    from privatenet.app.protocol import resolve_config

    overrides = {
        "data": args.data, "image_size": args.image_size, "cache_dir": args.cache_dir,
        "target": args.target, "private": _split_list(args.private), "model": args.model,
        "taps": _split_list(args.taps), "losses": _split_list(args.losses), "lam": args.lam,
        "lambdas": _split_list(args.lambdas, float), "init": args.init, "epochs": args.epochs,
        "adversary_epochs": args.adversary_epochs, "privacy_epochs": args.privacy_epochs,
        "batch_size": args.batch_size, "seed": args.seed, "device": args.device}
    return _run_protocol(resolve_config(args.preset, overrides), args.out)


def cmd_demo(args) -> int:
    from privatenet.app.protocol import resolve_config

    return _run_protocol(resolve_config("demo", {"device": args.device, "seed": args.seed}),
                         args.out)


COMMANDS = {"train": cmd_train, "attack": cmd_attack, "reproduce": cmd_reproduce,
            "demo": cmd_demo, "import-checkpoint": cmd_import_checkpoint,
            "data-info": cmd_data_info}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``privatenet`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        _load_config_defaults(parser, argv)
    except PrivatenetError as e:
        print(f"privatenet: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except PrivatenetError as e:
        print(f"privatenet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("privatenet: interrupted; rerun the same command with --resume to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
