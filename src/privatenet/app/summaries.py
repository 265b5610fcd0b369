"""The few lines each command prints once its job is done, made from the job's result.

The command line prints them; a library user can print them too. Longer reports (tables, audits,
advice) are Markdown in :mod:`privatenet.app.report`.
"""

from __future__ import annotations

from pathlib import Path

from privatenet.app.protocol import FORWARD_SHARE
from privatenet.data.base import Dataset


def leakage_text(title: str, r: dict) -> str:
    """An adversary's leakage on the test split (:func:`privatenet.metrics.leakage`'s dict)."""
    lo, hi = r["ci95"]
    return (f"{title}\n"
            f"  accuracy            {r['accuracy']:.4f}  (95% CI {lo:.4f}-{hi:.4f}, "
            f"n={r['n']})\n"
            f"  balanced accuracy   {r['balanced_accuracy']:.4f}\n"
            f"  majority-class rate {r['majority']:.4f}\n"
            f"  chance (1/K)        {r['chance']:.4f}\n"
            f"  normalised leakage  {r['normalized_leakage']:+.4f}  "
            f"((acc - majority) / (1 - majority); 0 = no leak beyond the majority class)")


def _utility(column: str, u: dict) -> str:
    return (f"{column} on the test split: accuracy {u['accuracy']:.4f}, balanced accuracy "
            f"{u['balanced_accuracy']:.4f}")


def train_text(res: dict, *, target: str, tap: str | None) -> str:
    """The task's utility and, for privacy training, the known and the co-trained adversary's
    leakage on the new features."""
    lines = [_utility(target, res["utility"])]
    for attr, r in (res.get("known_by") or {}).items():
        lines.append(leakage_text(f"known adversary ({attr} from {tap}) on the new features:", r))
    for attr, r in (res.get("co_trained_by") or {}).items():
        lines.append(leakage_text(f"adversary trained alongside ({attr} from {tap}):", r))
    return "\n".join(lines)


def attack_text(res: dict, *, tap: str, attribute: str) -> str:
    return leakage_text(f"adversary {res['head']} on tap {tap!r} predicting {attribute!r} "
                        "(test split):", res)


def import_text(res: dict) -> str:
    return f"{_utility('emotion', res['utility'])} (affinity {res['affinity']})"


def export_text(doc: dict, *, out: str | Path) -> str:
    """The two ONNX parts and how far ONNX Runtime is from torch on the check images."""
    lines = []
    for which, part in doc["parts"].items():
        shape = " x ".join(map(str, part["output_shape"]))
        lines.append(f"{which:9} {Path(out) / part['file']}: {part['parameters']:,} "
                     f"parameters, {part['bytes']:,} bytes, output {part['output_name']} "
                     f"{shape}")
    diff, check = doc["max_abs_diff"], doc["check_inputs"]
    images = ("images of " + check["data"] if check.get("source") == "data"
              else "random images")
    lines.append(f"max abs difference ONNX Runtime vs torch on {check['count']} {images}: "
                 f"untrusted {diff['untrusted']:.2e}, trusted {diff['trusted']:.2e}, end to "
                 f"end {diff['end_to_end']:.2e}")
    return "\n".join(lines)


def video_text(s: dict) -> str:
    """Frames, faces and each track's time on screen and dominant label."""
    rate = s["processing"]["frames_processed_per_s"]
    lines = [f"{s['input']['path']}: {s['frames_read']} frames at {s['fps']:.2f} fps, "
             f"{s['frames_processed']} processed ({rate} frames/s), {s['faces']} faces in "
             f"{len(s['tracks'])} tracks"]
    for t in s["tracks"]:
        lines.append(f"  track {t['track']}: {t['first']:.2f}-{t['last']:.2f} s, "
                     f"{t['seconds_on_screen']:.2f} s on screen, mostly {t['dominant']} "
                     f"({t['shares'][t['dominant']]:.0%})")
    return "\n".join(lines)


def data_text(data: Dataset) -> str:
    """Split sizes, class counts per label column and the majority-class rate."""
    lines = [f"dataset {data.name}"]
    for name, split in data.splits.items():
        lines.append(f"\nsplit {name}: {len(split)} images, {tuple(split.images.shape[1:])} "
                     "uint8")
        for col, classes in data.classes.items():
            counts = data.distribution(name, col)
            known = sum(v for k, v in counts.items() if k != "?")
            top = max((v for k, v in counts.items() if k != "?"), default=0)
            dist = ", ".join(f"{k} {v}" for k, v in counts.items())
            rate = top / known if known else float("nan")
            lines.append(f"  {col} ({len(classes)} classes): {dist}; majority rate {rate:.3f}"
                         + (f" of {known} known" if "?" in counts else ""))
    return "\n".join(lines)


def plan_text(p: dict) -> str:
    """``reproduce --dry-run``: every stage with its state, image passes and projected time."""
    lines = [f"{'stage':52s} {'state':6s} {'train passes':>13s} {'forward':>9s} "
             f"{'projected':>10s}"]
    for st in p["stages"]:
        lines.append(f"{st['stage']:52s} {'cached' if st['cached'] else 'to run':6s} "
                     f"{st['train_passes']:13,d} {st['forward_passes']:9,d} "
                     f"{duration(st['projected_seconds']):>10s}")
    t, env = p["throughput"], p["throughput"]["environment"]
    lines.append(f"{p['to_run']} of {len(p['stages'])} stages to run: {p['train_passes']:,} "
                 f"training and {p['forward_passes']:,} forward image passes, projected "
                 f"{duration(p['projected_seconds'])}")
    lines.append(f"from {t['train_images_per_s']:.1f} training images/s measured just now "
                 f"({t['variant']}, batch {t['batch_size']}, {t['image_size']} px, random "
                 f"tensors) on {env['device_name']} ({env['threads']} threads); forward-only "
                 f"passes counted at {FORWARD_SHARE:.2f} of a training step")
    if p["not_projected"]:
        lines.append(f"not projected: the attacker fitting of {len(p['not_projected'])} audit "
                     "stages (scikit-learn on the CPU; --audit-zoo none leaves them out)")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """``seconds`` in the unit a reader takes in at a glance (s, min or h)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
