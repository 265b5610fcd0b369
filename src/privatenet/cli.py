"""The ``privatenet`` command line. Only this module prints, shows progress bars and exits.

User mistakes (:class:`PrivatenetError`) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
from dataclasses import fields
from pathlib import Path

from privatenet.app.advisor import check_tolerance, split_advice_job
from privatenet.app.export_job import export_job
from privatenet.app.jobs import (
    BOTTLENECKED,
    DEFENCE_HELP,
    DEFENCES,
    attack_job,
    audit_job,
    import_public_job,
    model_meta,
    train_job,
)
from privatenet.app.protocol import (
    FORWARD_SHARE,
    PRESETS,
    ProtocolConfig,
    plan,
    reproduce,
    resolve_config,
)
from privatenet.app.report import advice_markdown, audit_markdown, tables_markdown
from privatenet.app.video_job import video_job
from privatenet.auditing import check_audit_settings
from privatenet.bench import check_out_file, format_table, measure
from privatenet.bottleneck import check_channels
from privatenet.data import load_dataset
from privatenet.data.base import carve_attacker_split
from privatenet.data.cache import check_cache_dir
from privatenet.errors import PrivatenetError
from privatenet.losses import DEFAULT_LAM, check_lam
from privatenet.models import ADVERSARY_KINDS, list_models
from privatenet.models.registry import check_model_name
from privatenet.readers import MAX_CONFIG_BYTES, brief, load_yaml
from privatenet.regularizer import ADVERSARY_UPDATES
from privatenet.storage import write_json
from privatenet.train import distributed
from privatenet.train.config import TrainConfig
from privatenet.train.loop import Callbacks

log = logging.getLogger("privatenet")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one :class:`PrivatenetError` line, not a usage
    block (subparsers are of this class too)."""

    def error(self, message: str):
        raise PrivatenetError(f"{message}; see '{self.prog} --help'")


# ---------------------------------------------------------------- argument groups

def _argparse_type(check):
    """``check`` (a library check that returns the value or raises PrivatenetError) as an
    argparse type: its error becomes argparse's (and a config file's) one-line error."""
    def parse(value: str):
        try:
            return check(value)
        except PrivatenetError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = check.__name__
    return parse


#: A registry model name or ``torchvision:NAME``.
_model_name = _argparse_type(check_model_name)


def _audited_args(g):
    """--run, --private and --zoo of the commands that audit a trained network."""
    g.add_argument("--run", required=True, help="folder of a finished 'privatenet train' run")
    g.add_argument("--private", required=True, help="private attribute column to predict")
    g.add_argument("--zoo", choices=("quick", "full"), default="full",
                   help="full (default, the headline): logistic, kNN, boosted trees, an MLP, "
                        "the model's adversary head for the tap retrained and a deeper conv "
                        "head on maps; quick: logistic, kNN, boosted trees (a preview)")
    return g


def _audit_run_args(p: argparse.ArgumentParser, *, seed: str, out: str) -> None:
    """The data (default: the audited run's) and --seed, --device, --out of an audit."""
    _data_args(p, required=False)
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help=seed)
    g.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (feature extraction)")
    g.add_argument("--out", required=True, help=out)


def _data_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, required=required,
                   help="dataset spec: rafdb:PATH (RAF-DB 'basic' root), manifest:FILE.csv "
                        "(header path,split,<label columns>) or synthfaces[:n=5000,size=64,"
                        "seed=0] (built-in generated faces)"
                        + ("" if required else "; default: the data of the attacked run, "
                           "with the attacker split a reproduce run carved out of it"))
    g.add_argument("--image-size", type=int, default=None,
                   help="decode every image once to SxS pixels (default: the data set's "
                        "native size; the paper uses 224)")
    g.add_argument("--cache-dir", default=None,
                   help="keep decoded images here between runs (default: decode each run)")


#: TrainConfig's settings of every training command, and its speed settings.
OPTIM = ("epochs", "batch_size", "lr", "weight_decay", "lr_decay", "augment", "seed", "device")
SPEED = ("precision", "memory_format", "compile")
#: ProtocolConfig's settings that ``reproduce`` takes (beyond TrainConfig's).
PROTOCOL = ("data", "image_size", "cache_dir", "target", "private", "model", "taps", "losses",
            "lam", "lambdas", "init", "adversarial_update", "backbone_weights", "seeds",
            "audit_zoo", "attacker_share", "vib_channels", "latency_precision")
_TYPES = {"int": int, "float": float, "str": str}


def _flag(f) -> tuple[str, str]:
    """A declared field's long option and its argparse dest."""
    flag = f.metadata.get("flag", f"--{f.name.replace('_', '-')}")
    if f.type == "bool" and f.default is True:  # on by default: a switch that turns it off
        flag = f"--no-{f.name.replace('_', '-')}"
    return flag, flag[2:].replace("-", "_")


