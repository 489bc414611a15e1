"""Fine-tuning, splits, the leakage guard and the comparison table, on tiny synthetic data."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from common.datasets import open_dataset
from pipeline.synth import write_synthetic_dataset
from trainer.data.splits import dhash, labelled_subset, near_duplicates, split_dataset
from trainer.engine.export import export_model
from trainer.table import TableSpec, read_results, run_table
from trainer.train.config import PretrainConfig
from trainer.train.finetune import FinetuneConfig, finetune

TINY_PRE = PretrainConfig(arch="vit_tiny_patch16_224", img_size=32, out_dim=64, head_hidden=64, bottleneck_dim=32,
                          decoder_hidden=16, drop_path=0.0)
TINY_FT = FinetuneConfig(iters=6, batch_size=4, eval_every=3, decoder_hidden=16)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 40, seed=1, size=(96, 72), progress=False)
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "export.pt"
    model = TINY_PRE.build_model()
    export_model(model, TINY_PRE, path, step=7)
    return path


def test_plain_folder_split_is_deterministic_and_disjoint(synth):
    splits = split_dataset(open_dataset(synth))
    ids = [{s.id for s in part} for part in (splits.train, splits.validation, splits.test)]
    assert sum(map(len, ids)) == 40 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert ids[1] and ids[2]
    again = split_dataset(open_dataset(synth))
    assert [s.id for s in again.test] == [s.id for s in splits.test]
    a = labelled_subset(splits.train, 0.2, seed=3)
    assert [s.id for s in a] == [s.id for s in labelled_subset(splits.train, 0.2, seed=3)]
    assert [s.id for s in a] != [s.id for s in labelled_subset(splits.train, 0.2, seed=4)]
    assert len(a) == round(0.2 * len(splits.train)) and {s.id for s in a} <= ids[0]


def test_frac_rules(synth):
    train = split_dataset(open_dataset(synth)).train
    with pytest.warns(UserWarning, match="rounds to 0: using 1 image"):
        assert len(labelled_subset(train, 0.001, seed=0)) == 1
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"frac must be in \(0, 1\]"):
            labelled_subset(train, bad, seed=0)


def test_finetune_writes_predictions_at_original_size_and_metrics(synth, export, tmp_path):
    result = finetune(synth, 0.2, tmp_path / "ft", checkpoint=export, config=TINY_FT, device="cpu", progress=False)
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    subset = json.loads((tmp_path / "ft" / "subset.json").read_text())
    assert subset["ids"] == result.subset_ids and not set(subset["ids"]) & set(subset["test"])
    assert metrics["n_test"] == len(subset["test"]) and set(metrics["mean"]) >= {"jaccard", "dice",
                                                                                  "thresholded_jaccard"}
    assert metrics["model"]["init"] == "pretrain" and metrics["model"]["pretrain_step"] == 7
    for sid in subset["test"]:
        pred = cv2.imread(str(tmp_path / "ft" / "predictions" / f"{sid}_segmentation.png"), cv2.IMREAD_UNCHANGED)
        assert pred.shape == (72, 96) and set(np.unique(pred)) <= {0, 255}
    assert (tmp_path / "ft" / "best_worst.png").exists()


def test_checkpoint_of_another_architecture_is_a_clear_error(synth, export, tmp_path):
    config = dataclasses.replace(TINY_FT, arch="vit_small_patch16_224")
    with pytest.raises(ValueError, match="'vit_tiny_patch16_224' backbone, not 'vit_small_patch16_224'"):
        finetune(synth, 0.2, tmp_path / "x", checkpoint=export, config=config, device="cpu", progress=False)
    not_export = tmp_path / "junk.pt"
    import torch

    torch.save({"model": {}}, not_export)
    with pytest.raises(ValueError, match="not an edgedino export"):
        finetune(synth, 0.2, tmp_path / "y", checkpoint=not_export, config=TINY_FT, device="cpu", progress=False)
    result = CliRunner().invoke(cli.main, ["finetune", "--data", str(synth), "--frac", "2", "--init", "scratch",
                                           "--out", str(tmp_path / "z")])
    assert result.exit_code != 0 and "frac must be in (0, 1]" in result.output


def test_leakage_guard_excludes_test_ids_and_warns_about_near_duplicates(synth, tmp_path):
    test = tmp_path / "test"
    (test / "images").mkdir(parents=True)
    (test / "masks").mkdir()
    ids = sorted(p.stem for p in (synth / "images").glob("*.jpg"))[:5]
    for i in ids:
        shutil.copy(synth / "images" / f"{i}.jpg", test / "images" / f"{i}.jpg")
        shutil.copy(synth / "masks" / f"{i}_segmentation.png", test / "masks" / f"{i}_segmentation.png")
    # The same photo under a new id, re-encoded at another size: a near-duplicate, not an id match.
    image = cv2.imread(str(synth / "images" / f"{ids[-1]}.jpg"))
    cv2.imwrite(str(test / "images" / "OTHER_1.jpg"), cv2.resize(image, (80, 60)), [cv2.IMWRITE_JPEG_QUALITY, 70])
    shutil.copy(synth / "masks" / f"{ids[-1]}_segmentation.png", test / "masks" / "OTHER_1_segmentation.png")
    cv2.imwrite(str(test / "masks" / "OTHER_1_segmentation.png"),
                cv2.resize(cv2.imread(str(synth / "masks" / f"{ids[-1]}_segmentation.png"), 0), (80, 60),
                           interpolation=cv2.INTER_NEAREST))
    splits = split_dataset(open_dataset(synth), test=open_dataset(test, require_masks=True))
    assert splits.n_excluded == 5
    assert not {s.id for s in splits.train + splits.validation} & set(ids)
    pairs = near_duplicates(open_dataset(synth).samples, open_dataset(test).samples)
    assert (ids[-1], "OTHER_1") in {(a, b) for a, b, _ in pairs}
    assert all(a != b for a, b, _ in pairs)
    assert bin(dhash(np.zeros((40, 40, 3), np.uint8)) ^ dhash(np.full((40, 40, 3), 255, np.uint8))).count("1") == 0


def test_table_runs_skips_finished_cells_and_writes_results(synth, export, tmp_path, monkeypatch):
    run_dir = export.parent
    spec = TableSpec(data=(str(synth),), out=str(tmp_path / "table"), fracs=(0.1, 0.3), seeds=(0,),
                     methods=("scratch", "ours"), preset="cpu", finetune_iters=4, device="cpu",
                     pretrained=(("ours", str(run_dir)),))
    monkeypatch.setattr("trainer.train.presets.pretrain_preset", lambda name: TINY_PRE)
    import trainer.train.presets as presets

    monkeypatch.setattr(presets, "finetune_preset", lambda name: TINY_FT)
    md = run_table(spec, progress=False)
    rows = read_results(tmp_path / "table" / "results.csv")
    # ours also gets the 0-labels column: its pretrained decoder scored as is; scratch has nothing to score there
    assert {(r["method"], r["frac"]) for r in rows} == {(m, f) for m in ("scratch", "ours") for f in ("0.1", "0.3")
                                                        } | {("ours", "0.0")}
    zero = json.loads((tmp_path / "table" / "cells" / "ours-frac0-seed0" / "metrics.json").read_text())
    assert zero["n_labelled"] == 0 and zero["n_test"] == len(split_dataset(open_dataset(synth)).test)
    assert "| 0 labels | FRAC 0.1" in md.read_text().replace("| method ", "")
    assert "| scratch |" in md.read_text() and (tmp_path / "table" / "results.png").exists()
    calls = []
    monkeypatch.setattr("trainer.train.finetune.finetune", lambda *a, **k: calls.append(1))
    run_table(spec, progress=False)
    assert calls == []  # every cell was finished: nothing re-run


def test_table_variant_rows_reuse_ours_and_check_their_inputs(synth, export, tmp_path, monkeypatch):
    import trainer.train.presets as presets

    monkeypatch.setattr(presets, "pretrain_preset", lambda name: TINY_PRE)
    monkeypatch.setattr(presets, "finetune_preset", lambda name: TINY_FT)
    calls = []

    def fake_finetune(data, frac, cell, *, checkpoint, config, **kwargs):
        calls.append((Path(cell).name, checkpoint, config.pic))
        cell.mkdir(parents=True, exist_ok=True)
        (cell / "metrics.json").write_text(json.dumps({"n_labelled": 1, "mean": {"jaccard": 0.5,
                                                                               "thresholded_jaccard": 0.0}}))

    monkeypatch.setattr("trainer.train.finetune.finetune", fake_finetune)
    spec = TableSpec(data=(str(synth),), out=str(tmp_path / "table"), fracs=(0.1,), seeds=(0,),
                     methods=("ours+pic",), preset="cpu", device="cpu", pretrained=(("ours", str(export.parent)),))
    run_table(spec, progress=False)
    [(name, checkpoint, pic)] = calls
    assert name == "ours+pic-frac0.1-seed0" and checkpoint == export and pic is not None and pic.prob == 0.5
    with pytest.raises(ValueError, match="fkd-weights"):
        run_table(dataclasses.replace(spec, methods=("ours+fkd",), out=str(tmp_path / "t2")), progress=False)
    assert not (tmp_path / "t2" / "shards").exists()  # refused before any long work


def test_mask_from_probability_applies_the_one_lesion_prior_only_when_asked():
    from trainer.inference.masks import mask_from_probability

    prob = np.zeros((30, 30), np.float32)
    prob[5:20, 5:20] = 0.9
    prob[10, 10] = 0.2     # a hole
    prob[25:28, 25:28] = 0.7  # a blob
    raw = mask_from_probability(prob, one_lesion=False)
    assert np.array_equal(raw, prob >= 0.5)
    kept = mask_from_probability(prob)
    assert kept[10, 10] and not kept[25:28, 25:28].any() and kept.sum() == 225


def test_test_masks_skip_a_component_of_sticker_colour(tmp_path):
    # a model that marks the lesion and a central orange calibration sticker: the sticker is bigger and nearer
    # the centre, so the centre prior alone keeps it; the colour check keeps the lesion
    from trainer.inference.masks import implausible_map, mask_from_probability

    h, w = 300, 400
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(0)
    image = np.array([214, 160, 138], np.float32) + rng.normal(0, 3, (h, w, 3))
    lesion = (yy - 80) ** 2 + (xx - 90) ** 2 < 40 ** 2
    sticker = (yy - 160) ** 2 + (xx - 230) ** 2 < 60 ** 2
    image[lesion] = (120, 72, 52)
    image[sticker] = (250, 150, 20)
    path = tmp_path / "sticker.png"
    cv2.imwrite(str(path), cv2.cvtColor(np.clip(image, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    prob = (lesion | sticker).astype(np.float32) * 0.9
    assert mask_from_probability(prob)[160, 230]
    kept = mask_from_probability(prob, implausible=implausible_map(str(path)))
    assert np.array_equal(kept, lesion)
    assert implausible_map(str(path)).shape == (192, 256)  # the colour check runs at 256 px on the long side


def test_validation_scores_the_mask_the_product_writes():
    import torch
    from trainer.train.finetune import _mean_jaccard

    truth = np.zeros((1, 1, 32, 32), np.float32)
    truth[0, 0, 10:22, 10:22] = 1
    prob = truth[:, 0].copy()
    prob[0, 0:4, 0:4] = 0.9  # a stray blob in the corner, as a segmenter leaves on a vignette
    raw = _mean_jaccard(prob, torch.from_numpy(truth))
    ruled = _mean_jaccard(prob, torch.from_numpy(truth), [np.zeros((32, 32), bool)])
    assert raw == pytest.approx(144 / 160)
    assert ruled == pytest.approx(1.0)  # the one-lesion rule drops the blob, as predict does


def test_finetune_validates_through_the_one_lesion_rule(synth, export, tmp_path, monkeypatch):
    import trainer.train.finetune as ft

    seen = []
    monkeypatch.setattr(ft, "_mean_jaccard", lambda prob, masks, rule=None: seen.append((len(prob), rule)) or 0.5)
    finetune(synth, 0.2, tmp_path / "ft", checkpoint=export, config=TINY_FT, device="cpu", progress=False)
    assert seen and all(rule is not None and len(rule) == n for n, rule in seen)


@pytest.mark.parametrize("scores,best", [([0.9, 0.5, 0.6, 0.4], 0), ([0.1, 0.5, 0.7, 0.6], 6)])
def test_the_starting_model_competes_in_the_validation_choice(synth, export, tmp_path, monkeypatch, scores, best):
    import trainer.train.finetune as ft

    calls = iter(scores)  # validation at iteration 0, then at 3 and 6 (eval_every 3, 6 iterations)
    monkeypatch.setattr(ft, "_mean_jaccard", lambda prob, masks, rule=None: next(calls))
    result = finetune(synth, 0.2, tmp_path / "ft", checkpoint=export, config=TINY_FT, device="cpu", progress=False)
    assert result.best_iter == best and result.best_val_jaccard == max(scores[:3])
