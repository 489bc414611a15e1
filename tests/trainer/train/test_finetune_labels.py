"""``finetune`` learns from the lesion a colour mask marks, and refuses labels that are all empty before any
training (round 3, item 2: red-on-black masks were read as empty, trained on, and scored a Jaccard of 1.000)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from common import datasets
from common.datasets import Sample
from trainer.data.splits import Splits, describe
from trainer.train import finetune as finetune_module

TINY = finetune_module.FinetuneConfig(init="scratch", arch="vit_tiny_patch16_224", img_size=32, patch_size=8,
                                      iters=2, batch_size=2, eval_every=1, decoder_hidden=16)


class Stop(Exception):
    pass


def test_red_on_black_masks_train_on_the_same_labels_as_grey_ones(tmp_path, monkeypatch, make_labelled):
    seen = {}

    def capture(model, train_x, train_y, val_x, val_y, **kwargs):
        seen[kind] = (train_y.clone(), val_y.clone())
        raise Stop

    monkeypatch.setattr(finetune_module, "_train", capture)
    for kind in ("grey", "red"):
        data = make_labelled(tmp_path / kind, 12, mask_kind=kind)
        with pytest.raises(Stop):
            finetune_module.finetune(data, 1.0, tmp_path / f"ft-{kind}", config=TINY, device="cpu", progress=False)
    (grey_train, grey_val), (red_train, red_val) = seen["grey"], seen["red"]
    assert grey_train.sum() > 0.2 * grey_train.numel()  # the lesions cover about a quarter of each image
    assert np.array_equal(red_train.numpy(), grey_train.numpy()) and np.array_equal(red_val.numpy(),
                                                                                    grey_val.numpy())


def test_all_empty_labels_are_refused_before_training(tmp_path, monkeypatch, make_labelled):
    data = make_labelled(tmp_path / "data", 12, mask_kind="empty")

    def no_training(*args, **kwargs):
        raise AssertionError("training started on labels that are all empty")

    monkeypatch.setattr(finetune_module, "_train", no_training)
    with pytest.raises(datasets.DatasetError, match="marks a lesion") as err:
        finetune_module.finetune(data, 1.0, tmp_path / "ft", config=TINY, device="cpu", progress=False)
    assert str(err.value).startswith(str(data / "masks")) and "\n" not in str(err.value)
    assert not (tmp_path / "ft").exists()
    with pytest.raises(datasets.DatasetError, match="marks a lesion"):  # the table checks before any work
        finetune_module.check_before_training(datasets.open_dataset(data).labelled)


def test_a_training_subset_of_empty_masks_is_refused(tmp_path, monkeypatch, make_labelled):
    """Some masks mark a lesion, but the one image --frac picks has none: nothing to learn a lesion from."""
    data = make_labelled(tmp_path / "data", 12, mask_kind="grey")
    splits = finetune_module.split_dataset(datasets.open_dataset(data))
    picked = finetune_module.labelled_subset(splits.train, 0.01, seed=0)
    assert len(picked) == 1
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(picked[0].mask)
    monkeypatch.setattr(finetune_module, "_train", lambda *a, **k: pytest.fail("trained on an empty mask"))
    with pytest.raises(datasets.DatasetError, match=r"the 1 labelled training image\(s\) chosen \(--frac 0.01"):
        finetune_module.finetune(data, 0.01, tmp_path / "ft", config=TINY, device="cpu", progress=False)


@pytest.mark.parametrize("kind", ["two colours", "empty"])
def test_refused_labels_are_one_line_in_the_cli(tmp_path, kind, make_labelled):
    data = make_labelled(tmp_path / "data", 12, mask_kind="empty" if kind == "empty" else "grey")
    if kind == "two colours":
        victim = sorted((data / "masks").iterdir())[3]
        two = np.zeros((48, 64, 3), np.uint8)
        two[5:20, 5:20], two[25:40, 30:50] = (255, 0, 0), (0, 255, 0)
        Image.fromarray(two).save(victim)
    result = CliRunner().invoke(cli.main, ["finetune", "--data", str(data), "--frac", "1", "--init", "scratch",
                                           "--arch", "vit_tiny_patch16_224", "--img-size", "32", "--iters", "2",
                                           "--preset", "cpu", "--device", "cpu", "--no-progress",
                                           "--out", str(tmp_path / "ft")])
    errors = [ln for ln in result.output.splitlines() if ln.startswith("edgedino: error: ")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    if kind == "two colours":
        assert errors[0] == f"edgedino: error: {victim}: colour mask with 2 colours besides its black background; " \
                            "the lesion colour is ambiguous: save it as a single-channel PNG of 0 and 255 (or one " \
                            "colour on black)"
    else:
        assert f"{data / 'masks'}: none of the expert masks marks a lesion (all 12 mask(s) are empty)" in errors[0]
    assert not (tmp_path / "ft").exists()


def test_held_out_ids_are_the_splits_validation_and_test_labelled_or_not(tmp_path, make_labelled):
    from trainer.data.splits import held_out_ids, split_dataset

    root = make_labelled(tmp_path / "data", 40)
    for extra in ("U1", "U2", "U3", "U4", "U5", "U6", "U7", "U8"):  # images nobody has labelled yet
        Image.fromarray(np.full((48, 64, 3), 170, np.uint8)).save(root / "images" / f"{extra}.png")
    dataset = datasets.open_dataset(root)
    splits = split_dataset(dataset)
    held = held_out_ids(dataset)
    labelled_held = {s.id for s in splits.validation} | {s.id for s in splits.test}
    assert labelled_held and held & {s.id for s in dataset.labelled} == labelled_held
    assert not held & {s.id for s in splits.train}


def test_the_split_line_writes_shares_as_people_read_them():
    train = tuple(Sample(f"id{k:04d}", Path(f"id{k:04d}.jpg"), None, None, Path(".")) for k in range(1593))
    splits = Splits(train, train[:2], ())
    assert "(100 %)" in describe(splits, train) and "(10 %)" in describe(splits, train[:159])
    assert "(1 %)" in describe(splits, train[:16]) and "(0.19 %)" in describe(splits, train[:3])
