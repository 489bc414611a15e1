"""A model file's fields are checked before anything is built from them, and a full disk names the file: each in
one line (round 3, item 5)."""
from __future__ import annotations

import errno
import io
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
import common.atomic as atomic_module
from common.atomic import atomic_batch
from trainer.engine.checkpoint import save_checkpoint
from trainer.engine.export import export_model
from trainer.models.segmenter import load_seg_model
from trainer.train.config import PretrainConfig

PREFIX = "edgedino: error: "


@pytest.fixture(scope="module")
def saved(tiny_model_pt) -> dict:
    """The contents of a tiny model.pt, as finetune saves one."""
    return torch.load(tiny_model_pt, weights_only=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    cv2.imwrite(str(folder / "A.png"), np.full((48, 64, 3), 150, np.uint8))
    return folder


def edited(state: dict, change) -> dict:
    state = {**state, "extra": {**state["extra"], "config": dict(state["extra"]["config"])}}
    change(state)
    return state


CASES = {
    "no arch": (lambda s: s.pop("arch"), "not a complete edgedino model (model.pt): 'arch' missing"),
    "no state_dict": (lambda s: s.pop("state_dict"), "'state_dict' missing"),
    "img_size 10**9": (lambda s: s.update(img_size=10**9), "img_size is 1000000000; expected a whole number in "
                                                          "[16, 4096]"),
    "img_size as text": (lambda s: s.update(img_size="224"), "img_size is '224' (str)"),
    "img_size a float": (lambda s: s.update(img_size=32.0), "img_size is 32.0 (float)"),
    "img_size true": (lambda s: s.update(img_size=True), "img_size is True (bool)"),
    "patch_size 0": (lambda s: s.update(patch_size=0), "patch_size is 0; expected a whole number in [1, 32]"),
    "decoder_hidden 10**9": (lambda s: s.update(decoder_hidden=10**9), "decoder_hidden is 1000000000"),
    "unknown decoder": (lambda s: s.update(decoder_arch="mlp"), "decoder_arch is 'mlp'; expected one of"),
    "arch with a slash": (lambda s: s.update(arch="../vit"), "arch '../vit' is not a plain file name"),
    "U-Net of 10**6 channels": (lambda s: s.update(arch="unet", unet_channels=[10**6, 10**6]),
                                "unet_channels is [1000000, 1000000]; expected 2 to 8 widths"),
    "predict_scale 10**9": (lambda s: s["extra"]["config"].update(predict_scale=1e9), "predict_scale is 1000000000.0; "
                                                                                     "expected a number in"),
    "one_lesion as text": (lambda s: s["extra"]["config"].update(one_lesion="yes"), "one_lesion is 'yes'; expected "
                                                                                   "true or false"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crafted_model_pt_is_refused_in_one_line_naming_the_field(tmp_path, saved, images, case):
    change, words = CASES[case]
    path = tmp_path / "model.pt"
    torch.save(edited(saved, change), path)
    result = CliRunner().invoke(cli.main, ["predict", "--model", str(path), "--data", str(images), "--out",
                                           str(tmp_path / "pred"), "--device", "cpu", "--no-progress"])
    errors = [ln for ln in result.output.splitlines() if ln.startswith(PREFIX)]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert errors[0].startswith(f"{PREFIX}{path}: ") and words in errors[0], errors[0]
    assert not (tmp_path / "pred").exists()


def test_a_crafted_export_is_refused_naming_the_field(tmp_path):
    config = PretrainConfig(arch="vit_tiny_patch16_224", patch_size=8, img_size=32, out_dim=16, head_hidden=16,
                            bottleneck_dim=8, decoder_hidden=8)
    torch.manual_seed(0)
    export_model(config.build_model(), config, tmp_path / "export.pt", step=3)
    good = torch.load(tmp_path / "export.pt", weights_only=True)
    load_seg_model(tmp_path / "export.pt")  # the real one loads
    for change, words in ((lambda s: s.update(img_size=-1), "img_size is -1"),
                          (lambda s: s.update(step="3"), "step is '3' (str)"),
                          (lambda s: s.pop("decoder"), "'decoder' missing"),
                          (lambda s: s.update(decoder_hidden=2**40), "decoder_hidden is 1099511627776")):
        state = dict(good)
        change(state)
        torch.save(state, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=re.escape(words)) as err:
            load_seg_model(tmp_path / "bad.pt")
        assert str(err.value).startswith(f"{tmp_path / 'bad.pt'}: ")


class FullDisk(io.RawIOBase):
    """The raw side of a file on a disk that fills up: the first write fails with ENOSPC and, as ``write(2)``
    reports it, no file name; later ones (the flush on close) pass. Opened through ``io.BufferedWriter``, as
    ``os.fdopen`` opens it, torch then fails as it did on a full 600 kB tmpfs: with its own ``inline_container.cc``
    RuntimeError, the cause and the file lost."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd, self.failed = fd, False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if not self.failed:
            self.failed = True
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def full_disk_fdopen(real):
    def fdopen(fd, mode="r", *args, **kwargs):
        return io.BufferedWriter(FullDisk(fd)) if "w" in mode else real(fd, mode, *args, **kwargs)
    return fdopen


def test_a_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"the previous model")
    monkeypatch.setattr(atomic_module.os, "fdopen", full_disk_fdopen(atomic_module.os.fdopen))
    with pytest.raises(OSError) as err:
        save_checkpoint(path, {"weights": torch.zeros(10_000)})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)  # not torch's inline_container text
    assert cli.describe_error(err.value) == f"{path}: no space left on the device; free some space and rerun " \
                                            "(finished work is kept)"
    assert path.read_bytes() == b"the previous model" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_full_disk_in_a_batch_of_masks_names_the_mask(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_module.os, "fdopen", full_disk_fdopen(atomic_module.os.fdopen))
    with pytest.raises(OSError) as err:
        with atomic_batch(tmp_path) as batch:
            batch.write_bytes("X_segmentation.png", b"png bytes")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "X_segmentation.png")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_logging_names_the_log(tmp_path):
    from trainer.engine.run_log import RunLog

    run_log = RunLog(tmp_path, enabled=True)
    run_log._fh.close()
    run_log._fh = io.TextIOWrapper(io.BufferedWriter(FullDisk(os.open(tmp_path / "other", os.O_CREAT | os.O_WRONLY))))
    with pytest.raises(OSError) as err:
        run_log.write({"event": "start", "step": 0})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "log.jsonl")


def test_a_pretraining_checkpoint_without_its_keys_is_named(tmp_path):
    from pipeline.shards import ShardRecord, write_shard
    from trainer.engine.checkpoint import CheckpointError
    from trainer.train.pretrain import LATEST, pretrain

    s = 32
    records = [ShardRecord(id=f"S{i}", path="/gone.jpg", orig_shape=(s, s), image=np.full((s, s, 3), 90 + i, np.uint8),
                           hair_mask=np.zeros((s, s), bool), prob=np.full((s, s), 0.5, np.float32),
                           pseudo_mask=np.eye(s, dtype=bool), no_lesion=False, diagnostics={}) for i in range(4)]
    write_shard(tmp_path / "shards" / "shard-00000.h5", records, size=s, config_json="{}", config_hash="h",
                planned_ids=[r.id for r in records], rejects=[], versions={})
    out = tmp_path / "run"
    out.mkdir()
    (out / ".edgedino.lock").write_text("pretrain pid 1")  # a run folder of an older edgedino: its own
    torch.save({"step": 4, "epoch": 1}, out / LATEST)
    config = PretrainConfig(arch="vit_tiny_patch16_224", patch_size=8, img_size=32, local_size=16, n_local=2,
                            epochs=2, batch_size=2, out_dim=16, head_hidden=16, bottleneck_dim=8, decoder_hidden=8,
                            num_workers=0, picture_every=0, drop_path=0.0)
    with pytest.raises(CheckpointError, match=rf"{out / LATEST}: not a complete pretraining checkpoint: 'student', "
                                              "'teacher', 'optimizer'"):
        pretrain(tmp_path / "shards", out, config, device="cpu", progress=False)
