"""Batched atomic writes: files appear whole and only when the batch ends; a failure leaves no file at all."""
from __future__ import annotations

import os

import pytest

from common import atomic
from common.atomic import atomic_batch


def test_files_appear_only_after_one_sync_and_whole(tmp_path, monkeypatch):
    syncs = []
    real = atomic._sync_folder_fs
    monkeypatch.setattr(atomic, "_sync_folder_fs", lambda folder: (syncs.append(folder), real(folder)))
    with atomic_batch(tmp_path / "out") as batch:
        for i in range(5):
            batch.write_bytes(f"m{i}.png", bytes([i]) * (100 + i))
        # nothing under a final name yet, only hidden temporary files
        assert not list((tmp_path / "out").glob("m*.png"))
        assert len(list((tmp_path / "out").glob(".m*.partial"))) == 5
    assert syncs == [tmp_path / "out"]  # one sync for the whole batch
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == [f"m{i}.png" for i in range(5)]
    assert (tmp_path / "out" / "m3.png").read_bytes() == bytes([3]) * 103
    assert oct((tmp_path / "out" / "m3.png").stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's 0600


def test_a_failed_batch_leaves_nothing_and_keeps_old_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_batch(tmp_path) as batch:
            batch.write_bytes("a.png", b"new")
            batch.write_bytes("b.png", b"new")
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["a.png"] and (tmp_path / "a.png").read_bytes() == b"old"


def test_names_must_be_plain(tmp_path):
    with pytest.raises(ValueError, match="plain file name"):
        with atomic_batch(tmp_path) as batch:
            batch.write_bytes("../x.png", b"x")