def _setting_args(g, cls, names: tuple[str, ...], *, defaults: dict | None = None,
                  unset: bool = False) -> None:
    """Options for the fields ``names`` of the dataclass ``cls``, made from their declaration
    (type, default, help and the rest of :func:`privatenet.train.config.setting`'s metadata).
    ``defaults``: this command's own defaults; ``unset``: no default at all (a preset or the
    library decides: ``reproduce`` and the speed options)."""
    declared = {f.name: f for f in fields(cls)}
    for name in names:
        f = declared[name]
        flag, dest = _flag(f)
        default = None if unset else (defaults or {}).get(name, f.default)
        help = f.metadata["help"].replace("%", "%%") + (
            "" if unset or f.type == "bool" else f" (default {default})")
        if f.type == "bool":
            g.add_argument(flag, dest=dest, action="store_true",
                           default=None if unset else False,
                           help=f"turn off {help}" if f.default is True else help)
        else:
            parse = (_argparse_type(f.metadata["type"]) if "type" in f.metadata
                     else _TYPES.get(f.type.split(" |")[0], str))
            g.add_argument(flag, *f.metadata.get("aliases", ()), dest=dest,
                           type=str if "list" in f.metadata else parse, default=default,
                           choices=f.metadata.get("choices"), help=help)


