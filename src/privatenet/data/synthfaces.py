"""``synthfaces``: procedurally drawn faces, the built-in stand-in for RAF-DB.

Every face carries three labels, sampled from the real RAF-DB joint label distribution
(``rafdb_label_counts.json``, counts[split][emotion][gender][age]), so marginals and correlations
match the real data set: happiness is the majority emotion, 20-39 the majority age group, and
most faces of "unsure" gender are babies. "Unsure" faces get gender label ``MISSING`` and are
drawn with mixed cues.

What the pictures encode, and why:

* **Emotion** (the task) is carried by the same action units people read: mouth shape (smile
  curve with teeth for happiness, an open "O" for surprise, a wide stretched opening for fear,
  downturned corners for sadness, tight pressed lips or bared teeth for anger, an asymmetric
  sneer with a wrinkled nose for disgust, flat for neutral), eyebrow height and angle (raised for
  surprise and fear, inner ends raised for sadness and fear, an inner-lowered "V" for anger) and
  eye openness (wide for surprise and fear, narrowed for happiness, disgust and anger). Each face
  has a random expression intensity and individual variation, so weak expressions overlap with
  neutral and with each other: the task is learnable but not trivial.
* **Gender** is encoded only incidentally, the way real faces encode it, spread over many pixels:
  hair length and style (long for most women, short for most men, with overlap), jaw width and
  chin shape, eyebrow thickness and arch, lip colour and thickness, eye make-up, stubble or a
  beard on some adult men. Babies show these cues only weakly.
* **Age** is encoded by head proportions (babies: big round cranium, eyes low on the face, small
  nose and mouth, sparse hair; 4-19: rounder, shorter lower face), wrinkles (forehead lines,
  nasolabial folds for 40-69; more of them plus crow's feet and eye bags for 70+) and hair
  (greying for 40-69; mostly grey or white, often bald for men, for 70+).
* **Nuisance** variation that a classifier must ignore: head pose (in-plane rotation up to 15
  degrees, translation, scale), lighting gradient direction and strength, overall brightness,
  skin tone over a wide range, hair and eye colour, clothing, background colour and texture and
  pixel noise.

Because the expression network sees hair, jaw, wrinkles and proportions in the same pixels as the
expression, its features leak gender and age the way a real RAF-DB network's do, which is what the
privacy defences of this package have to suppress.

Faces are drawn with PIL at 2x-4x the output size (polygons in a rotated face frame) and
downsampled with a box filter for antialiasing; lighting and noise are applied to whole batches
with numpy. Everything is driven by one seed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from importlib import resources

import numpy as np
import torch
from PIL import Image, ImageDraw

from privatenet.data.base import MISSING, Dataset, Split
from privatenet.data.labels import AGE_GROUPS, EMOTIONS, GENDERS
from privatenet.data.spec import (
    SYNTHFACES_DEFAULTS,
    DataSpec,
    builtin_options,
    check_fits_in_memory,
    check_synthfaces_options,
    parse_spec,
)
from privatenet.errors import PrivatenetError

__all__ = [
    "AGE_GROUPS",
    "EMOTIONS",
    "GENDERS",
    "make_synthfaces",
    "synthfaces_from_spec",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Label distribution
# --------------------------------------------------------------------------------------------


def _load_counts() -> dict[str, np.ndarray]:
    """The RAF-DB joint label counts shipped as package data, as (7, 3, 5) arrays per split."""
    text = resources.files("privatenet.data").joinpath("rafdb_label_counts.json").read_text()
    raw = json.loads(text)
    if (
        tuple(raw["emotion_names"]) != EMOTIONS
        or tuple(raw["gender_names"][:2]) != GENDERS
        or tuple(raw["age_names"]) != AGE_GROUPS
    ):
        raise PrivatenetError("rafdb_label_counts.json has unexpected class names; reinstall")
    counts = {s: np.asarray(raw["counts"][s], dtype=np.float64) for s in ("train", "test")}
    for s, c in counts.items():
        if c.shape != (7, 3, 5) or c.sum() <= 0:
            raise PrivatenetError(f"rafdb_label_counts.json split {s!r} has shape {c.shape}")
    return counts


def _sample_cells(rng: np.random.Generator, table: np.ndarray, m: int) -> np.ndarray:
    """``m`` (emotion, gender, age) triples drawn from ``table``'s normalised joint counts."""
    p = table.ravel() / table.sum()
    cells = rng.choice(p.size, size=m, p=p)
    _cover_classes(rng, cells, table)
    return np.stack(np.unravel_index(cells, table.shape), axis=1)


