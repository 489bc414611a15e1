"""``advise`` (which images to label first) and ``finetune --labels-from`` (exactly those images)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from common import datasets
from common.guard import sha256_file
from pipeline.run import RunConfig, library_versions, run_pseudomasks
from pipeline.shards import ShardReader, ShardRecord, find_shards, write_manifest, write_shard
from pipeline.synth import write_synthetic_dataset
from trainer.data.splits import listed_subset, selection_from_subset, split_dataset
from trainer.engine.export import export_model
from trainer.inference.advise import advise, choose_to_label
from trainer.inference.agreement import mask_agreement
from trainer.inference.choice import Choice, confidence_of
from trainer.inference.relabel import relabel
from trainer.train.config import PretrainConfig
from trainer.train.finetune import FinetuneConfig, finetune

TINY = PretrainConfig(arch="vit_tiny_patch16_224", patch_size=8, img_size=32, out_dim=32, head_hidden=32,
                      bottleneck_dim=16, decoder_hidden=8, drop_path=0.0)


def test_choice_takes_the_largest_gains_first_and_skips_copies_of_a_chosen_image():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 8))
    features[1] = features[2] = features[3] = features[0]  # four copies of one image
    gain = np.full(12, 0.1)
    gain[[0, 1, 2, 3]] = 0.9   # the copies fail the most
    gain[[7, 9]] = 0.8         # two other failures
    ids = [f"id{k:02d}" for k in range(12)]
    picks = choose_to_label(gain, features, ids, 3)
    assert picks[0] == 0                       # the largest gain; among equal ones, the smallest id
    assert sorted(picks[1:]) == [7, 9]         # not a copy of the first: the next failures
    assert choose_to_label(gain, features, ids, 3) == picks  # deterministic
    assert choose_to_label(gain, features, ids, 0) == [] and len(choose_to_label(gain, features, ids, 50)) == 12
    with pytest.raises(ValueError, match="same length"):
        choose_to_label(gain[:3], features, ids, 2)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A relabelled pool of 14 synthetic images; in 5 of them the label-free mask is wrong (the walker's mask is a
    blob in a corner that the student does not see), and one of those 5 is there three times under other ids."""
    root = tmp_path_factory.mktemp("advise")
    write_synthetic_dataset(root / "data", 12, seed=3, size=(96, 72), progress=False)
    run_pseudomasks(root / "data", root / "stage1", config=RunConfig(size=64, shard_size=16), progress=False)
    truths = {s.id: datasets.read_mask(s.mask) for s in datasets.open_dataset(root / "data").samples}
    planted_ids = ["SYN_0000001", "SYN_0000004", "SYN_0000006", "SYN_0000009"]
    records = []
    with ShardReader(find_shards(root / "stage1")[0]) as shard:
        samples = [shard[i] for i in range(len(shard))]
    samples += [dict(samples[1], id=f"SYN_0000001_copy{k}") for k in (1, 2)]
    for s in samples:
        import cv2

        truth = cv2.resize(truths[s["id"].split("_copy")[0]].astype(np.float32), (64, 64)) >= 0.5
        walker = truth.copy()
        if s["id"].split("_copy")[0] in planted_ids:  # a wrong label-free mask
            walker = np.zeros_like(truth)
            walker[:14, :14] = True
        choice = Choice(0.15, "both" if mask_agreement(truth, walker) >= 0.5 else "walker",
                        mask_agreement(truth, walker), (0.0, 0.0))
        diag = {"confidence": confidence_of(choice, 0.8), "agreement": choice.agreement, "walker_confidence": 0.8,
                "model_weight": choice.weight, "source": float(("walker", "both", "student").index(choice.source)),
                "score_walker": 0.0, "score_student": 0.0, "train_weight": 1.0}
        records.append(ShardRecord(id=s["id"], path=s["path"], orig_shape=tuple(int(v) for v in s["orig_shape"]),
                                   image=s["image"], hair_mask=s["hair_mask"].astype(bool),
                                   prob=walker.astype(np.float32), pseudo_mask=walker, no_lesion=not walker.any(),
                                   diagnostics=diag, maps={"model_prob": truth.astype(np.float32),
                                                           "walker_mask": walker}))
    folder = root / "round"
    folder.mkdir()
    digest = write_shard(folder / "shard-00000.h5", records, size=64, config_json="{}", config_hash="x",
                         planned_ids=[r.id for r in records], rejects=[], versions=library_versions())
    torch.manual_seed(0)
    model = export_model(TINY.build_model(), TINY, root / "export.pt", step=1)
    write_manifest(folder, [{"file": "shard-00000.h5", "rows": len(records), "sha256": digest}],
                   {"relabel": {"model": {"path": str(model), "sha256": sha256_file(model)}}})
    return folder, root / "data", planted_ids


