"""Choose the ``vib`` defence's settings on defender rows only (docs/design.md §2.2, §6).

The rule: no defence setting may be chosen on a row the audit scores or trains on. So this
script reads only the train split of a ``reproduce`` run's data (after its attacker rows were
carved out) and cuts it once more: three quarters (T1) train an original network and every
candidate, the last quarter (U, stratified by task and private label) is never trained on and
scores them: task accuracy, and the attacker zoo cross-fitted on U's features at the tap, with
the floor (the same zoo on the logits). The test and attacker splits are never read.

Usage::

    python benchmarks/defence_tuning.py                       # demo data, age, backbone
    python benchmarks/defence_tuning.py --channels 8,16,32 --lams 0.25,0.5 --zoo full
    python benchmarks/defence_tuning.py --data digits:size=64,seed=0,test_fraction=0.25 \
        --target digit --private ink --attacker-share 0.3 --channels 16,32,64 --zoo full

Give the ``--attacker-share`` of the benchmark run the settings are for, so that the rows its
attackers train on are carved out here too and never read.

Prints one row per candidate (the lambda = 0 control first): utility on U, worst leakage,
floor and gap. Settings are read off this table before any benchmark audit is run.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch

import privatenet as pn
from privatenet.app.protocol import protocol_data, resolve_config
from privatenet.bottleneck import bottleneck_at_tap
from privatenet.data.base import Dataset, carve_attacker_split
from privatenet.train.loop import extract


def _scores(net, u, *, tap: str, target: str, private: str, k: int, zoo: str) -> dict:
    torch.manual_seed(0)  # a vib network draws noise in every forward pass
    logits = extract(net, u.images, tap=None)
    feats = extract(net, u.images, tap=tap)
    utility = float((logits.argmax(1) == u.labels[target]).float().mean())
    worst = pn.audit(scoring=(feats, u.labels[private]), num_classes=k, zoo=zoo, curve=(),
                     mdl=False)["worst"]
    floor = pn.audit(scoring=(logits, u.labels[private]), num_classes=k, zoo=zoo, curve=(),
                     mdl=False)["worst"]["leakage"]
    return {"utility": utility, "worst": worst["leakage"], "attacker": worst["attacker"],
            "floor": floor, "gap": worst["leakage"] - floor}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="data spec (default: the demo preset's)")
    p.add_argument("--target", default="emotion")
    p.add_argument("--private", default="age")
    p.add_argument("--tap", default="backbone")
    p.add_argument("--channels", default="16", help="comma list of code channels")
    p.add_argument("--lams", default="0.5", help="comma list of lambdas")
    p.add_argument("--zoo", choices=("quick", "full"), default="quick")
    p.add_argument("--attacker-share", type=float, default=0.2,
                   help="the benchmark run's share (its attacker rows must stay unread here)")
    args = p.parse_args(argv)
    overrides = {"target": args.target, "private": [args.private], "device": "cpu",
                 "attacker_share": args.attacker_share}
    if args.data:
        overrides["data"] = args.data
    cfg = resolve_config("demo", overrides)
    data = protocol_data(cfg)  # the run's data: its attacker rows already carved out
    columns = [args.target, args.private]
    train = Dataset("defender rows", {"train": data.split("train", columns)}, data.classes)
    cut = carve_attacker_split(train, share=0.25, columns=columns, seed=1)
    t1, u = cut.splits["train"], cut.splits["attacker"]
    k = len(data.classes[args.private])
    size = int(t1.images.shape[-1])
    start = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    original = pn.create_model(cfg.model, num_classes=len(data.classes[args.target]),
                               image_size=size)
    pn.fit(model=original, train=t1, target=args.target, config=cfg.train)
    finetune = cfg.stage_config(cfg.privacy_epochs)
    rows = []
    candidates = [(None, 0.0)] + [(int(c), float(lam)) for c in args.channels.split(",")
                                  for lam in args.lams.split(",")]
    for channels, lam in candidates:
        torch.manual_seed(cfg.train.seed)
        if channels is None:  # the lambda = 0 control: the same fine-tuning, no bottleneck
            net = copy.deepcopy(original)
            pn.fit(model=net, train=t1, target=args.target, config=finetune)
        else:
            net = bottleneck_at_tap(original, tap=args.tap, channels=channels, image_size=size)
            reg = pn.PrivacyRegularizer(None, loss="vib", lam=lam, bottleneck=net.bottleneck)
            pn.fit(model=net, train=t1, target=args.target, config=finetune, regularizer=reg,
                   tap=args.tap, private=args.private)
        rows.append({"channels": channels, "lam": lam,
                     **_scores(net, u, tap=args.tap, target=args.target,
                               private=args.private, k=k, zoo=args.zoo)})
        r = rows[-1]
        print(f"{'control' if channels is None else f'vib {channels} ch, lam {lam:g}'}: "
              f"utility {100 * r['utility']:.1f} %, worst {r['worst']:+.3f} ({r['attacker']}), "
              f"floor {r['floor']:+.3f}, gap {r['gap']:+.3f}", flush=True)
    print(f"\n{data.name}, {args.private} at {args.tap}; {len(t1)} rows train, {len(u)} "
          f"score (never trained on); {args.zoo} zoo cross-fitted on them; "
          f"{platform.machine()}, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
