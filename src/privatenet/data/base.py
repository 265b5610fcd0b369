"""The in-memory dataset every loader returns: decoded uint8 images and aligned label columns.

Images and all label columns of a split live in one object and are only ever indexed together,
so a filter on one column (for instance dropping RAF-DB's "unsure" gender) cannot misalign the
others, the defect of the public RAF-DB scripts (``docs/design.md`` §2).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from privatenet.data.spec import DataSpec
from privatenet.errors import PrivatenetError, SettingError

#: Label value of a row whose class is unknown for that column (RAF-DB's "unsure" gender, an
#: empty manifest cell). Such rows are dropped, for every column at once, whenever that column
#: is used.
MISSING = -1
#: The split of rows held out for attackers (docs/design.md §5): no part of a defence (network
#: training, a known adversary, an eraser, a regularizer) ever reads it; the leakage audit
#: trains its attackers on it when a data set has it.
ATTACKER_SPLIT = "attacker"


@dataclass
class Split:
    """One split: ``images`` uint8 (N, 3, H, W) and ``labels[column]`` int64 (N,)."""

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {tuple(self.images.shape)}")
        for name, col in self.labels.items():
            if col.shape != (n,):
                raise ValueError(f"label column {name!r} has shape {tuple(col.shape)}, need ({n},)")
        if self.ids and len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> Split:
        """Rows ``index`` of images, every label column and ids, together."""
        index = torch.as_tensor(index, dtype=torch.long)
        ids = [self.ids[i] for i in index.tolist()] if self.ids else []
        return Split(self.images[index], {k: v[index] for k, v in self.labels.items()}, ids)

    def known(self, columns: list[str] | tuple[str, ...]) -> Split:
        """Rows whose label is known in every one of ``columns``, all columns kept aligned."""
        keep = torch.ones(len(self), dtype=torch.bool)
        for c in columns:
            keep &= self.labels[c] != MISSING
        return self if bool(keep.all()) else self.subset(keep.nonzero().flatten())


@dataclass
class Dataset:
    """A named set of splits (``train``, ``test``) with the class names of every label column.

    ``spec`` is the parsed spec that loads exactly this data again (``None`` for a data set
    built in code); the loaders set ``name`` to ``str(spec)``.
    """

    name: str
    splits: dict[str, Split]
    classes: dict[str, list[str]]
    spec: DataSpec | None = None
    #: How :func:`carve_attacker_split` made this data's attacker split (``share``,
    #: ``columns``, ``seed``), saved with every network trained on it so that a later audit
    #: of that network carves the same rows again; ``None`` if nothing was carved.
    carve: dict | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the content: class lists, and per split its ids, label columns and
        decoded image bytes; the name, spec and paths are left out, so moved data match.

        Used to refuse resuming a run on other data. Cost: one pass of SHA-256 over every
        decoded pixel, about 1 s per GiB on a CPU with SHA instructions (0.7 s measured; RAF-DB
        at 224 px is 2.3 GiB) and no copy of the images, so it is computed on the first call and
        cached on this object; change the splits in place after that and the cached value is
        stale.
        """
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self)
        return self._fingerprint

    def check_columns(self, columns: list[str] | tuple[str, ...]) -> None:
        """Raise a one-line error if the dataset lacks one of ``columns``."""
        for c in columns:
            if c not in self.classes:
                have = ", ".join(sorted(self.classes)) or "none"
                raise PrivatenetError(
                    f"dataset {self.name!r} has no label column {c!r} (it has: {have}); "
                    "choose one of those"
                )

    def split(self, name: str, columns: list[str] | tuple[str, ...] = ()) -> Split:
        """Split ``name`` restricted to rows whose ``columns`` are all known.

        Raises a one-line error for a missing or empty split, or (for ``train``) a class of one
        of ``columns`` that no row has, since a classifier cannot learn it.
        """
        self.check_columns(columns)
        self.require_splits([name])
        split = self.splits[name].known(columns)
        if len(split) == 0:
            what = f" with known {', '.join(columns)}" if columns else ""
            raise PrivatenetError(f"dataset {self.name!r}: split {name!r} has no rows{what}")
        if name == "train":
            self.check_train_classes(columns)
        return split

    def require_splits(self, names: list[str] | tuple[str, ...] = ("train", "test")) -> None:
        """Raise a one-line error naming the data set (for a manifest or RAF-DB, its file or
        folder) and the splits it has if it lacks one of ``names``."""
        for name in names:
            if name not in self.splits:
                raise PrivatenetError(
                    f"dataset {self.name!r} has no {name!r} split (it has: "
                    f"{', '.join(sorted(self.splits)) or 'none'}); add rows with split={name}"
                )

    def check_train_classes(self, columns: list[str] | tuple[str, ...]) -> None:
        """Refuse a column with a class that no train row has: a classifier cannot learn it."""
        self.check_columns(columns)
        self.require_splits(["train"])
        labels = self.splits["train"].labels
        for c in columns:
            present = set(labels[c].unique().tolist())
            absent = [n for i, n in enumerate(self.classes[c]) if i not in present]
            if absent:
                raise PrivatenetError(
                    f"dataset {self.name!r}: class {absent[0]!r} of {c!r} has no row in the "
                    f"train split; add examples or remove the class"
                )

    def distribution(self, split: str, column: str) -> dict[str, int]:
        """Counts per class name of ``column`` in ``split`` (unknown rows as ``"?"``)."""
        counts = Counter(self.splits[split].labels[column].tolist())
        out = {n: counts.get(i, 0) for i, n in enumerate(self.classes[column])}
        if counts.get(MISSING):
            out["?"] = counts[MISSING]
        return out


