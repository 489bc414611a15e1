"""Single-process path, device resolution, and a real two-process gloo run on CPU."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from trainer.engine import distributed as D


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def test_single_process_is_first_class(no_torchrun_env):
    info = D.init_distributed("cpu")
    assert info == D.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert not info.distributed and info.is_main and D.is_main() and not D.is_dist()
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_mean(t) is t
    model = nn.Linear(2, 2)
    assert D.wrap_ddp(model, info) is model and D.unwrap(model) is model
    D.barrier()
    D.cleanup()


def test_resolve_device():
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        D.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            D.resolve_device("cuda")


def test_bad_env_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        D.init_distributed("cpu")


def _worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from trainer.engine import distributed as dist_mod
    from trainer.losses.dino import DINOLoss

    info = dist_mod.init_distributed("cpu")
    try:
        mean = dist_mod.all_reduce_mean(torch.tensor([float(rank), 10.0 * (rank + 1)]))
        # the DINO centre sees the teacher mean of every process
        loss_fn = DINOLoss(3, 2, center_momentum=0.0, warmup_teacher_temp_epochs=0, n_epochs=1)
        teacher = torch.full((2, 3), float(rank + 1))
        loss_fn(torch.zeros(2, 3), teacher)
        model = dist_mod.wrap_ddp(nn.Linear(2, 1), info)
        dist_mod.barrier()
        queue.put((rank, info.world_size, dist_mod.is_main(), mean.tolist(), loss_fn.center.flatten().tolist(),
                   type(model).__name__, type(dist_mod.unwrap(model)).__name__))
    finally:
        dist_mod.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_all_reduce():
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(2, _free_port(), queue), nprocs=2, join=True)
    results = sorted(queue.get() for _ in range(2))
    for rank, (r, world, main, mean, center, wrapped, inner) in enumerate(results):
        assert (r, world, main) == (rank, 2, rank == 0)
        assert mean == pytest.approx([0.5, 15.0])
        assert center == pytest.approx([1.5, 1.5, 1.5])
        assert (wrapped, inner) == ("DistributedDataParallel", "Linear")
