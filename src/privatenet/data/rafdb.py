"""RAF-DB "basic" loader (``docs/design.md`` §4.2): emotion plus gender, age and race labels.

Layout of the root folder::

    EmoLabel/list_patition_label.txt        <name> <1..7>     e.g. "train_00001.jpg 5"
    Image/aligned/<stem>_aligned.jpg
    Annotation/manual/<stem>_manu_attri.txt 5 landmark lines, then gender, race, age   (a)
    GenderLabel/list_patition_label.txt     <name>\\t<code>                              (b)
    AgeLabel/list_patition_label.txt        (b)
    RaceLabel/list_patition_label.txt       (b)

Attributes come from layout (a) when it exists, else from (b); without either only the emotion
column is loaded. Every attribute is looked up by image name, never by line position, and every
label column lives in the same :class:`~privatenet.data.base.Split` as the images, so dropping
"unsure" gender rows drops them from every column at once (the public scripts' misalignment,
``docs/design.md`` §2 errata, cannot happen). Class names live in :mod:`privatenet.data.labels`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from privatenet.data.base import MISSING, Dataset
from privatenet.data.cache import check_cache_dir, decode_splits

# Re-exported: other modules import the names from here.
from privatenet.data.labels import AGE_GROUPS, EMOTIONS, GENDERS, RACES
from privatenet.data.spec import check_image_size, parse_spec
from privatenet.errors import PrivatenetError

__all__ = ["load_rafdb", "EMOTIONS", "GENDERS", "AGE_GROUPS", "RACES"]

log = logging.getLogger(__name__)

_GENDER_UNSURE = 2
_SPLIT_PREFIXES = {"train_": "train", "test_": "test"}
_LIST_NAME = "list_patition_label.txt"  # sic: the data set's own spelling
_ATTRIBUTE_DIRS = {"gender": "GenderLabel", "age": "AgeLabel", "race": "RaceLabel"}
_ROOT_HINT = 'it must be the RAF-DB "basic" folder containing EmoLabel/ and Image/aligned/'
_INT = re.compile(r"[+-]?\d+")


def load_rafdb(
    root: str | Path, *, image_size: int | None = None, cache_dir: str | Path | None = None,
    write_cache: bool = True,
) -> Dataset:
    """Load the RAF-DB "basic" folder ``root`` as a :class:`Dataset` named
    ``rafdb:<absolute root>``, with ``spec`` set.

    Splits ``train`` and ``test`` come from the ``train_``/``test_`` name prefix; rows keep the
    order of ``EmoLabel/list_patition_label.txt`` and ``Split.ids`` holds the names from it.
    Columns: ``emotion`` (7 classes), and when attribute annotations exist ``gender`` (male,
    female; "unsure" is MISSING), ``age`` (5 groups) and ``race`` (3). Images are decoded once by
    :func:`~privatenet.data.cache.decode_images` (``image_size``, ``cache_dir``,
    ``write_cache`` as there).

    Raises :class:`PrivatenetError`, one line naming the file (and line), for a wrong root, a
    missing or malformed label file, an out-of-range label, a missing image or attribute, or
    images whose size needs ``image_size`` (see :func:`~privatenet.data.cache.resolve_image_size`).
    """
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    spec = parse_spec(f"rafdb:{root}")
    root = spec.path
    image_size = check_image_size(image_size)
    check_cache_dir(cache_dir)

    if not root.is_dir():
        raise PrivatenetError(f"RAF-DB root {root} does not exist or is not a folder; {_ROOT_HINT}")
    label_file = root / "EmoLabel" / _LIST_NAME
    if not label_file.is_file():
        raise PrivatenetError(f"RAF-DB label file {label_file} is missing; {_ROOT_HINT}")
    image_dir = root / "Image" / "aligned"
    if not image_dir.is_dir():
        raise PrivatenetError(f"RAF-DB image folder {image_dir} is missing; {_ROOT_HINT}")

    rows = _read_emotions(label_file)  # [(name, emotion index, line number)]

    paths = []
    for name, _, lineno in rows:
        path = image_dir / f"{_stem(name)}_aligned.jpg"
        if not path.is_file():
            raise PrivatenetError(
                f"image {path} (listed in {label_file} line {lineno}) is missing; restore it "
                "or remove that line"
            )
        paths.append(path)

    names = [name for name, _, _ in rows]
    classes: dict[str, list[str]] = {"emotion": list(EMOTIONS)}
    labels: dict[str, list[int]] = {"emotion": [emo for _, emo, _ in rows]}
    attributes = _read_attributes(root, rows)
    for column, values in attributes.items():
        classes[column] = list({"gender": GENDERS, "age": AGE_GROUPS, "race": RACES}[column])
        labels[column] = values

    split_of = [_split_of(name, label_file, lineno) for name, _, lineno in rows]
    splits = decode_splits(paths=paths, split_of=split_of, labels=labels, ids=names,
                           image_size=image_size, cache_dir=cache_dir, write_cache=write_cache)
    log.info(
        "RAF-DB %s: %s; columns %s", root,
        ", ".join(f"{k} {len(v)}" for k, v in splits.items()), ", ".join(classes),
    )
    return Dataset(name=str(spec), splits=splits, classes=classes, spec=spec)


def _stem(name: str) -> str:
    """``train_00001.jpg`` -> ``train_00001`` (the images and manual files use the stem)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def _key(name: str) -> str:
    """Name used to match rows across label files: stem without an ``_aligned`` suffix, so that
    ``train_00001.jpg``, ``train_00001`` and ``train_00001_aligned.jpg`` are the same image."""
    stem = _stem(name)
    return stem[: -len("_aligned")] if stem.endswith("_aligned") else stem