def _settings(args, cls, names: tuple[str, ...]) -> dict:
    """The fields among ``names`` of ``cls`` that were given (or have a command default), by
    field name: comma lists split, a ``--no-`` switch turned into its field's value."""
    declared = {f.name: f for f in fields(cls)}
    out = {}
    for name in names:
        f = declared[name]
        value = getattr(args, _flag(f)[1], None)
        if value is None:
            continue
        if f.type == "bool" and f.default is True:
            value = not value
        elif "list" in f.metadata:
            value = _split_list(value, float if f.metadata["list"] == "float" else str)
        out[name] = value
    return out


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
    parser = _Parser(
        prog="privatenet",
        description="Train classifiers whose features do not reveal private attributes, and "
                    "measure how much they still reveal (Li & Cavallaro, ICASSP 2022).")
    parser.add_argument("--config", default=None,
                        help="YAML file of option values (keys as the long options with _ for "
                             "-); command-line options override it")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser,
                                help="what to do; 'privatenet COMMAND --help' explains its "
                                     "options")

    p = sub.add_parser("train", help="train a task network, optionally privacy-preserving",
                       description="Train a network on --target. With --defence, protect the "
                                   "features of --tap (a privacy term of Eq. 8, an eraser or a "
                                   "bottleneck; --loss is the old name of --defence).")
    _data_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="arm_resnet18", type=_model_name,
                   help=f"network: {', '.join(list_models())} (arm_resnet18 is the paper's), or "
                        "torchvision:NAME for any torchvision classifier")
    g.add_argument("--target", default="emotion", help="label column to learn")
    g.add_argument("--init-from", default=None,
                   help="start from the weights of this finished train folder (same "
                        "architecture) instead of from scratch")
    g.add_argument("--backbone-weights", default=None,
                   help="torchvision ResNet-18 weights file to start the backbone from (the "
                        "paper: ImageNet, resnet18-f37072fd.pth; read weights-only, nothing is "
                        "downloaded); arm_resnet18 and resnet18")
    g = p.add_argument_group("privacy (--defence, --tap, --private; --adversary where the "
                             "defence needs one)")
    g.add_argument("--defence", "--loss", dest="defence", choices=DEFENCES, default=None,
                   help="; ".join(f"{k}: {v}" for k, v in DEFENCE_HELP.items()))
    g.add_argument("--tap", default=None, help="feature tap the privacy term acts on")
    g.add_argument("--private", default=None,
                   help="private attribute column, e.g. gender, or a comma list (gender,age): "
                        "one privacy term each")
    g.add_argument("--lam", type=float, default=None,
                   help="privacy weight lambda in [0, 1] (Eq. 8; default 0.5)")
    g.add_argument("--adversary", default=None,
                   help="folder of a finished 'privatenet attack' run on the starting network: "
                        "the known adversary (a comma list: one per private attribute); "
                        "needed by confusion and adversarial, a member of ensemble, scored "
                        "only by hsic and leace")
    g.add_argument("--adversary-update", choices=ADVERSARY_UPDATES, default=None,
                   help="fixed (default): the known adversary is held fixed (the paper); "
                        "alternating: it is updated each step (min-max)")
    g.add_argument("--bottleneck-channels", type=int, default=None,
                   help="--defence vib or vib+leace: channels of the noisy code at the tap "
                        "(default 16)")
    _setting_args(p.add_argument_group("optimisation (defaults follow the public ARM scripts)"),
                  TrainConfig, OPTIM)
    _setting_args(p.add_argument_group("speed (docs/design.md §4.4)"), TrainConfig, SPEED,
                  unset=True)
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
    _setting_args(p.add_argument_group("optimisation (defaults follow the public ARM scripts)"),
                  TrainConfig, OPTIM, defaults={"batch_size": 128})
    _out_args(p)

    p = sub.add_parser("audit", help="worst-case leakage of a tap over an attacker zoo",
                       description="Train every attacker of a zoo (logistic regression, "
                                   "k-nearest neighbours, boosted trees, MLP, the model's "
                                   "adversary head and a deeper conv head) on the frozen "
                                   "features of a tap, on rows the network never saw: the data "
                                   "set's 'attacker' split, or else cross-fitted over folds of "
                                   "the test split (a data-limited attacker, said so). Report "
                                   "the worst case of both leakage figures, its learning curve, "
                                   "an online description length and three controls: the task "
                                   "output (the floor), a randomly initialised network and the "
                                   "image at 16x16.")
    g = _audited_args(p.add_argument_group("what to audit"))
    g.add_argument("--tap", required=True, help="feature tap to audit (see the model's taps)")
    g.add_argument("--seeds", type=int, default=1,
                   help="seeds of the folds, validation parts and attackers (mean and std)")
    g.add_argument("--folds", type=int, default=5,
                   help="folds of the test split when the data has no 'attacker' split "
                        "(default 5)")
    g.add_argument("--in-sample", action="store_true",
                   help="add a column of attackers trained on the network's own train rows "
                        "(labelled: what an audit on defender rows would wrongly report)")
    _audit_run_args(p, seed="seed of the attackers and the random-network control",
                    out="folder to create: audit.json, audit.md, audit.png, results.json")

    p = sub.add_parser("split-advisor", help="where to cut a network for a trusted enclave",
                       description="Audit every tap of a trained network on rows it never saw "
                                   "(as 'audit' does), measure what each cut costs (parameters, "
                                   "multiply-accumulates and time of the untrusted and the "
                                   "trusted part, bytes crossing), and advise the cut with the "
                                   "smallest trusted part whose leakage is within --tolerance "
                                   "above the floor (what the task output reveals).")
    g = _audited_args(p.add_argument_group("what to advise on"))
    g.add_argument("--tolerance", type=float, default=0.05,
                   help="largest accepted gap above the floor, in normalised leakage (default "
                        "0.05)")
    g.add_argument("--repeats", type=int, default=20,
                   help="timed calls of each part (default 20)")
    _audit_run_args(p, seed="seed of the attackers and of a vib network's noise",
                    out="folder: advice.json, advice.md, advice.png and one audit per tap")

    p = sub.add_parser("reproduce", help="the paper's whole protocol: Tables 1-3 and Fig. 2",
                       description="Train the original network, attack it (Table 1), train "
                                   "privacy-preserving networks and attack them with the known "
                                   "and an unknown adversary (Table 2), sweep lambda (Fig. 2) "
                                   "and time inference (Table 3). Stages are cached in --out: a "
                                   "rerun skips finished ones and resumes a killed one.")
    p.add_argument("--preset", choices=("paper", "quick", "demo", "smoke"), default=None,
                   help="paper: arm_resnet18, 224 px, Adam 1e-3, 200 epochs, gender and age, "
                        "taps backbone and arm, the paper's two losses with a fixed known "
                        "adversary (add --backbone-weights for its ImageNet start); quick: the "
                        "same network with every defence and 20 epochs; demo: the CPU demo on "
                        "synthfaces; smoke: a seconds-long plumbing check. Options below "
                        "override the preset")
    _setting_args(p.add_argument_group("what to reproduce (unset: the preset's, else the "
                                       "library's)"), ProtocolConfig, PROTOCOL, unset=True)
    g = p.add_argument_group("optimisation (unset: the preset's, else the library's)")
    _setting_args(g, ProtocolConfig, ("adversary_epochs", "privacy_epochs"), unset=True)
    _setting_args(g, TrainConfig, ("epochs", "batch_size", "seed", "device") + SPEED,
                  unset=True)
    g.add_argument("--dry-run", action="store_true",
                   help="run nothing and write nothing: list every stage, cached or not, with "
                        "its image passes and its time projected from a short measured "
                        "throughput on this device")
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

    p = sub.add_parser("export", help="split a trained network at a tap into two ONNX files "
                                      "(untrusted part, trusted part)",
                       description="Write untrusted.onnx (normalised images -> the tap's "
                                   "features: what runs outside the Trusted Execution "
                                   "Environment and what an attacker reads), trusted.onnx (the "
                                   "tap's features -> task logits: the part for the TEE) and "
                                   "export.json (input convention, shapes, sizes, SHA-256). "
                                   "Both parts are checked with ONNX Runtime against the torch "
                                   "model on a few images. Needs the deploy extra: "
                                   "pip install -e \".[deploy]\".")
    g = p.add_argument_group("what to export")
    g.add_argument("--run", "--model", dest="run", required=True,
                   help="folder of a finished 'privatenet train' run (--model is the old "
                        "name)")
    g.add_argument("--split", "--tap", dest="tap", required=True,
                   help="tap to split at: the untrusted part ends there (see the model's taps)")
    g = p.add_argument_group("check images")
    g.add_argument("--check-images", type=int, default=16,
                   help="how many images check the ONNX files against torch (default 16: the "
                        "first of the test split)")
    g.add_argument("--data", default=None,
                   help="dataset spec of the check images (default: the data of the run; "
                        "where it cannot be loaded, seeded random images)")
    g.add_argument("--cache-dir", default=None, help="keep decoded images here between runs")
    g.add_argument("--random-check", action="store_true",
                   help="check with seeded random images instead of loading data")
    g.add_argument("--seed", type=int, default=0, help="seed of the random check images")
    p.add_argument("--out", required=True,
                   help="folder to create: untrusted.onnx, trusted.onnx, export.json, "
                        "results.json")

    p = sub.add_parser("video", help="the video analytics pipeline: faces, tracks and their "
                                     "labels over a video file",
                       description="Detect faces in a video file (OpenCV's Haar cascade), track "
                                   "them (IoU), classify each face on its own with a trained "
                                   "network or an export folder (ONNX Runtime) and smooth the "
                                   "probabilities per track. Writes frames.jsonl, summary.json, "
                                   "timeline.png and, with --annotate, annotated.mp4. Needs the "
                                   "video extra: pip install -e \".[video]\".")
    p.add_argument("input", help="video file: mp4, avi, mkv, webm (read with PyAV's bundled "
                                 "FFmpeg)")
    p.add_argument("--run", "--model", dest="run", required=True,
                   help="folder of a finished 'privatenet train' run (torch) or of a "
                        "'privatenet export' (export.json; ONNX Runtime, untrusted then "
                        "trusted part); --model is the old name")
    p.add_argument("--every", type=int, default=1,
                   help="process every N-th frame only (default 1: every frame)")
    p.add_argument("--annotate", action="store_true",
                   help="also write annotated.mp4: boxes, track ids and labels")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the classifier (default: torch's or ONNX Runtime's, "
                        "one per core); a face crop is small: 1 is as fast and far faster on a "
                        "busy machine")
    p.add_argument("--out", required=True,
                   help="folder to create: frames.jsonl, summary.json, timeline.png, "
                        "annotated.mp4, results.json")

    p = sub.add_parser("bench", help="training speed, batch-1 latency and memory of the fast "
                                     "path against the public recipe, side by side",
                       description="Time, in one run and on random tensors, training steps "
                                   "and batch-1 inference of a re-creation of the public ARM "
                                   "recipe (arm_resnet18 only) and of ours in fp32, "
                                   "channels_last, bf16 autocast and both (and torch.compile "
                                   "with --compile); print a table, say whether bf16 and "
                                   "channels_last pay on this device and these shapes, and "
                                   "write the figures as JSON.")
    p.add_argument("--model", default="arm_resnet18", type=_model_name,
                   help="network (default arm_resnet18, the paper's)")
    p.add_argument("--image-size", type=int, default=224, help="input side (default 224)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch (default 32)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--latency-iters", type=int, default=20,
                   help="timed batch-1 inferences per variant (default 20)")
    p.add_argument("--variants", default=None,
                   help="comma list of public, fp32, channels_last, bf16, channels_last+bf16, "
                        "compile (default: all that apply and can pay here: the bf16 ones only "
                        "with native bf16, compile only with --compile)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's choice)")
    p.add_argument("--out", default="runs/bench.json",
                   help="JSON file of the figures (default runs/bench.json); an existing file "
                        "is replaced only if it is an earlier bench output")

    p = sub.add_parser("data-info", help="sizes and label distributions of a dataset",
                       description="Print split sizes, class counts per label column and the "
                                   "majority-class rate (the accuracy of always answering the "
                                   "most frequent class).")
    p.add_argument("spec", help="dataset spec, e.g. synthfaces or rafdb:/data/RAF-DB/basic")
    p.add_argument("--image-size", type=int, default=None, help="decode size (default native)")
    return parser