def test_advise_ranks_the_planted_failures_first_and_not_the_same_image_twice(planted, tmp_path):
    folder, data, planted_ids = planted
    result = advise(folder, tmp_path / "a", n=4, device="cpu", progress=False)
    chosen = [r["id"] for r in result.chosen]
    assert {i.split("_copy")[0] for i in chosen} == set(planted_ids)  # the four failures, each once
    assert sum(i.startswith("SYN_0000001") for i in chosen) == 1       # one of the three copies
    with open(tmp_path / "a" / "advise.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == chosen and [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert all("disagree" in r["why"] for r in rows)
    masks = sorted(p.name for p in (tmp_path / "a" / "annotate" / "masks").iterdir())
    assert masks == sorted(f"{i}_segmentation.png" for i in chosen)
    mask = datasets.read_mask(tmp_path / "a" / "annotate" / "masks" / masks[0])
    assert mask.shape == (72, 96)  # at the image's own size, ready to correct
    assert (tmp_path / "a" / "annotate" / "images" / "SYN_0000004.jpg").read_bytes() == \
        (data / "images" / "SYN_0000004.jpg").read_bytes()
    again = advise(folder, tmp_path / "b", n=4, device="cpu", progress=False)
    assert [r["id"] for r in again.chosen] == chosen  # deterministic for a given model and pool
    excluded = advise(folder, tmp_path / "c", n=4, device="cpu", progress=False, exclude_ids={"SYN_0000004"})
    assert "SYN_0000004" not in [r["id"] for r in excluded.chosen]
    with pytest.raises(ValueError, match="give --model"):
        advise(data, tmp_path / "d", n=2, device="cpu", progress=False)


def test_advise_with_a_model_relabels_stage_1_shards_into_its_own_folder_and_reruns(planted, tmp_path):
    """``--model`` on stage 1's shards: the relabelled pool goes to OUT/relabelled, which is advise's own making,
    not an input it writes over (the writer rule once refused it); a rerun into the same folder reuses it."""
    root = planted[0].parent
    args = ["advise", "--shards", str(root / "stage1"), "--model", str(root / "export.pt"), "--n", "3",
            "--out", str(tmp_path / "a"), "--device", "cpu", "--no-progress"]
    first = CliRunner().invoke(cli.main, args)
    assert first.exit_code == 0, first.output
    with open(tmp_path / "a" / "advise.csv") as fh:
        chosen = [r["id"] for r in csv.DictReader(fh)]
    assert len(chosen) == 3 and len(set(chosen)) == 3
    assert find_shards(tmp_path / "a" / "relabelled")
    again = CliRunner().invoke(cli.main, args)
    assert again.exit_code == 0, again.output
    with open(tmp_path / "a" / "advise.csv") as fh:
        assert [r["id"] for r in csv.DictReader(fh)] == chosen
    inside = CliRunner().invoke(cli.main, args[:5] + ["--n", "3", "--out", str(root / "stage1" / "advice"),
                                                      "--device", "cpu", "--no-progress"])
    assert inside.exit_code != 0 and "overlaps" in inside.output and not (root / "stage1" / "advice").exists()


def test_labels_from_trains_on_exactly_the_listed_ids_and_refuses_held_out_or_unknown_ones(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, 20, seed=4, size=(96, 72), progress=False)
    splits = split_dataset(datasets.open_dataset(data))
    train = [s.id for s in splits.train]
    listed = tmp_path / "ids.txt"
    listed.write_text(f"# to label\n{train[3]}\n{train[0]}\n\n")
    assert datasets.read_id_list(listed) == [train[3], train[0]]
    assert [s.id for s in listed_subset(splits, datasets.read_id_list(listed))] == sorted([train[0], train[3]])
    torch.manual_seed(0)
    export_model(TINY.build_model(), TINY, tmp_path / "export.pt", step=1)
    config = FinetuneConfig(iters=2, batch_size=2, eval_every=2, decoder_hidden=8)
    result = finetune(data, 1.0, tmp_path / "ft", checkpoint=tmp_path / "export.pt", config=config, device="cpu",
                      progress=False, labels_from=listed)
    assert sorted(result.subset_ids) == sorted([train[0], train[3]])
    assert json.loads((tmp_path / "ft" / "subset.json").read_text())["ids"] == sorted([train[0], train[3]])
    advice = tmp_path / "advise.csv"  # advise's own file works as the list
    advice.write_text(f"rank,id,confidence\n1,{train[5]},0.1\n")
    assert datasets.read_id_list(advice) == [train[5]]
    for bad, message in ((splits.test[0].id, "held out of training"), (splits.validation[0].id, "held out"),
                         ("NOT_AN_ID", "not labelled training images")):
        listed.write_text(f"{train[0]}\n{bad}\n")
        run = CliRunner().invoke(cli.main, ["finetune", "--data", str(data), "--labels-from", str(listed),
                                            "--checkpoint", str(tmp_path / "export.pt"), "--out",
                                            str(tmp_path / f"bad-{bad}"), "--device", "cpu", "--no-progress"])
        assert run.exit_code == 1 and message in run.output and bad in run.output, run.output
        assert len(run.output.strip().splitlines()) == 1
        assert not (tmp_path / f"bad-{bad}").exists()  # refused before anything was written
    run = CliRunner().invoke(cli.main, ["finetune", "--data", str(data), "--checkpoint", str(tmp_path / "export.pt"),
                                        "--out", str(tmp_path / "none")])
    assert run.exit_code == 2 and "--frac" in run.output and "--labels-from" in run.output
    listed.write_text("a/b\n")
    with pytest.raises(ValueError, match="not an image id"):
        datasets.read_id_list(listed)
    shutil.rmtree(tmp_path / "ft")


def test_a_folder_where_only_the_advised_images_have_masks_fine_tunes_selecting_on_a_share_of_them(tmp_path):
    """The README's workflow on a user's folder: masks only for the images advise chose (all of the training
    split), none for validation or test. A quarter of the listed labels selects the iteration; with fewer than 4
    labels all train and the last iteration is kept; nothing is scored, and the run says so."""
    data = tmp_path / "data"
    write_synthetic_dataset(data, 24, seed=5, size=(96, 72), progress=False)
    train_ids = [s.id for s in split_dataset(datasets.open_dataset(data)).train]
    listed = train_ids[:8]
    for mask in (data / "masks").iterdir():  # the user labelled only the listed images
        if mask.name.split("_segmentation")[0] not in listed:
            mask.unlink()
    train, selection = selection_from_subset(split_dataset(datasets.open_dataset(data)).train)
    assert len(selection) == 2 and len(train) == 6 and not {s.id for s in train} & {s.id for s in selection}
    again = selection_from_subset(list(reversed(train + selection)))[1]
    assert {s.id for s in again} == {s.id for s in selection}  # stable: by id hash, not by order
    assert selection_from_subset(train[:3]) == (tuple(train[:3]), ())
    torch.manual_seed(0)
    export_model(TINY.build_model(), TINY, tmp_path / "export.pt", step=1)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(listed))
    args = ["finetune", "--data", str(data), "--checkpoint", str(tmp_path / "export.pt"), "--iters", "3",
            "--device", "cpu", "--no-progress", "--labels-from", str(ids)]
    run = CliRunner().invoke(cli.main, args + ["--out", str(tmp_path / "ft")])
    assert run.exit_code == 0, run.output
    subset = json.loads((tmp_path / "ft" / "subset.json").read_text())
    assert sorted(subset["ids"] + subset["validation"]) == sorted(listed) and len(subset["validation"]) == 2
    assert subset["test"] == [] and "nothing scored" in run.output
    assert (tmp_path / "ft" / "model.pt").exists()
    ids.write_text("\n".join(listed[:3]))
    run = CliRunner().invoke(cli.main, args + ["--out", str(tmp_path / "ft3")])
    assert run.exit_code == 0, run.output
    assert "iteration 3 (the last) kept" in run.output
    metrics = json.loads((tmp_path / "ft3" / "metrics.json").read_text())  # strict JSON: no NaN
    assert metrics["best_iter"] == 3 and metrics["best_val_jaccard"] is None