def _split_of(name: str, label_file: Path, lineno: int) -> str:
    for prefix, split in _SPLIT_PREFIXES.items():
        if name.startswith(prefix):
            return split
    raise PrivatenetError(
        f"{label_file} line {lineno}: name {name!r} starts with neither 'train_' nor 'test_'; "
        "RAF-DB splits by that prefix, so rename it or remove the line"
    )


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of ``path`` with their 1-based numbers; CRLF/CR/LF and a BOM tolerated."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PrivatenetError(
            f"{path} is not a UTF-8 text file ({exc.reason} at byte {exc.start}); "
            "save it as plain text"
        ) from None
    except OSError as exc:
        raise PrivatenetError(f"cannot read {path}: {exc.strerror or exc}") from None
    # str.splitlines treats \r\n, \n and \r alike, so files from Windows need no special case.
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _read_emotions(label_file: Path) -> list[tuple[str, int, int]]:
    rows: list[tuple[str, int, int]] = []
    seen: dict[str, int] = {}
    for lineno, line in _read_lines(label_file):
        parts = line.split()
        if len(parts) != 2 or not _INT.fullmatch(parts[1]):
            raise PrivatenetError(
                f"{label_file} line {lineno}: malformed label line {line!r}; expected "
                "'<name> <1..7>' such as 'train_00001.jpg 5'"
            )
        name, label = parts[0], int(parts[1])
        if not 1 <= label <= len(EMOTIONS):
            raise PrivatenetError(
                f"{label_file} line {lineno}: emotion label {label} of {name!r} is out of "
                f"range; RAF-DB emotion labels are 1..{len(EMOTIONS)}"
            )
        key = _key(name)
        if key in seen:
            raise PrivatenetError(
                f"{label_file} line {lineno}: {name!r} is listed again (first on line "
                f"{seen[key]}); remove the duplicate line"
            )
        seen[key] = lineno
        _split_of(name, label_file, lineno)  # report a bad prefix at its own line, early
        rows.append((name, label - 1, lineno))
    if not rows:
        raise PrivatenetError(f"RAF-DB label file {label_file} has no label lines; {_ROOT_HINT}")
    return rows