# ---------------------------------------------------------------- helpers

def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each subcommand, by name."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options (not positionals, not --help) of a parser, by dest."""
    return {a.dest: a for a in parser._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)}


def _config_value(action: argparse.Action, value):
    """``value`` from a config file converted as the command line would convert it, or a
    ``ValueError`` saying what the option expects."""
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise ValueError("true or false")
        return value
    kind = {int: "an integer", float: "a number"}.get(action.type, "a string")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(kind + ("" if action.type else " (quote it)"))
    try:
        value = action.type(str(value)) if action.type else str(value)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"a valid value ({e})") from None
    except ValueError:
        raise ValueError(kind) from None
    if action.choices is not None and value not in action.choices:
        raise ValueError("one of " + ", ".join(map(str, action.choices)))
    return value


#: Config-file keys of options that were renamed (the old command-line spellings still parse).
RENAMED = {"loss": "defence", "losses": "defences", "adversarial_update": "adversary_update"}


def _load_config_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Apply a ``--config`` YAML file as defaults of every subcommand that has the option.

    Each value is checked and converted like the option's command-line value; an option the
    file supplies is no longer required on the command line.
    """
    pre = _Parser(prog="privatenet", add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    path = Path(known.config)
    # Bounded: a regular file of at most 1 MiB, 64 levels deep, 10,000 nodes after aliases.
    values = load_yaml(path, limit=MAX_CONFIG_BYTES, what="config file") or {}
    if not isinstance(values, dict):
        raise PrivatenetError(f"{path}: must be a mapping of option: value")
    commands = {name: _options(sp) for name, sp in _subparsers(parser).items()}
    known_keys = sorted({dest for options in commands.values() for dest in options})
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        dest = RENAMED.get(dest, dest)
        if dest not in known_keys:
            close = difflib.get_close_matches(dest, known_keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PrivatenetError(f"{path}: unknown option {brief(key)}{hint}; the keys are the "
                                  f"long options of the subcommands: {', '.join(known_keys)}")
        if value is None:  # an empty value leaves the option at its default
            continue
        for name, options in commands.items():
            action = options.get(dest)
            if action is None:
                continue
            try:
                action.default = _config_value(action, value)
            except ValueError as e:
                raise PrivatenetError(f"{path}: {key}: {brief(value)} is invalid for "
                                      f"'{name} {action.option_strings[-1]}'; give {e}") from None
            action.required = False


def _train_config(args):
    return TrainConfig(**_settings(args, TrainConfig, OPTIM + SPEED))


class _Progress:
    """A tqdm bar per epoch, fed by the training loop's callbacks."""

    def __init__(self, label: str) -> None:
        from tqdm import tqdm

        self.tqdm, self.label, self.bar, self.epoch = tqdm, label, None, 0
        self.main = distributed.is_main()  # under torchrun, rank 0 alone shows bars
        self.callbacks = Callbacks(on_step=self.step, on_epoch=self.end)

    def step(self, done: int, total: int) -> None:
        if self.bar is None:
            self.epoch += 1
            self.bar = self.tqdm(total=total, desc=f"{self.label} epoch {self.epoch}", leave=False,
                            file=sys.stderr, dynamic_ncols=True,
                            disable=not sys.stderr.isatty() or not self.main)
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
    # Every option is checked here, before a single image is decoded.
    privacy = None
    given = {"defence": args.defence, "tap": args.tap, "private": args.private}
    if args.adversary is not None or any(v is not None for v in given.values()):
        missing = [f"--{k}" for k, v in given.items() if v is None]
        if missing:
            raise PrivatenetError(f"privacy training needs {', '.join(missing)} as well "
                                  "(or none of --defence/--tap/--private/--adversary)")
        private = _split_list(args.private)
        adversary = _split_list(args.adversary) if args.adversary else [None] * len(private)
        privacy = dict(loss=args.defence, tap=args.tap, private=private, adversary=adversary,
                       lam=check_lam(DEFAULT_LAM if args.lam is None else args.lam),
                       update=args.adversary_update or "fixed")
        if args.bottleneck_channels is not None:
            if args.defence not in BOTTLENECKED:
                raise PrivatenetError(f"--bottleneck-channels applies to --defence "
                                      f"{' or '.join(BOTTLENECKED)} only, not "
                                      f"{args.defence}; drop it")
            privacy["channels"] = check_channels(args.bottleneck_channels)
    else:
        stray = [f for f, v in (("--lam", args.lam), ("--adversary-update",
                                                      args.adversary_update),
                                ("--bottleneck-channels", args.bottleneck_channels))
                 if v is not None]
        if stray:  # silently training without privacy would be worse than refusing
            raise PrivatenetError(f"{' and '.join(stray)}: only for privacy training; add "
                                  "--defence, --tap and --private, or leave them out")
    config = _train_config(args)
    data = _load_data(args, args.data, image_size=args.image_size)
    weights = {"backbone_weights": args.backbone_weights} if args.backbone_weights else {}
    res = train_job(data=data, out=args.out, model=args.model, target=args.target,
                    config=config, init_from=args.init_from, privacy=privacy,
                    model_kwargs=weights,
                    resume=args.resume, callbacks=_Progress("train").callbacks)
    u = res["utility"]
    print(f"{args.target} on the test split: accuracy {u['accuracy']:.4f}, balanced accuracy "
          f"{u['balanced_accuracy']:.4f}")
    for attr, r in (res.get("known_by") or {}).items():
        print(_fmt_leakage(f"known adversary ({attr} from {args.tap}) on the new features:", r))
    for attr, r in (res.get("co_trained_by") or {}).items():
        print(_fmt_leakage(f"adversary trained alongside ({attr} from {args.tap}):", r))
    print(f"run folder: {args.out}")
    return 0


