"""The ``bench`` job: measure (:func:`privatenet.bench.measure`) and write the figures to a
JSON file that may only replace an earlier bench output."""

from __future__ import annotations

from pathlib import Path

import torch

from privatenet.bench import check_out_file, measure
from privatenet.checks import is_int
from privatenet.errors import PrivatenetError, SettingError
from privatenet.storage import write_json

__all__ = ["bench_job"]


def bench_job(*, out: str | Path, threads: int | None = None, **measure_kwargs) -> dict:
    """:func:`~privatenet.bench.measure` with ``measure_kwargs`` on ``threads`` CPU threads
    (``None``: torch's choice), written to ``out``. ``out`` is checked before any timing and
    again after it (the file may have appeared meanwhile). Returns the figures."""
    if threads is not None:
        if not is_int(threads) or threads < 1:
            raise SettingError("threads", threads, "is invalid; give an integer >= 1")
        torch.set_num_threads(threads)
    out = check_out_file(out)
    result = measure(**measure_kwargs)
    check_out_file(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, result)
    except OSError as e:
        raise PrivatenetError(f"cannot write {out}: {e.strerror}; choose another output "
                              "file") from None
    return result
