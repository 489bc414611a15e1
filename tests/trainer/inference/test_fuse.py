"""Fusing the segmenter's probability with stage 1's walker probability (finetune --fuse, predict --fuse, table)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_predict import TINY_FT, TINY_PRE, synth  # noqa: F401  (24 synthetic 96 x 72 images)

from common import datasets
from pipeline.run import RunConfig, process_sample
from trainer.engine.export import export_model
from trainer.inference.fusion import WALKER_CUT, fuse_probabilities, walker_cut, walker_probability
from trainer.inference.masks import mask_from_probability
from trainer.inference.predict import predict_folder
from trainer.inference.segment import predict_image, predict_size
from trainer.models.segmenter import load_seg_model
from trainer.table import TableSpec, read_results, run_table
from trainer.train.finetune import MODEL, finetune


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pre") / "export.pt"
    torch.manual_seed(0)
    export_model(TINY_PRE.build_model(), TINY_PRE, path, step=3)
    return path


def test_fuse_probabilities_weighs_the_model_against_the_walker_calibrated_to_its_cut():
    model = np.array([[1.0, 0.0, 1.0], [0.4, 0.8, 0.0]], np.float32)
    walker = np.array([[0.0, 1.0, 0.25], [0.3, 0.1, 0.44]], np.float32)
    # the walker's cut 0.3 lands on 0.5: 0 -> 0, 0.25 -> 0.4167, 0.3 -> 0.5, 0.1 -> 0.1667, 0.44 -> 0.6, 1 -> 1
    calibrated = np.array([[0.0, 1.0, 0.25 / 0.6], [0.5, 0.1 / 0.6, 0.6]])
    fused = fuse_probabilities(model, walker)  # the default weight: 0.15 the model, 0.85 the walker
    assert fused.dtype == np.float32
    np.testing.assert_allclose(fused, 0.15 * model + 0.85 * calibrated, atol=1e-6)
    np.testing.assert_allclose(fused[0, :2], [0.15, 0.85], atol=1e-6)
    # a sure model lifts a walker pixel just under its cut (0.25) into the lesion; a walker pixel above it (0.44)
    # stays lesion even against the model; the walker's cut itself needs the model above 0.5
    assert mask_from_probability(fused, one_lesion=False).tolist() == [[False, True, True], [False, False, True]]
    np.testing.assert_allclose(fuse_probabilities(model, walker, weight=0.5, walker_cut=0.5),
                               (model + walker) / 2, atol=1e-6)  # cut 0.5 maps to itself: the plain mean
    assert fuse_probabilities(model, None) is model  # stage 1 found no lesion: the model decides alone
    with pytest.raises(ValueError, match="differ"):
        fuse_probabilities(model, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="weight"):
        fuse_probabilities(model, walker, weight=1.5)


def test_walker_probability_is_stage_1s_at_the_original_size(synth, tmp_path):  # noqa: F811
    sample = datasets.open_dataset(synth).samples[0]
    prob = walker_probability(sample.image)
    assert prob.shape == (72, 96) and prob.dtype == np.float32
    stored = process_sample(sample, RunConfig()).prob  # what `pseudomasks` computes for the same file
    assert np.array_equal(prob, cv2.resize(stored.astype(np.float32), (96, 72), interpolation=cv2.INTER_LINEAR))
    truth = datasets.read_mask(sample.mask)
    assert prob[truth].mean() > prob[~truth].mean() + 0.4  # it is a lesion probability, not noise
    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((60, 80, 3), (120, 140, 190), np.uint8))
    assert walker_probability(flat) is None  # nothing stands out: no walker vote
    assert walker_cut(flat) == WALKER_CUT == 0.3
    assert walker_cut(sample.image) == process_sample(sample, RunConfig()).diagnostics["threshold"]


def test_finetune_and_predict_fuse_the_same_way(synth, export, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    finetune(synth, 0.3, out, checkpoint=export, config=dataclasses.replace(TINY_FT, fuse=True, fusion="fixed"),
             device="cpu", progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["fuse"] is True and metrics["config"]["fusion"] == "fixed"
    fused = predict_folder(out / MODEL, synth, tmp_path / "fused", device="cpu", progress=False)  # the model's setting
    plain = predict_folder(out / MODEL, synth, tmp_path / "plain", device="cpu", progress=False, fuse=False)
    written = sorted((out / "predictions").glob("*_segmentation.png"))
    assert written and len(fused.written) == len(plain.written) == 24
    for path in written:
        assert (tmp_path / "fused" / path.name).read_bytes() == path.read_bytes(), path.name
    differ = [p.name for p in written if (tmp_path / "plain" / p.name).read_bytes() != p.read_bytes()]
    assert differ  # the walker did change some masks
    # and a fused mask is the mean of the two probabilities, cut at 0.5
    model, info = load_seg_model(out / MODEL)
    sample = next(s for s in datasets.open_dataset(synth).samples if f"{s.id}_segmentation.png" == differ[0])
    size = predict_size(int(info["img_size"]), 2.0)
    alone = predict_image(model, sample.image, size=size, device=torch.device("cpu"))
    walker, cut = walker_probability(sample.image), walker_cut(sample.image)
    assert cut == process_sample(sample, RunConfig()).diagnostics["threshold"]  # stage 1's own cut of this image
    calibrated = np.where(walker < cut, walker * 0.5 / cut, 0.5 + (walker - cut) * 0.5 / (1 - cut))
    expected = 0.15 * alone + 0.85 * calibrated
    got = cv2.imread(str(tmp_path / "fused" / differ[0]), cv2.IMREAD_GRAYSCALE) > 127
    from trainer.inference.masks import implausible_map

    want = mask_from_probability(expected, implausible=implausible_map(str(sample.image)))
    # the test's sum is rounded in another order than the code's: a pixel within rounding of the cut may go either way
    sure = np.abs(expected - 0.5) > 1e-5
    assert sure.mean() > 0.99 and np.array_equal(got[sure], want[sure])


def test_table_fuse_rows_rescore_their_base_cells(synth, export, tmp_path, monkeypatch):  # noqa: F811
    import trainer.train.presets as presets

    monkeypatch.setattr(presets, "pretrain_preset", lambda name: TINY_PRE)
    monkeypatch.setattr(presets, "finetune_preset", lambda name: TINY_FT)
    events = []

    def fake_finetune(data, frac, cell, *, checkpoint, config, **kwargs):
        events.append(("finetune", Path(cell).name, config.pseudo_shards is not None))
        cell.mkdir(parents=True, exist_ok=True)
        (cell / "metrics.json").write_text(json.dumps({"n_labelled": 2, "mean": {"jaccard": 0.5,
                                                                               "thresholded_jaccard": 0.0}}))

    def fake_score(model_path, splits, cell, *, fuse=False, **kwargs):
        events.append(("score", Path(cell).name, str(model_path), fuse))
        Path(cell).mkdir(parents=True, exist_ok=True)
        (Path(cell) / "metrics.json").write_text(json.dumps({"n_labelled": 0, "mean": {
            "jaccard": 0.9 if fuse else 0.4, "thresholded_jaccard": 0.9}}))

    monkeypatch.setattr("trainer.train.finetune.finetune", fake_finetune)
    monkeypatch.setattr("trainer.eval.scoring.score_model", fake_score)
    shards = tmp_path / "shards"
    shards.mkdir()
    table = tmp_path / "table"
    # the fused row is asked for first and its base not at all: the base runs, then it is rescored
    spec = TableSpec(data=(str(synth),), out=str(table), fracs=(0.1,), seeds=(0,), methods=("ours+semi+fuse",
                     "ours+fuse"), preset="cpu", device="cpu", shards=str(shards),
                     pretrained=(("ours", str(export.parent)),))
    run_table(spec, progress=False)
    cells = table / "cells"
    assert events == [
        ("score", "ours-frac0-seed0", str(export), False),
        ("score", "ours+fuse-frac0-seed0", str(export), True),
        ("finetune", "ours+semi-frac0.1-seed0", True),
        ("finetune", "ours-frac0.1-seed0", False),
        ("score", "ours+semi+fuse-frac0.1-seed0", str(cells / "ours+semi-frac0.1-seed0" / MODEL), True),
        ("score", "ours+fuse-frac0.1-seed0", str(cells / "ours-frac0.1-seed0" / MODEL), True)]
    rows = {(r["method"], r["frac"]): float(r["jaccard"]) for r in read_results(table / "results.csv")}
    assert rows[("ours+semi+fuse", "0.1")] == 0.9 and rows[("ours+fuse", "0.0")] == 0.9
    assert rows[("ours+semi", "0.1")] == 0.5 and ("ours+semi+fuse", "0.0") not in rows
    events.clear()
    run_table(spec, progress=False)
    assert events == []  # finished cells, fused ones included, are not redone


def test_table_round_two_and_fixed_rows(synth, export, tmp_path, monkeypatch):  # noqa: F811
    import trainer.train.presets as presets

    monkeypatch.setattr(presets, "pretrain_preset", lambda name: TINY_PRE)
    monkeypatch.setattr(presets, "finetune_preset", lambda name: TINY_FT)
    events = []

    def fake_finetune(data, frac, cell, *, checkpoint, config, **kwargs):
        events.append(("finetune", Path(cell).name, str(checkpoint), config.pseudo_shards))
        cell.mkdir(parents=True, exist_ok=True)
        (cell / "metrics.json").write_text(json.dumps({"n_labelled": 2, "mean": {"jaccard": 0.5, "thresholded_jaccard": 0}}))

    def fake_score(model_path, splits, cell, *, fuse=False, fusion="choice", **kwargs):
        events.append(("score", Path(cell).name, str(model_path), fuse and fusion))
        Path(cell).mkdir(parents=True, exist_ok=True)
        (Path(cell) / "metrics.json").write_text(json.dumps({"n_labelled": 0, "mean": {"jaccard": 0.7, "thresholded_jaccard": 0}}))

    monkeypatch.setattr("trainer.train.finetune.finetune", fake_finetune)
    monkeypatch.setattr("trainer.eval.scoring.score_model", fake_score)
    shards = tmp_path / "shards"
    shards.mkdir()
    round2 = tmp_path / "refine" / "round-2"
    (round2 / "pretrain").mkdir(parents=True)
    (round2 / "shards").mkdir()
    spec = TableSpec(data=(str(synth),), out=str(tmp_path / "table"), fracs=(0.1,), seeds=(0,),
                     methods=("ours+fixed", "ours-r2+semi+fuse"), preset="cpu", device="cpu", shards=str(shards),
                     pretrained=(("ours", str(export.parent)), ("ours-r2", str(round2 / "pretrain"))))
    run_table(spec, progress=False)
    cells = tmp_path / "table" / "cells"
    r2 = str(round2 / "pretrain" / "export.pt")
    assert events == [
        ("score", "ours-frac0-seed0", str(export), False),
        ("score", "ours+fixed-frac0-seed0", str(export), "fixed"),
        ("finetune", "ours-frac0.1-seed0", str(export), None),
        ("finetune", "ours-r2+semi-frac0.1-seed0", r2, str(round2 / "shards")),  # beside round 2's relabelled pool
        ("score", "ours+fixed-frac0.1-seed0", str(cells / "ours-frac0.1-seed0" / MODEL), "fixed"),
        ("score", "ours-r2+semi+fuse-frac0.1-seed0", str(cells / "ours-r2+semi-frac0.1-seed0" / MODEL), "choice")]


def test_table_advised_row_fine_tunes_on_the_advised_training_images(synth, export, tmp_path, monkeypatch):  # noqa: F811
    import trainer.train.presets as presets

    monkeypatch.setattr(presets, "finetune_preset", lambda name: TINY_FT)
    seen = {}

    def fake_finetune(data, frac, cell, *, checkpoint, config, labels_from=None, **kwargs):
        seen[Path(cell).name] = (labels_from, config.pseudo_shards)
        cell.mkdir(parents=True, exist_ok=True)
        (cell / "metrics.json").write_text(json.dumps({"n_labelled": 2, "mean": {"jaccard": 0.5,
                                                                               "thresholded_jaccard": 0}}))

    asked = {}

    def fake_advise(shards, folder, *, n, exclude_ids, **kwargs):
        asked.update(n=n, exclude=set(exclude_ids))
        folder.mkdir(parents=True)
        (folder / "advise.csv").write_text("rank,id\n1,x\n")

    monkeypatch.setattr("trainer.train.finetune.finetune", fake_finetune)
    monkeypatch.setattr("trainer.inference.advise.advise", fake_advise)
    round2 = tmp_path / "refine" / "round-2"
    (round2 / "pretrain").mkdir(parents=True)
    (round2 / "shards").mkdir()
    spec = TableSpec(data=(str(synth),), out=str(tmp_path / "table"), fracs=(0.2,), seeds=(0, 1),
                     methods=("ours-r2+semi+advised",), preset="cpu", device="cpu", shards=str(tmp_path),
                     pretrained=(("ours-r2", str(round2 / "pretrain")),))
    run_table(spec, progress=False)
    from trainer.data.splits import split_dataset

    splits = split_dataset(datasets.open_dataset(synth))
    assert asked["n"] == round(0.2 * len(splits.train))
    assert {s.id for s in splits.validation + splits.test} <= asked["exclude"]  # chosen from training images only
    advised = tmp_path / "table" / f"advise-{asked['n']}" / "advise.csv"
    assert seen == {f"ours-r2+semi+advised-frac0.2-seed{k}": (advised, str(round2 / "shards")) for k in (0, 1)}
