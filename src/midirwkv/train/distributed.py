"""Distributed setup in one place: read the ``torchrun`` environment, start the process group, clean up.

``torchrun --nproc_per_node N`` (or ``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for each process. Without them this is a single process
and nothing is initialised. The training loop only asks ``info.is_main``; the two reductions below are
no-ops in a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from midirwkv.errors import BadRequestError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the run."""

    rank: int
    """Global rank (0 in a single process)."""
    world_size: int
    """Number of processes (1 in a single process)."""
    local_rank: int
    """Rank on this machine (selects the GPU)."""
    device: torch.device
    """Device this process trains on."""
    is_main: bool
    """True on rank 0: the one process that writes logs, checkpoints and the progress bar."""

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise BadRequestError(f"environment variable {name} is not an integer", argument=name, value=raw,
                              fix="launch with torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK") from exc


def setup_distributed(device: str = "auto") -> DistInfo:
    """Read the torchrun environment and start the process group when ``WORLD_SIZE > 1``.

    ``device`` is ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``. The backend is NCCL on CUDA and
    gloo on CPU. A process group started by the caller beforehand is reused as is.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise BadRequestError("unknown device", argument="device", value=device, fix="use 'auto', 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadRequestError("CUDA was asked for but is not available", argument="device", value=device,
                              fix="use device='cpu' or 'auto', or install a CUDA build of torch")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK", rank)
    else:
        rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
        if world > 1:
            if not dist.is_available():
                raise BadRequestError("this torch build has no torch.distributed", argument="WORLD_SIZE",
                                      value=world, fix="run a single process or install a full torch build")
            if use_cuda:
                torch.cuda.set_device(local)
            dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    if not 0 <= rank < world:
        raise BadRequestError("RANK must lie in 0..WORLD_SIZE-1", argument="RANK", value=rank,
                              fix="launch with torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, is_main=rank == 0)


def cleanup_distributed() -> None:
    """Destroy the process group if one is running (call once at the end of every process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over all processes (identity in a single process). Every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