def _cover_classes(rng: np.random.Generator, cells: np.ndarray, table: np.ndarray) -> None:
    """Make every emotion, known gender and age class appear at least once, if room allows.

    A classifier cannot learn a class its training split lacks (``Dataset.split`` refuses), and
    small multinomial samples miss rare cells (fear is 2 % of RAF-DB). A missing class is put in by
    redrawing one row from the joint distribution conditioned on that class; the row replaced is
    one whose classes all appear at least twice, so no other class is lost. For the default sizes
    this changes nothing.
    """
    shape = table.shape
    p = table.ravel() / table.sum()
    columns = ((0, range(7)), (1, range(2)), (2, range(5)))
    for col, classes in columns:
        for c in classes:
            lab = np.stack(np.unravel_index(cells, shape), axis=1)
            if (lab[:, col] == c).any():
                continue
            mask = np.zeros(shape, dtype=bool)
            index = [slice(None)] * 3
            index[col] = c
            mask[tuple(index)] = True
            cond = np.where(mask.ravel(), p, 0.0)
            if cond.sum() <= 0:
                continue
            safe = np.ones(len(cells), dtype=bool)
            for k in range(3):
                counts = np.bincount(lab[:, k], minlength=shape[k])
                safe &= counts[lab[:, k]] >= 2
            if not safe.any():
                logger.debug("synthfaces: split too small to contain class %d of column %d", c, col)
                continue
            row = rng.choice(np.flatnonzero(safe))
            cells[row] = rng.choice(p.size, p=cond / cond.sum())


# --------------------------------------------------------------------------------------------
# Face parameters (vectorised over all faces of a split)
# --------------------------------------------------------------------------------------------

# Expression targets at full intensity. Columns: mouth corner drop (negative = corners up),
# mouth opening, mouth width factor, opening squareness exponent, sneer (upper lip raise on one
# side), probability of showing teeth, lip thickness factor, eye openness, brow raise, inner
# brow raise (negative = inner ends lowered, the anger "V"), nose wrinkle, smile folds.
_EXPR_COLS = (
    "cy", "open", "width", "square", "sneer", "teeth", "lip", "eye", "raise", "inner", "nosewr",
    "fold",
)  # fmt: skip
_EXPR = np.array(
    [
        # cy     open   width  sq   sneer  teeth  lip   eye   raise   inner   nosewr fold
        [0.000, 0.060, 0.60, 2.0, 0.000, 0.15, 0.90, 1.70, 0.042, 0.000, 0.0, 0.0],  # surprise
        [0.014, 0.030, 1.12, 4.0, 0.000, 0.60, 0.80, 1.55, 0.024, 0.028, 0.0, 0.0],  # fear
        [0.014, 0.006, 0.95, 2.0, 0.030, 1.00, 1.00, 0.55, -0.012, -0.010, 1.0, 0.3],  # disgust
        [-0.048, 0.020, 1.22, 3.0, 0.000, 1.00, 0.85, 0.62, 0.004, 0.000, 0.0, 1.0],  # happiness
        [0.034, 0.000, 0.92, 2.0, 0.000, 0.00, 1.15, 0.80, -0.004, 0.032, 0.0, 0.0],  # sadness
        [0.010, 0.000, 0.84, 2.0, 0.000, 0.00, 0.45, 0.70, -0.020, -0.040, 0.3, 0.0],  # anger
        [0.000, 0.000, 1.00, 2.0, 0.000, 0.00, 1.00, 1.00, 0.000, 0.000, 0.0, 0.0],  # neutral
    ]
)
_NEUTRAL = _EXPR[6]

# Head geometry per age group: half width, cranium half height, lower face half height, eye
# height, eye spacing, eye half width, eye half height, iris radius, nose tip height, nose size,
# mouth height, mouth half width, gender cue strength.
_GEOM_COLS = ("w", "htop", "hbot", "ey", "ex", "ew", "eh", "ir", "ny", "ns", "my", "mw", "cue")
_GEOM = np.array(
    [
        [0.305, 0.400, 0.250, 0.060, 0.104, 0.056, 0.034, 0.027, 0.125, 0.65, 0.180, 0.058, 0.25],
        [0.275, 0.360, 0.300, 0.000, 0.106, 0.056, 0.028, 0.023, 0.095, 0.90, 0.178, 0.078, 0.70],
        [0.268, 0.360, 0.335, -0.030, 0.105, 0.054, 0.026, 0.021, 0.080, 1.00, 0.170, 0.085, 1.00],
        [0.268, 0.355, 0.340, -0.030, 0.105, 0.053, 0.024, 0.020, 0.085, 1.05, 0.175, 0.085, 1.00],
        [0.262, 0.350, 0.345, -0.030, 0.104, 0.052, 0.021, 0.019, 0.090, 1.08, 0.182, 0.083, 0.85],
    ]
)

# Hair style probabilities per (gender male/female/unsure, age): none(bald), sparse, short,
# medium (jaw length), long.
_STYLE = np.array(
    [
        # male
        [[0.00, 0.65, 0.35, 0.00, 0.00], [0.00, 0.00, 0.85, 0.10, 0.05],
         [0.04, 0.00, 0.85, 0.07, 0.04], [0.12, 0.00, 0.80, 0.06, 0.02],
         [0.55, 0.00, 0.37, 0.08, 0.00]],
        # female
        [[0.00, 0.55, 0.25, 0.15, 0.05], [0.00, 0.00, 0.10, 0.20, 0.70],
         [0.00, 0.00, 0.10, 0.25, 0.65], [0.00, 0.00, 0.20, 0.35, 0.45],
         [0.00, 0.00, 0.45, 0.40, 0.15]],
        # unsure: between the two
        [[0.00, 0.60, 0.28, 0.09, 0.03], [0.00, 0.00, 0.45, 0.15, 0.40],
         [0.02, 0.00, 0.45, 0.18, 0.35], [0.06, 0.00, 0.50, 0.20, 0.24],
         [0.25, 0.00, 0.40, 0.25, 0.10]],
    ]
)  # fmt: skip
_STYLE_NONE, _STYLE_SPARSE, _STYLE_SHORT, _STYLE_MEDIUM, _STYLE_LONG = range(5)

