"""The ``privatenet`` command line: the commands, each a parser made from the settings
declarations (:mod:`privatenet.options`) and a handler that builds the settings (every check runs
there, before any data is read), calls one job and prints its summary. Only this module prints,
shows progress bars and exits; a user mistake is one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from privatenet import console, options
from privatenet.app import protocol, summaries
from privatenet.app.advisor import AdviceConfig, split_advice_job
from privatenet.app.bench_job import bench_job
from privatenet.app.defences import PrivacyConfig
from privatenet.app.export_job import ExportCheck, export_job
from privatenet.app.jobs import attack_job, audit_job, data_of_run, import_public_job, train_job
from privatenet.app.protocol import PRESETS, ProtocolConfig, resolve_config
from privatenet.app.report import advice_markdown, audit_markdown, tables_markdown
from privatenet.app.video_job import VideoConfig, video_job
from privatenet.auditing import AuditConfig
from privatenet.bench import BenchConfig, format_table
from privatenet.data.config import DataConfig
from privatenet.errors import PrivatenetError
from privatenet.models import ADVERSARY_KINDS
from privatenet.models.config import ModelConfig
from privatenet.models.registry import check_tap
from privatenet.options import Parser, add_settings, given
from privatenet.train.config import TrainConfig

#: TrainConfig's settings of every training command, and its speed settings.
OPTIM = ("epochs", "batch_size", "lr", "weight_decay", "lr_decay", "augment", "seed", "device")
SPEED = ("precision", "memory_format", "compile")
_RUN = "folder of a finished 'privatenet train' run"


def _out(p, help: str, *, resume: bool = False, default: str | None = None) -> None:
    p.add_argument("--out", required=default is None, default=default,
                   help=help + (f" (default {default})" if default else ""))
    if resume:
        p.add_argument("--resume", action="store_true", help="continue a killed run in --out "
                       "from its last checkpoint (finished steps are not redone)")


def _data(p, title: str, *, required: bool = False) -> None:
    add_settings(p.add_argument_group(title), DataConfig, required=("data",) if required else ())


def _attacked(p, *, tap: bool = True, zoo: bool = False) -> None:
    """--run, --tap, --private of the commands that attack a trained network's features."""
    g = p.add_argument_group("what to attack")
    g.add_argument("--run", required=True, help=_RUN)
    if tap:
        g.add_argument("--tap", required=True, help="feature tap (see the model's taps)")
    g.add_argument("--private", required=True, help="private attribute column to predict")
    if zoo:
        add_settings(g, AuditConfig, ("zoo",))
    _data(p, "data (unset: the attacked run's, with the attacker split reproduce carved)")