def _data_of_run(args):
    """``--data`` and ``--image-size``, by default those the network of ``--run`` was trained
    on (its spec is stored with absolute paths), with the attacker split carved out of it
    again when the network's run carved one (``reproduce``), so that its train split is
    exactly the network's training rows."""
    meta = model_meta(args.run)
    data = _load_data(args, args.data or meta["data"],
                      image_size=args.image_size or meta.get("image_size"))
    carve = None if args.data else meta.get("attacker_carve")
    return carve_attacker_split(data, **carve) if carve else data


def _load_data(args, spec: str, *, image_size: int | None):
    """The data set of a command that writes a run folder to ``--out``: ``--cache-dir`` is
    checked against that folder first (a cache inside it would fill it before the run claims
    it), then the images are decoded (or read from the cache)."""
    check_cache_dir(args.cache_dir, out=args.out)
    return load_dataset(spec, image_size=image_size, cache_dir=args.cache_dir)


def cmd_attack(args) -> int:
    config = _train_config(args)  # checked before the data loads
    res = attack_job(data=_data_of_run(args), model_run=args.run, tap=args.tap,
                     attribute=args.private, head=args.head, config=config, out=args.out,
                     resume=args.resume, callbacks=_Progress("attack").callbacks)
    print(_fmt_leakage(f"adversary {res['head']} on tap {args.tap!r} predicting "
                       f"{args.private!r} (test split):", res))
    print(f"run folder: {args.out}")
    return 0


