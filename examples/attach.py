"""The method attached to a training loop in one call (``pn.make_private``): the loop calls
``net(x)`` and ``opt.step()`` as it always did; one line turns its loss into Eq. 8, and the
adversary, trained alongside (the min-max of Edwards & Storkey), takes its own step after every
``opt.step()``.

    python examples/attach.py faces.csv --task emotion --private gender

faces.csv as in ``own_loop.py`` (``path,split,<label columns>``).
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import privatenet as pn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_loop import load_csv, parse_args, print_report  # noqa: E402  (shared)


def main(argv=None):
    a = parse_args(argv)
    torch.manual_seed(0)
    (x, y, s), (xt, yt, st), names = load_csv(a.csv, a.task, a.private, a.size)
    net = torchvision.models.mobilenet_v3_small(num_classes=len(names[a.task]))
    net = pn.with_taps(net, {"features": "features"})  # names the layer; forward is unchanged
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    adversary = pn.create_adversary("mlp", tap_shape=(576, a.size // 32, a.size // 32),
                                    num_classes=len(names[a.private]))
    reg = pn.PrivacyRegularizer(adversary, loss="confusion", lam=a.lam, update="alternating")
    private_loss = pn.make_private(model=net, optimizer=opt, regularizer=reg, tap="features")

    for _ in range(a.epochs):  # the user's loop
        net.train()
        for idx in torch.randperm(len(x)).split(16):
            loss = private_loss(F.cross_entropy(net(x[idx]), y[idx]), s[idx])  # the one line
            opt.zero_grad()
            loss.backward()
            opt.step()  # the adversary steps right after

    private_loss.remove()
    net.eval()
    with torch.no_grad():
        logits, taps = net.forward_taps(xt)
        report = {"utility": pn.leakage(logits, yt, num_classes=len(names[a.task])),
                  "adversary trained alongside": pn.leakage(
                      reg.adversary.eval()(taps["features"]), st,
                      num_classes=len(names[a.private]))}
    print_report(report)
    return report


if __name__ == "__main__":
    main()