def build_parser() -> Parser:
    """The argument parser of every subcommand."""
    parser = Parser(prog="privatenet", description="Train classifiers whose features do not "
                    "reveal private attributes, and measure how much they still reveal (Li & "
                    "Cavallaro, ICASSP 2022).")
    parser.add_argument("--config", help="YAML file of option values (keys as the long options "
                        "with _ for -); command-line options override it")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser, help="'privatenet COMMAND --help' "
                                "explains its options")
    optim = "optimisation (defaults follow the public ARM scripts)"

    p = sub.add_parser("train", help="train a task network, optionally privacy-preserving",
                       description="Train a network on --target; with --defence, protect the "
                       "features of --tap (a privacy term of Eq. 8, an eraser or a bottleneck).")
    _data(p, "data", required=True)
    g = p.add_argument_group("model")
    add_settings(g, ModelConfig)
    g.add_argument("--target", default="emotion", help="label column to learn")
    g.add_argument("--init-from", help="start from the weights of this finished train folder")
    add_settings(p.add_argument_group("privacy (unset: plain training)"), PrivacyConfig)
    add_settings(p.add_argument_group(optim), TrainConfig, OPTIM)
    add_settings(p.add_argument_group("speed (docs/design.md §4.4)"), TrainConfig, SPEED,
                 unset=True)
    _out(p, "run folder: config.yaml, metrics, checkpoints, results.json", resume=True)

    p = sub.add_parser("attack", help="train an adversary on a tap of a trained network")
    _attacked(p)
    p.add_argument("--head", choices=ADVERSARY_KINDS, help="adversary head (unset: the "
                   "paper's for this tap: arm_fc on an ARM map, fc on the arm vector, else mlp)")
    add_settings(p.add_argument_group(optim), TrainConfig, OPTIM, defaults={"batch_size": 128})
    _out(p, "run folder to create", resume=True)

    p = sub.add_parser("audit", help="worst-case leakage of a tap over an attacker zoo",
                       description="Train every attacker of a zoo on a tap's frozen features "
                       "on rows the network never saw (the 'attacker' split, else cross-fitted "
                       "folds of the test split, said so); report the worst case of both "
                       "leakage figures, its learning curve, the description length and three "
                       "controls: the task output (the floor), a random network, a 16x16 image.")
    _attacked(p)
    add_settings(p.add_argument_group("audit"), AuditConfig)
    add_settings(p.add_argument_group("run"), TrainConfig, ("seed", "device"))
    _out(p, "folder to create: audit.json, audit.md, audit.png, results.json")

    p = sub.add_parser("split-advisor", help="where to cut a network for a trusted enclave",
                       description="Audit every tap on rows the network never saw, measure "
                       "what each cut costs (parameters, MACs, time, bytes crossing) and advise "
                       "the cut with the smallest trusted part within --tolerance of the floor.")
    _attacked(p, tap=False, zoo=True)
    add_settings(p.add_argument_group("advice"), AdviceConfig)
    add_settings(p.add_argument_group("run"), TrainConfig, ("seed", "device"))
    _out(p, "folder: advice.json, advice.md, advice.png and one audit per tap")

    p = sub.add_parser("reproduce", help="the paper's whole protocol: Tables 1-3 and Fig. 2",
                       description="Train, attack, protect, sweep lambda and time inference as "
                       "cached stages in --out (a rerun skips finished ones, resumes a killed "
                       "one).")
    p.add_argument("--preset", choices=tuple(PRESETS), help="paper: the paper's settings (200 "
                   "epochs, 224 px, gender and age, its two losses); quick: every defence, 20 "
                   "epochs; demo: the CPU demo on synthfaces; smoke: a plumbing check")
    unset = "(unset: the preset's, else the library's)"
    add_settings(p.add_argument_group(f"protocol {unset}"), ProtocolConfig, unset=True)
    add_settings(p.add_argument_group(f"optimisation {unset}"), TrainConfig,
                 ("epochs", "batch_size", "seed", "device", *SPEED), unset=True)
    p.add_argument("--dry-run", action="store_true", help="run nothing: list every stage with "
                   "its image passes and a time projected from a short measured throughput")
    _out(p, "run folder: stages/, results.json, report.md, fig2_lambda_sweep.png")

    p = sub.add_parser("demo", help="the paper's protocol on synthfaces, on a CPU, in minutes")
    add_settings(p, TrainConfig, ("seed", "device"), unset=True)
    _out(p, "run folder", default="runs/demo")

    p = sub.add_parser("import-checkpoint", help="make a public ARM ResNet-18 checkpoint usable "
                       "by attack/train (strict load, affinity calibrated, evaluated)")
    p.add_argument("checkpoint", help="the public .pth file (read with weights_only=True)")
    _data(p, "data", required=True)
    p.add_argument("--no-calibrate", action="store_true", help="keep the public batch-"
                   "dependent affinity (not recommended)")
    add_settings(p, TrainConfig, ("device",))
    _out(p, "run folder to create")

    p = sub.add_parser("export", help="split a trained network at a tap into untrusted.onnx and "
                       "trusted.onnx, checked with ONNX Runtime (extra: .[deploy])")
    p.add_argument("--run", "--model", dest="run", required=True, help=_RUN)
    p.add_argument("--split", "--tap", dest="tap", required=True, help="tap to split at")
    add_settings(p, ExportCheck)
    add_settings(p.add_argument_group("check images (unset: the run's data)"), DataConfig,
                 ("data", "cache_dir"))
    _out(p, "folder to create: untrusted.onnx, trusted.onnx, export.json, results.json")

    p = sub.add_parser("video", help="faces, tracks and their labels over a video file (extra: "
                       ".[video])")
    p.add_argument("input", help="video file: mp4, avi, mkv, webm (PyAV)")
    p.add_argument("--run", "--model", dest="run", required=True, help=f"{_RUN}, or of a "
                   "'privatenet export' (ONNX Runtime)")
    add_settings(p, VideoConfig)
    _out(p, "folder to create: frames.jsonl, summary.json, timeline.png, results.json")

    p = sub.add_parser("bench", help="training speed, batch-1 latency and memory of the fast "
                       "path against the public recipe, side by side")
    add_settings(p, BenchConfig)
    p.add_argument("--variants", help="comma list of public, fp32, channels_last, bf16, "
                   "channels_last+bf16, compile (unset: those that can pay here)")
    p.add_argument("--threads", type=int, help="CPU threads (unset: torch's choice)")
    _out(p, "JSON file of the figures (an earlier bench output is replaced)",
         default="runs/bench.json")

    p = sub.add_parser("data-info", help="sizes and label distributions of a dataset")
    p.add_argument("spec", help="dataset spec, e.g. synthfaces or rafdb:/data/RAF-DB/basic")
    add_settings(p, DataConfig, ("image_size",))
    return parser