_HAIR_COLOURS = np.array(
    [[22, 18, 16], [52, 36, 26], [95, 62, 40], [140, 100, 62], [200, 165, 105], [145, 70, 36]],
    dtype=np.float64,
)
_HAIR_P = np.array([0.30, 0.25, 0.18, 0.12, 0.10, 0.05])
_EYE_COLOURS = np.array(
    [[60, 38, 25], [95, 60, 35], [70, 100, 140], [80, 110, 70], [30, 22, 18]], dtype=np.float64
)


def _choice_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One category per row of ``probs`` (N, K) by inverse CDF."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    return np.minimum((u[:, None] > cum).sum(axis=1), probs.shape[1] - 1)


def _sample_params(
    rng: np.random.Generator, emo: np.ndarray, gen: np.ndarray, age: np.ndarray
) -> dict[str, np.ndarray]:
    """Every random quantity of every face, as arrays of length N (one entry per face)."""
    n = len(emo)
    u = rng.random
    p: dict[str, np.ndarray] = {}

    # Expression: neutral + intensity * (target - neutral) + individual noise.
    inten = u(n) * 0.75 + 0.25
    target = _EXPR[emo]
    ex = _NEUTRAL + inten[:, None] * (target - _NEUTRAL)
    for i, name in enumerate(_EXPR_COLS):
        p[name] = ex[:, i].copy()
    p["intensity"] = inten
    # Happy: some smiles are closed; anger: some bare the teeth instead of pressing the lips.
    happy = emo == 3
    p["open"][happy] *= u(happy.sum()) * 1.6
    bared = (emo == 5) & (u(n) < 0.3)
    p["open"][bared] = 0.014 * inten[bared] + 0.006
    p["lip"][bared] = 0.7
    p["teeth"][bared] = 1.0
    p["cy"] += rng.normal(0, 0.006, n)
    p["open"] = np.clip(p["open"] + rng.normal(0, 0.003, n), 0, None)
    p["width"] *= rng.normal(1, 0.07, n)
    p["eye"] = np.clip(p["eye"] * rng.normal(1, 0.10, n), 0.35, 2.2)
    p["raise"] += rng.normal(0, 0.008, n)
    p["inner"] += rng.normal(0, 0.007, n)
    p["show_teeth"] = u(n) < p["teeth"]
    p["sneer_side"] = np.where(u(n) < 0.5, -1.0, 1.0)

    # Head geometry by age group, with individual variation.
    geom = _GEOM[age] * rng.normal(1, 0.035, (n, len(_GEOM_COLS)))
    for i, name in enumerate(_GEOM_COLS):
        p[name] = geom[:, i]
    p["cue"] = _GEOM[age, -1]

    # Femininity in [0, 1]: male ~0.25, female ~0.75, unsure ~0.5; cue strength shrinks it
    # towards 0.5 for babies and children.
    fem = np.where(gen == 0, rng.beta(2, 6, n), np.where(gen == 1, rng.beta(6, 2, n), 0))
    fem = np.where(gen == 2, u(n) * 0.4 + 0.3, fem)
    fem = 0.5 + p["cue"] * (fem - 0.5)
    p["fem"] = fem
    # Jaw: wide and square for men, narrower with a rounder chin for women; chubby and round
    # for babies and children.
    p["jaw"] = 1.04 - 0.16 * fem + np.array([0.09, 0.03, 0, 0, 0])[age] + rng.normal(0, 0.025, n)
    jaw_exp = 2.9 - 1.2 * fem + rng.normal(0, 0.15, n)
    p["jaw_exp"] = np.where(age == 0, 2.1 + rng.normal(0, 0.1, n), jaw_exp)
    p["brow_t"] = (0.034 - 0.022 * fem) * rng.normal(1, 0.12, n)
    p["brow_arch"] = 0.004 + 0.012 * fem
    p["lip_t"] = (0.011 + 0.008 * fem) * rng.normal(1, 0.1, n)
    adult = age >= 2
    p["lipstick"] = (gen == 1) & (age >= 1) & (u(n) < np.where(adult, 0.6, 0.25))
    p["makeup"] = (gen == 1) & (age >= 1) & (u(n) < 0.65)
    p["blush"] = (age == 0) | ((gen == 1) & (u(n) < 0.3))
    male_adult = (gen == 0) & adult
    beard_roll = u(n)
    p["beard"] = np.where(male_adult & (beard_roll < 0.13), 2, 0)
    p["beard"] = np.where(male_adult & (beard_roll >= 0.13) & (beard_roll < 0.45), 1, p["beard"])

    # Hair style, colour, greying, length, volume.
    p["style"] = _choice_rows(rng, _STYLE[gen, age])
    receding_p = np.array([0.0, 0.0, 0.08, 0.35, 0.6])[age] * (gen == 0)
    p["receding"] = u(n) < receding_p
    p["fringe"] = (p["style"] >= _STYLE_MEDIUM) & (u(n) < 0.35)
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), size=n, p=_HAIR_P)]
    hair = hair * rng.normal(1, 0.08, (n, 1))
    grey = np.select(
        [age == 3, age == 4, age == 2],
        [u(n) * 0.65, 0.55 + u(n) * 0.45, np.where(u(n) < 0.06, u(n) * 0.3, 0.0)],
        0.0,
    )
    grey_col = 175 + 60 * grey[:, None]
    p["hair"] = hair * (1 - grey[:, None]) + grey_col * grey[:, None]
    p["hair_end"] = np.where(
        p["style"] == _STYLE_LONG, 0.28 + u(n) * 0.3, 0.10 + u(n) * 0.12
    )
    p["hair_vol"] = np.where(age == 0, 0.005 + u(n) * 0.015, 0.015 + u(n) * 0.05)
    p["hairline"] = -0.215 - u(n) * 0.03 - 0.07 * p["receding"] - 0.05 * (age == 0)

    # Wrinkles: forehead lines count, nasolabial fold, crow's feet, eye bags (strength 0..1).
    wr = np.select([age == 3, age == 4, age == 2], [u(n) * 0.8 + 0.1, 0.75 + u(n) * 0.25,
                                                     u(n) * 0.15], 0.0)
    p["wrinkle"] = wr

    # Nuisance: pose, skin, eyes, background, clothing, lighting, noise.
    # Pose: like RAF-DB's landmark-aligned crops, residual misalignment is mostly small, with
    # occasional tilts up to 15 degrees.
    p["angle"] = np.deg2rad(np.clip(rng.normal(0, 6.0, n), -15, 15))
    p["tx"] = np.clip(rng.normal(0, 0.02, n), -0.05, 0.05)
    p["ty"] = np.clip(rng.normal(0, 0.02, n), -0.05, 0.05)
    p["scale"] = np.clip(rng.normal(1.1, 0.045, n), 0.97, 1.22)
    t = u(n)
    dark = np.array([88, 56, 40.0])
    mid = np.array([190, 135, 100.0])
    light = np.array([246, 212, 190.0])
    skin = np.where(
        (t < 0.5)[:, None],
        dark + (mid - dark) * (2 * t)[:, None],
        mid + (light - mid) * (2 * t - 1)[:, None],
    )
    p["skin"] = np.clip(skin + rng.normal(0, 7, (n, 3)), 0, 255)
    p["iris"] = _EYE_COLOURS[rng.integers(0, len(_EYE_COLOURS), n)]
    p["gaze"] = rng.normal(0, 0.006, n)
    bg = rng.uniform(20, 235, (n, 3))
    p["bg"] = bg * 0.7 + bg.mean(axis=1, keepdims=True) * 0.3
    p["bg_kind"] = rng.integers(0, 4, n)
    p["cloth"] = rng.uniform(15, 230, (n, 3))
    p["light_dir"] = rng.uniform(0, 2 * np.pi, n)
    p["light_amp"] = rng.uniform(0.0, 0.38, n)
    p["bright"] = rng.uniform(0.78, 1.12, n)
    p["noise"] = rng.uniform(1.0, 7.0, n)
    return p


