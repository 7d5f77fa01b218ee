"""Training on several GPUs (or CPU processes) with PyTorch's DistributedDataParallel.

Launch any course command with torchrun, e.g. ``torchrun --nproc_per_node=4 -m diffuse_edu workshop
--scale full``: :func:`init_from_env` joins the process group that torchrun describes in the
environment, and :func:`diffuse_edu.training.loop.train` then splits every global batch of
``config.batch_size`` examples between the ranks, averages the gradients (DDP), keeps the EMA and
snapshots on rank 0, and stops all ranks at the same step of the time budget, measured by rank 0's
clock. Checkpoints are written by rank 0 alone. Outside torchrun every function here is a no-op
answer for one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and prints."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); True when one was joined.

    NCCL on CUDA, with this process's GPU picked by LOCAL_RANK; gloo on the CPU.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return True


def barrier() -> None:
    if active():
        dist.barrier()


def agreed_seconds(seconds: float, device: torch.device) -> float:
    """Rank 0's elapsed seconds on every rank, so that all ranks stop at the same step."""
    if not active():
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64,
                     device=device if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return float(t.item())


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the ranks (a collective; no copy to the host)."""
    if not active():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / world_size()
