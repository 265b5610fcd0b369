"""Run folders: who owns an output folder, and whether a run in it may be started or resumed.

Every job claims its output folder with :func:`open_run` after validating its inputs and before
writing anything (docs/design.md §4). A claimed folder holds:

* ``run.json``: the marker, written atomically when the folder is claimed (``kind``, the run's
  ``fingerprint``, the creation time and the privatenet version);
* ``run.lock``: an exclusive, non-blocking ``fcntl.flock`` on it is held while the run works, so
  a second run on the same folder fails at once instead of both exiting 0 with one lost; it
  holds the pid of the run holding it;
* ``results.json``: written last by the caller; its presence means the run is finished.

A refused claim leaves everything already in the folder as it was.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from privatenet.errors import PrivatenetError, SettingError
from privatenet.readers import brief
from privatenet.runfiles import LOCK, MARKER, RESULTS
from privatenet.storage import read_json, write_json, write_yaml
from privatenet.train import distributed
from privatenet.version import __version__

log = logging.getLogger(__name__)


class Run:
    """A claimed run folder, handed out by :func:`open_run` while its lock is held."""

    def __init__(self, path: Path, kind: str, fingerprint: dict | None, created: bool) -> None:
        self.path = path
        self.kind = kind
        self.fingerprint = fingerprint
        self.created = created  # True when this claim wrote the marker (a new run)

    @property
    def finished(self) -> bool:
        """Whether the run wrote ``results.json`` (it writes it last)."""
        return (self.path / RESULTS).exists()

    def results(self) -> dict:
        """The finished run's ``results.json``."""
        results = read_json(self.path / RESULTS)
        if not isinstance(results, dict):
            raise PrivatenetError(f"{self.path / RESULTS}: not a JSON object; the file is "
                                  "corrupt (rerun in another folder)")
        return results

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, kind={self.kind!r})"


def _plain(fingerprint: dict) -> dict:
    """``fingerprint`` as JSON reads it back (tuples become lists), so that it compares equal
    to the copy stored in the marker."""
    try:
        return json.loads(json.dumps(fingerprint))
    except (TypeError, ValueError) as e:
        raise TypeError(f"open_run fingerprint must hold plain JSON values ({e})") from None


_MISSING = object()


def _short(value: object, limit: int = 60) -> str:
    """``value`` as compact JSON, cut to ``limit`` characters, for a one-line message."""
    text = json.dumps(value, sort_keys=True) if value is not _MISSING else "(none)"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _first_difference(stored: dict, wanted: dict) -> tuple[str, object, object] | None:
    """The first key (in ``wanted``'s order, then ``stored``'s) whose values differ, followed
    into nested mappings, as a dotted path (``settings.train.lr``) with both values."""
    for key in [*wanted, *(k for k in stored if k not in wanted)]:
        a, b = stored.get(key, _MISSING), wanted.get(key, _MISSING)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _first_difference(a, b)
            if inner is not None:
                return f"{key}.{inner[0]}", inner[1], inner[2]
        return key, a, b
    return None


def _is_own_leftover(name: str) -> bool:
    """Files a claim killed half-way may leave: the lock file and a marker's temporary file."""
    return name == LOCK or (name.startswith(f".{MARKER}.") and name.endswith(".tmp"))


def _refuse_foreign(path: Path, kind: str) -> None:
    """Refuse a folder without a marker unless it is empty (but for our own leftovers)."""
    foreign = sorted(p.name for p in path.iterdir() if not _is_own_leftover(p.name))
    if foreign:
        raise PrivatenetError(f"{path} is not a privatenet {kind} run folder (it holds "
                              f"{foreign[0]!r}); choose an empty or new folder")


def _read_marker(path: Path) -> dict:
    marker = read_json(path / MARKER)
    if not isinstance(marker, dict) or not isinstance(marker.get("kind"), str):
        raise PrivatenetError(f"{path / MARKER}: not a privatenet run marker; the file is "
                              "corrupt (choose another folder)")
    return marker


def _check_kind(path: Path, marker: dict, kind: str) -> None:
    if marker["kind"] != kind:
        raise PrivatenetError(f"{path} holds a {brief(marker['kind'])} run, not a {kind!r} run; "
                              "choose another folder")


def _holder_pid(lock_path: Path) -> int | None:
    """The pid written into the lock file by the run holding it, if that process lives."""
    try:
        pid = int(lock_path.read_text(encoding="ascii").strip())
        os.kill(pid, 0)  # a pid left by a killed run is not "known"
    except PermissionError:
        return pid  # alive, but another user's process
    except (OSError, ValueError):
        return None
    return pid


