"""``relabel`` (a self-training round's shards) and ``refine`` (the rounds): what the shards record, resume
only on the same model, the choice on the vignette case, and a round that trains and resumes."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from common.guard import sha256_file
from pipeline.pseudomask.per_image import _squash, make_pseudo_mask
from pipeline.pseudomask.seeds import to_lab
from pipeline.run import RunConfig, run_pseudomasks
from pipeline.shards import ShardReader, find_shards
from pipeline.synth import vignette_case, write_synthetic_dataset
from trainer.data.shard_dataset import ShardDataset
from trainer.engine.export import export_model
from trainer.engine.run_log import read_log
from trainer.inference.agreement import mask_agreement
from trainer.inference.choice import SOURCES, Choice, ChoiceConfig, choose, confidence_of, fit_reference, mask_features
from trainer.inference.relabel import RelabelConfig, relabel, relabel_info
from trainer.train.config import PretrainConfig
from trainer.train.pretrain import pretrain
from trainer.train.refine import RefineConfig, refine

TINY = PretrainConfig(arch="vit_tiny_patch16_224", patch_size=8, img_size=32, local_size=16, n_local=1, epochs=1,
                      batch_size=6, out_dim=32, head_hidden=32, bottleneck_dim=16, decoder_hidden=8, drop_path=0.0,
                      num_workers=0, warmup_epochs=0, warmup_teacher_temp_epochs=0, lambda_ramp_epochs=0,
                      picture_every=0, probe_samples=0)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    write_synthetic_dataset(root / "data", 16, seed=5, size=(96, 72), progress=False)
    run_pseudomasks(root / "data", root / "shards", config=RunConfig(size=64, shard_size=8), progress=False)
    return root / "shards"


def _export(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return export_model(TINY.build_model(), TINY, path, step=1)


def _files(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def test_relabel_records_its_model_and_the_choice_and_resumes_only_on_the_same_model(pool, tmp_path):
    source_before = _files(pool)
    a, b = _export(tmp_path / "a.pt", 0), _export(tmp_path / "b.pt", 1)
    out = tmp_path / "round"
    config = RelabelConfig(choice=ChoiceConfig(min_reference=2), leave_out=0.25)
    first = relabel(pool, a, out, config=config, device="cpu", progress=False)
    assert first.n_samples == 16 and first.n_reused_shards == 0 and sum(first.sources.values()) == 16
    info = relabel_info(out)
    assert info["model"]["sha256"] == sha256_file(a) and info["source"]["path"] == str(pool)
    weights = []
    for path in find_shards(out):
        with ShardReader(path) as shard:
            assert json.loads(shard.attrs["config"])["relabel"]["model"]["sha256"] == sha256_file(a)
            diag = shard.diagnostics
            for i in range(len(shard)):
                sample = shard[i]
                assert sample["model_prob"].shape == sample["walker_mask"].shape == (64, 64)
                walker, chosen = sample["walker_mask"].astype(bool), sample["pseudo_mask"].astype(bool)
                student = sample["model_prob"] >= 128
                assert 0.0 <= diag["agreement"][i] <= 1.0
                source = int(diag["source"][i])
                if source == 0:
                    assert (chosen == walker).all() and diag["model_weight"][i] == 0.0
                elif source == 2:
                    assert diag["model_weight"][i] == 1.0
                    # the chosen mask is the student's (its one-lesion mask: inside its own probability >= 0.5)
                    assert not (chosen & ~student).any()
                choice = Choice(float(diag["model_weight"][i]), SOURCES[source], float(diag["agreement"][i]),
                                (float(diag["score_walker"][i]), float(diag["score_student"][i])))
                assert diag["confidence"][i] == pytest.approx(
                    confidence_of(choice, float(diag["walker_confidence"][i])), abs=1e-6)
            weights += list(diag["train_weight"])
    assert sorted(set(weights)) == [0.0, 1.0] and weights.count(0.0) == 4  # the least confident quarter
    dataset = ShardDataset(out)
    assert sorted(float(dataset[i]["valid"]) for i in range(len(dataset))).count(0.0) >= 4

    made = _files(out)
    again = relabel(pool, a, out, config=config, device="cpu", progress=False)
    assert again.n_reused_shards == 2 and _files(out) == made  # the same model: nothing redone
    other = relabel(pool, b, out, config=config, device="cpu", progress=False)
    assert other.n_reused_shards == 0  # another model: every shard redone, none kept from model a
    assert relabel_info(out)["model"]["sha256"] == sha256_file(b)
    for path in find_shards(out):
        with ShardReader(path) as shard:
            assert json.loads(shard.attrs["config"])["relabel"]["model"]["sha256"] == sha256_file(b)
    assert _files(pool) == source_before  # the source shards are only read
    with pytest.raises(ValueError, match="overlaps|inside|around"):
        relabel(pool, a, pool, config=config, device="cpu", progress=False)


def test_the_choice_rejects_the_bright_vignette_disc_for_a_student_that_finds_the_lesion():
    """The vignette case (``synth --fov vignette``): where stage 1 takes the whole bright disc for lesion, a
    student that found the lesion wins the choice, and the round's masks are the lesion."""
    samples = vignette_case(8)
    walker_masks, truths, labs = [], [], []
    for s in samples:
        result = make_pseudo_mask(s.image)
        walker_masks.append(result.mask)
        truths.append(_squash(s.lesion, 256, binary=True))
        labs.append(to_lab(result.cleaned))
    reference = fit_reference(np.stack([mask_features(t, lab) for t, lab in zip(truths, labs)]))
    before, after, discs = [], [], 0
    for walker, truth, lab in zip(walker_masks, truths, labs):
        choice = choose(mask_agreement(truth, walker), mask_features(walker, lab) if walker.any() else None,
                        mask_features(truth, lab), reference, ChoiceConfig())
        chosen = truth if choice.source == "student" else walker
        before.append(mask_agreement(walker, truth))
        after.append(mask_agreement(chosen, truth))
        if walker.mean() > 0.45:  # the disc failure
            discs += 1
            assert choice.source == "student"
    assert discs >= 2
    assert np.mean(after) > 0.9 > 0.5 > np.mean(before)


