"""Atomic checkpoints, latest/prune, and the RNG-state round trip."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainer.engine.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def _state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.arange(6.0).view(2, 3) * step}, "config": {"lr": 5e-4, "name": "x"}}


def test_save_load_round_trip_leaves_no_temp_file(tmp_path):
    path = checkpoint_path(tmp_path / "run", 7)
    save_checkpoint(path, _state(7))
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint_00000007.pt"]
    got = load_checkpoint(path)
    assert got["step"] == 7 and got["config"] == {"lr": 5e-4, "name": "x"}
    torch.testing.assert_close(got["model"]["w"], _state(7)["model"]["w"])


def test_failure_mid_write_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "checkpoint_00000001.pt"
    save_checkpoint(path, _state(1))
    before = path.read_bytes()
    with pytest.raises(Exception, match="boom"):
        save_checkpoint(path, {"model": {"w": torch.ones(1000)}, "bad": _Unpicklable()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert load_checkpoint(path)["step"] == 1


def test_latest_and_prune(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 100, 20, 40):
        save_checkpoint(checkpoint_path(tmp_path, step), _state(step))
    (tmp_path / ".checkpoint_00000999.pt.abc.partial").write_bytes(b"half")
    (tmp_path / "checkpoint_notes.pt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 100)
    deleted = prune_checkpoints(tmp_path, keep=2, keep_every=20)
    assert deleted == [checkpoint_path(tmp_path, 5)]
    assert checkpoint_path(tmp_path, 20).exists() and checkpoint_path(tmp_path, 40).exists()


def test_corrupt_file_error_names_path(tmp_path):
    path = tmp_path / "checkpoint_00000001.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="checkpoint_00000001.pt"):
        load_checkpoint(path)


def _draws():
    return (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4).tolist())


def test_rng_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached Gaussian in NumPy's state
    _draws()
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = _draws()
    _draws()  # move every generator on
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert _draws() == expected
