"""Distributed data parallel (DDP) helpers, driven by torchrun's environment variables.

``torchrun --nproc-per-node N [--nnodes M ...] -m fcnseg train ...`` sets RANK, WORLD_SIZE,
LOCAL_RANK (and MASTER_ADDR/PORT); a plain ``fcnseg train`` has none of them and runs as a
world of one, through the same code path. Only rank 0 prints and writes files.

PyTorch is imported by the functions that need it: ``fcnseg predict`` of an exported model
splits its files by :func:`rank_and_world` in an install without PyTorch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .device import select_device
from .errors import FcnsegError

if TYPE_CHECKING:
    import torch


def _group() -> Any:
    """``torch.distributed`` when this process has joined a process group, else None (no
    group can exist before PyTorch is imported, so this does not import it)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


@dataclass
class DistInfo:
    """Where this process stands in the (possibly one-process) world."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def elastic_restart() -> int:
    """How many times torchrun has restarted this worker group (``--max-restarts``): 0 on
    the first start and outside torchrun."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def setup_distributed(device_name: str = "auto") -> DistInfo:
    """Read torchrun's environment, pick this rank's device and join the process group.

    gloo on CPU, nccl on CUDA; each local rank uses ``cuda:LOCAL_RANK``.
    """
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name)
    if world_size <= 1:
        return DistInfo(0, 1, 0, device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
        # Processes of one node share its cores; without this each would start one
        # thread per core and they would fight (torchrun sets OMP_NUM_THREADS=1 otherwise).
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, store=_attempt_store(), rank=rank,
                                world_size=world_size)
    return DistInfo(rank, world_size, local_rank, device)


def _attempt_store() -> Any:
    """torchrun's store, with this attempt's keys apart from earlier attempts'.

    A restarted worker group (``--max-restarts``) finds the agent's store as the killed
    group left it: without a prefix per attempt, gloo's ranks read the dead ranks'
    addresses and fail with "connectFullMesh ... Connection refused" (PyTorch 2.14,
    ``--standalone`` and c10d rendezvous alike).
    """
    import torch.distributed as dist

    store, _, _ = next(dist.rendezvous("env://"))
    return dist.PrefixStore(f"fcnseg/attempt_{elastic_restart()}", store)


def rank_and_world(env: bool = False) -> tuple[int, int]:
    """``(rank, world_size)`` of the joined process group; without one, torchrun's
    environment when ``env`` (work split by rank that needs no communication), else (0, 1)."""
    dist = _group()
    if dist is not None:
        return dist.get_rank(), dist.get_world_size()
    if env:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return 0, 1


def cleanup_distributed() -> None:
    """Leave the process group (no-op for a world of one)."""
    dist = _group()
    if dist is not None:
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for a world of one)."""
    if info.enabled:
        _group().barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo | None = None) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (unchanged for a world of one).

    Without ``info``, over whatever process group this process has joined. NCCL reduces
    CUDA tensors only: a CPU tensor travels through this rank's GPU.
    """
    dist = _group()
    if dist is None or (info is not None and not info.enabled):
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type == "cpu":
        on_gpu = tensor.to(f"cuda:{sys.modules['torch'].cuda.current_device()}")
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        return tensor.copy_(on_gpu.cpu())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def main_rank_int(value: int, info: DistInfo) -> int:
    """Rank 0's ``value`` on every rank: one decision (a plan's epochs) that all follow."""
    import torch

    mine = torch.tensor([value if info.is_main else 0], device=info.device)
    return int(all_reduce_sum(mine, info).item())


def per_rank_batch(batch_size: int, num_samples: int, info: DistInfo) -> int:
    """Split the *global* ``batch_size`` over ranks; clear errors when it cannot be done.

    ``--batch-size`` is the global batch (images per optimizer step over all processes),
    so a recipe gives the same optimisation whatever the number of processes.
    """
    if num_samples < info.world_size:
        raise FcnsegError(
            f"{info.world_size} processes but only {num_samples} training images: "
            "use fewer processes (--nproc-per-node/--nnodes) or more data"
        )
    if batch_size % info.world_size:
        raise FcnsegError(
            f"--batch-size {batch_size} is the global batch and must be divisible by the "
            f"{info.world_size} processes: use a multiple of {info.world_size}"
        )
    return batch_size // info.world_size


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DDP wrapper (for saving and evaluating)."""
    return model.module if hasattr(model, "module") else model


def sync_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the *start* of each forward, so after the last step every rank
    holds the statistics of its own last batch. Validation must use one model everywhere,
    the one rank 0 saves, or each rank's shard would be scored by a slightly different model.
    """
    if info.enabled:
        for buffer in model.buffers():
            _group().broadcast(buffer, src=0)
