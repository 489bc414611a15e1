"""Seeds, walker and the whole pseudo-mask on seeded synthetic scenes, plus a floor on real ISIC images."""
from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from common.datasets import read_image
from pipeline.pseudomask.per_image import DIAGNOSTICS, PseudoMaskConfig, make_pseudo_mask
from pipeline.pseudomask.seeds import field_of_view, seed_labels
from pipeline.pseudomask.walker import walk
from trainer.eval.metrics import binary_scores

SKIN = (210, 165, 145)
BROWN = (120, 75, 50)


def _scene(rng: np.random.Generator, shape=(300, 400)) -> np.ndarray:
    img = np.empty(shape + (3,), np.float32)
    img[:] = SKIN
    img += rng.normal(0, 3, shape + (1,))
    return img


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).astype(np.uint8)


def _disc(shape, centre, radius) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, centre, radius, 1, -1)
    return m > 0


def _squash(mask: np.ndarray, size: int = 256) -> np.ndarray:
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) >= 0.5


def test_uniform_image_has_no_lesion():
    image = _u8(_scene(np.random.default_rng(0)))
    r = make_pseudo_mask(image)
    assert r.no_lesion and not r.mask.any() and not r.prob.any()
    assert set(r.diagnostics) == set(DIAGNOSTICS)


def test_config_serialisable_and_diagnostics_fixed():
    json.dumps(dataclasses.asdict(PseudoMaskConfig()))
    rng = np.random.default_rng(1)
    img = _scene(rng)
    img[_disc(img.shape[:2], (200, 150), 50)] = BROWN
    r = make_pseudo_mask(_u8(img), size=128)
    assert not r.no_lesion and r.mask.shape == (128, 128) and r.prob.dtype == np.float32
    assert set(r.diagnostics) == set(DIAGNOSTICS)


def test_grey_vignette_corners_outside_fov():
    rng = np.random.default_rng(2)
    img = _scene(rng)
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    corner = r > 1.15
    img[corner] = (95, 92, 90)  # grey, not black: L* about 39
    lesion = _disc((h, w), (200, 150), 45)
    img[lesion] = BROWN
    image = _u8(img)
    fov = field_of_view(image)
    assert not fov[corner].any() or fov[corner].mean() < 0.05
    assert fov[r < 0.9].all()
    result = make_pseudo_mask(image)
    assert binary_scores(result.mask, _squash(lesion))["jaccard"] > 0.8


def test_sticker_at_border_not_chosen_over_central_lesion():
    rng = np.random.default_rng(3)
    img = _scene(rng)
    h, w = img.shape[:2]
    lesion = _disc((h, w), (190, 160), 35)
    img[lesion] = BROWN
    img[_disc((h, w), (w + 10, 60), 90)] = (240, 200, 40)    # yellow calibration disc
    img[_disc((h, w), (-20, h - 30), 80)] = (60, 170, 200)   # cyan calibration disc
    result = make_pseudo_mask(_u8(img))
    assert binary_scores(result.mask, _squash(lesion))["jaccard"] > 0.8


def test_walker_edge_snaps_to_blurred_edge_better_than_threshold():
    # A blurred lesion edge under uneven illumination: a global threshold follows the light, the walker
    # (seeded from a coarse map well inside the lesion) follows the edge.
    rng = np.random.default_rng(4)
    img = _scene(rng)
    h, w = img.shape[:2]
    img *= np.linspace(0.62, 1.1, w, dtype=np.float32)[None, :, None]
    lesion = _disc((h, w), (230, 150), 60)
    img[lesion] = BROWN
    image = _u8(cv2.GaussianBlur(img, (0, 0), 3))
    labels = seed_labels(image, coarse=_disc((h, w), (230, 150), 50))
    prob = walk(image, labels)
    j_walker = binary_scores(prob > PseudoMaskConfig().threshold, lesion)["jaccard"]
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    t, _ = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    j_threshold = binary_scores(grey <= t, lesion)["jaccard"]
    assert j_walker > 0.85
    assert j_walker > j_threshold + 0.1, (j_walker, j_threshold)


def test_bad_input_named():
    with pytest.raises(ValueError, match="image"):
        make_pseudo_mask(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="32 px"):
        make_pseudo_mask(np.zeros((16, 64, 3), np.uint8))


REAL_IDS = ("ISIC_0000000", "ISIC_0000004", "ISIC_0000011", "ISIC_0012090", "ISIC_0012143",
            "ISIC_0014628", "ISIC_0014665", "ISIC_0014723", "ISIC_0014771", "ISIC_0015200")


