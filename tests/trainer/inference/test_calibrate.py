"""The labels calibrate the walker's cut and the per-image choice (``finetune`` beside a relabelled pool)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from common import datasets
from pipeline.run import library_versions
from pipeline.shards import ShardRecord, write_manifest, write_shard
from trainer.inference.calibrate import Calibration, calibrate
from trainer.inference.choice import ChoiceConfig, DEFAULT_REFERENCE

SIZE = 64


def _disc(centre, radius):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.hypot(yy - centre[0], xx - centre[1])


def _pool(root: Path, n: int = 8, truth_at: tuple[float, ...] = (0.15,)) -> tuple[Path, list[datasets.Sample]]:
    """Stage-1 shards whose walker cut (0.3) keeps only the core of each lesion (the expert lesion reaches the
    walker's 0.15; image k's reaches ``truth_at[k % len(truth_at)]``), the same pool relabelled (the student sees
    a blob in a corner: the two disagree), and the expert masks."""
    rng = np.random.default_rng(0)
    stage1, relabelled, samples = [], [], []
    (root / "masks").mkdir(parents=True)
    for k in range(n):
        centre = (32 + rng.integers(-4, 5), 32 + rng.integers(-4, 5))
        r = _disc(centre, 0)
        prob = np.exp(-(r / 12.0) ** 2).astype(np.float32)
        truth = prob >= truth_at[k % len(truth_at)]
        image = np.full((SIZE, SIZE, 3), (225, 185, 165), np.uint8)
        image[truth] = (120, 75, 50)
        walker = prob >= 0.3
        student_prob = (_disc((6, 6), 0) < 5).astype(np.float32)
        sid = f"IMG_{k:03d}"
        mask_path = root / "masks" / f"{sid}_segmentation.png"
        cv2.imwrite(str(mask_path), truth.astype(np.uint8) * 255)
        samples.append(datasets.Sample(id=sid, image=root / f"{sid}.png", mask=mask_path))
        common = dict(id=sid, path=str(root / f"{sid}.png"), orig_shape=(SIZE, SIZE), image=image,
                      hair_mask=np.zeros((SIZE, SIZE), bool), no_lesion=False)
        stage1.append(ShardRecord(**common, prob=prob, pseudo_mask=walker,
                                  diagnostics={"threshold": 0.3, "confidence": 0.5}))
        relabelled.append(ShardRecord(**common, prob=prob, pseudo_mask=walker,
                                      diagnostics={"confidence": 0.1, "agreement": 0.0, "source": 0.0},
                                      maps={"model_prob": student_prob, "walker_mask": walker}))
    for folder, records, extra in (("stage1", stage1, {}), ("round", relabelled, None)):
        (root / folder).mkdir()
        digest = write_shard(root / folder / "shard-00000.h5", records, size=SIZE, config_json="{}",
                             config_hash="x", planned_ids=[r.id for r in records], rejects=[],
                             versions=library_versions())
        extra = extra if extra is not None else {"relabel": {"source": {"path": str(root / "stage1")},
                                                             "reference": DEFAULT_REFERENCE.__dict__ | {
                                                                 "features": list(DEFAULT_REFERENCE.features)}}}
        write_manifest(root / folder, [{"file": "shard-00000.h5", "rows": n, "sha256": digest}], extra)
    return root / "round", samples


def test_no_label_keeps_the_shipped_settings(tmp_path):
    shards, _ = _pool(tmp_path, 3)
    assert calibrate(shards, []) == Calibration()
    defaults = Calibration()
    assert (defaults.cut_scale, defaults.agree_at, defaults.agree_weight) == (1.0, ChoiceConfig().agree_at,
                                                                            ChoiceConfig().agree_weight)
    assert "shipped settings" in defaults.line()


def test_labels_that_reach_paler_borders_lower_the_cut_and_the_gain_is_cross_validated(tmp_path):
    shards, samples = _pool(tmp_path)
    fitted = calibrate(shards, samples)
    assert fitted.n_labels == 8 and fitted.cut_scale < 1.0  # the expert border lies below the walker's cut
    assert fitted.cv["cut"] > fitted.cv["default"] + 0.1 and fitted.cv["both"] >= fitted.cv["cut"] - 1e-9
    assert fitted.cv["choice"] == pytest.approx(fitted.cv["default"], abs=0.02)  # the choice cannot fix a cut
    again = Calibration.from_dict(fitted.to_dict())
    assert again == fitted and "leave-one-out" in fitted.line()
    one = calibrate(shards, samples[:1])  # one label: the shipped settings
    assert one.n_labels == 1 and one.cut_scale == 1.0
    with pytest.raises(ValueError, match="not a relabelled pool"):
        calibrate(tmp_path / "stage1", samples)
    with pytest.raises(ValueError, match="out of range"):
        Calibration.from_dict({**fitted.to_dict(), "cut_scale": 50})


def test_labels_that_disagree_keep_the_shipped_settings(tmp_path):
    # half the lesions reach paler borders than the walker's cut, half stop inside it: no cut suits every image
    shards, samples = _pool(tmp_path, 8, truth_at=(0.15, 0.6))
    fitted = calibrate(shards, samples)
    assert (fitted.cut_scale, fitted.agree_at, fitted.agree_weight) == (1.0, 0.5, 0.15)
    assert fitted.n_labels == 8


def test_two_labels_are_too_few_to_move_a_setting(tmp_path):
    shards, samples = _pool(tmp_path, 2)  # both images would gain from a lower cut
    fitted = calibrate(shards, samples)
    assert fitted.n_labels == 2 and (fitted.cut_scale, fitted.agree_at, fitted.agree_weight) == (1.0, 0.5, 0.15)


def test_a_calibration_without_a_cross_validated_gain_is_not_used(tmp_path, monkeypatch):
    import trainer.inference.calibrate as cal

    shards, samples = _pool(tmp_path)
    fitted = calibrate(shards, samples)
    gain = max(fitted.cv[k] for k in ("cut", "choice", "both")) - fitted.cv["default"]
    assert fitted.cut_scale < 1.0 and gain > cal.MIN_CV_GAIN  # the labels agree: the cut moves
    monkeypatch.setattr(cal, "MIN_CV_GAIN", gain + 0.01)  # the same evidence, a higher bar
    kept = calibrate(shards, samples)
    assert (kept.cut_scale, kept.agree_at, kept.agree_weight) == (1.0, 0.5, 0.15)
    assert kept.cv == pytest.approx(fitted.cv) and kept.n_labels == 8  # still reported