def cmd_audit(args) -> int:
    # Checked before the data loads.
    config = TrainConfig(seed=args.seed, device=args.device)
    check_audit_settings(zoo=args.zoo, seeds=args.seeds, folds=args.folds)
    data = _data_of_run(args)

    def on_attacker(what: str, name: str) -> None:
        print(f"[audit] {what}: {name}", file=sys.stderr, flush=True)

    result = audit_job(data=data, model_run=args.run, tap=args.tap, attribute=args.private,
                       config=config, out=args.out, zoo=args.zoo, seeds=args.seeds,
                       folds=args.folds, in_sample=args.in_sample, on_attacker=on_attacker)
    print(audit_markdown(result))
    print(f"run folder: {args.out}")
    return 0


def cmd_split_advisor(args) -> int:
    # Checked before the data loads.
    config = TrainConfig(seed=args.seed, device=args.device)
    check_audit_settings(zoo=args.zoo, seeds=1)
    check_tolerance(args.tolerance)
    if args.repeats < 1:
        raise PrivatenetError(f"--repeats {args.repeats} is invalid; give an integer >= 1")
    data = _data_of_run(args)

    def on_attacker(what: str, name: str) -> None:
        print(f"[split-advisor] {what}: {name}", file=sys.stderr, flush=True)

    advice = split_advice_job(data=data, model_run=args.run, attribute=args.private,
                              config=config, out=args.out, zoo=args.zoo,
                              tolerance=args.tolerance, repeats=args.repeats,
                              on_attacker=on_attacker)
    print(advice_markdown(advice))
    print(f"folder: {args.out}")
    return 0


def cmd_import_checkpoint(args) -> int:
    config = TrainConfig(device=args.device)  # checked before the data loads
    data = _load_data(args, args.data, image_size=args.image_size)
    res = import_public_job(checkpoint=args.checkpoint, data=data, out=args.out, config=config,
                            calibrate=not args.no_calibrate)
    u = res["utility"]
    print(f"emotion on the test split: accuracy {u['accuracy']:.4f}, balanced accuracy "
          f"{u['balanced_accuracy']:.4f} (affinity {res['affinity']})")
    print(f"run folder: {args.out}")
    return 0


def cmd_export(args) -> int:
    doc = export_job(model_run=args.run, tap=args.tap, out=args.out,
                     check_images=args.check_images, data=args.data, cache_dir=args.cache_dir,
                     random_check=args.random_check, seed=args.seed)
    for which, part in doc["parts"].items():
        shape = " x ".join(map(str, part["output_shape"]))
        print(f"{which:9} {Path(args.out) / part['file']}: {part['parameters']:,} parameters, "
              f"{part['bytes']:,} bytes, output {part['output_name']} {shape}")
    diff = doc["max_abs_diff"]
    check = doc["check_inputs"]
    print(f"max abs difference ONNX Runtime vs torch on {check['count']} "
          f"{'images of ' + check['data'] if check.get('source') == 'data' else 'random images'}"
          f": untrusted {diff['untrusted']:.2e}, trusted {diff['trusted']:.2e}, end to end "
          f"{diff['end_to_end']:.2e}")
    print(f"export folder: {args.out}")
    return 0


def cmd_video(args) -> int:
    from tqdm import tqdm

    bar = None

    def on_frame(read: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="video", unit="frame", leave=False, file=sys.stderr,
                       dynamic_ncols=True, disable=not sys.stderr.isatty())
        bar.update(read - bar.n)

    try:
        s = video_job(input=args.input, model=args.run, out=args.out,
                      annotate=args.annotate, every=args.every, threads=args.threads,
                      on_frame=on_frame)
    finally:
        if bar is not None:
            bar.close()
    rate = s["processing"]["frames_processed_per_s"]
    print(f"{s['input']['path']}: {s['frames_read']} frames at {s['fps']:.2f} fps, "
          f"{s['frames_processed']} processed ({rate} frames/s), {s['faces']} faces in "
          f"{len(s['tracks'])} tracks")
    for t in s["tracks"]:
        print(f"  track {t['track']}: {t['first']:.2f}-{t['last']:.2f} s, "
              f"{t['seconds_on_screen']:.2f} s on screen, mostly {t['dominant']} "
              f"({t['shares'][t['dominant']]:.0%})")
    print(f"video folder: {args.out}")
    return 0