def _read_attributes(root: Path, rows: list[tuple[str, int, int]]) -> dict[str, list[int]]:
    """Gender, age and race per row of ``rows``, from whichever annotation layout exists."""
    manual_dir = root / "Annotation" / "manual"
    list_files = {c: root / d / _LIST_NAME for c, d in _ATTRIBUTE_DIRS.items()}
    present = {c: p for c, p in list_files.items() if p.is_file()}
    if manual_dir.is_dir():
        if present:
            log.info("RAF-DB %s: using Annotation/manual (preferred over %s)", root,
                     ", ".join(str(p.parent.name) for p in present.values()))
        return _read_manual(manual_dir, rows)
    if present:
        missing = sorted(set(list_files) - set(present))
        if missing:
            log.warning("RAF-DB %s: no %s; loading without those columns", root,
                        ", ".join(str(list_files[c]) for c in missing))
        return {c: _read_list(c, present[c], rows) for c in _ATTRIBUTE_DIRS if c in present}
    log.info("RAF-DB %s: no attribute annotations (Annotation/manual or GenderLabel/...); "
             "loading emotion only", root)
    return {}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _code(column: str, raw: str, path: Path, lineno: int, line: str) -> int:
    """An attribute code as a class index (gender "unsure" -> MISSING), range-checked."""
    limits = {"gender": 3, "age": len(AGE_GROUPS), "race": len(RACES)}
    if not _INT.fullmatch(raw) or not 0 <= int(raw) < limits[column]:
        raise PrivatenetError(
            f"{path} line {lineno}: {column} code in {line!r} is not one of "
            f"0..{limits[column] - 1}; fix the line"
        )
    code = int(raw)
    return MISSING if column == "gender" and code == _GENDER_UNSURE else code


def _read_manual(manual_dir: Path, rows: list[tuple[str, int, int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"gender": [], "age": [], "race": []}
    for name, _, _ in rows:
        path = manual_dir / f"{_stem(name)}_manu_attri.txt"
        if not path.is_file():
            raise PrivatenetError(
                f"attribute file {path} for {name!r} is missing; restore it, or remove "
                f"{manual_dir} to load RAF-DB with emotion labels only"
            )
        lines = _read_lines(path)
        if len(lines) < 8:
            raise PrivatenetError(
                f"attribute file {path} is malformed: {len(lines)} non-blank lines, expected "
                "5 landmark lines then gender, race and age lines; fix or restore it"
            )
        for lineno, line in lines[:5]:
            parts = line.split()  # tab- or space-separated
            if len(parts) != 2 or not all(_is_number(p) for p in parts):
                raise PrivatenetError(
                    f"{path} line {lineno}: malformed landmark line {line!r}; expected two "
                    "numbers (5 landmark lines, then gender, race, age)"
                )
        # Lines after the age line, if a file ever has any, carry nothing we use.
        for column, (lineno, line) in zip(("gender", "race", "age"), lines[5:8], strict=True):
            out[column].append(_code(column, line, path, lineno, line))
    return out


def _read_list(column: str, path: Path, rows: list[tuple[str, int, int]]) -> list[int]:
    """Codes of ``column`` from a ``<name>\\t<code>`` list, matched to ``rows`` by name."""
    by_key: dict[str, tuple[int, int]] = {}
    for lineno, line in _read_lines(path):
        parts = line.split()  # tabs, as in the data set, or spaces
        if len(parts) != 2:
            raise PrivatenetError(
                f"{path} line {lineno}: malformed {column} line {line!r}; expected "
                "'<name><TAB><code>' such as 'train_00001.jpg<TAB>1'"
            )
        key = _key(parts[0])
        code = _code(column, parts[1], path, lineno, line)
        if key in by_key and by_key[key][0] != code:
            raise PrivatenetError(
                f"{path} line {lineno}: {parts[0]!r} has a second, different {column} code "
                f"(first on line {by_key[key][1]}); keep one line per image"
            )
        by_key[key] = (code, lineno)
    values = []
    for name, _, lineno in rows:
        hit = by_key.get(_key(name))
        if hit is None:
            raise PrivatenetError(
                f"{path} has no {column} line for {name!r} (EmoLabel line {lineno}); add it "
                f"or remove {path} to load without {column}"
            )
        values.append(hit[0])
    return values
