"""All ``torch.distributed`` code of the trainer, in one place.

A single process (no ``torchrun``) is the first-class path: nothing is initialised, every collective is a no-op,
and :func:`wrap_ddp` returns the model unchanged. Under ``torchrun`` (env vars ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) :func:`init_distributed` joins the process group with the
``nccl`` backend on CUDA and ``gloo`` on CPU.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

__all__ = [
    "DistInfo",
    "init_distributed",
    "resolve_device",
    "is_dist",
    "get_rank",
    "get_world_size",
    "is_main",
    "all_reduce_mean",
    "barrier",
    "wrap_ddp",
    "unwrap",
    "cleanup",
]

_DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, GPU ``local_rank`` on its node, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | torch.device = "auto", *, local_rank: int = 0) -> torch.device:
    """``'auto'`` -> ``cuda:<local_rank>`` when CUDA is available else ``cpu``; ``'cpu'``; ``'cuda'``/``'cuda:N'``.

    Raises
    ------
    ValueError
        ``device`` is not one of ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
    RuntimeError
        CUDA was asked for and this machine (or this torch build) has none.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).lower()
    kind = name.split(":", 1)[0]
    if kind not in _DEVICE_CHOICES or (kind != "cuda" and ":" in name):
        raise ValueError(f"device: expected one of 'auto', 'cpu', 'cuda', 'cuda:N', got {device!r}")
    if kind == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r} asked for CUDA, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu or auto"
        )
    if ":" in name:
        return torch.device(name)
    return torch.device(f"cuda:{local_rank}")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an integer, got {value!r}") from None


def init_distributed(device: str | torch.device = "auto", *, backend: str | None = None) -> DistInfo:
    """Join the process group when launched by ``torchrun``; otherwise describe the single process.

    Parameters
    ----------
    device : {'auto', 'cpu', 'cuda'} or 'cuda:N'
        See :func:`resolve_device`. Under ``torchrun`` with CUDA each process uses ``cuda:<LOCAL_RANK>``.
    backend : str, optional
        Override the backend (default ``nccl`` on CUDA, ``gloo`` on CPU).

    Returns
    -------
    DistInfo
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank=local_rank)
    if world_size <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=dev)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    if dev.type == "cuda":
        dev = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
        log.info("joined process group: rank %d/%d, backend %s, device %s", rank, world_size, backend, dev)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def is_dist() -> bool:
    """True when a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that logs and writes files."""
    return get_rank() == 0


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes (a new tensor; ``tensor`` itself is untouched).

    Single process: returns ``tensor`` as is. The mean of per-process means equals the global mean only when
    every process holds the same number of samples (true with ``drop_last`` samplers).
    """
    if not is_dist() or get_world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    out /= get_world_size()
    return out


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_dist():
        dist.barrier()


def wrap_ddp(model: nn.Module, info: DistInfo | None = None, **ddp_kwargs) -> nn.Module:
    """``DistributedDataParallel(model)`` under a process group; ``model`` unchanged otherwise.

    ``model`` must already be on ``info.device``. Extra keyword arguments go to DDP.
    """
    if not is_dist() or get_world_size() == 1:
        return model
    device = info.device if info is not None else next(model.parameters()).device
    if device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [device.index])
        ddp_kwargs.setdefault("output_device", device.index)
    return DistributedDataParallel(model, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (and ``torch.compile``) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def cleanup() -> None:
    """Leave the process group (no-op when none)."""
    if is_dist():
        dist.destroy_process_group()
