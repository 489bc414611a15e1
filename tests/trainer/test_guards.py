"""Pretraining resumes only on its own data and survives a damaged checkpoint; fine-tuning and the table check
their data and arguments before any training."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from common import datasets
from pipeline.shards import ShardRecord, write_shard
from trainer import table as table_module
from trainer.engine.export import read_export
from trainer.train import finetune as finetune_module
from trainer.train import pretrain as pretrain_module
from trainer.train.config import PretrainConfig
from trainer.train.pretrain import LATEST, PREVIOUS, pretrain

S = 64
TINY = PretrainConfig(arch="vit_tiny_patch16_224", img_size=32, local_size=16, n_local=2, epochs=1, batch_size=4,
                      out_dim=64, head_hidden=64, bottleneck_dim=32, decoder_hidden=16, warmup_epochs=1,
                      warmup_teacher_temp_epochs=1, lambda_ramp_epochs=1, num_workers=0, picture_every=0,
                      log_every=1, drop_path=0.0)


def _record(i: int) -> ShardRecord:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[:S, :S]
    disc = (yy - S / 2) ** 2 + (xx - S / 2 - rng.uniform(-8, 8)) ** 2 < rng.uniform(10, 20) ** 2
    image = np.where(disc[..., None], [90, 60, 40], [220, 170, 150]).astype(np.uint8)
    return ShardRecord(id=f"S{i:03d}", path=f"/x/S{i:03d}.jpg", orig_shape=(S, S), image=image,
                       hair_mask=np.zeros((S, S), bool), prob=disc.astype(np.float32), pseudo_mask=disc,
                       no_lesion=False, diagnostics={})


def _shards(out: Path, n_shards: int, first: int = 0) -> Path:
    for k in range(n_shards):
        recs = [_record(first + 4 * k + j) for j in range(4)]
        write_shard(out / f"shard-{k:05d}.h5", recs, size=S, config_json="{}", config_hash="h",
                    planned_ids=[r.id for r in recs], rejects=[], versions={})
    return out


def test_resume_on_other_data_is_refused_unless_new_data(tmp_path):
    small, large = _shards(tmp_path / "small", 2), _shards(tmp_path / "large", 4, first=100)
    out = tmp_path / "run"
    first = pretrain(small, out, TINY, device="cpu", progress=False)
    assert first.step == 2
    longer = dataclasses.replace(TINY, epochs=2)
    with pytest.raises(ValueError, match=r"other data \(8 sample\(s\).*-> 16 sample\(s\).*--new-data"):
        pretrain(large, out, longer, device="cpu", progress=False)
    more = pretrain(large, out, longer, device="cpu", progress=False, new_data=True)
    assert more.resumed_from == 4 and more.step == 8  # epoch 1 done, counted in the new data's 4 steps/epoch
    fewer = pretrain(small, out, dataclasses.replace(TINY, epochs=3), device="cpu", progress=False, new_data=True)
    assert fewer.resumed_from == 4 and fewer.step == 6  # epochs 1-2 done at 2 steps/epoch; one more trained
    assert read_export(out / "export.pt")["step"] == 6


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    shards = _shards(tmp_path / "shards", 2)
    out = tmp_path / "run"
    pretrain(shards, out, dataclasses.replace(TINY, epochs=2), device="cpu", progress=False)
    assert (out / LATEST).exists() and (out / PREVIOUS).exists()
    assert torch.load(out / PREVIOUS, weights_only=True)["step"] == 2
    data = (out / LATEST).read_bytes()
    (out / LATEST).write_bytes(data[: len(data) // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="trainer.train.pretrain"):
        again = pretrain(shards, out, dataclasses.replace(TINY, epochs=3), device="cpu", progress=False)
    assert again.resumed_from == 2 and again.step == 6
    assert "resuming from" in caplog.text and PREVIOUS in caplog.text


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch):
    shards = _shards(tmp_path / "shards", 2)
    two = dataclasses.replace(TINY, epochs=2)
    pretrain(shards, tmp_path / "straight", two, device="cpu", progress=False)
    real_end = pretrain_module._end_of_epoch

    def killed_after_first_epoch(run, epoch, out_dir, device):
        real_end(run, epoch, out_dir, device)
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_module, "_end_of_epoch", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain(shards, tmp_path / "resumed", two, device="cpu", progress=False)
    monkeypatch.setattr(pretrain_module, "_end_of_epoch", real_end)
    assert pretrain(shards, tmp_path / "resumed", two, device="cpu", progress=False).resumed_from == 2
    a, b = read_export(tmp_path / "straight" / "export.pt"), read_export(tmp_path / "resumed" / "export.pt")
    assert a["step"] == b["step"] == 4
    for name, value in a["backbone"].items():
        assert torch.equal(value, b["backbone"][name]), name


def _labelled(root: Path, n: int) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        rng = np.random.default_rng(i)
        image = np.clip(rng.normal(160, 30, (48, 64, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"L{i:02d}.png"), image)
        mask = np.zeros((48, 64), np.uint8)
        mask[10:30, 15:40] = 255
        cv2.imwrite(str(root / "masks" / f"L{i:02d}_segmentation.png"), mask)
    return root


@pytest.mark.parametrize("damage", ["wrong size", "non-binary"])
def test_finetune_checks_every_mask_before_training(tmp_path, monkeypatch, damage):
    data = _labelled(tmp_path / "data", 20)
    victim = sorted((data / "masks").iterdir())[-1]  # whichever split it lands in, it is read
    if damage == "wrong size":
        cv2.imwrite(str(victim), np.zeros((40, 40), np.uint8))
    else:
        cv2.imwrite(str(victim), np.full((48, 64), 128, np.uint8))

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the data was checked")

    monkeypatch.setattr(finetune_module, "_train", no_training)
    monkeypatch.setattr(finetune_module, "build_seg_model", no_training)
    expected = "differs from image size" if damage == "wrong size" else "not binary"
    with pytest.raises(datasets.DatasetError, match=expected):
        finetune_module.finetune(data, 1.0, tmp_path / "ft", config=finetune_module.FinetuneConfig(init="scratch"),
                                 device="cpu", progress=False)
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("fracs", [(0.5, float("nan")), (0.5, 0.0), (1.5,)])
def test_table_rejects_bad_fractions_before_any_work(tmp_path, monkeypatch, fracs):
    data = _labelled(tmp_path / "data", 6)

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(table_module, "run_pseudomasks", no_work)
    monkeypatch.setattr(table_module.finetune_loop, "finetune", no_work)
    monkeypatch.setattr(table_module.pretrain_loop, "pretrain", no_work)
    spec = table_module.TableSpec(data=(str(data),), out=str(tmp_path / "table"), fracs=fracs, seeds=(0,),
                                  methods=("scratch",), preset="cpu")
    with pytest.raises(ValueError, match=r"fracs: each must be in \(0, 1\]"):
        table_module.run_table(spec, progress=False)


def test_pretrain_never_writes_into_its_shard_folder(tmp_path):
    shards = _shards(tmp_path / "shards", 2)
    with pytest.raises(ValueError, match="overlaps the input"):
        pretrain(shards, shards, TINY, device="cpu", progress=False)
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00000.h5", "shard-00001.h5"]



def test_a_second_pretrain_on_the_same_out_is_refused(tmp_path):
    from common.guard import FolderLock

    shards = _shards(tmp_path / "shards", 2)
    out = tmp_path / "run"
    out.mkdir()
    with FolderLock(out, command="pretrain"):
        with pytest.raises(ValueError, match="another run is writing into this folder"):
            pretrain(shards, out, TINY, device="cpu", progress=False)
    assert pretrain(shards, out, TINY, device="cpu", progress=False).step == 2
