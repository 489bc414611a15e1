"""Modified DullRazor: thin lines (dark and light) are hair; discs, dots and lesion texture are not."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.pseudomask.hair import HairConfig, hat_response, line_kernels, remove_hair
from pipeline.synth import generate_sample


def _skin(rng: np.random.Generator, shape=(384, 512), colour=(205, 160, 140)) -> np.ndarray:
    base = np.empty(shape + (3,), np.float32)
    base[:] = colour
    base += rng.normal(0, 3, shape + (1,))
    return np.clip(base, 0, 255).astype(np.uint8)


def _lines(shape, n, rng, width=2) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    h, w = shape
    for _ in range(n):
        p0 = (int(rng.integers(0, w)), 0)
        p1 = (int(rng.integers(0, w)), h - 1)
        cv2.line(mask, p0, p1, 1, width)
    return mask > 0


def test_dark_lines_found_disc_and_dots_kept():
    rng = np.random.default_rng(0)
    image = _skin(rng)
    hair = _lines(image.shape[:2], 4, rng)
    disc = np.zeros(image.shape[:2], np.uint8)
    cv2.circle(disc, (380, 190), 40, 1, -1)
    dots = np.zeros(image.shape[:2], np.uint8)
    for x, y in rng.integers(60, 320, size=(25, 2)):
        cv2.circle(dots, (int(x), int(y)), 3, 1, -1)
    near_hair = cv2.dilate(hair.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    image[disc > 0] = (110, 70, 50)
    image[dots > 0] = (90, 60, 45)
    image[hair] = (50, 35, 30)
    disc, dots = (disc > 0) & ~near_hair, (dots > 0) & ~near_hair
    mask = remove_hair(image).mask
    assert mask[hair].mean() > 0.8
    assert mask[disc].mean() < 0.05
    assert mask[dots].mean() < 0.1


def test_light_hair_found():
    rng = np.random.default_rng(1)
    image = _skin(rng, colour=(170, 120, 100))
    hair = _lines(image.shape[:2], 3, rng)
    image[hair] = (235, 225, 220)
    assert remove_hair(image).mask[hair].mean() > 0.7
    assert remove_hair(image, config=HairConfig(light=False)).mask[hair].mean() < 0.1


def test_cleaned_image_close_to_clean_on_hair():
    rng = np.random.default_rng(2)
    clean = _skin(rng)
    hair = _lines(clean.shape[:2], 3, rng)
    image = clean.copy()
    image[hair] = (40, 30, 25)
    result = remove_hair(image)
    err_before = np.abs(image.astype(float) - clean)[hair].mean()
    err_after = np.abs(result.cleaned.astype(float) - clean)[hair].mean()
    assert err_after < 0.2 * err_before
    far = cv2.dilate(hair.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    assert result.mask[far].mean() < 0.002


def test_hat_response_selective_for_lines():
    img = np.full((101, 101), 200, np.uint8)
    cv2.line(img, (10, 20), (90, 20), 60, 2)
    cv2.circle(img, (50, 70), 4, 60, -1)
    r = hat_response(img, line_kernels(15, 12), dark=True)
    assert r[20, 50] > 100
    assert r[70, 50] < 20


@pytest.mark.parametrize("index", [0, 3, 7])
def test_synthetic_precision_recall(index):
    s = generate_sample(0, index, size=(768, 576))
    pred = remove_hair(s.image).mask
    if not s.hair.any():
        assert pred.mean() < 0.005
        return
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    truth_d = cv2.dilate(s.hair.astype(np.uint8), disc) > 0
    pred_d = cv2.dilate(pred.astype(np.uint8), disc) > 0
    assert (pred & truth_d).sum() / max(pred.sum(), 1) > 0.5
    assert (s.hair & pred_d).sum() / s.hair.sum() > 0.5


def test_bad_input_named():
    with pytest.raises(ValueError, match="image"):
        remove_hair(np.zeros((10, 10), np.uint8))
