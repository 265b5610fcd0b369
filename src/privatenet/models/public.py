"""Import of the public ARM ResNet-18 checkpoints (``{"model_state_dict": ...}``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from privatenet.models.arm import AFFINITY_BUFFERS, ARMNet
from privatenet.models.registry import create_model
from privatenet.models.resnet import check_strict_keys, read_tensor_file, unwrap_state_dict

log = logging.getLogger(__name__)


def public_state_dict(model: ARMNet) -> dict[str, torch.Tensor]:
    """``model``'s state dict in the public layout (without our affinity buffers)."""
    return {k: v for k, v in model.state_dict().items() if k not in AFFINITY_BUFFERS}


def load_public_arm_checkpoint(path: str | os.PathLike, *, num_classes: int = 7,
                               image_size: int = 224,
                               calibration: Iterable[Any] | None = None) -> ARMNet:
    """Load a public ARM ResNet-18 checkpoint (``{"model_state_dict": ...}``), in eval mode.

    The file is read with ``torch.load(weights_only=True)`` (no arbitrary unpickling) and
    loaded strictly; ``module.`` prefixes (DataParallel) are stripped. The public checkpoints
    have no running affinity mean: with ``calibration`` (an iterable of normalised float image
    batches, for instance from the training split) it is estimated and the model stays in
    ``running`` mode; without, the model switches to ``batch`` mode (the public, batch-dependent
    behaviour) and a warning is logged. A checkpoint that has our affinity buffers keeps them.
    """
    p = Path(path)
    model = create_model("arm_resnet18", num_classes=num_classes, image_size=image_size)
    what = f"an ARM ResNet-18 checkpoint for num_classes={num_classes}, image_size={image_size}"
    state = unwrap_state_dict(read_tensor_file(p, "ARM checkpoint"), p,
                               "ARM ResNet-18 checkpoint")
    check_strict_keys(model.state_dict(), state, p, what, optional=AFFINITY_BUFFERS)
    has_buffers = all(k in state for k in AFFINITY_BUFFERS)
    model.load_state_dict(state, strict=False)
    model.eval()
    if calibration is not None:
        n = model.calibrate_affinity(calibration)
        log.info("%s: affinity mean calibrated on %d images", p, n)
    elif not (has_buffers and model.arm.calibrated):
        model.arm.affinity = "batch"
        log.warning(
            "%s: public checkpoint has no running affinity mean; using affinity='batch', so "
            "inference depends on the other images in the batch until the model is calibrated "
            "(pass calibration=... or call model.calibrate_affinity(batches))", p,
        )
    return model
