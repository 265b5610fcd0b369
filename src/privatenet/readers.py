"""The one bounded, safe reader of every YAML and JSON file privatenet reads.

A file named by the user or found in a run folder may be anything: ``/dev/zero``, a FIFO that
nobody writes, a directory, a gigabyte of JSON, ten thousand nested brackets or a YAML "billion
laughs" (nested anchors and aliases that expand exponentially). Every reader here

* reads only regular files: ``os.stat`` before opening (so a FIFO never blocks), then
  ``O_NONBLOCK`` and ``fstat`` again on the open descriptor;
* reads at most ``limit + 1`` bytes (:data:`MAX_CONFIG_BYTES` for a ``--config`` YAML file,
  :data:`MAX_JSON_BYTES` for JSON);
* refuses more than :data:`MAX_DEPTH` levels of nesting (lists and mappings inside each other);
* for YAML, scans the event stream (iteratively, without composing anything) and refuses more
  than :data:`MAX_YAML_NODES` nodes after alias expansion, so nothing is ever expanded or
  composed past the limits.

Every refusal is a one-line :class:`~privatenet.errors.PrivatenetError` that names the file,
the limit and the fix, and never quotes the file's content; :func:`brief` bounds any value
that a message does quote.

This is a bottom-layer module: it imports only the standard library, ``yaml`` and
:mod:`privatenet.errors`.
"""

from __future__ import annotations

import json
import os
import reprlib
import stat
from pathlib import Path
from typing import Any

import yaml

from privatenet.errors import PrivatenetError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_JSON_BYTES",
    "MAX_YAML_NODES",
    "brief",
    "check_depth",
    "check_yaml_events",
    "load_json",
    "load_yaml",
    "read_bytes",
    "read_text",
]

#: Largest ``--config`` YAML file read (bytes): a config holds a few dozen options.
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB
#: Largest JSON file read (bytes): run markers, results, checkpoint and export JSON.
MAX_JSON_BYTES = 64 << 20  # 64 MiB
#: Most levels of lists/mappings inside each other (a scalar is depth 0, ``[1]`` depth 1).
MAX_DEPTH = 64
#: Most YAML nodes (scalars, sequences, mappings) after expanding every alias.
MAX_YAML_NODES = 10_000

_BRIEF_WIDTH = 60

_repr = reprlib.Repr()
_repr.maxstring = _BRIEF_WIDTH
_repr.maxother = _BRIEF_WIDTH
_repr.maxlevel = 3


def brief(value: object, width: int = _BRIEF_WIDTH) -> str:
    """A ``repr`` of ``value`` of at most ``width`` characters, computed without building the
    full ``repr`` of a huge string or structure (for quoting a value in a one-line message)."""
    text = _repr.repr(value).replace("\n", "\\n")
    return text if len(text) <= width else text[:width - 3] + "..."