def cmd_bench(args) -> int:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise PrivatenetError(f"threads={args.threads} is invalid; give an integer >= 1")
        torch.set_num_threads(args.threads)
    # before any timing: a file the bench may not write over is refused at once
    out = check_out_file(args.out)
    bars: dict = {}  # the current stage's bar

    def on_progress(stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage not in bars:
            for old in bars.values():
                old.close()
            bars.clear()
            bars[stage] = tqdm(total=total, desc=stage, leave=False, file=sys.stderr,
                               disable=not sys.stderr.isatty())
        bars[stage].update(done - bars[stage].n)

    result = measure(model=args.model, image_size=args.image_size, batch_size=args.batch_size,
                     device=args.device, steps=args.steps, warmup=args.warmup,
                     latency_iters=args.latency_iters,
                     compile=args.compile or "compile" in (args.variants or ""),
                     variants=args.variants, on_progress=on_progress)
    for bar in bars.values():
        bar.close()
    check_out_file(out)  # again: the file may have appeared while the bench ran
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, result)
    except OSError as e:
        raise PrivatenetError(f"cannot write {out}: {e.strerror}; choose another --out") from None
    print(format_table(result))
    print(f"figures: {out}")
    return 0


def cmd_data_info(args) -> int:
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
    main = distributed.is_main()  # under torchrun, rank 0 alone reports

    def on_stage(name: str, cached: bool) -> None:
        if main:
            print(f"[{'cached' if cached else 'run'}] {name}", file=sys.stderr, flush=True)

    results = reproduce(config=config, out=out, on_stage=on_stage,
                        callbacks=lambda name: _Progress(name).callbacks)
    print(tables_markdown(results))
    print(f"report: {Path(out) / 'report.md'}")
    return 0


def cmd_reproduce(args) -> int:
    if args.data is None and "data" not in PRESETS.get(args.preset, {}):
        raise PrivatenetError("reproduce needs --data (rafdb:PATH for the paper's numbers, or "
                              "any dataset spec); only --preset demo names its own data")
    overrides = (_settings(args, ProtocolConfig, PROTOCOL + ("adversary_epochs",
                                                             "privacy_epochs"))
                 | _settings(args, TrainConfig, ("epochs", "batch_size", "seed", "device")
                             + SPEED))
    config = resolve_config(args.preset, overrides)
    if args.dry_run:
        return _print_plan(config, args.out)
    return _run_protocol(config, args.out)


def _print_plan(config, out: str) -> int:
    """``reproduce --dry-run``: the stages and the projected time."""
    p = plan(config=config, out=out)
    print(f"{'stage':52s} {'state':6s} {'train passes':>13s} {'forward':>9s} {'projected':>10s}")
    for st in p["stages"]:
        print(f"{st['stage']:52s} {'cached' if st['cached'] else 'to run':6s} "
              f"{st['train_passes']:13,d} {st['forward_passes']:9,d} "
              f"{_duration(st['projected_seconds']):>10s}")
    t, env = p["throughput"], p["throughput"]["environment"]
    print(f"{p['to_run']} of {len(p['stages'])} stages to run: {p['train_passes']:,} training "
          f"and {p['forward_passes']:,} forward image passes, projected "
          f"{_duration(p['projected_seconds'])}")
    print(f"from {t['train_images_per_s']:.1f} training images/s measured just now "
          f"({t['variant']}, batch {t['batch_size']}, {t['image_size']} px, random tensors) on "
          f"{env['device_name']} ({env['threads']} threads); forward-only passes counted at "
          f"{FORWARD_SHARE:.2f} of a training step")
    if p["not_projected"]:
        print(f"not projected: the attacker fitting of {len(p['not_projected'])} audit stages "
              "(scikit-learn on the CPU; --audit-zoo none leaves them out)")
    return 0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def cmd_demo(args) -> int:
    return _run_protocol(resolve_config("demo", {"device": args.device, "seed": args.seed}),
                         args.out)


COMMANDS = {"train": cmd_train, "attack": cmd_attack, "audit": cmd_audit,
            "split-advisor": cmd_split_advisor, "reproduce": cmd_reproduce,
            "demo": cmd_demo, "import-checkpoint": cmd_import_checkpoint,
            "export": cmd_export, "data-info": cmd_data_info, "video": cmd_video,
            "bench": cmd_bench}

#: Commands that may run in several processes under torchrun (docs/design.md §4.4).
DISTRIBUTED_COMMANDS = ("train", "reproduce", "demo")

_RESUME = "rerun the same command with --resume to continue"
_RERUN = ("rerun the same command to continue (finished stages are kept and a killed stage "
          "resumes)")
