"""Device choice and torch.distributed set-up for single-process and torchrun runs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _mps_works() -> bool:
    """MPS only when it is built, reports available, and really runs a kernel (the
    reference picked MPS whenever CUDA was absent, which fails on most machines)."""
    backend = getattr(torch.backends, "mps", None)
    if backend is None or not backend.is_built() or not backend.is_available():
        return False
    try:
        return bool((torch.ones(1, device="mps") + 1).item() == 2)
    except Exception:
        return False


def choose_device(requested: str | None = None, local_rank: int = 0) -> torch.device:
    """``requested`` if given (``cuda`` means this process's GPU under torchrun), else CUDA,
    else a working MPS, else the CPU."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but CUDA is not available")
        if device.type == "mps" and not _mps_works():
            raise ValueError("--device mps was asked for but MPS is not available")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if _mps_works():
        return torch.device("mps")
    return torch.device("cpu")


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo
    otherwise); a plain single process returns rank 0 of 1 without a group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def local_rank_from_env() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
