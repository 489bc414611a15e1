"""Pretraining end to end on tiny shards: streaming, resume, export, NaN guard, DDP on CPU."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.shards import ShardRecord, write_shard
from trainer.data.shard_dataset import ShardAwareSampler, ShardDataset
from trainer.engine.export import read_export
from trainer.engine.run_log import read_log
from trainer.models.backbone import create_backbone
from trainer.train import objective as objective_module
from trainer.train import pretrain as pretrain_module
from trainer.train.config import PretrainConfig
from trainer.train.objective import NonFiniteLoss
from trainer.train.pretrain import LATEST, pretrain

REPO = Path(__file__).resolve().parents[3]
S = 64
TINY = PretrainConfig(arch="vit_tiny_patch16_224", img_size=32, local_size=16, n_local=2, epochs=2, batch_size=4,
                      out_dim=64, head_hidden=64, bottleneck_dim=32, decoder_hidden=16, warmup_epochs=1,
                      warmup_teacher_temp_epochs=1, lambda_ramp_epochs=1, num_workers=0, picture_every=1,
                      log_every=1, drop_path=0.0)


def _record(i: int) -> ShardRecord:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[:S, :S]
    r = rng.uniform(10, 20)
    disc = (yy - S / 2 - rng.uniform(-8, 8)) ** 2 + (xx - S / 2 - rng.uniform(-8, 8)) ** 2 < r * r
    image = np.where(disc[..., None], [90, 60, 40], [220, 170, 150]).astype(np.uint8)
    image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    return ShardRecord(id=f"S{i:03d}", path=f"/x/S{i:03d}.jpg", orig_shape=(S, S), image=image,
                       hair_mask=np.zeros((S, S), bool), prob=disc.astype(np.float32), pseudo_mask=disc,
                       no_lesion=i == 5, diagnostics={})


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    for k in range(3):
        recs = [_record(4 * k + j) for j in range(4)]
        write_shard(out / f"shard-{k:05d}.h5", recs, size=S, config_json="{}", config_hash="h",
                    planned_ids=[r.id for r in recs], rejects=[], versions={})
    return out


def test_shard_dataset_items_and_exclusion(shards):
    ds = ShardDataset(shards)
    assert len(ds) == 12 and ds.size == S
    item = ds[5]
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.uint8
    assert item["maps"].shape == (3, S, S) and set(item["maps"][0].unique().tolist()) <= {0, 255}
    assert item["valid"].item() == 0.0 and ds[4]["valid"].item() == 1.0
    assert ShardDataset(shards, exclude_ids={"S000", "S007"}).n_excluded == 2
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)  # each worker opens its own files
    assert sum(b["image"].shape[0] for b in loader) == 12


def test_sampler_is_shard_contiguous_deterministic_and_splits_ranks(shards):
    ds = ShardDataset(shards)
    order = list(ShardAwareSampler(ds, seed=3))
    assert sorted(order) == list(range(12)) and order == list(ShardAwareSampler(ds, seed=3))
    shard_of = ds.shard_of()[order]
    assert (np.diff(shard_of) != 0).sum() == 2  # visits each shard once, as one block
    s = ShardAwareSampler(ds, seed=3)
    s.set_epoch(1)
    assert list(s) != order
    ranks = [list(ShardAwareSampler(ds, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 6 and sorted(ranks[0] + ranks[1]) == list(range(12))


def test_pretrain_resume_continue_and_export(shards, tmp_path):
    out = tmp_path / "run"
    first = pretrain(shards, out, TINY, device="cpu", progress=False)
    assert first.step == 2 * 3 and first.resumed_from is None
    assert (out / LATEST).exists() and (out / "pictures" / "epoch-0002.png").exists()
    records = read_log(out / "log.jsonl")
    steps = [r for r in records if "loss" in r and "event" not in r]
    assert len(steps) == 6 and all(np.isfinite(r["loss"]) and r["dino"] > 0 and r["seg"] > 0 for r in steps)
    assert steps[0]["lambda"] < steps[-1]["lambda"] == pytest.approx(TINY.lambda_seg)
    more = pretrain(shards, out, dataclasses.replace(TINY, epochs=3), device="cpu", progress=False)
    assert more.resumed_from == 6 and more.step == 9
    export = read_export(out / "export.pt")
    assert export["arch"] == TINY.arch and export["step"] == 9
    backbone = create_backbone(TINY.arch, img_size=TINY.img_size)
    backbone.load_state_dict(export["backbone"], strict=True)
    with pytest.raises(ValueError, match="another architecture"):
        pretrain(shards, out, dataclasses.replace(TINY, epochs=4, out_dim=128), device="cpu", progress=False)


def test_ablations_train_what_they_should(shards, tmp_path):
    plain = pretrain(shards, tmp_path / "plain", dataclasses.replace(TINY, epochs=1, lambda_seg=0.0),
                     device="cpu", progress=False)
    assert "seg" not in plain.last and plain.last["dino"] > 0
    seg_only = pretrain(shards, tmp_path / "seg", dataclasses.replace(TINY, epochs=1, distill=False),
                        device="cpu", progress=False)
    assert "dino" not in seg_only.last and seg_only.last["seg"] > 0


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(shards, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    pretrain(shards, out, dataclasses.replace(TINY, epochs=1), device="cpu", progress=False)
    before = (out / LATEST).read_bytes()
    monkeypatch.setattr(objective_module, "seg_loss", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLoss, match="the loss became nan at step 3"):
        pretrain(shards, out, dataclasses.replace(TINY, epochs=2), device="cpu", progress=False)
    assert (out / LATEST).read_bytes() == before


def test_cli_contract_and_torchrun_ddp_on_cpu(shards, tmp_path):
    out = tmp_path / "ddp"
    args = ["--shards", str(shards), "--out", str(out), "--preset", "cpu", "--epochs", "1", "--img-size", "32",
            "--local-size", "16", "--batch-size", "2", "--out-dim", "64", "--device", "cpu", "--no-progress"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29571", str(REPO / "cli.py"), "pretrain", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    start = [r for r in read_log(out / "log.jsonl") if r.get("event") == "start"][0]
    assert start["world_size"] == 2 and start["steps_per_epoch"] == 3  # 12 samples / 2 ranks / batch 2
    assert (out / "export.pt").exists()
    again = subprocess.run([sys.executable, str(REPO / "cli.py"), "pretrain", *args[:-1], "--epochs", "2",
                            "--batch-size", "4", "--no-progress"], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step 3" in again.stdout


def test_works_with_distributed_sampler_and_names_a_bad_shard(shards, tmp_path):
    from torch.utils.data import DataLoader, DistributedSampler

    from pipeline.shards import ShardError

    ds = ShardDataset(shards)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        seen += [int(i) for b in DataLoader(ds, batch_size=3, sampler=sampler) for i in b["index"]]
    assert sorted(seen) == list(range(12))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "shard-00000.h5").write_bytes(b"truncated")
    with pytest.raises(ShardError, match=r"shard-00000\.h5: not a readable HDF5 shard"):
        ShardDataset(bad)
    with pytest.raises(ShardError, match="no shard files"):
        ShardDataset(tmp_path)  # holds a folder, but no shard files


# teacher temperature = student temperature (no sharpening) and a high learning rate: DINO's uniform collapse
COLLAPSING = dataclasses.replace(TINY, epochs=6, lr=0.5, warmup_teacher_temp=0.2, teacher_temp=0.2, student_temp=0.2,
                                 collapse_patience=5, picture_every=6)
HEALTHY = dataclasses.replace(COLLAPSING, warmup_teacher_temp=0.04, teacher_temp=0.04, student_temp=0.1)


def test_collapse_monitor_fires_on_a_collapsing_run_and_stays_silent_on_a_healthy_one(shards, tmp_path, caplog):
    import cli

    with caplog.at_level("WARNING", logger="trainer.train.pretrain"):
        bad = pretrain(shards, tmp_path / "bad", COLLAPSING, device="cpu", progress=False)
    steps = [r for r in read_log(tmp_path / "bad" / "log.jsonl") if "teacher_entropy" in r and "event" not in r]
    assert len(steps) == 18 and steps[0]["teacher_entropy_frac"] < 0.95 < steps[-1]["teacher_entropy_frac"]
    assert all(r["log_k"] == pytest.approx(np.log(64)) and 1 <= r["prototypes_used"] <= 8 for r in steps)
    assert bad.collapse["status"] == "uniform" and bad.collapse["episodes"][0][0] == "uniform"
    assert any("DINO uniform collapse for 6 steps" in m for m in caplog.messages)
    events = [r for r in read_log(tmp_path / "bad" / "log.jsonl") if r.get("event") == "collapse"]
    assert len(events) == 1 and events[0]["teacher_entropy_frac"] >= 0.95
    assert (tmp_path / "bad" / "pictures" / "collapse.png").exists()
    assert "WARNING: DINO uniform collapse" in pretrain_module.run_summary(tmp_path / "bad")
    assert "WARNING: DINO collapse (uniform at steps" in cli._pretrain_health(bad)
    shown = CliRunner().invoke(cli.main, ["inspect", str(tmp_path / "bad")])
    assert shown.exit_code == 0 and "WARNING: DINO uniform collapse for 6 steps" in shown.output

    caplog.clear()
    with caplog.at_level("WARNING", logger="trainer.train.pretrain"):
        good = pretrain(shards, tmp_path / "good", HEALTHY, device="cpu", progress=False)
    steps = [r for r in read_log(tmp_path / "good" / "log.jsonl") if "teacher_entropy" in r and "event" not in r]
    assert max(r["teacher_entropy_frac"] for r in steps) < 0.95
    assert min(r["entropy_of_mean_frac"] for r in steps) > 0.1
    for e in [r for r in read_log(tmp_path / "good" / "log.jsonl") if r.get("event") == "epoch"]:
        # the entropy of an epoch's mean target is at least the mean of its batches' (entropy is concave)
        assert e["entropy_of_mean_frac"] - 1e-6 <= e["epoch_entropy_of_mean_frac"] <= 1.0
    assert good.collapse == {"status": "healthy", "episodes": [], "runs": {"uniform": 0, "one-hot": 0}, "patience": 5}
    assert not any("collapse" in m for m in caplog.messages)
    assert "collapse: none" in pretrain_module.run_summary(tmp_path / "good")
    assert "collapse: none" in cli._pretrain_health(good) and "WARNING" not in cli._pretrain_health(good)


def test_health_line_names_a_collapse_still_under_the_patience():
    import cli

    result = pretrain_module.PretrainResult(out_dir=Path("x"), step=36, epochs=1, resumed_from=None, last={},
                                            probe={}, collapse={"status": "healthy", "episodes": [],
                                                                "runs": {"uniform": 30, "one-hot": 0},
                                                                "patience": 50})
    line = cli._pretrain_health(result)
    assert "uniform for the last 30 steps" in line and "collapse: none (healthy)" not in line
    result.collapse["runs"]["uniform"] = 3
    assert "collapse: none (healthy)" in cli._pretrain_health(result)


def test_probe_runs_at_start_and_end_and_is_held_out_when_data_allows(shards, tmp_path):
    config = dataclasses.replace(TINY, epochs=1, img_size=64, local_size=32, probe_samples=3)
    res = pretrain(shards, tmp_path / "p", config, device="cpu", progress=False)
    start = [r for r in read_log(tmp_path / "p" / "log.jsonl") if r.get("event") == "start"][0]
    assert start["samples"] == 9 and res.step == 2  # 3 of the 12 samples held out for the probe
    assert res.probe["probe_heldout"] and res.probe["probe_n_images"] == 3 and res.probe["probe_n_patches"] == 2 * 16
    assert {"probe_init_jaccard", "probe_jaccard"} <= set(res.probe)
    summary = [r for r in read_log(tmp_path / "p" / "log.jsonl") if r.get("event") == "summary"][0]
    assert summary["probe_jaccard"] == res.probe["probe_jaccard"] or np.isnan(res.probe["probe_jaccard"])
    off = pretrain(shards, tmp_path / "off", dataclasses.replace(config, probe_samples=0), device="cpu",
                   progress=False)
    assert off.probe == {}


def test_koleo_and_sinkhorn_options_reach_the_loss(shards, tmp_path):
    config = dataclasses.replace(TINY, epochs=1, koleo_weight=0.1, centering="sinkhorn")
    res = pretrain(shards, tmp_path / "k", config, device="cpu", progress=False)
    assert -np.log(2) - 1e-6 <= res.last["koleo"] < 10  # nearest distances on the unit sphere are <= 2
    steps = [r for r in read_log(tmp_path / "k" / "log.jsonl") if "koleo" in r and "event" not in r]
    for r in steps:
        assert r["loss"] == pytest.approx(r["dino"] + 0.1 * r["koleo"] + r["lambda"] * r["seg"], rel=1e-4)


def test_decoder_lr_scale_and_free_last_layer(shards, tmp_path):
    config = dataclasses.replace(TINY, epochs=1, decoder_lr_scale=10.0, norm_last_layer=False, freeze_last_layer=0)
    out = tmp_path / "d"
    pretrain(shards, out, config, device="cpu", progress=False)
    state = torch.load(out / LATEST, map_location="cpu", weights_only=False)
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert set(groups) == {"decay", "no_decay", "decay:decoder", "no_decay:decoder"}
    assert groups["decay:decoder"]["lr"] == pytest.approx(10 * groups["decay"]["lr"]) and groups["decay"]["lr"] > 0
    decoder_keys = [k for k in state["student"] if k.startswith("decoder.")]
    assert len(groups["decay:decoder"]["params"]) + len(groups["no_decay:decoder"]["params"]) == len(decoder_keys)
    gain = state["student"]["head.last_layer.parametrizations.weight.original0"]
    assert not torch.allclose(gain, torch.ones_like(gain))  # the free last layer's norm learned
    fixed = pretrain(shards, tmp_path / "f", dataclasses.replace(TINY, epochs=1, freeze_last_layer=0), device="cpu",
                     progress=False)
    assert fixed.step == 3
    gain = torch.load(tmp_path / "f" / LATEST, map_location="cpu", weights_only=False)["student"][
        "head.last_layer.parametrizations.weight.original0"]
    torch.testing.assert_close(gain, torch.ones_like(gain))
    with pytest.raises(ValueError, match="decoder-lr-scale"):
        pretrain(shards, out, dataclasses.replace(config, epochs=2, decoder_lr_scale=1.0), device="cpu",
                 progress=False)


@pytest.mark.parametrize("field,value", [("student_temp", 0.0), ("center_momentum", 1.5), ("centering", "sk"),
                                         ("koleo_weight", -1.0), ("collapse_patience", 0), ("probe_samples", 1),
                                         ("decoder_lr_scale", 0.0)])
def test_collapse_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TINY, **{field: value})


def test_the_last_line_says_when_the_probe_did_not_rise_whatever_the_collapse_monitor_says(tmp_path):
    import cli

    healthy = {"status": "healthy", "episodes": [], "runs": {"uniform": 0, "one-hot": 0}, "patience": 50}
    flat = pretrain_module.PretrainResult(out_dir=tmp_path, step=790, epochs=5, resumed_from=None, last={},
                                          probe={"probe_init_jaccard": 0.256, "probe_jaccard": 0.252,
                                                 "probe_n_images": 64, "probe_heldout": True}, collapse=healthy)
    line = cli._pretrain_health(flat)
    assert "NOT LEARNING" in line and "0.256 at the start -> 0.252" in line and "(healthy)" not in line
    rising = dataclasses.replace(flat, probe={**flat.probe, "probe_jaccard": 0.301})
    line = cli._pretrain_health(rising)
    assert "NOT LEARNING" not in line and "the features improved" in line and "collapse: none (healthy)" in line
    # a resumed run's result has no start value: it is read from the run's log
    (tmp_path / "log.jsonl").write_text('{"event": "probe", "step": 0, "probe_init_jaccard": 0.3}\n')
    resumed = dataclasses.replace(flat, probe={k: v for k, v in flat.probe.items() if k != "probe_init_jaccard"},
                                  resumed_from=316)
    assert "0.300 at the start -> 0.252" in cli._pretrain_health(resumed)
    assert pretrain_module.probe_verdict(0.25, 0.259).endswith("the segmentation decoder may still have learned")
    assert "improved" in pretrain_module.probe_verdict(0.25, 0.26)
    assert "did not improve" in pretrain_module.probe_verdict(0.25, 0.245)
    fell = pretrain_module.probe_verdict(0.424, 0.278)  # round 3 on the real pool
    assert "NOT LEARNING: the features got worse" in fell and "(-0.146)" in fell