def _lock(path: Path) -> int:
    """Open and exclusively lock ``path/run.lock`` without waiting; the open descriptor."""
    lock_path = path / LOCK
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise PrivatenetError(f"cannot create {lock_path}: {e.strerror}; choose a writable "
                              "folder") from None
    try:
        # Non-blocking: a second run must fail at once, not wait hours for the first. flock
        # belongs to the open file description, so a second open_run in this process also
        # conflicts.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = _holder_pid(lock_path)
        who = f" (pid {pid})" if pid is not None else ""
        raise PrivatenetError(f"{path} is in use by another privatenet run{who}; wait for it "
                              "to finish or choose another folder") from None
    except OSError as e:
        os.close(fd)
        raise PrivatenetError(f"cannot lock {lock_path}: {e.strerror}; choose a folder on a "
                              "local disk") from None
    return fd


def _write_pid(fd: int, pid: int | None) -> None:
    """Put ``pid`` (or nothing) into the held lock file; only so that a refused second run can
    name the holder, so a failure to write is ignored."""
    try:
        os.ftruncate(fd, 0)
        if pid is not None:
            os.write(fd, f"{pid}\n".encode("ascii"))
    except OSError:
        pass


def _claim(path: Path, kind: str, fingerprint: dict | None, resume: bool) -> bool:
    """Apply the ownership rules with the lock held; True when this claim starts a new run."""
    if not (path / MARKER).exists():
        _refuse_foreign(path, kind)
        for p in path.iterdir():
            if p.name != LOCK and _is_own_leftover(p.name):
                p.unlink()  # the marker's temporary file from a claim killed half-way
        try:
            write_json(path / MARKER, {
                "kind": kind, "fingerprint": fingerprint,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "privatenet": __version__})
        except OSError as e:
            raise PrivatenetError(f"cannot write {path / MARKER}: {e.strerror}; choose a "
                                  "writable folder with free space") from None
        log.info("claimed %s for a new %s run", path, kind)
        return True
    marker = _read_marker(path)
    _check_kind(path, marker, kind)
    finished = (path / RESULTS).exists()
    if not resume:
        if finished:
            raise PrivatenetError(f"{path} holds a finished {kind} run; choose another folder")
        raise SettingError("resume", False, f": {path} holds an unfinished {kind} run; pass "
                                            "{resume} to continue it, or choose another folder",
                           mentions={"resume": "resume=True"})
    if fingerprint is not None:
        diff = _first_difference(marker.get("fingerprint") or {}, fingerprint)
        if diff is not None:
            key, was, now = diff
            state = "a finished" if finished else "an unfinished"
            fix = ("choose another folder" if finished else
                   "resume it with the same inputs or choose another folder")
            raise PrivatenetError(f"{path} holds {state} {kind} run with other {key} "
                                  f"({_short(was)}, not {_short(now)}); {fix}")
    log.info("resuming %s run in %s%s", kind, path, " (finished)" if finished else "")
    return False


