"""How the command line talks to its user: progress bars, stage lines, and the one line (exit
code 2) that every user mistake becomes. Only the interface layer prints."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from tqdm import tqdm

from privatenet.errors import PrivatenetError
from privatenet.options import os_message, torch_failure
from privatenet.train import distributed
from privatenet.train.loop import Callbacks

log = logging.getLogger("privatenet")


def _bar(**kwargs) -> tqdm:
    """A progress bar on stderr, shown on a terminal and by rank 0 only."""
    return tqdm(leave=False, file=sys.stderr, dynamic_ncols=True,
                disable=not sys.stderr.isatty() or not distributed.is_main(), **kwargs)


class Progress:
    """A bar per epoch, fed by the training loop's callbacks; epochs logged with -v."""

    def __init__(self, label: str) -> None:
        self.label, self.bar, self.epoch = label, None, 0
        self.callbacks = Callbacks(on_step=self.step, on_epoch=self.end)

    def step(self, done: int, total: int) -> None:
        if self.bar is None:
            self.epoch += 1
            self.bar = _bar(total=total, desc=f"{self.label} epoch {self.epoch}")
        self.bar.update(done - self.bar.n)

    def end(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.epoch = record["epoch"]
        log.info("%s epoch %d: %s", self.label, record["epoch"],
                 ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                           if k not in ("epoch", "seconds", "lr")))


class StageBars:
    """One bar at a time, for callbacks ``(stage, done, total)``: a new stage closes the last."""

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.stage, self.bar = kwargs, None, None

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.bar = stage, _bar(total=total, desc=stage, **self.kwargs)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def stage_line(what: str) -> Callable[[str, str], None]:
    """A callback that prints ``[what] step: name`` on stderr (rank 0 only)."""
    def line(step: str, name: str) -> None:
        if distributed.is_main():
            print(f"[{what}] {step}: {name}", file=sys.stderr, flush=True)
    return line


def stage_state(name: str, cached: bool) -> None:
    """``[cached] name`` or ``[run] name`` on stderr (rank 0 only): a stage of ``reproduce``."""
    if distributed.is_main():
        print(f"[{'cached' if cached else 'run'}] {name}", file=sys.stderr, flush=True)


def join_torchrun(command: str, *, allowed: tuple[str, ...]) -> None:
    """Under torchrun, join the process group (``command`` must be one of ``allowed``) and
    silence stdout on every rank but 0, which alone reports; alone, do nothing."""
    if distributed.launched()[2] <= 1:
        return
    if command not in allowed:
        raise PrivatenetError(f"'{command}' runs in one process; start it without torchrun "
                              f"(under torchrun: {', '.join(allowed)})")
    distributed.init_from_env()
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)


def log_to_stderr(*, verbose: bool) -> None:
    """Log to stderr: warnings, and with ``verbose`` every epoch too. Other packages' Python
    warnings (torch, Pillow) go to the log, shown with -v only: an error is one line, not one
    line among warnings. Our own warnings are logged, not warned."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.INFO if verbose else logging.ERROR)


def fail(message: str) -> int:
    print(f"privatenet: error: {message}", file=sys.stderr)
    return 2


def guarded(command: Callable[[], int], *, spell: Callable[[PrivatenetError], str],
            hint: str | None) -> int:
    """Run ``command``: a user mistake is one line and exit code 2 (``spell`` writes the line),
    torch's out-of-memory and failed compiles too (with ``hint``, what to rerun), Ctrl-C exit
    code 130 with ``hint``; any other exception is a bug and keeps its traceback. Under
    torchrun, rank 0 alone reports."""
    rank = 0  # the launcher's rank, known before any process group exists
    try:
        rank = distributed.launched()[0]
        return command()
    except PrivatenetError as e:
        return 2 if rank != 0 or not distributed.is_main() else fail(spell(e))
    except RuntimeError as e:
        message = torch_failure(e)
        if message is None:
            raise
        return 2 if rank != 0 else fail(message + (f"; {hint}" if hint else ""))
    except BrokenPipeError:
        # The reader went away (`privatenet data-info ... | head`): not an error. Point stdout
        # at /dev/null so that the interpreter's final flush does not fail again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (captured, for instance)
            pass
        return 0
    except OSError as e:
        return fail(os_message(e))
    except KeyboardInterrupt:
        print("privatenet: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