def _attacked_data(args):
    return data_of_run(args.run, DataConfig(**given(args, DataConfig)), out=args.out)


def cmd_train(args) -> int:
    config = TrainConfig(**given(args, TrainConfig, OPTIM + SPEED))
    model = ModelConfig(**given(args, ModelConfig))
    privacy = PrivacyConfig(**given(args, PrivacyConfig))
    if privacy.enabled:
        check_tap(model.model, privacy.tap)
    data = DataConfig(**given(args, DataConfig)).load(out=args.out)
    res = train_job(data=data, out=args.out, model=model.model, target=args.target,
                    config=config, init_from=args.init_from, model_kwargs=model.model_kwargs(),
                    privacy=privacy if privacy.enabled else None, resume=args.resume,
                    callbacks=console.Progress("train").callbacks)
    print(summaries.train_text(res, target=args.target, tap=args.tap))
    return _done("run folder", args.out)


def cmd_attack(args) -> int:
    config = TrainConfig(**given(args, TrainConfig, OPTIM))
    res = attack_job(data=_attacked_data(args), model_run=args.run, tap=args.tap,
                     attribute=args.private, head=args.head, config=config, out=args.out,
                     resume=args.resume, callbacks=console.Progress("attack").callbacks)
    print(summaries.attack_text(res, tap=args.tap, attribute=args.private))
    return _done("run folder", args.out)


def cmd_audit(args) -> int:
    config = TrainConfig(**given(args, TrainConfig, ("seed", "device")))
    audit = AuditConfig(**given(args, AuditConfig))
    result = audit_job(data=_attacked_data(args), model_run=args.run, tap=args.tap,
                       attribute=args.private, config=config, out=args.out, zoo=audit.zoo,
                       seeds=audit.seeds, folds=audit.folds, in_sample=audit.in_sample,
                       on_attacker=console.stage_line("audit"))
    print(audit_markdown(result))
    return _done("run folder", args.out)


def cmd_split_advisor(args) -> int:
    config = TrainConfig(**given(args, TrainConfig, ("seed", "device")))
    zoo = AuditConfig(**given(args, AuditConfig, ("zoo",))).zoo
    advice = AdviceConfig(**given(args, AdviceConfig))
    result = split_advice_job(data=_attacked_data(args), model_run=args.run,
                              attribute=args.private, config=config, out=args.out, zoo=zoo,
                              tolerance=advice.tolerance, repeats=advice.repeats,
                              on_attacker=console.stage_line("split-advisor"))
    print(advice_markdown(result))
    return _done("folder", args.out)


