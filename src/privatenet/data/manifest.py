"""Any image data set described by one CSV file (``docs/design.md`` §4.2, ``manifest:FILE.csv``).

Format::

    path,split,emotion,gender
    img/0001.png,train,happy,female
    img/0002.png,test,sad,
    /data/other/0003.jpg,val,neutral,male

``path`` is relative to the CSV's folder (or absolute); ``split`` is ``train``, ``test`` or
``val``; every other column is a label column. A column whose cells are all integers has classes
``"0"`` .. ``"max"`` (at most :data:`MAX_CLASSES` of them) and value ``v`` is class ``v``; any
other column has the sorted distinct names of the whole file as classes, so every split uses the
same indices. An empty cell is an unknown label (MISSING) and drops the row only where that
column is used. With ``image_size=None`` every image must have the same square size.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from privatenet.data.base import ATTACKER_SPLIT, MISSING, Dataset
from privatenet.data.cache import check_cache_dir, decode_splits
from privatenet.data.spec import check_image_size, parse_spec
from privatenet.errors import PrivatenetError

__all__ = ["load_manifest", "MAX_CLASSES", "SPLITS"]

log = logging.getLogger(__name__)

#: Allowed values of the ``split`` column (``attacker``: rows held out for the audit's
#: attackers, never trained on by a defence).
SPLITS = ("train", "test", "val", ATTACKER_SPLIT)

#: Most classes an integer label column may have. Integer labels are class indices and every
#: index up to the largest becomes a class, so one mistyped label such as 1000000000 would
#: otherwise build a billion class names; 1000 is ImageNet's class count.
MAX_CLASSES = 1000

# Integers, also as written by pandas for an integer column with gaps ("3.0").
_INT = re.compile(r"[+-]?\d+(?:\.0*)?")


def load_manifest(
    csv_path: str | Path, *, image_size: int | None = None, cache_dir: str | Path | None = None,
    write_cache: bool = True,
) -> Dataset:
    """Load the data set described by ``csv_path`` as a :class:`Dataset` named
    ``manifest:<absolute csv_path>`` (symlinks resolved; relative image paths start at the
    folder of that resolved file), with ``spec`` set.

    Splits are those named in the ``split`` column; rows keep the file's order within a split and
    ``Split.ids`` holds the ``path`` cells as written. ``Dataset.classes`` holds each label
    column's class names (save them with a run to decode predictions later). Images are decoded
    once by :func:`~privatenet.data.cache.decode_images` (``image_size``, ``cache_dir``,
    ``write_cache`` as there).

    Raises :class:`PrivatenetError`, one line naming the file (and line), for a missing file, a
    header without ``path``/``split`` or label columns, a row with the wrong number of cells, an
    empty path, an unknown split, a negative integer label or one of :data:`MAX_CLASSES` or more,
    a missing image, or images whose size needs ``image_size`` (see
    :func:`~privatenet.data.cache.resolve_image_size`).
    """
    if not isinstance(csv_path, (str, Path)):
        raise TypeError(f"csv_path must be a path, got {type(csv_path).__name__}")
    spec = parse_spec(f"manifest:{csv_path}")
    csv_path = spec.path
    image_size = check_image_size(image_size)
    check_cache_dir(cache_dir)

    header, rows = _read_csv(csv_path)
    where = {name: i for i, name in enumerate(header)}
    label_columns = [h for h in header if h not in ("path", "split")]

    base = csv_path.parent
    paths: list[Path] = []
    ids: list[str] = []
    split_of: list[str] = []
    cells: dict[str, list[str]] = {c: [] for c in label_columns}
    linenos: list[int] = []
    for lineno, row in rows:
        raw_path = row[where["path"]].strip()
        if not raw_path:
            raise PrivatenetError(
                f"{csv_path} line {lineno}: the path cell is empty; give the image path "
                "(relative to the CSV's folder, or absolute)"
            )
        split = row[where["split"]].strip()
        if split not in SPLITS:
            raise PrivatenetError(
                f"{csv_path} line {lineno}: split {split!r} is not allowed; use one of "
                f"{', '.join(SPLITS)}"
            )
        # Path("/abs") stays absolute under "/": base / "/abs" == "/abs".
        path = base / Path(raw_path).expanduser()
        if not path.is_file():
            raise PrivatenetError(
                f"{csv_path} line {lineno}: image {path} is missing; fix the path (relative "
                "paths start at the CSV's folder) or remove the row"
            )
        paths.append(path)
        ids.append(raw_path)
        split_of.append(split)
        linenos.append(lineno)
        for c in label_columns:
            cells[c].append(row[where[c]].strip())

    classes: dict[str, list[str]] = {}
    labels: dict[str, list[int]] = {}
    for c in label_columns:
        classes[c], labels[c] = _encode_column(c, cells[c], linenos, csv_path)

    splits = decode_splits(paths=paths, split_of=split_of, labels=labels, ids=ids,
                           image_size=image_size, cache_dir=cache_dir, write_cache=write_cache)
    log.info(
        "manifest %s: %s; columns %s", csv_path,
        ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
        ", ".join(f"{c} ({len(classes[c])} classes)" for c in label_columns),
    )
    return Dataset(name=str(spec), splits=splits, classes=classes, spec=spec)


def _read_csv(csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (stripped names) and the non-blank rows with their line numbers, all checked."""
    if not csv_path.is_file():
        raise PrivatenetError(
            f"manifest {csv_path} does not exist; give a CSV file with header "
            "'path,split,<label columns>'"
        )
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs put in front of the
        # header (otherwise the first column would be named '\ufeffpath'); newline="" lets the
        # csv module handle CRLF and quoted newlines itself.
        with open(csv_path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header: list[str] | None = None
            rows: list[tuple[int, list[str]]] = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                if header is None:
                    header = [cell.strip() for cell in row]
                    _check_header(header, csv_path, reader.line_num)
                    continue
                if len(row) != len(header):
                    raise PrivatenetError(
                        f"{csv_path} line {reader.line_num}: {len(row)} cells, but the header "
                        f"has {len(header)} ({','.join(header)}); fix the row (quote cells "
                        "that contain commas)"
                    )
                rows.append((reader.line_num, row))
    except UnicodeDecodeError as exc:
        raise PrivatenetError(
            f"manifest {csv_path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save "
            "it as UTF-8 CSV"
        ) from None
    except csv.Error as exc:
        raise PrivatenetError(f"manifest {csv_path} is not valid CSV ({exc}); fix it") from None
    if header is None:
        raise PrivatenetError(
            f"manifest {csv_path} is empty; give a header 'path,split,<label columns>' and rows"
        )
    if not rows:
        raise PrivatenetError(f"manifest {csv_path} has a header but no rows; add image rows")
    return header, rows


def _check_header(header: list[str], csv_path: Path, lineno: int) -> None:
    where = f"manifest {csv_path} line {lineno}: header {','.join(header)!r}"
    for required in ("path", "split"):
        if required not in header:
            raise PrivatenetError(
                f"{where} has no {required!r} column; the header must be "
                "'path,split,<label columns>'"
            )
    if any(not h for h in header):
        raise PrivatenetError(f"{where} has an empty column name; name every column")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise PrivatenetError(f"{where} repeats column {dupes[0]!r}; give each column once")
    if len(header) == 2:
        raise PrivatenetError(
            f"{where} has no label column; add at least one, e.g. 'path,split,emotion'"
        )


def _encode_column(
    column: str, cells: list[str], linenos: list[int], csv_path: Path
) -> tuple[list[str], list[int]]:
    """Class names and per-row indices (MISSING for empty cells) of one label column."""
    known = [v for v in cells if v]
    if not known:
        raise PrivatenetError(
            f"manifest {csv_path}: label column {column!r} is empty in every row; fill it or "
            "remove the column"
        )
    if all(_INT.fullmatch(v) for v in known):
        values = []
        for v, lineno in zip(cells, linenos, strict=True):
            n = int(v.split(".")[0]) if v else MISSING
            if v and n < 0:
                raise PrivatenetError(
                    f"{csv_path} line {lineno}: {column} label {v} is negative; integer labels "
                    "are class indices 0, 1, ...; leave the cell empty for an unknown label"
                )
            if n >= MAX_CLASSES:
                raise PrivatenetError(
                    f"{csv_path} line {lineno}: {column} label {v} is above "
                    f"{MAX_CLASSES - 1}; integer labels are class indices and every index up to "
                    f"the largest becomes a class, at most {MAX_CLASSES}; renumber the classes "
                    "from 0 or write class names instead"
                )
            values.append(n)
        # Classes are every index up to the largest, so a class missing from the file still
        # keeps its index (index v is class "v", whatever else the file holds).
        return [str(i) for i in range(max(values) + 1)], values
    if any(_INT.fullmatch(v) for v in known):
        log.warning(
            "manifest %s: column %r mixes integers and names; treating every value as a "
            "class name", csv_path, column,
        )
    names = sorted(set(known))
    index = {n: i for i, n in enumerate(names)}
    return names, [index[v] if v else MISSING for v in cells]
