"""The student-walker agreement, the per-image choice between them, and the frame rule of the one-lesion mask."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.pseudomask.cleanup import one_lesion, without_frame
from trainer.inference.agreement import mask_agreement
from trainer.inference.choice import (
    FEATURES,
    Choice,
    ChoiceConfig,
    PoolReference,
    agreed_reference,
    choose,
    chosen_score,
    confidence_of,
    fit_reference,
    image_lab,
    lesion_score,
    mask_features,
)


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def skin_with_lesion(size=128, lesion=(64, 64, 20), vignette=False):
    """Light skin, a brown disc lesion; with ``vignette`` a dark brown rim around a bright disc."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = (225, 185, 165)
    image[disc((size, size), lesion[:2], lesion[2])] = (120, 75, 50)
    if vignette:
        image[~disc((size, size), (size // 2, size // 2), int(size * 0.42))] = (60, 35, 20)
    return image


def test_agreement_of_identical_masks_is_1_and_of_disjoint_masks_0():
    a = disc((64, 64), (20, 20), 8)
    b = disc((64, 64), (45, 45), 8)
    assert mask_agreement(a, a) == 1.0
    assert mask_agreement(a, b) == 0.0
    assert mask_agreement(np.zeros((8, 8), bool), np.zeros((8, 8), bool)) == 1.0
    assert mask_agreement(a, np.zeros_like(a)) == 0.0
    half = a.copy()
    half[:20] = False
    assert mask_agreement(a, half) == pytest.approx(half.sum() / a.sum())
    with pytest.raises(ValueError, match="same shape"):
        mask_agreement(a, a[:10])


def test_features_say_a_dark_central_lesion_is_more_lesion_like_than_the_bright_disc_of_a_vignette():
    image = skin_with_lesion(vignette=True)
    lab = image_lab(image)
    lesion = disc((128, 128), (64, 64), 20)
    bright_disc = disc((128, 128), (64, 64), int(128 * 0.42))
    f_lesion, f_disc = mask_features(lesion, lab), mask_features(bright_disc, lab)
    assert f_lesion.shape == (len(FEATURES),)
    contrast, darkness, centrality, away = range(4)
    assert f_lesion[darkness] > 20 and f_disc[darkness] < 0  # the lesion is darker than its ring; the disc lighter
    assert f_lesion[contrast] > 20
    off_centre = mask_features(disc((128, 128), (20, 20), 10), lab)
    assert off_centre[centrality] < f_lesion[centrality]
    frame = np.zeros((128, 128), bool)
    frame[:, :30] = True
    assert mask_features(frame, lab)[away] < -0.2 < f_lesion[away] == 0.0
    assert np.isnan(mask_features(np.zeros((128, 128), bool), lab)).all()
    reference = fit_reference(np.stack([f_lesion, f_disc, mask_features(disc((128, 128), (60, 70), 15), lab)]))
    assert lesion_score(f_lesion, reference) > lesion_score(f_disc, reference)


def test_reference_is_median_and_robust_spread_and_survives_json():
    f = np.array([[1.0, 2, 3, 4], [2, 2, 3, 4], [3, 2, 3, 4], [np.nan, 0, 0, 0]])
    ref = fit_reference(f)
    assert ref.n == 3 and ref.centre == (2.0, 2.0, 3.0, 4.0)
    assert ref.scale[0] == 2.0 and ref.scale[3] == 0.1  # the floors of MIN_SCALE
    import json

    assert PoolReference.from_dict(json.loads(ref.to_json())) == ref
    with pytest.raises(ValueError, match="features"):
        PoolReference.from_dict({**json.loads(ref.to_json()), "features": ["a"]})
    with pytest.raises(ValueError, match="no mask"):
        fit_reference(np.full((2, 4), np.nan))


def test_choice_combines_agreeing_masks_and_picks_the_lesion_like_one_where_they_disagree():
    reference = PoolReference(centre=(30.0, 20.0, -0.05, 0.0), scale=(10.0, 10.0, 0.05, 0.1), n=100)
    good = np.array([40.0, 30.0, -0.02, 0.0])      # dark, contrasted, central, off the frame
    bad = np.array([10.0, -15.0, -0.01, -0.4])     # lighter than its surroundings, along the frame
    config = ChoiceConfig(agree_at=0.5, agree_weight=0.15)
    both = choose(0.9, good, good, reference, config)
    assert both.source == "both" and both.weight == 0.15
    student = choose(0.1, bad, good, reference, config)
    assert student.source == "student" and student.weight == 1.0
    assert student.scores[1] > student.scores[0]
    walker = choose(0.1, good, bad, reference, config)
    assert walker.source == "walker" and walker.weight == 0.0
    assert choose(0.1, good, good, reference, config).source == "walker"  # a tie keeps stage 1
    assert choose(0.0, None, good, reference, config).source == "student"  # stage 1 found no lesion
    empty_student = np.full(4, np.nan)
    assert choose(0.0, good, empty_student, reference, config).source == "walker"


def test_confidence_joins_agreement_lesion_score_and_stage1s_confidence():
    both = Choice(0.15, "both", 0.8, (2.0, -1.0))
    assert chosen_score(both) == 2.0
    assert chosen_score(Choice(0.0, "walker", 0.2, (-4.0, 5.0))) == -4.0
    assert chosen_score(Choice(1.0, "student", 0.2, (-4.0, 5.0))) == 5.0
    sig = 1 / (1 + np.exp(-2.0 / 3))
    assert confidence_of(both, 0.25) == pytest.approx(0.5 * (0.8 + sig) / 2)
    assert confidence_of(both, float("nan")) == pytest.approx((0.8 + sig) / 2)  # older shards: no stage-1 value
    sure = Choice(0.15, "both", 1.0, (60.0, 60.0))
    doubtful = Choice(0.0, "walker", 0.0, (-60.0, 1.0))
    assert confidence_of(sure, 1.0) == pytest.approx(1.0) and confidence_of(doubtful, 1.0) == pytest.approx(0.0, abs=1e-6)
    assert confidence_of(Choice(1.0, "student", 0.0, (float("nan"), float("nan"))), 1.0) == pytest.approx(0.25)


def test_frame_rule_drops_a_vignette_ring_but_keeps_a_lesion_that_fills_the_frame():
    size = 128
    ring = ~disc((size, size), (64, 64), 54)
    lesion = disc((size, size), (64, 64), 15)
    mask = ring | lesion
    assert without_frame(mask).sum() == lesion.sum()
    # without the rule, filling the ring's hole made the whole image the lesion
    assert one_lesion(mask).sum() == lesion.sum()
    big = disc((size, size), (64, 64), 80)  # a lesion that runs off every side of the frame
    assert (one_lesion(big) == big).all()
    corner = disc((size, size), (0, 0), 30) | lesion  # a dark corner beside the lesion: not a ring
    assert without_frame(corner).sum() == corner.sum()


def test_the_agreed_reference_uses_both_masks_of_the_agreeing_images_only():
    config = ChoiceConfig(confident_at=0.8, min_reference=2)
    near, far = np.array([10.0, 10.0, 0.0, 0.0]), np.array([90.0, 90.0, -0.4, -1.0])
    pairs = [(near, near + 1), (near - 1, near), (far, far), (None, near)]
    reference = agreed_reference([0.9, 0.85, 0.3, 0.95], pairs, config)  # the far pair disagrees; no walker mask
    assert reference.n == 4 and reference.centre[0] == pytest.approx(10.0)
    assert agreed_reference([0.9, 0.3, 0.3, 0.95], pairs, config) is None  # one agreeing image: too few