# --------------------------------------------------------------------------------------------
# Drawing one face
# --------------------------------------------------------------------------------------------

_T24 = np.linspace(0, 2 * np.pi, 24, endpoint=False)
_C24, _S24 = np.cos(_T24), np.sin(_T24)
_TOP = np.linspace(np.pi, 2 * np.pi, 17)  # upper half of an ellipse, left to right
_BOT = np.linspace(0, np.pi, 17)  # lower half, right to left
_XS = np.linspace(-1, 1, 13)


def _rgb(c: np.ndarray | tuple) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))  # type: ignore[return-value]


def _mix(a: np.ndarray, b: np.ndarray | tuple, t: float) -> np.ndarray:
    return np.asarray(a, dtype=np.float64) * (1 - t) + np.asarray(b, dtype=np.float64) * t


class _Canvas:
    """A PIL canvas with a rotated, scaled face frame: face units are fractions of the image."""

    def __init__(self, img: Image.Image, d: int, cx: float, cy: float, scale: float, angle: float):
        self.draw = ImageDraw.Draw(img)
        self.k = scale * d
        self.cx, self.cy = cx * d, cy * d
        self.cos, self.sin = math.cos(angle) * self.k, math.sin(angle) * self.k

    def pts(self, x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
        px = self.cx + self.cos * x - self.sin * y
        py = self.cy + self.sin * x + self.cos * y
        return list(zip(px.tolist(), py.tolist(), strict=True))

    def poly(self, x: np.ndarray, y: np.ndarray, fill: tuple[int, int, int]) -> None:
        self.draw.polygon(self.pts(x, y), fill=fill)

    def ellipse(self, x0: float, y0: float, rx: float, ry: float, fill) -> None:
        self.draw.polygon(self.pts(x0 + rx * _C24, y0 + ry * _S24), fill=fill)

    def line(self, x: np.ndarray, y: np.ndarray, fill, width: float) -> None:
        w = max(1, int(round(width * self.k)))
        self.draw.line(self.pts(np.asarray(x), np.asarray(y)), fill=fill, width=w, joint="curve")


def _background(img: Image.Image, d: int, p: dict, i: int, rng: np.random.Generator) -> None:
    kind = int(p["bg_kind"][i])
    if kind == 0:
        return
    draw = ImageDraw.Draw(img)
    bg = p["bg"][i]
    if kind == 1:  # soft vertical or horizontal bands
        steps = 6
        horizontal = rng.random() < 0.5
        delta = rng.uniform(-60, 60)
        for s in range(steps):
            col = _rgb(bg + delta * (s / (steps - 1) - 0.5))
            a, b = d * s / steps, d * (s + 1) / steps
            box = (0, a, d, b) if horizontal else (a, 0, b, d)
            draw.rectangle(box, fill=col)
    elif kind == 2:  # diagonal stripes
        col = _rgb(bg + rng.uniform(-50, 50, 3))
        period = d * rng.uniform(0.12, 0.3)
        for s in range(-2, int(2 * d / period) + 2):
            x0 = s * period
            draw.polygon(
                [(x0, 0), (x0 + period / 2, 0), (x0 + period / 2 - d, d), (x0 - d, d)], fill=col
            )
    else:  # blobs
        for _ in range(int(rng.integers(3, 7))):
            r = d * rng.uniform(0.08, 0.25)
            x, y = rng.uniform(0, d, 2)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=_rgb(bg + rng.uniform(-55, 55, 3)))


