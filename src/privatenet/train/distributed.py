"""Several processes under torchrun (docs/design.md §4.4).

privatenet does not launch or coordinate processes itself: ``torchrun --nproc-per-node N -m
privatenet train ...`` starts them and sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
:func:`init_from_env` joins torch's process group (nccl on CUDA, gloo on CPU) and
:func:`privatenet.fit` wraps the network in torch's ``DistributedDataParallel``. These helpers
only answer "which process am I" and let the processes agree on a refusal, so that one
process's one-line error stops all of them instead of leaving the others waiting.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from privatenet.errors import PrivatenetError

__all__ = ["agree", "all_sum", "broadcast_buffers", "from_main", "init_from_env", "is_main",
           "launched", "shutdown", "world"]

log = logging.getLogger(__name__)


def world() -> tuple[int, int]:
    """``(rank, number of processes)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes (rank 0, or the only process)."""
    return world()[0] == 0


def launched() -> tuple[int, int, int]:
    """``(rank, local rank, number of processes)`` as torchrun describes them in the environment
    (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``); ``(0, 0, 1)`` when they are unset. A value that
    is not a whole number, or out of range, is a one-line :class:`PrivatenetError`."""
    values = {}
    for name, default in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
        raw = os.environ.get(name)
        try:
            values[name] = default if raw is None else int(raw)
        except ValueError:
            values[name] = -1
        low = 1 if name == "WORLD_SIZE" else 0
        if values[name] < low:
            raise PrivatenetError(
                f"environment variable {name}={raw[:40]!r} is invalid; give an integer >= {low} "
                "(torchrun sets RANK, LOCAL_RANK and WORLD_SIZE: unset them to run one process)")
    if values["RANK"] >= values["WORLD_SIZE"]:
        raise PrivatenetError(
            f"environment variable RANK={values['RANK']} is not below WORLD_SIZE="
            f"{values['WORLD_SIZE']}; start the processes with torchrun, or unset both")
    return values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"]


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; ``False`` when this is a
    single process. On CUDA each process takes the GPU of its ``LOCAL_RANK``."""
    _, local_rank, size = launched()
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise PrivatenetError("this torch build has no torch.distributed; run one process")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    log.info("process %d of %d (%s)", dist.get_rank(), dist.get_world_size(),
             dist.get_backend())
    return True


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree(error: str | None) -> None:
    """Rank 0's outcome for every process: raise rank 0's error message (``None``: go on).

    Rank 0 alone claims and writes the run folder; the other processes call this with
    ``None`` and learn whether the claim succeeded."""
    if world()[1] == 1:
        if error is not None:
            raise PrivatenetError(error)
        return
    error = from_main(error)
    if error is not None:
        raise PrivatenetError(error)


def from_main(value):
    """Rank 0's ``value`` (a plain picklable value) in every process; ``value`` alone."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the processes (float64; on the device the backend needs)."""
    if world()[1] == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    total = values.detach().to(device=device, dtype=torch.float64)
    dist.all_reduce(total)
    return total.cpu()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm statistics) for every process: each process updates them
    on its own share of a batch, so without this the ranks would end with different ones."""
    if world()[1] == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