#: What to tell a user who pressed Ctrl-C, by command.
INTERRUPT_HINTS = {"train": _RESUME, "attack": _RESUME, "reproduce": _RERUN, "demo": _RERUN,
                   "audit": "rerun the same command to start the audit again",
                   "export": "nothing was kept; rerun the same command to export",
                   "video": "nothing was kept; rerun the same command"}

# a parameter's value in a library message: a quoted string, or a word not ending in . or :
_VALUE = r"""'[^']*'|"[^"]*"|[^\s,;)\]]*[^\s,;:.)\]]"""


def to_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """Name ``parser``'s options in a library message the way the command line spells them.

    Library errors name Python parameters: ``image_size=224`` becomes ``--image-size 224``,
    ``resume=True`` becomes ``--resume`` (``resume=False``: ``no --resume``), and a bare
    parameter name with an underscore (``batch_size``) becomes its flag. Bare names without an
    underscore (``data``, ``seed``) are ordinary words and are left alone, and so is anything
    inside quotes or inside a data spec (``synthfaces:n=600,seed=0`` holds the spec's own
    options, not the command's: a name after ``:`` or ``,`` is never rewritten).
    """
    flags = {}
    for dest, action in _options(parser).items():
        flag = next((s for s in action.option_strings if s.startswith("--")), None)
        if flag is not None:
            flags[dest] = (flag, action.nargs == 0)
    if not flags:
        return message
    names = "|".join(re.escape(d) for d in sorted(flags, key=len, reverse=True))
    pattern = re.compile(rf"""(?P<quoted>"[^"]*"|'[^']*')|(?<![\w./\\:,-])(?P<dest>{names})"""
                         rf"(?:=(?P<value>{_VALUE}))?(?![\w/\\-])(?!\.\w)")

    def replace(m: re.Match) -> str:
        if m.group("quoted") is not None:
            return m.group(0)
        flag, switch = flags[m.group("dest")]
        value = m.group("value")
        if value is None:
            return flag if "_" in m.group("dest") else m.group(0)
        if switch:
            return flag if value == "True" else f"no {flag}"
        return f"{flag} {value}"

    return pattern.sub(replace, message)


def _os_message(e: OSError) -> str:
    """``path: reason`` of an operating-system error."""
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename is not None else reason


def _torch_failure(e: RuntimeError) -> str | None:
    """One line with the fix for the failures of torch that a user causes and can mend (memory
    exhausted by a large batch or image size, torch.compile without a working toolchain);
    ``None`` for any other error, which stays a traceback (a bug to report)."""
    import torch

    text = str(e).strip()
    first = " ".join(text.splitlines()[0].split())[:200] if text else type(e).__name__
    if isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in text or (
            "out of memory" in text.lower()):
        return (f"out of memory ({first}); lower --batch-size (or --image-size), or use a "
                "device with more memory")
    dynamo = getattr(torch, "_dynamo", None)
    failed = getattr(getattr(dynamo, "exc", None), "BackendCompilerFailed", ())
    if failed and isinstance(e, failed):
        return (f"torch.compile failed ({first}); leave out --compile, or install the "
                "compiler toolchain it names (apt-get install g++)")
    return None


def _fail(message: str) -> int:
    print(f"privatenet: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``privatenet`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        _load_config_defaults(parser, argv)
        args = parser.parse_args(argv)
    except PrivatenetError as e:
        return _fail(str(e))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Other packages' Python warnings (torch, Pillow) go to the log, shown with -v only: an
    # error is one line, not one line among warnings. Our own warnings are logged, not warned.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.INFO if args.verbose else logging.ERROR)
    rank = 0  # the launcher's rank, known before any process group exists
    try:
        rank, _, size = distributed.launched()
        if size > 1:
            if args.command not in DISTRIBUTED_COMMANDS:
                raise PrivatenetError(f"'{args.command}' runs in one process; start it without "
                                      "torchrun (under torchrun: "
                                      f"{', '.join(DISTRIBUTED_COMMANDS)})")
            distributed.init_from_env()
            if not distributed.is_main():  # rank 0 alone reports
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)
        return COMMANDS[args.command](args)
    except PrivatenetError as e:
        if rank != 0 or not distributed.is_main():  # rank 0 alone reports
            return 2
        return _fail(to_flags(str(e), _subparsers(parser)[args.command]))
    except RuntimeError as e:  # torch's: out of memory, a failed torch.compile
        message = _torch_failure(e)
        if message is None:
            raise
        hint = INTERRUPT_HINTS.get(args.command)
        message += f"; {hint}" if hint else ""
        return 2 if rank != 0 else _fail(message)
    except BrokenPipeError:
        # The reader went away (`privatenet data-info ... | head`): not an error. Point stdout
        # at /dev/null so that the interpreter's final flush does not fail again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (captured, for instance)
            pass
        return 0
    except OSError as e:
        return _fail(_os_message(e))
    except KeyboardInterrupt:
        hint = INTERRUPT_HINTS.get(args.command)
        print("privatenet: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