def _draw_face(p: dict, i: int, d: int, rng: np.random.Generator) -> Image.Image:
    """Draw face ``i`` on a ``d`` x ``d`` RGB canvas (before lighting and noise)."""
    g = {k: float(p[k][i]) for k in _GEOM_COLS}
    w, htop, hbot = g["w"], g["htop"], g["hbot"]
    ey, ex, ew, eh, ir = g["ey"], g["ex"], g["ew"], g["eh"], g["ir"]
    ny, ns, my, mw = g["ny"], g["ns"], g["my"], g["mw"]
    skin = p["skin"][i]
    hair = p["hair"][i]
    fem = float(p["fem"][i])
    style = int(p["style"][i])
    age_wr = float(p["wrinkle"][i])

    img = Image.new("RGB", (d, d), _rgb(p["bg"][i]))
    _background(img, d, p, i, rng)
    cv = _Canvas(img, d, 0.5 + p["tx"][i], 0.5 + p["ty"][i], p["scale"][i], p["angle"][i])
    skin_c = _rgb(skin)
    shade = _rgb(skin * 0.82)
    line_c = _rgb(skin * 0.66)
    hair_c = _rgb(hair)

    # Clothing, neck.
    sh_w = 0.48 - 0.06 * fem
    cv.poly(np.array([-sh_w - 0.2, -sh_w, -0.12, 0.12, sh_w, sh_w + 0.2]),
            np.array([1.0, hbot + 0.12, hbot + 0.06, hbot + 0.06, hbot + 0.12, 1.0]),
            _rgb(p["cloth"][i]))  # fmt: skip
    nk = w * (0.52 - 0.12 * fem)
    cv.poly(np.array([-nk, nk, nk, -nk]), np.array([0.0, 0.0, hbot + 0.14, hbot + 0.14]), shade)

    # Hair behind the head (medium and long styles).
    vol = float(p["hair_vol"][i])
    if style in (_STYLE_MEDIUM, _STYLE_LONG):
        end = float(p["hair_end"][i])
        ax, ay = w + vol + 0.01, htop + vol + 0.01
        xs = np.concatenate([ax * np.cos(_TOP), [ax + 0.03, w * 0.6, -w * 0.6, -ax - 0.03]])
        ys = np.concatenate([ay * np.sin(_TOP), [end, end + 0.03, end + 0.03, end]])
        cv.poly(xs, ys, hair_c)

    # Ears.
    for s in (-1, 1):
        cv.ellipse(s * w * 0.99, ey + 0.035, 0.032, 0.058, shade)

    # Face outline: cranium ellipse on top, superellipse jaw below (square for wide male jaws).
    jaw, jexp = float(p["jaw"][i]), float(p["jaw_exp"][i])
    cb, sb = np.cos(_BOT), np.sin(_BOT)
    fx = np.concatenate([w * np.cos(_TOP), w * jaw * np.sign(cb) * np.abs(cb) ** (2 / jexp)])
    fy = np.concatenate([htop * np.sin(_TOP), hbot * np.abs(sb) ** (2 / jexp)])
    cv.poly(fx, fy, skin_c)

    # Beard or stubble over the lower face (drawn before the mouth).
    beard = int(p["beard"][i])
    if beard:
        side = my - 0.025
        sel = fy[17:] > side
        bx = fx[17:][sel] * 0.99
        by = fy[17:][sel] + (0.03 if beard == 2 else 0.0) * np.abs(np.sin(_BOT[sel]))
        edge = w * jaw * 0.98
        ux = np.array([-edge, -w * 0.55, -0.05, 0.0, 0.05, w * 0.55, edge])
        uy = np.array([side, ny + 0.05, ny + 0.022, ny + 0.028, ny + 0.022, ny + 0.05, side])
        bx = np.concatenate([ux, bx])
        by = np.concatenate([uy, by])
        colour = hair_c if beard == 2 else _rgb(_mix(skin * 0.76, hair, 0.2))
        cv.poly(bx, by, colour)

    # Cheeks: blush for babies and some women.
    if p["blush"][i]:
        for s in (-1, 1):
            cv.ellipse(s * (ex + 0.02), ny + 0.01, 0.045, 0.03, _rgb(_mix(skin, (230, 120, 120),
                                                                          0.3)))

    # Hair on top: a cap whose lower edge is the hairline (receded for some older men), sparse
    # and skin-tinted for babies, only a fringe at the sides for bald heads.
    hl = float(p["hairline"][i])
    if style == _STYLE_NONE:
        for s in (-1, 1):
            xs = s * np.array([w * 0.86, w + 0.025, w + 0.02, w * 0.9])
            cv.poly(xs, np.array([-0.14, -0.12, ey + 0.06, ey + 0.04]), hair_c)
    else:
        sparse = style == _STYLE_SPARSE
        v = 0.004 if sparse else vol
        ax, ay = w + v, htop + v
        if sparse:
            hl = -htop * 0.62
        side = ey + 0.02 if not sparse else -htop * 0.4
        top_t = _TOP if not sparse else np.linspace(np.pi * 1.12, np.pi * 1.88, 13)
        xs = np.concatenate([ax * np.cos(top_t), [w * 0.97, w * 0.8, w * 0.35, 0.0, -w * 0.35,
                                                   -w * 0.8, -w * 0.97]])
        ys = np.concatenate([ay * np.sin(top_t), [side, hl + 0.05, hl + 0.008, hl, hl + 0.008,
                                                   hl + 0.05, side]])
        if sparse:
            ys[-7] = ys[-1] = ay * np.sin(top_t[0])
        colour = _rgb(_mix(skin, hair, 0.55)) if sparse else hair_c
        cv.poly(xs, ys, colour)
        if style in (_STYLE_MEDIUM, _STYLE_LONG):
            # Strands framing the face, covering the ears.
            end = min(float(p["hair_end"][i]), hbot * 0.7)
            for s in (-1, 1):
                xs = s * np.array([w * 0.6, w + vol, w + vol + 0.01, w * 0.78])
                cv.poly(xs, np.array([hl + 0.01, -0.1, end, end - 0.02]), hair_c)
            if p["fringe"][i]:
                fy_ = ey - 0.085
                cv.poly(np.array([-w * 0.85, -w * 0.3, 0.0, w * 0.4, w * 0.85, w * 0.5, -w * 0.5]),
                        np.array([hl + 0.04, fy_, fy_ + 0.01, fy_, hl + 0.04, hl, hl]), hair_c)

    # Eyebrows: height, inner-end raise or lowering, thickness and arch.
    raise_, inner = float(p["raise"][i]), float(p["inner"][i])
    by = ey - 0.058 - raise_
    brow_c = _rgb(_mix(hair, skin, 0.65) if style == _STYLE_SPARSE else _mix(hair, (20, 15, 12),
                                                                           0.35))
    bt = float(p["brow_t"][i]) * (0.6 if style == _STYLE_SPARSE else 1.0)
    arch = float(p["brow_arch"][i])
    bi = 0.028 + 0.006 * min(inner, 0.0) / 0.04
    for s in (-1, 1):
        bx = s * np.array([bi, ex - 0.01, ex + 0.035, ex + 0.06])
        byy = by + np.array([-inner, -arch - inner * 0.35, -arch * 0.6, 0.012 + inner * 0.3])
        cv.line(bx, byy, brow_c, bt)

    # Eyes: openness scales the visible height; irises are clipped to the opening.
    eye = float(p["eye"][i])
    eh_o = eh * eye
    gz = float(p["gaze"][i])
    iris_c = _rgb(p["iris"][i])
    lid_c = _rgb(_mix(skin * 0.35, (10, 8, 8), 0.5))
    lid_w = 0.007 + (0.008 if p["makeup"][i] else 0.0)
    for s in (-1, 1):
        x0 = s * ex
        cv.ellipse(x0, ey, ew, eh_o, (236, 234, 228))
        ri = min(ir, eh_o * 0.98)
        cv.ellipse(x0 + gz, ey, ir, ri, iris_c)
        cv.ellipse(x0 + gz, ey, ir * 0.45, min(ir * 0.45, ri), (12, 10, 10))
        cv.line(x0 + ew * 1.05 * np.cos(_TOP[::2]), ey + eh_o * 1.05 * np.sin(_TOP[::2]),
                lid_c, lid_w)  # fmt: skip
        if eye < 0.8:  # raised lower lid / squint
            cv.line(x0 + ew * np.cos(_BOT[3:-3:2]), ey + eh_o * np.sin(_BOT[3:-3:2]) + 0.004,
                    shade, 0.007)  # fmt: skip

    # Nose: side shadow line and nostrils; wrinkled bridge for disgust.
    cv.line(np.array([0.012, 0.02 * ns, 0.028 * ns]), np.array([ey + 0.02, ny - 0.03, ny - 0.004]),
            shade, 0.008)  # fmt: skip
    for s in (-1, 1):
        cv.ellipse(s * 0.021 * ns, ny, 0.012 * ns, 0.0065 * ns, _rgb(skin * 0.5))
    cv.line(np.array([-0.03, 0.0, 0.03]) * ns, np.array([ny + 0.012, ny + 0.02, ny + 0.012]),
            shade, 0.006)  # fmt: skip
    if p["nosewr"][i] * p["intensity"][i] > 0.15:
        for k in range(2):
            yy = ey + 0.012 + 0.014 * k
            cv.line(np.array([-0.022, 0.0, 0.022]), np.array([yy, yy - 0.006, yy]), line_c, 0.007)

    # Wrinkles: forehead lines, nasolabial folds (also when smiling), crow's feet, eye bags.
    fold = max(age_wr * 0.9, float(p["fold"][i] * p["intensity"][i]))
    if age_wr > 0.2:
        n_lines = 1 + int(age_wr * 2.6)
        for k in range(n_lines):
            yy = by - 0.04 - 0.028 * k
            if yy < hl + 0.02:
                break
            cv.line(np.array([-0.11, -0.04, 0.04, 0.11]), yy + np.array([0.008, 0, 0, 0.008]),
                    line_c, 0.007)  # fmt: skip
    if fold > 0.35:
        for s in (-1, 1):
            cv.line(s * np.array([0.04 * ns, 0.06, mw * 0.9 + 0.015]),
                    np.array([ny - 0.005, ny + 0.045, my + 0.03]), line_c, 0.007)  # fmt: skip
    if age_wr > 0.7:
        for s in (-1, 1):
            for k in (-1, 0, 1):
                cv.line(s * np.array([ex + ew + 0.006, ex + ew + 0.03]),
                        ey + np.array([0.0, 0.012 * k]), line_c, 0.006)  # fmt: skip
            cv.line(s * (ex + ew * 0.8 * np.cos(_BOT[4:-4:2])),
                    ey + eh + 0.012 + 0.012 * np.sin(_BOT[4:-4:2]), line_c, 0.006)  # fmt: skip
            cv.line(s * np.array([mw + 0.01, mw + 0.02]), np.array([my + 0.03, my + 0.09]),
                    line_c, 0.006)  # fmt: skip

    # Mouth: corner drop, opening (elliptic to boxy), one-sided sneer, teeth, lip thickness.
    mwx = mw * float(p["width"][i])
    cy = float(p["cy"][i])
    xs = _XS
    mid = my + cy * xs**2
    opn = float(p["open"][i])
    sq = float(p["square"][i])
    prof = (1 - np.abs(xs) ** sq).clip(0) ** (1 / sq)
    bump = float(p["sneer"][i]) * np.exp(-(((xs - p["sneer_side"][i] * 0.45) / 0.32) ** 2))
    ui = mid - opn * prof - bump
    li = mid + opn * prof
    lt = float(p["lip_t"][i]) * float(p["lip"][i])
    uo = ui - lt * (0.9 - 0.55 * xs**2) - 0.003
    lo = li + lt * 1.25 * (1 - 0.6 * xs**2)
    if p["lipstick"][i]:
        lip_c = _rgb(_mix(skin, (165, 35, 55), 0.55))
    else:
        lip_c = _rgb(_mix(skin * 0.82, (175, 80, 80), 0.12 + 0.25 * fem))
    X = xs * mwx
    cv.poly(np.concatenate([X, X[::-1]]), np.concatenate([uo, lo[::-1]]), lip_c)
    gap = (li - ui).max()
    if gap > 0.005:
        cv.poly(np.concatenate([X, X[::-1]]), np.concatenate([ui, li[::-1]]), (55, 18, 22))
        if p["show_teeth"][i]:
            th = np.minimum(ui + 0.018 + (li - ui) * 0.25, li)
            if opn < 0.02 and p["teeth"][i] >= 0.99:  # bared or sneering: whole gap
                th = li
            cv.poly(np.concatenate([X[1:-1], X[-2:0:-1]]),
                    np.concatenate([ui[1:-1], th[-2:0:-1]]), (232, 228, 215))  # fmt: skip
    else:
        cv.line(X, mid, _rgb(np.asarray(lip_c) * 0.55), 0.007)
    return img