#: Largest share of the train split :func:`carve_attacker_split` may take: the defence keeps
#: at least as many rows as the attacker gets.
MAX_ATTACKER_SHARE = 0.5


def check_attacker_share(share: object) -> float:
    """Return ``share`` as a float if it is a number in [0, :data:`MAX_ATTACKER_SHARE`]."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not (
            0.0 <= share <= MAX_ATTACKER_SHARE):
        raise SettingError("attacker_share", share, "is invalid; give a share of the train "
                           f"split in 0..{MAX_ATTACKER_SHARE:g} (0: no attacker split)")
    return float(share)


def carve_attacker_split(data: Dataset, *, share: float, columns: list[str] | tuple[str, ...],
                         seed: int = 0) -> Dataset:
    """A copy of ``data`` whose ``train`` split gives ``round(share * n)`` rows of every
    stratum (every joint value of ``columns``) to a new :data:`ATTACKER_SPLIT`.

    The attacker's rows are carved out before anything is trained, so that no part of a defence
    ever reads them (docs/design.md §5). The carve depends on ``seed`` and the data only, not
    on a training seed: every network of a run, at every seed, is audited against the same
    attacker. A stratum of one row stays in train (``round`` gives 0 for a share <= 0.5), so
    every class the train split had stays in it. ``share = 0`` or a data set that already has
    an attacker split returns ``data`` itself.
    """
    share = check_attacker_share(share)
    if share == 0.0 or ATTACKER_SPLIT in data.splits:
        return data
    data.require_splits(["train"])
    data.check_columns(columns)
    train = data.splits["train"]
    joint = torch.stack([train.labels[c] for c in columns], dim=1).numpy()
    rng = np.random.default_rng(seed)
    taken = np.zeros(len(train), dtype=bool)
    for stratum in np.unique(joint, axis=0):
        rows = np.flatnonzero((joint == stratum).all(axis=1))
        taken[rng.permutation(rows)[: int(round(share * len(rows)))]] = True
    splits = dict(data.splits)
    splits["train"] = train.subset(torch.from_numpy(np.flatnonzero(~taken)))
    splits[ATTACKER_SPLIT] = train.subset(torch.from_numpy(np.flatnonzero(taken)))
    return Dataset(data.name, splits, data.classes, data.spec,
                   {"share": share, "columns": list(columns), "seed": seed})


def check_carve(carve: object) -> dict:
    """``carve`` if it is a :attr:`Dataset.carve` record (as saved with a network), else a
    one-line :class:`PrivatenetError`."""
    if not (isinstance(carve, dict) and set(carve) == {"share", "columns", "seed"}
            and isinstance(carve["columns"], list) and carve["columns"]
            and all(isinstance(c, str) for c in carve["columns"])
            and isinstance(carve["seed"], int) and not isinstance(carve["seed"], bool)):
        raise SettingError("attacker_carve", carve, "is not a record of an attacker split "
                                                    "(share, columns, seed)")
    check_attacker_share(carve["share"])
    return carve


def _fingerprint(data: Dataset) -> str:
    digest = hashlib.sha256(b"privatenet-dataset-v1\n")

    def part(tag: str, payload: bytes | np.ndarray) -> None:
        # Tag and length first, so that no two different data sets give the same byte stream.
        digest.update(f"{tag}:{memoryview(payload).nbytes}\n".encode())
        digest.update(payload)

    part("classes", json.dumps(data.classes, sort_keys=True).encode())
    for name in sorted(data.splits):
        split = data.splits[name]
        part("split", name.encode())
        part("ids", json.dumps(split.ids).encode())
        for column in sorted(split.labels):
            values = split.labels[column].detach().cpu().numpy().astype("<i8")
            part(f"labels {column}", values.tobytes())
        images = split.images.detach().cpu().contiguous()
        part("shape", json.dumps(list(images.shape)).encode())
        # The tensor's own buffer, not a copy: hashing RAF-DB needs no second 2 GiB.
        part("images", images.numpy().reshape(-1))
    return digest.hexdigest()
