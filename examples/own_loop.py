"""The paper's method in a plain PyTorch loop: a torchvision model, a CSV data set, a known
adversary, the confusion loss (Eq. 8), then the leakage report.

    python examples/own_loop.py faces.csv --task emotion --private gender

faces.csv: ``path,split,<label columns>`` (paths relative to the CSV; an empty cell is an
unknown label). Nothing here needs privatenet's data containers or training loop.
"""

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import privatenet as pn


def load_csv(path, task, private, size):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = {c: sorted({r[c] for r in rows if r[c]}) for c in (task, private)}
    def split(name):
        rs = [r for r in rows if r["split"] == name]
        x = torch.stack([torch.from_numpy(np.array(Image.open(Path(path).parent / r["path"])
                         .convert("RGB").resize((size, size)))).permute(2, 0, 1) for r in rs])
        y = [torch.tensor([names[c].index(r[c]) if r[c] else -1 for r in rs])
             for c in (task, private)]
        return x.float() / 255, *y
    return split("train"), split("test"), names


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("csv")
    p.add_argument("--task", default="emotion")
    p.add_argument("--private", default="gender")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lam", type=float, default=0.5)
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    torch.manual_seed(0)
    (x, y, s), (xt, yt, st), names = load_csv(a.csv, a.task, a.private, a.size)
    net = torchvision.models.mobilenet_v3_small(num_classes=len(names[a.task]))
    net = pn.with_taps(net, {"features": "features"})  # (N, 576, h, w)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def train(epochs, reg=None):
        for _ in range(epochs):
            net.train()
            for idx in torch.randperm(len(x)).split(16):
                logits, taps = net.forward_taps(x[idx])
                loss = F.cross_entropy(logits, y[idx])
                if reg is not None:  # Eq. 8; rows with an unknown private label are skipped
                    loss = reg(loss, taps["features"], s[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()

    train(a.epochs)  # the original network
    feats = pn.extract(net, x, tap="features")  # frozen features of the train split
    known = pn.create_adversary("mlp", tap_shape=tuple(feats.shape[1:]),
                                num_classes=len(names[a.private]))
    pn.fit_adversary(known, feats, s, epochs=20, device="cpu")
    reg = pn.PrivacyRegularizer(known, loss="confusion", lam=a.lam)
    train(a.epochs, reg)  # the privacy-preserving network, from the original one

    net.eval()
    with torch.no_grad():
        logits, taps = net.forward_taps(xt)
        test_feats = taps["features"]
        report = {"utility": pn.leakage(logits, yt, num_classes=len(names[a.task])),
                  "known adversary": pn.leakage(reg.adversary(test_feats), st,
                                                num_classes=len(names[a.private]))}
    # A fresh adversary retrained on the new features: the attacker who is not fooled.
    unknown = pn.create_adversary("mlp", tap_shape=tuple(feats.shape[1:]),
                                  num_classes=len(names[a.private]))
    pn.fit_adversary(unknown, pn.extract(net, x, tap="features"), s, epochs=20, device="cpu")
    with torch.no_grad():
        report["unknown adversary"] = pn.leakage(unknown.eval()(test_feats), st,
                                                 num_classes=len(names[a.private]))
    print_report(report)
    return report


def print_report(report):
    for name, r in report.items():
        print(f"{name:28s} accuracy {r['accuracy']:.3f}  balanced {r['balanced_accuracy']:.3f}"
              f"  majority {r['majority']:.3f}  normalised {r['normalized_leakage']:+.3f}")


if __name__ == "__main__":
    main()
