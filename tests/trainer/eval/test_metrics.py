"""ISIC metrics: hand-computed values, and agreement with the official isic-challenge-scoring package."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from isic_challenge_scoring.segmentation import SegmentationScore

import cli
from trainer.eval.metrics import (
    METRIC_NAMES,
    OFFICIAL_NAMES,
    binary_scores,
    evaluate_folders,
    read_binary_mask,
    write_metrics_json,
)


def test_hand_computed_values():
    truth = np.zeros((4, 5), bool)
    truth[:2, :2] = True                       # 4 pixels
    pred = np.zeros((4, 5), bool)
    pred[:2, 1:3] = True                       # 4 pixels, 2 overlap: TP 2, FP 2, FN 2, TN 14
    s = binary_scores(pred, truth)
    assert s["jaccard"] == pytest.approx(2 / 6)
    assert s["dice"] == pytest.approx(4 / 8)
    assert s["thresholded_jaccard"] == 0.0
    assert s["accuracy"] == pytest.approx(16 / 20)
    assert s["sensitivity"] == pytest.approx(2 / 4)
    assert s["specificity"] == pytest.approx(14 / 16)
    assert binary_scores(truth, truth) == {k: 1.0 for k in METRIC_NAMES}


@pytest.mark.parametrize("overlap, kept", [(13, True), (12, False)])
def test_threshold_at_065_keeps_equal_and_zeroes_below(overlap, kept):
    truth = np.zeros((1, 40), bool)
    truth[0, :20] = True
    pred = np.zeros((1, 40), bool)
    pred[0, :overlap] = True                   # Jaccard 13/20 = 0.65 exactly, or 12/20 = 0.6
    s = binary_scores(pred, truth)
    assert s["jaccard"] == pytest.approx(overlap / 20)
    assert s["thresholded_jaccard"] == (s["jaccard"] if kept else 0.0)


def test_empty_masks_follow_the_official_conventions():
    empty, full = np.zeros((3, 3), bool), np.ones((3, 3), bool)
    assert binary_scores(empty, empty) == {k: 1.0 for k in METRIC_NAMES}
    assert binary_scores(full, full)["specificity"] == 1.0          # no negatives in the truth
    s = binary_scores(full, empty)                                  # everything predicted, nothing there
    assert (s["jaccard"], s["dice"], s["sensitivity"], s["specificity"], s["accuracy"]) == (0, 0, 1, 0, 0)
    s = binary_scores(empty, full)
    assert (s["jaccard"], s["sensitivity"], s["specificity"]) == (0, 0, 1)


def test_binary_scores_rejects_non_binary_and_mismatched_inputs():
    m = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match="pred must be a bool"):
        binary_scores(np.full((4, 4), 0.7), m)
    with pytest.raises(ValueError, match="pred must be a bool"):
        binary_scores(np.full((4, 4), 255, np.uint8), m)
    with pytest.raises(ValueError, match="one shape"):
        binary_scores(m, m[:3])
    assert binary_scores(np.eye(4, dtype=np.uint8), np.eye(4, dtype=bool))["jaccard"] == 1.0


@pytest.mark.parametrize("values, expected", [((0, 255), (0, 1)), ((0, 1), (0, 1)), ((128, 129), (0, 1)),
                                              ((0, 128), (0, 0)), ((100, 200), (0, 1))])
def test_read_binary_mask_cuts_like_isic(tmp_path, values, expected):
    m = np.array([[values[0], values[1]]], np.uint8)
    cv2.imwrite(str(tmp_path / "m.png"), m)
    np.testing.assert_array_equal(read_binary_mask(tmp_path / "m.png"), np.array([expected], bool))


def test_read_binary_mask_rejects_colour_and_16_bit(tmp_path):
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "deep.png"), np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match="3 channels"):
        read_binary_mask(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="uint16"):
        read_binary_mask(tmp_path / "deep.png")
    with pytest.raises(ValueError, match="not a readable"):
        read_binary_mask(tmp_path / "absent.png")


def _perturb(mask: np.ndarray, k: int) -> np.ndarray:
    """Ten kinds of error a segmenter makes, on a 0/255 mask."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))
    h, w = mask.shape
    if k == 0:
        return cv2.dilate(mask, kernel)
    if k == 1:
        return cv2.erode(mask, kernel, iterations=3)
    if k == 2:
        return np.roll(mask, w // 12, axis=1)                        # a shift
    if k == 3:
        return np.zeros_like(mask)                                   # nothing found
    if k == 4:
        return mask.copy()                                           # perfect
    if k == 5:  # a grey probability-like map, with values at exactly 128 and 129 on the border
        grey = cv2.GaussianBlur(mask, (0, 0), 6)
        grey[grey == 127] = 128
        return grey
    if k == 6:
        return np.full_like(mask, 255)                               # everything
    if k == 7:
        return np.roll(cv2.erode(mask, kernel), (h // 10, -w // 10), axis=(0, 1))
    if k == 8:
        out = mask.copy()
        out[: h // 2] = 0                                            # half missed
        return out
    return cv2.dilate(mask, kernel, iterations=6)                    # far too big


@pytest.fixture
def scored_folders(isic_sample, tmp_path):
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    masks = sorted((isic_sample / "masks").glob("*_segmentation.png"))[::9][:10]
    assert len(masks) == 10
    for k, path in enumerate(masks):
        shutil.copy(path, truth_dir / path.name)
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(pred_dir / path.name), _perturb(mask, k))
    return pred_dir, truth_dir


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_agrees_with_the_official_scorer(scored_folders, tmp_path):
    pred_dir, truth_dir = scored_folders
    ours = evaluate_folders(pred_dir, truth_dir)
    official = SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
    for name in METRIC_NAMES:
        assert abs(ours.means[name] - official[OFFICIAL_NAMES[name]]) < 1e-6, name
    rows = {r["id"]: r for r in ours.rows}
    assert rows[sorted(rows)[4]]["jaccard"] == 1.0 and rows[sorted(rows)[3]]["jaccard"] == 0.0
    assert 0.2 < ours.means["jaccard"] < 0.9                         # the perturbations really changed the masks
    assert 0 < ours.means["thresholded_jaccard"] < ours.means["jaccard"]

    write_metrics_json(ours, tmp_path / "m.json")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["n"] == 10 and saved["mean"] == ours.means and len(saved["per_image"]) == 10

    result = CliRunner().invoke(cli.main, ["evaluate", "--pred", str(pred_dir), "--truth", str(truth_dir)])
    assert result.exit_code == 0 and f"{ours.means['jaccard']:.4f}" in result.output


def test_missing_extra_and_size_mismatch_are_named(tmp_path):
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5:10] = 255
    for i in ("A", "B", "C"):
        cv2.imwrite(str(truth_dir / f"{i}_segmentation.png"), m)
    for i in ("A", "D"):
        cv2.imwrite(str(pred_dir / f"{i}_segmentation.png"), m)
    cv2.imwrite(str(pred_dir / "B_segmentation.png"), m[:10])
    with pytest.raises(ValueError) as err:
        evaluate_folders(pred_dir, truth_dir)
    message = str(err.value)
    assert "no prediction for 1 id(s): C" in message
    assert "1 prediction(s) without ground truth" in message and ": D" in message
    assert "B_segmentation.png: size 30x10 differs from the ground truth's 30x20" in message

    (pred_dir / "B_segmentation.png").unlink()
    (truth_dir / "B_segmentation.png").unlink()
    (truth_dir / "C_segmentation.png").unlink()
    result = evaluate_folders(pred_dir, truth_dir, allow_extra=True)
    assert [r["id"] for r in result.rows] == ["A"] and result.means["jaccard"] == 1.0
    with pytest.raises(ValueError, match="no \\*_segmentation.png ground-truth"):
        evaluate_folders(pred_dir, tmp_path)