def test_real_images_mean_jaccard_floor(isic_sample):
    scores = []
    for i in REAL_IDS:
        image = read_image(isic_sample / "images" / f"{i}.jpg", min_long_side=1024)
        truth = cv2.imread(str(isic_sample / "masks" / f"{i}_segmentation.png"), cv2.IMREAD_GRAYSCALE) > 127
        pred = make_pseudo_mask(image).mask
        scores.append(binary_scores(pred, _squash(truth))["jaccard"])
    # plain Otsu on grey scores about 0.64 on the whole sample; the defaults before tuning 0.59
    assert np.mean(scores) > 0.7, scores


def _synthetic_jaccards(**option) -> np.ndarray:
    from pipeline.synth import generate_sample

    scores = []
    for i in range(24):
        s = generate_sample(0, i, size=(768, 576), **option)
        scores.append(binary_scores(make_pseudo_mask(s.image).mask, _squash(s.lesion))["jaccard"])
    return np.array(scores)


def test_circular_field_of_view_does_not_leak_along_the_rim():
    # stage 1 without the edge-run check: mean 0.781, two masks (0.00, 0.07) that run around the lens rim; with the
    # edge-run check at 0.25 (tuned on this set) 0.830, at 0.6 (chosen on real images) 0.809
    scores = _synthetic_jaccards(fov="circle")
    assert scores.mean() > 0.80, scores
    assert (scores < 0.3).sum() <= 1, scores


def test_frame_filling_lesions_are_not_cut_off():
    # stage 1 without the edge-run check: mean 0.843, three masks (0.21, 0.33, 0.54) cut to the dark core; with the
    # edge-run check at 0.25 0.875 (it cut two lesions that reach the rim), at 0.6 0.884
    scores = _synthetic_jaccards(lesion="large")
    assert scores.mean() > 0.88, scores
    assert (scores < 0.6).sum() <= 2, scores


def test_edge_run_check_keeps_a_lesion_that_reaches_the_rim_and_rejects_a_ring():
    from pipeline.pseudomask.fov import edge_run
    from pipeline.pseudomask.per_image import _leave_the_edge

    shape = (256, 256)
    fov = _disc(shape, (128, 128), 100)
    config = PseudoMaskConfig()
    # a lesion that crosses the lens rim: a quarter to a half of its outline runs along the rim
    lesion = _disc(shape, (128, 210), 45) & fov
    assert 0.25 < edge_run(lesion, fov) < 0.6
    prob = lesion.astype(np.float32)
    fg = _disc(shape, (128, 200), 10)
    kept, _, rejected = _leave_the_edge(prob, lesion, fg, fov, lesion, config, 0.3)
    assert not rejected and np.array_equal(kept, lesion)
    # a mask that fills the lens (skin between a small lesion and the dark rim) but for one hole: its outline is
    # mostly the rim, so it is rejected, and the next cut (0.5) gives the lesion back
    core = _disc(shape, (160, 128), 30)
    leak = fov & ~_disc(shape, (80, 128), 20)
    prob = np.where(core, 1.0, np.where(leak, 0.4, 0.0)).astype(np.float32)
    assert edge_run(leak, fov) > config.edge_run_max
    out, run, rejected = _leave_the_edge(prob, leak, core, fov, core, config, 0.3)
    assert rejected and np.array_equal(out, core) and run == 0.0


def test_fit_circle_finds_a_partial_circle_through_a_dark_lesion():
    from pipeline.pseudomask.fov import circular_fov, edge_run, fit_circle

    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - 160) ** 2 + (xx - 190) ** 2 <= 220 ** 2       # cut by the top and bottom of the frame
    fov = disc.copy()
    fov[(yy - 150) ** 2 + (xx - 380) ** 2 <= 60 ** 2] = False    # a dark lesion the frame rule took for frame
    circle = fit_circle(fov)
    assert abs(circle.cy - 160) < 3 and abs(circle.cx - 190) < 3 and abs(circle.r - 220) < 3
    out = circular_fov(fov, rim=0.0)
    assert out[150, 370] and (out == disc).mean() > 0.99
    ring = disc & ((yy - 160) ** 2 + (xx - 190) ** 2 >= 200 ** 2)
    assert edge_run(ring, disc) > 0.3 and edge_run(_disc((h, w), (190, 160), 40), disc) == 0.0


def test_confidence_in_unit_interval_and_zero_without_lesion():
    rng = np.random.default_rng(5)
    img = _scene(rng)
    img[_disc(img.shape[:2], (200, 150), 50)] = BROWN
    r = make_pseudo_mask(_u8(img))
    assert 0.5 < r.diagnostics["confidence"] <= 1.0
    assert make_pseudo_mask(_u8(_scene(rng))).diagnostics["confidence"] == 0.0
