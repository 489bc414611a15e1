"""ShardDataset's min_confidence: low-confidence pseudo-masks stay out of training (pretrain --min-confidence)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.shards import ShardRecord, write_shard
from trainer.data.shard_dataset import ShardDataset
from trainer.train.config import PretrainConfig

S = 16


def _record(i: int, confidence: float | None) -> ShardRecord:
    disc = np.zeros((S, S), bool)
    disc[4:12, 4:12] = True
    diagnostics = {} if confidence is None else {"confidence": confidence}
    return ShardRecord(id=f"C{i:03d}", path=f"/x/C{i:03d}.jpg", orig_shape=(S, S),
                       image=np.full((S, S, 3), 100 + i, np.uint8), hair_mask=np.zeros((S, S), bool),
                       prob=disc.astype(np.float32), pseudo_mask=disc, no_lesion=False, diagnostics=diagnostics)


def _shard(path, records):
    write_shard(path, records, size=S, config_json="{}", config_hash="h", planned_ids=[r.id for r in records],
                rejects=[], versions={})


def test_low_confidence_samples_are_left_out_and_old_shards_kept(tmp_path):
    scores = [0.9, 0.1, 0.5, 0.49, 0.0, 1.0]
    _shard(tmp_path / "shard-00000.h5", [_record(i, c) for i, c in enumerate(scores)])
    assert len(ShardDataset(tmp_path)) == 6  # 0: keep all
    ds = ShardDataset(tmp_path, min_confidence=0.5)
    assert ds.ids == ["C000", "C002", "C005"] and ds.n_low_confidence == 3 and ds.n_unscored == 0
    # the kept rows point at the right samples
    assert [int(ds[k]["image"][0, 0, 0]) for k in range(len(ds))] == [100, 102, 105]
    old = tmp_path / "old"
    old.mkdir()
    _shard(old / "shard-00000.h5", [_record(i, None) for i in range(3)])  # written before confidence existed
    both = ShardDataset([tmp_path, old], min_confidence=0.5)
    assert len(both) == 6 and both.n_unscored == 3 and both.n_low_confidence == 3


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_min_confidence_outside_0_1_is_refused(tmp_path, bad):
    _shard(tmp_path / "shard-00000.h5", [_record(0, 0.5), _record(1, 0.5)])
    with pytest.raises(ValueError, match="min_confidence"):
        ShardDataset(tmp_path, min_confidence=bad)
    with pytest.raises(ValueError, match="min_confidence"):
        dataclasses.replace(PretrainConfig(), min_confidence=bad)


def test_pretrain_trains_only_on_confident_pseudo_masks(tmp_path):
    from trainer.engine.run_log import read_log
    from trainer.train.pretrain import pretrain

    scores = [0.9, 0.1, 0.8, 0.2, 0.7, 0.6, 0.05, 1.0]
    _shard(tmp_path / "shards" / "shard-00000.h5", [_record(i, c) for i, c in enumerate(scores)])
    config = PretrainConfig(arch="vit_tiny_patch16_224", img_size=32, local_size=16, n_local=2, epochs=1,
                            batch_size=2, out_dim=32, head_hidden=32, bottleneck_dim=16, decoder_hidden=8,
                            warmup_epochs=0, warmup_teacher_temp_epochs=1, lambda_ramp_epochs=1, num_workers=0,
                            picture_every=0, log_every=1, drop_path=0.0, probe_samples=0, min_confidence=0.5)
    result = pretrain(tmp_path / "shards", tmp_path / "run", config, device="cpu", progress=False)
    start = next(r for r in read_log(tmp_path / "run" / "log.jsonl") if r.get("event") == "start")
    assert start["samples"] == 5 and start["config"]["min_confidence"] == 0.5
    assert result.step == 2  # 5 samples, batch 2, last partial batch dropped


def test_without_and_has_lesion_match_a_fresh_dataset_without_rereading(tmp_path):
    records = [_record(i, 0.5) for i in range(5)]
    records[3] = dataclasses.replace(records[3], no_lesion=True)
    _shard(tmp_path / "shard-00000.h5", records)
    ds = ShardDataset(tmp_path, exclude_ids={"C000"})
    held = ds.without(["C003", "C004"])  # e.g. the linear probe's held-out images
    fresh = ShardDataset(tmp_path, exclude_ids={"C000", "C003", "C004"})
    assert held.ids == fresh.ids and held.n_excluded == fresh.n_excluded == 3
    assert np.array_equal(held.rows, fresh.rows) and np.array_equal(held.shard_of(), fresh.shard_of())
    assert [int(held[k]["image"][0, 0, 0]) for k in range(len(held))] == [101, 102]
    assert len(ds) == 4  # the original is unchanged
    assert ds.has_lesion().tolist() == [float(ds[k]["valid"]) > 0 for k in range(len(ds))] == [True, True, False, True]
