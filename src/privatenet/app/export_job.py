"""The ``export`` job: a trained network split at a tap into two ONNX files, in a run folder.

The split itself is the library's :func:`privatenet.export.export_split`; this job adds what a
run folder needs (docs/design.md §4): it loads the network of a finished ``train`` folder,
checks every input (the tap can be cut, the ``deploy`` extra is installed, check images can be
had), then claims ``out`` with :func:`~privatenet.train.rundir.open_run` (``kind="export"``) and
writes ``config.yaml``, ``untrusted.onnx``, ``trusted.onnx``, ``export.json`` and, last,
``results.json``. A finished export is never redone or overwritten. An export that fails (or is
interrupted) removes what it wrote, so no half-written folder is left; a killed one is redone by
the same command.

The check images are the first images of the test split of the run's data (decoded at the
model's input size), or, where that data cannot be loaded any more, seeded random images;
``export.json`` says which under ``check_inputs``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from privatenet.app.jobs import _model_stem, load_model
from privatenet.checks import check_seed, is_int
from privatenet.data import load_dataset
from privatenet.data.cache import check_cache_dir
from privatenet.errors import PrivatenetError, SettingError
from privatenet.export import EXPORT_FILES, OPSET, check_split, export_split, require_deploy
from privatenet.settings import setting
from privatenet.storage import checkpoint_digest, write_json, write_yaml
from privatenet.train.rundir import open_disposable_run

log = logging.getLogger(__name__)

#: How many check images an export takes by default, and at most.
CHECK_IMAGES = 16
MAX_CHECK_IMAGES = 256
#: Files of an export run folder besides the library's (``results.json`` last).
_JOB_FILES = ("config.yaml", "results.json")


@dataclass
class ExportCheck:
    """The images that check an export against torch, checked on creation."""

    check_images: int = setting(CHECK_IMAGES, "images that check the ONNX files against torch "
                                              "(the first of the test split)")
    random_check: bool = setting(False, "check with seeded random images instead of data")
    seed: int = setting(0, "seed of the random check images")

    def __post_init__(self) -> None:
        if not is_int(self.check_images) or not 1 <= self.check_images <= MAX_CHECK_IMAGES:
            raise SettingError("check_images", self.check_images,
                               f"is invalid; give an integer 1..{MAX_CHECK_IMAGES}")
        if not isinstance(self.random_check, bool):
            raise SettingError("random_check", self.random_check, "is invalid; give True or "
                                                                  "False")
        check_seed(self.seed)


def _random_images(n: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)


def check_inputs(*, data: str | None, run_data: str | None, image_size: int, count: int,
                 cache_dir: str | Path | None = None, random: bool = False, seed: int = 0
                 ) -> tuple[torch.Tensor, dict]:
    """``(uint8 images, description)``: ``count`` images to check an export with.

    ``data`` (a spec the user named) must load; the run's own data (``run_data``) may fail to
    (moved, deleted), and then, as with ``random``, seeded random images stand in. The images
    are the first of the ``test`` split (else of the first split), decoded at ``image_size``.
    """
    reason = "random images asked for" if random else None
    spec = data or run_data
    if not random and spec is None:
        reason = "the run names no data"
    if reason is None:
        try:
            dataset = load_dataset(spec, image_size=image_size, cache_dir=cache_dir)
        except (PrivatenetError, OSError, MemoryError) as e:
            if data is not None:
                raise
            reason = f"the run's data could not be loaded ({str(e).splitlines()[0][:200]})"
            log.warning("export: %s; checking with %d seeded random images", reason, count)
        else:
            name = "test" if "test" in dataset.splits else next(iter(dataset.splits))
            images = dataset.splits[name].images[:count]
            return images, {"source": "data", "data": dataset.name, "split": name,
                            "count": int(images.shape[0])}
    return _random_images(count, image_size, seed), {
        "source": "random", "seed": seed, "count": count, "reason": reason}


def export_job(*, model_run: str | Path, tap: str, out: str | Path,
               check_images: int = CHECK_IMAGES, data: str | None = None,
               cache_dir: str | Path | None = None, random_check: bool = False,
               seed: int = 0) -> dict:
    """Split the network of the finished ``train`` folder ``model_run`` at ``tap`` into
    ``out/untrusted.onnx`` (normalised images -> the tap's features, what an attacker reads)
    and ``out/trusted.onnx`` (features -> logits, for the TEE), with ``export.json``.

    ``check_images`` images (the first of the test split of ``data``, by default the run's own
    data, or ``seed``-ed random images with ``random_check`` or where the run's data cannot be
    loaded) check both parts against the torch model (:func:`privatenet.export.export_split`).
    Every input is checked before ``out`` is claimed; a folder holding a finished export is
    refused. Returns the content of ``export.json``.
    """
    count = ExportCheck(check_images, random_check, seed).check_images
    # Refused here, not where the run's own data falls back to random images on an error.
    check_cache_dir(cache_dir, out=out)
    net, meta = load_model(model_run)
    check_split(net, tap=tap)
    require_deploy()
    config = getattr(net, "config", {}) or {}
    image_size = meta.get("image_size") or config.get("image_size")
    if image_size is None:
        raise PrivatenetError(f"{model_run} does not record the image size its network takes; "
                              "pass the folder of a finished 'privatenet train' run")
    images, described = check_inputs(data=data, run_data=meta.get("data"),
                                     image_size=int(image_size), count=count,
                                     cache_dir=cache_dir, random=random_check, seed=seed)
    settings = {"job": "export", "model_run": str(model_run), "tap": tap,
                "check_images": count, "data": data, "random_check": random_check,
                "seed": seed, "opset": OPSET}
    fingerprint = {"network": checkpoint_digest(_model_stem(model_run)),
                   "settings": {k: v for k, v in settings.items() if k != "model_run"}}
    with open_disposable_run(out, kind="export", what="export", fingerprint=fingerprint,
                             outputs=lambda folder: [folder / name for name in
                                                     (*EXPORT_FILES, *_JOB_FILES)]) as run:
        write_yaml(run.path / "config.yaml", settings)
        doc = export_split(net, tap=tap, image_size=int(image_size), out_dir=run.path,
                           check_images=images, classes=meta.get("classes"),
                           metadata={"target": meta.get("target"), "model_run": str(model_run),
                                     "check_inputs": described})
        write_json(run.path / "results.json", {
            "tap": tap, "export": "export.json", "max_abs_diff": doc["max_abs_diff"],
            "parts": {k: {f: v[f] for f in ("file", "parameters", "bytes", "sha256")}
                      for k, v in doc["parts"].items()}})
    return doc