def test_with_only_the_listed_masks_calibration_uses_every_listed_label(planted, tmp_path):
    """A quarter of the listed labels selects the iteration and does not train; calibration, cross-validated on
    the labels themselves, still uses all of them."""
    folder, source, _ = planted
    data = tmp_path / "data"
    shutil.copytree(source, data)
    train_ids = [s.id for s in split_dataset(datasets.open_dataset(data)).train]
    for mask in (data / "masks").iterdir():
        if mask.name.split("_segmentation")[0] not in train_ids:
            mask.unlink()
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(train_ids))
    model = folder.parent / "export.pt"
    relabel(folder.parent / "stage1", model, tmp_path / "pool", device="cpu", progress=False)  # a real round's pool
    config = FinetuneConfig(iters=2, batch_size=2, eval_every=2, decoder_hidden=8, pseudo_shards=str(tmp_path / "pool"))
    result = finetune(data, 1.0, tmp_path / "ft", checkpoint=model, config=config,
                      device="cpu", progress=False, labels_from=ids)
    n_selection = len(selection_from_subset(split_dataset(datasets.open_dataset(data)).train)[1])
    assert n_selection >= 1 and len(result.subset_ids) == len(train_ids) - n_selection
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["calibration"]["n_labels"] == len(train_ids)