def test_refine_trains_a_round_from_the_first_run_and_resumes(pool, tmp_path):
    first = tmp_path / "first"
    pretrain(pool, first, TINY, device="cpu", progress=False)
    out = tmp_path / "refine"
    config = RefineConfig(rounds=1, epochs=1, relabel=RelabelConfig(choice=ChoiceConfig(min_reference=2)))
    results = refine(pool, first, out, config=config, device="cpu", progress=False)
    assert [r.round for r in results] == [2]
    run = out / "round-2" / "pretrain"
    assert (run / "export.pt").is_file() and (out / "round-2" / "shards" / "manifest.json").is_file()
    start = [r for r in read_log(run / "log.jsonl") if r.get("event") == "start"][0]
    assert start["config"]["init_from"] == str(first / "checkpoint-latest.pt") and start["config"]["epochs"] == 1
    assert relabel_info(out / "round-2" / "shards")["model"]["sha256"] == sha256_file(first / "export.pt")
    exported = sha256_file(run / "export.pt")
    again = refine(pool, first, out, config=config, device="cpu", progress=False)  # finished: nothing retrained
    assert sha256_file(run / "export.pt") == exported and again[0].round == 2
    shown = CliRunner().invoke(cli.main, ["refine", "--shards", str(pool), "--pretrain", str(tmp_path / "missing"),
                                          "--out", str(tmp_path / "r")])
    assert shown.exit_code != 0 and "missing" in shown.output


def test_a_round_starts_from_the_first_runs_weights(pool, tmp_path):
    first = tmp_path / "first"
    pretrain(pool, first, TINY, device="cpu", progress=False)
    state = torch.load(first / "checkpoint-latest.pt", weights_only=True)
    config = dataclasses.replace(TINY, init_from=str(first / "checkpoint-latest.pt"), lr=0.0, min_lr=0.0,
                                 momentum_teacher=1.0)
    pretrain(pool, tmp_path / "next", config, device="cpu", progress=False)
    after = torch.load(tmp_path / "next" / "checkpoint-latest.pt", weights_only=True)
    for k, v in state["teacher"].items():  # learning rate 0, teacher momentum 1: the weights stay the first run's
        torch.testing.assert_close(after["teacher"][k], v), k


def test_finetune_beside_a_relabelled_pool_calibrates_on_its_labels_and_predict_follows(pool, tmp_path):
    from trainer.inference.predict import predict_folder
    from trainer.train.finetune import MODEL, FinetuneConfig, finetune

    export = _export(tmp_path / "a.pt", 0)
    round_shards = tmp_path / "round"
    relabel(pool, export, round_shards, config=RelabelConfig(choice=ChoiceConfig(min_reference=2)), device="cpu",
            progress=False)
    data = pool.parent / "data"
    config = FinetuneConfig(iters=2, batch_size=2, eval_every=2, decoder_hidden=8, fuse=True,
                            pseudo_shards=str(round_shards), pseudo_batch=2)
    result = finetune(data, 0.5, tmp_path / "ft", checkpoint=export, config=config, device="cpu", progress=False)
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["n_labels"] == len(result.subset_ids) >= 1  # the labelled images are in the pool
    assert set(calibration["cv"]) == {"default", "cut", "choice", "both"}
    model_extra = torch.load(tmp_path / "ft" / MODEL, weights_only=True)["extra"]
    assert model_extra["calibration"] == calibration and "choice_reference" in model_extra
    test = tmp_path / "test"
    (test / "images").mkdir(parents=True)
    for row in metrics["per_image"]:
        (test / "images" / f"{row['id']}.jpg").write_bytes((data / "images" / f"{row['id']}.jpg").read_bytes())
    predict_folder(tmp_path / "ft" / MODEL, test, tmp_path / "pred", device="cpu", progress=False)
    for row in metrics["per_image"]:  # predict uses the calibrated cut and choice, as finetune's test masks did
        name = f"{row['id']}_segmentation.png"
        assert (tmp_path / "pred" / name).read_bytes() == (tmp_path / "ft" / "predictions" / name).read_bytes()