def cmd_reproduce(args) -> int:
    if args.data is None and "data" not in PRESETS.get(args.preset, {}):
        raise PrivatenetError("reproduce needs --data (rafdb:PATH for the paper's numbers, or "
                              "any dataset spec); only --preset demo names its own data")
    config = resolve_config(args.preset, given(args, ProtocolConfig)
                            | given(args, TrainConfig, ("epochs", "batch_size", "seed",
                                                        "device", *SPEED)))
    if args.dry_run:
        print(summaries.plan_text(protocol.plan(config=config, out=args.out)))
        return 0
    return _run_protocol(config, args.out)


def cmd_demo(args) -> int:
    return _run_protocol(resolve_config("demo", given(args, TrainConfig, ("seed", "device"))),
                         args.out)


def _run_protocol(config, out: str) -> int:
    """Run ``reproduce`` with stage lines and progress bars, then print the tables."""
    results = protocol.reproduce(config=config, out=out, on_stage=console.stage_state,
                                 callbacks=lambda name: console.Progress(name).callbacks)
    print(tables_markdown(results))
    return _done("report", Path(out) / "report.md")


def cmd_import_checkpoint(args) -> int:
    config = TrainConfig(**given(args, TrainConfig, ("device",)))
    data = DataConfig(**given(args, DataConfig)).load(out=args.out)
    res = import_public_job(checkpoint=args.checkpoint, data=data, out=args.out, config=config,
                            calibrate=not args.no_calibrate)
    print(summaries.import_text(res))
    return _done("run folder", args.out)


def cmd_export(args) -> int:
    check = ExportCheck(**given(args, ExportCheck))
    data = DataConfig(**given(args, DataConfig, ("data", "cache_dir")))
    doc = export_job(model_run=args.run, tap=args.tap, out=args.out, data=args.data,
                     cache_dir=data.cache_dir, check_images=check.check_images,
                     random_check=check.random_check, seed=check.seed)
    print(summaries.export_text(doc, out=args.out))
    return _done("export folder", args.out)


def cmd_video(args) -> int:
    bars = console.StageBars(unit="frame")
    try:
        s = video_job(input=args.input, model=args.run, out=args.out,
                      **given(args, VideoConfig),
                      on_frame=lambda read, total: bars("video", read, total))
    finally:
        bars.close()
    print(summaries.video_text(s))
    return _done("video folder", args.out)


def cmd_bench(args) -> int:
    bars = console.StageBars()
    try:
        result = bench_job(out=args.out, threads=args.threads, variants=args.variants,
                           **given(args, BenchConfig)
                           | {"compile": args.compile or "compile" in (args.variants or "")},
                           on_progress=bars)
    finally:
        bars.close()
    print(format_table(result))
    return _done("figures", args.out)


def cmd_data_info(args) -> int:
    data = DataConfig(args.spec, **given(args, DataConfig, ("image_size",)))
    print(summaries.data_text(data.load()))
    return 0


def _done(what: str, where) -> int:
    print(f"{what}: {where}")
    return 0


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``privatenet`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        options.load_config_defaults(parser, argv)
        args = parser.parse_args(argv)
    except PrivatenetError as e:
        return console.fail(str(e))
    console.log_to_stderr(verbose=args.verbose)

    def command() -> int:
        console.join_torchrun(args.command, allowed=DISTRIBUTED_COMMANDS)
        return COMMANDS[args.command](args)

    return console.guarded(command, hint=INTERRUPT_HINTS.get(args.command),
                           spell=lambda e: options.error_line(
                               e, options.subparsers(parser)[args.command]))


if __name__ == "__main__":
    sys.exit(main())
