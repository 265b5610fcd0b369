"""Run under torchrun by tests/test_distributed.py: one tiny fit per process, then each rank
saves its weights and metrics (``OUT/rank<R>.pt``, ``OUT/history<R>.json``)."""

import json
import sys
from pathlib import Path

import torch

from privatenet.models import create_model
from privatenet.train import distributed
from privatenet.train.loop import fit

sys.path.insert(0, str(Path(__file__).parent))
from data_helpers import make_split  # noqa: E402

SETTINGS = dict(epochs=3, batch_size=16, lr=1e-3, seed=7, device="cpu", augment=False)


def run(out: Path) -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3)
    history = fit(model=model, train=make_split(n=96), target="emotion", **SETTINGS)
    rank = distributed.world()[0]
    torch.save(model.state_dict(), out / f"rank{rank}.pt")
    (out / f"history{rank}.json").write_text(json.dumps(history))


if __name__ == "__main__":
    distributed.init_from_env()
    try:
        run(Path(sys.argv[1]))
    finally:
        distributed.shutdown()