def _cut(text: str, width: int = 100) -> str:
    """``text`` on one line, cut to ``width`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(path: Path, mode: int, what: str) -> PrivatenetError:
    return PrivatenetError(f"{path}: is {_kind(mode)}, not a regular file; pass a regular "
                           f"{what}")


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


def read_bytes(path: str | os.PathLike, *, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    ``what`` names the file in messages ("config file"). A missing file, an unreadable one, a
    directory, FIFO, socket or device, and a file of more than ``limit`` bytes are one-line
    :class:`PrivatenetError` s; a FIFO is refused without opening it, so this never blocks.
    """
    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode, what)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PrivatenetError(f"{path}: {what} not found") from None
    except OSError as e:
        raise PrivatenetError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the stat and the open
            raise _not_regular(path, mode, what)
        chunks, got = [], 0
        while got <= limit:
            chunk = os.read(fd, min(limit + 1 - got, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as e:
        raise PrivatenetError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if got > limit:
        raise PrivatenetError(f"{path}: the {what} is larger than the limit of {_size(limit)}; "
                              "pass the right file, or a smaller one")
    return b"".join(chunks)


def read_text(path: str | os.PathLike, *, limit: int, what: str = "file") -> str:
    """The UTF-8 text of the regular file ``path`` (see :func:`read_bytes`); text that is not
    UTF-8 is a one-line :class:`PrivatenetError` naming the first bad byte."""
    data = read_bytes(path, limit=limit, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrivatenetError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _too_deep(path: object, max_depth: int) -> PrivatenetError:
    return PrivatenetError(f"{path}: nested more than {max_depth} levels deep (lists/mappings "
                           "inside each other); the file is corrupt or not the one meant: "
                           "pass the right file")


def check_depth(value: Any, *, max_depth: int = MAX_DEPTH, where: object = "value") -> None:
    """Refuse ``value`` (a tree of plain lists, tuples and dicts, as ``json.loads`` returns)
    nested more than ``max_depth`` levels deep, with a one-line :class:`PrivatenetError` naming
    ``where``. Iterative: no recursion however deep ``value`` is (a structure that contains
    itself is refused as too deep)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        depth += 1
        if depth > max_depth:
            raise _too_deep(where, max_depth)
        stack.extend((child, depth) for child in children)


def load_json(path: str | os.PathLike, *, limit: int = MAX_JSON_BYTES,
              max_depth: int = MAX_DEPTH, what: str = "file") -> Any:
    """The JSON value in the regular file ``path``, read with :func:`read_bytes` (at most
    ``limit`` bytes) and nested at most ``max_depth`` levels.

    A missing, special, oversize, malformed (or not UTF-8) or too deeply nested file is a
    one-line :class:`PrivatenetError` ("not valid JSON (...); the file is corrupt").
    """
    path = Path(path)
    data = read_bytes(path, limit=limit, what=what)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PrivatenetError(f"{path}: not valid JSON (not UTF-8 text at byte {e.start}); "
                              "the file is corrupt") from None
    except json.JSONDecodeError as e:
        raise PrivatenetError(f"{path}: not valid JSON ({_cut(str(e))}); the file "
                              "is corrupt") from None
    except RecursionError:
        raise _too_deep(path, max_depth) from None
    check_depth(value, max_depth=max_depth, where=path)
    return value


def check_yaml_events(text: str, *, max_depth: int = MAX_DEPTH,
                      max_nodes: int = MAX_YAML_NODES, where: object = "YAML text") -> None:
    """Refuse YAML ``text`` nested more than ``max_depth`` levels or holding more than
    ``max_nodes`` nodes once every alias is expanded, before anything is composed.

    Scans ``yaml.parse`` events (an iterative state machine): each anchor's expanded size and
    height are recorded when its node ends, an alias adds its anchor's size and reaches its
    anchor's height below the current level, and an alias to a node still open (a structure
    that contains itself) is refused. Syntax errors propagate as :class:`yaml.YAMLError`.
    """
    # Per open collection: [anchor, expanded size, height of the tallest child].
    stack: list[list] = []
    sizes: dict[str, int] = {}
    heights: dict[str, int] = {}
    total = 0

    def add(size: int, height: int) -> None:
        nonlocal total
        total += size
        if total > max_nodes:
            raise PrivatenetError(
                f"{where}: more than {max_nodes} YAML nodes once its aliases (*name) are "
                "expanded; a config file needs no such size: write the values out plainly")
        if len(stack) + height > max_depth:
            raise _too_deep(where, max_depth)
        if stack:
            stack[-1][1] += size
            stack[-1][2] = max(stack[-1][2], height)

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            if any(frame[0] == event.anchor for frame in stack):
                raise PrivatenetError(f"{where}: the alias *{_cut(event.anchor, 40)} refers to "
                                      "a node that contains it; write the values out plainly")
            if event.anchor not in sizes:
                continue  # undefined: composing reports it
            add(sizes[event.anchor], heights[event.anchor])
        elif isinstance(event, yaml.ScalarEvent):
            add(1, 0)
            if event.anchor is not None:
                sizes[event.anchor], heights[event.anchor] = 1, 0
        elif isinstance(event, yaml.CollectionStartEvent):
            add(1, 1)  # checks the depth this collection opens at; its own size counted here
            stack.append([event.anchor, 1, 0])
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, size, child_height = stack.pop()
            height = child_height + 1
            if stack:
                # The collection's own node was added to the parent at its start; add the rest.
                stack[-1][1] += size - 1
                stack[-1][2] = max(stack[-1][2], height)
            if anchor is not None:
                sizes[anchor], heights[anchor] = size, height


def load_yaml(path: str | os.PathLike, *, limit: int = MAX_CONFIG_BYTES,
              max_depth: int = MAX_DEPTH, max_nodes: int = MAX_YAML_NODES,
              what: str = "file") -> Any:
    """The YAML value (safe types only) in the regular file ``path``: UTF-8 text of at most
    ``limit`` bytes (:func:`read_text`), checked by :func:`check_yaml_events` (depth, expanded
    node count) before ``yaml.safe_load`` composes it.

    Every problem is a one-line :class:`PrivatenetError`; a syntax error reads "not valid YAML
    (...)".
    """
    path = Path(path)
    text = read_text(path, limit=limit, what=what)
    try:
        check_yaml_events(text, max_depth=max_depth, max_nodes=max_nodes, where=path)
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PrivatenetError(f"{path}: not valid YAML ({_cut(first)})") from None
    except RecursionError:  # cannot happen after the depth check; kept as a safety net
        raise _too_deep(path, max_depth) from None
