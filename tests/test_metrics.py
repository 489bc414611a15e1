"""ISIC metrics: hand-computed values, and agreement with the official isic-challenge-scoring package."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from isic_challenge_scoring.segmentation import SegmentationScore

import cli
from trainer.metrics import binary_scores, evaluate_folders


def test_hand_computed_values():
    truth = np.zeros((4, 5), bool)
    truth[:2, :2] = True                       # 4 pixels
    pred = np.zeros((4, 5), bool)
    pred[:2, 1:3] = True                       # 4 pixels, 2 overlap
    s = binary_scores(pred, truth)
    assert s["jaccard"] == pytest.approx(2 / 6)
    assert s["dice"] == pytest.approx(4 / 8)
    assert s["thresholded_jaccard"] == 0.0
    assert s["accuracy"] == pytest.approx(16 / 20)
    assert s["sensitivity"] == pytest.approx(2 / 4)
    assert s["specificity"] == pytest.approx(14 / 16)
    assert binary_scores(truth, truth)["thresholded_jaccard"] == 1.0


def test_empty_masks_follow_the_official_conventions():
    empty = np.zeros((3, 3), bool)
    s = binary_scores(empty, empty)
    assert s["jaccard"] == s["dice"] == s["sensitivity"] == s["specificity"] == 1.0
    full = np.ones((3, 3), bool)
    assert binary_scores(full, full)["specificity"] == 1.0
    assert binary_scores(empty, full)["jaccard"] == 0.0


def _perturb(mask: np.ndarray, k: int) -> np.ndarray:
    kernel = np.ones((15, 15), np.uint8)
    if k % 5 == 0:
        return cv2.dilate(mask, kernel)
    if k % 5 == 1:
        return cv2.erode(mask, kernel)
    if k % 5 == 2:
        return np.roll(mask, mask.shape[1] // 20, axis=1)
    if k % 5 == 3:
        return np.zeros_like(mask)
    return mask.copy()


def test_agrees_with_the_official_scorer(isic_sample, tmp_path):
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    masks = sorted((isic_sample / "masks").glob("*_segmentation.png"))[::10][:10]
    for k, path in enumerate(masks):
        shutil.copy(path, truth_dir / path.name)
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(pred_dir / path.name), _perturb(mask, k))
    ours = evaluate_folders(pred_dir, truth_dir)
    official = SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
    names = {"jaccard": "jaccard", "dice": "dice", "thresholded_jaccard": "threshold_jaccard",
             "accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity"}
    for ours_name, theirs in names.items():
        assert abs(ours.means[ours_name] - official[theirs]) < 1e-6, ours_name
    assert 0.2 < ours.means["jaccard"] < 0.95  # the perturbations really changed the masks
    result = CliRunner().invoke(cli.main, ["evaluate", "--pred", str(pred_dir), "--truth", str(truth_dir),
                                           "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0 and f"{ours.means['jaccard']:.4f}" in result.output


def test_missing_predictions_and_size_mismatch_are_named(tmp_path):
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5:10] = 255
    for i in ("A", "B", "C"):
        cv2.imwrite(str(truth_dir / f"{i}_segmentation.png"), m)
    cv2.imwrite(str(pred_dir / "A_segmentation.png"), m)
    cv2.imwrite(str(pred_dir / "B_segmentation.png"), m[:10])
    with pytest.raises(ValueError) as err:
        evaluate_folders(pred_dir, truth_dir)
    assert "no prediction for 1 id(s): C" in str(err.value)
    assert "B_segmentation.png: size 30x10 differs" in str(err.value)