def check_run_folder(path: str | Path, *, kind: str) -> Path:
    """The refusals of :func:`open_run` that need neither the lock nor a write (an empty
    path, a file, a folder of another kind of run, a folder that is not a run's), as ``path``;
    a job that reads its inputs before it claims its folder calls this first, so that a
    folder it would refuse costs no decoding. Writes nothing."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"open_run kind={kind!r}; pass the job's name")
    if isinstance(path, str) and not path.strip():
        # Path("") is the current folder: an empty option must not write into it.
        raise PrivatenetError("the run folder path is empty; pass the folder to write into")
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise PrivatenetError(f"{path} is a file, not a folder; choose an empty or new "
                                  "folder")
        # Refusals that need no lock come first, so that a foreign folder never gets a lock
        # file.
        if path.is_dir():
            if (path / MARKER).exists():
                _check_kind(path, _read_marker(path), kind)
            else:
                _refuse_foreign(path, kind)
    except OSError as e:
        raise PrivatenetError(f"cannot create or read run folder {path}: {e.strerror}; "
                              "choose a writable place") from None
    return path


@contextmanager
def open_run(path: str | Path, *, kind: str, fingerprint: dict | None,
             resume: bool) -> Iterator[Run]:
    """Claim the run folder ``path`` for a run of ``kind`` and hold it for the ``with`` block.

    ``path`` is created (parents too) if missing. An empty or new folder is claimed for a new
    run; a folder already holding a ``kind`` run is only reopened with ``resume=True`` and, unless
    ``fingerprint`` is ``None``, the same fingerprint (plain JSON values; the run's data, starting
    network, adversary, settings, ...). A finished run (``run.finished``) reopened that way is
    for the caller to return ``run.results()``. Every refusal is a one-line
    :class:`PrivatenetError` and leaves the folder's files as they were.
    """
    path = check_run_folder(path, kind=kind)
    if fingerprint is not None:
        fingerprint = _plain(fingerprint)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrivatenetError(f"cannot create or read run folder {path}: {e.strerror}; "
                              "choose a writable place") from None
    fd = _lock(path)
    try:
        # The checks again, under the lock: another run may have claimed the folder meanwhile.
        created = _claim(path, kind, fingerprint, resume)
        # Written only now: a refused claim leaves even the lock file as it was.
        _write_pid(fd, os.getpid())
        try:
            yield Run(path, kind, fingerprint, created)
        finally:
            _write_pid(fd, None)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def open_shared_run(path: str | Path, *, kind: str, fingerprint: dict | None,
                    resume: bool) -> Iterator[Run]:
    """:func:`open_run` for a job that may run in several processes under torchrun: rank 0
    claims the folder and alone writes into it; the other processes wait for its claim, raise
    its refusal if it was refused, and otherwise get a view of the same folder (to resume from
    its checkpoints). One process: exactly :func:`open_run`."""
    rank, world = distributed.world()
    if world == 1:
        with open_run(path, kind=kind, fingerprint=fingerprint, resume=resume) as run:
            yield run
        return
    with ExitStack() as stack:
        if rank == 0:
            try:
                run = stack.enter_context(open_run(path, kind=kind, fingerprint=fingerprint,
                                                   resume=resume))
            except PrivatenetError as e:
                distributed.agree(str(e))  # raises it here too, after telling the others
            distributed.agree(None)
        else:
            distributed.agree(None)
            run = Run(Path(path), kind, fingerprint, created=False)
        yield run


def _remove(path: Path) -> None:
    with suppress(OSError):
        path.unlink(missing_ok=True)


def run_job(out: str | Path, *, kind: str, fingerprint: dict | None, resume: bool,
            settings: dict | None, work: Callable[[Run], dict], shared: bool = False) -> dict:
    """The one way a job runs in its folder: claim ``out`` (:func:`open_run`, or with
    ``shared`` :func:`open_shared_run`), return a finished run's ``results.json``, otherwise
    write ``config.yaml`` (``settings``, when given), call ``work(run)`` and write what it
    returns as ``results.json``, last (its presence marks the run finished). Under torchrun
    (``shared``) every process works and rank 0 alone writes."""
    opener = open_shared_run if shared else open_run
    with opener(out, kind=kind, fingerprint=fingerprint, resume=resume) as run:
        if run.finished:
            return run.results()
        writes = distributed.is_main() or not shared
        if writes and settings is not None:
            write_yaml(run.path / "config.yaml", settings)
        results = work(run)
        if writes:
            write_json(run.path / RESULTS, results)
    return results


@contextmanager
def open_disposable_run(path: str | Path, *, kind: str, what: str, fingerprint: dict | None,
                        outputs: Callable[[Path], Iterable[Path]]) -> Iterator[Run]:
    """:func:`open_run` for a job that keeps nothing of a failed attempt (an export, a video
    run): a finished run is refused, a killed attempt's ``outputs(folder)`` are removed before
    the work, and on any failure (Ctrl-C included) they are removed again with the marker, the
    lock and the folder this call created, so the folder is left as it was before."""
    out = Path(path)
    existed, claimed = out.exists(), False
    try:
        with open_run(out, kind=kind, fingerprint=fingerprint, resume=True) as run:
            if run.finished:
                raise PrivatenetError(f"{out} holds a finished {what}; choose another folder")
            claimed = run.created
            try:
                for leftover in outputs(run.path):
                    _remove(leftover)
                yield run
            except BaseException:
                for leftover in outputs(run.path):
                    _remove(leftover)
                if claimed:
                    _remove(run.path / MARKER)
                raise
    except BaseException:
        if claimed:  # the lock is released now: leave the folder as it was before
            _remove(out / LOCK)
            if not existed:
                with suppress(OSError):
                    out.rmdir()
        raise