# --------------------------------------------------------------------------------------------
# Rendering a split
# --------------------------------------------------------------------------------------------


def _render(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Images (N, 3, size, size) uint8 for label triples ``labels`` (N, 3)."""
    emo, gen, age = labels[:, 0], labels[:, 1], labels[:, 2]
    n = len(labels)
    p = _sample_params(rng, emo, gen, age)
    ss = max(2, math.ceil(128 / size)) if size < 128 else 2
    d = size * ss
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        img = _draw_face(p, i, d, rng)
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.BOX))

    # Lighting gradient, brightness and sensor noise, in batches.
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    gx, gy = np.meshgrid(grid, grid)
    noise_rng = np.random.default_rng(rng.integers(0, 2**63))
    for a in range(0, n, 512):
        b = min(n, a + 512)
        dx = np.cos(p["light_dir"][a:b]).astype(np.float32)[:, None, None]
        dy = np.sin(p["light_dir"][a:b]).astype(np.float32)[:, None, None]
        amp = p["light_amp"][a:b].astype(np.float32)[:, None, None]
        gain = p["bright"][a:b].astype(np.float32)[:, None, None] * (1 + amp * (dx * gx + dy * gy))
        x = out[a:b].astype(np.float32) * gain[..., None]
        sd = p["noise"][a:b].astype(np.float32)[:, None, None, None]
        x += noise_rng.standard_normal(x.shape, dtype=np.float32) * sd
        out[a:b] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def make_synthfaces(
    *, n: int = SYNTHFACES_DEFAULTS["n"], size: int = SYNTHFACES_DEFAULTS["size"],
    seed: int = SYNTHFACES_DEFAULTS["seed"], test_fraction: float | None = None
) -> Dataset:
    """Generate ``n`` procedurally drawn faces with emotion, gender and age labels.

    Labels are drawn from RAF-DB's joint (emotion, gender, age) counts of each split, so their
    marginals and correlations follow the real data set. Faces of RAF-DB's "unsure" gender get
    gender ``MISSING`` and mixed gender cues.

    Args:
        n: total number of faces (train + test), 10..200000 (RAF-DB has 15,339).
        size: image side in pixels (8..1024); images are uint8 (N, 3, size, size).
        seed: non-negative integer; the same seed gives identical images and labels.
        test_fraction: share of faces in the test split, in (0, 1). ``None`` uses RAF-DB's
            train/test proportions (12271/3068, i.e. 20 %).

    Returns:
        A :class:`Dataset` named ``"synthfaces:n=...,size=...,seed=..."`` (``str`` of its
        ``spec``, ``docs/design.md`` §4.2) with splits ``train`` and ``test`` (ids
        ``synth_train_00042``) and label columns ``emotion`` (7 classes), ``gender`` (male,
        female) and ``age`` (0-3, 4-19, 20-39, 40-69, 70+).

    Raises:
        PrivatenetError: for an invalid argument, naming it and the valid range, or if the
            images would need more than 80 % of the machine's memory.
    """
    options = check_synthfaces_options(n=n, size=size, seed=seed, test_fraction=test_fraction)
    n, size, seed = options["n"], options["size"], options["seed"]
    test_fraction = options.get("test_fraction")
    spec = parse_spec("synthfaces:" + ",".join(f"{k}={v!r}" for k, v in options.items()))
    check_fits_in_memory(n, size, what=str(spec), param="size", alternative="or a smaller n")

    counts = _load_counts()
    if test_fraction is None:
        frac = counts["test"].sum() / (counts["train"].sum() + counts["test"].sum())
    else:
        frac = test_fraction
    n_test = min(max(int(round(n * frac)), 1), n - 1)
    sizes = {"train": n - n_test, "test": n_test}

    start = time.perf_counter()
    children = np.random.SeedSequence([seed, 0x5F17]).spawn(2)
    splits: dict[str, Split] = {}
    for (split, m), child in zip(sizes.items(), children, strict=True):
        rng = np.random.default_rng(child)
        labels = _sample_cells(rng, counts[split], m)
        images = _render(rng, labels, size)
        gender = np.where(labels[:, 1] == 2, MISSING, labels[:, 1])
        splits[split] = Split(
            images=torch.from_numpy(images),
            labels={
                "emotion": torch.from_numpy(labels[:, 0].astype(np.int64)),
                "gender": torch.from_numpy(gender.astype(np.int64)),
                "age": torch.from_numpy(labels[:, 2].astype(np.int64)),
            },
            ids=[f"synth_{split}_{j:05d}" for j in range(m)],
        )
    logger.info(
        "synthfaces: drew %d train + %d test faces at %dx%d in %.1f s",
        sizes["train"], sizes["test"], size, size, time.perf_counter() - start,
    )  # fmt: skip
    return Dataset(
        name=str(spec),
        splits=splits,
        classes={"emotion": list(EMOTIONS), "gender": list(GENDERS), "age": list(AGE_GROUPS)},
        spec=spec,
    )


def synthfaces_from_spec(spec: str | DataSpec, *, image_size: int | None = None) -> Dataset:
    """Build the data set named by a synthfaces spec: a :class:`DataSpec`, a full string
    (``"synthfaces:n=200,seed=3"``) or the part after ``synthfaces:`` (``"n=200,seed=3"``).

    Keys ``n``, ``size``, ``seed`` (integers) and ``test_fraction`` (a number in (0, 1)); the
    empty string means all defaults (n=5000, size=64, seed=0). ``image_size``, if given, draws
    the faces at that size instead of ``size`` (the result's spec then says so).

    Raises:
        PrivatenetError: for an unknown key, a repeated key or a bad value, naming it and the
            valid keys.
    """
    return make_synthfaces(**builtin_options(spec, "synthfaces", image_size))  # type: ignore[arg-type]
