"""The faster stage-1 helpers give what the code they replaced gave, to the last bit.

Each test compares a helper against an independent reference: scikit-image's ``random_walker`` and its linear
system, ``scipy.ndimage`` (fill holes, sum_labels), ``np.median``, a full-image ``cv2.erode`` and the former
whole-image skeleton of the hair filter, on seeded synthetic inputs and on real ISIC images. The last bit is the
promise here (a rewrite must not move any figure), so these comparisons are exact: both sides are computed on the
same machine, in the same order of operations.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import skeletonize
from skimage.segmentation import random_walker_segmentation as rws

from common.datasets import read_image
from pipeline.pseudomask import seeds
from pipeline.pseudomask.cleanup import fill_holes
from pipeline.pseudomask.hair import _elongated, erode_mask, median_mad, median_of_counts
from pipeline.pseudomask.per_image import resize_long
from pipeline.pseudomask.walker import WalkerConfig, _features, _walk_skimage, lesion_system, walk


def _blobs(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    """A bool mask of smoothed noise: blobs with holes and specks."""
    noise = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2.0)
    return noise > np.quantile(noise, 1 - density)


# ---------------------------------------------------------------- walker


def _walker_case(seed: int, shape=(72, 96), *, frame: bool, cut_off: bool, isolated_seed: bool):
    """(image, labels): a brown disc on skin, lesion seeds inside, background seeds at the border."""
    rng = np.random.default_rng(seed)
    h, w = shape
    image = np.empty(shape + (3,), np.float32)
    image[:] = (205, 160, 140)
    disc = np.zeros(shape, np.uint8)
    cv2.circle(disc, (int(rng.integers(35, 60)), int(rng.integers(28, 44))), int(rng.integers(12, 20)), 1, -1)
    image[disc > 0] = (120, 75, 50)
    image = np.clip(image + rng.normal(0, 8, shape + (3,)), 0, 255).astype(np.uint8)
    labels = np.zeros(shape, np.int8)
    labels[cv2.erode(disc, np.ones((9, 9), np.uint8)) > 0] = 1
    labels[:3] = labels[-3:] = 2
    if frame:  # inactive corners, as a round field of view leaves them
        yy, xx = np.ogrid[:h, :w]
        labels[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 > (0.62 * w) ** 2] = -1
    if cut_off:  # unlabelled pixels walled off from every seed by inactive ones
        labels[30:42, 2:14] = -1
        labels[33:39, 5:11] = 0
    if isolated_seed:  # a seed whose active component holds no unlabelled pixel
        labels[50:56, 80:88] = -1
        labels[52:54, 83:85] = 1
    return image, labels


CASES = [dict(frame=f, cut_off=c, isolated_seed=i) for f in (False, True) for c in (False, True) for i in (False, True)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(k for k, v in c.items() if v) or "plain")
def test_walk_equals_scikit_image(seed, case):
    image, labels = _walker_case(seed, **case)
    config = WalkerConfig()
    expected = _walk_skimage(_features(image, labels != -1, config), labels, labels != -1, config)
    got = walk(image, labels, config=config)
    assert np.array_equal(got, expected)
    assert got[labels == 1].min() == 1.0 and got[labels == 2].max() == 0.0
    # the fast system is used except where scikit-image renumbers its graph (isolated seeds)
    assert (lesion_system(_features(image, labels != -1, config), labels, config.beta) is None) == case["isolated_seed"]


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("frame", [False, True])
def test_lesion_system_is_scikit_images_system(seed, frame):
    image, labels = _walker_case(seed, frame=frame, cut_off=True, isolated_seed=False)
    config = WalkerConfig()
    feat = _features(image, labels != -1, config)
    a, b, unknown = lesion_system(feat, labels, config.beta)
    prepared, nlabels, mask, _, _ = rws._preprocess(labels.copy())
    a_ref, b_ref = rws._build_linear_system(feat[:, :, None, :], np.ones(3), prepared, nlabels, mask, config.beta,
                                            True)
    assert np.array_equal(a.indptr, a_ref.indptr) and np.array_equal(a.indices, a_ref.indices)
    assert np.array_equal(a.data, a_ref.data)
    assert np.array_equal(b, b_ref[:, [0]].toarray()[:, 0])
    assert unknown.sum() == a.shape[0] and not unknown[33:39, 5:11].any()


def test_walk_equals_scikit_image_on_real_images(isic_sample):
    for name in ("ISIC_0000000", "ISIC_0000004", "ISIC_0014628"):
        small = resize_long(read_image(isic_sample / "images" / f"{name}.jpg", min_long_side=1024), 256)
        lab = seeds.to_lab(small)
        fov = seeds.field_of_view(small, lab=lab)
        labels = seeds.seed_labels(small, fov)
        config = WalkerConfig()
        expected = _walk_skimage(_features(small, labels != -1, config), labels, labels != -1, config)
        assert np.array_equal(walk(small, labels, config=config, lab=lab), expected), name


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (40, 33), (128, 96)])
@pytest.mark.parametrize("density", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_fill_holes_equals_scipy(shape, density):
    rng = np.random.default_rng(sum(shape))
    for mask in (rng.random(shape) < density, _blobs(rng, shape, density) if min(shape) > 1 else rng.random(shape) < 0.5):
        assert np.array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))


def _pick_component_reference(mask, fov, excess, config):
    """The former ``_pick_component``, with ``ndi.sum_labels`` and the prior computed on every call."""
    h, w = mask.shape
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    idx = np.arange(1, n + 1)
    areas = ndi.sum_labels(np.ones(mask.shape, np.float64), labels, idx)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.mgrid[0:h, 0:w]
    sig = config.centre_sigma * np.hypot(h, w)
    prior = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
    score = ndi.sum_labels(prior * np.maximum(excess, 0.0) if config.border_penalty > 0 else prior, labels, idx)
    score = score * np.maximum(areas, 1.0) ** (config.area_power - 1.0)
    if config.border_penalty > 0:
        band = seeds._border_band((h, w), 2)
        touch = ndi.sum_labels(band.astype(np.float64), labels, idx) / max(band.sum(), 1)
        my = ndi.sum_labels(yy.astype(np.float64), labels, idx) / areas
        mx = ndi.sum_labels(xx.astype(np.float64), labels, idx) / areas
        offset = np.hypot(my - cy, mx - cx) / (0.5 * np.hypot(h, w))
        score = score * np.exp(-config.border_penalty * touch * offset)
    score[areas < config.min_component * max(fov.sum(), 1)] = 0
    if score.max() <= 0:
        return np.zeros_like(mask)
    return labels == idx[int(np.argmax(score))]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("options", [{}, {"border_penalty": 0.0}, {"area_power": 0.5, "centre_sigma": 0.1}])
def test_pick_component_equals_former(seed, options):
    rng = np.random.default_rng(seed)
    shape = (60 + 7 * seed, 80)
    mask = _blobs(rng, shape, 0.3)
    excess = rng.normal(0, 2, shape).astype(np.float32)
    fov = np.ones(shape, bool)
    config = seeds.SeedConfig(**options)
    assert np.array_equal(seeds._pick_component(mask, fov, excess, config),
                          _pick_component_reference(mask, fov, excess, config))


# ---------------------------------------------------------------- hair


@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 1000, 1001])
@pytest.mark.parametrize("spread", [1, 4, 256])
def test_median_mad_equals_numpy(n, spread):
    rng = np.random.default_rng(n * spread)
    levels = rng.integers(0, spread, size=n).clip(0, 255).astype(np.uint8)
    med, mad = median_mad(levels)
    response = levels.astype(np.float32)
    assert med == float(np.median(response))
    assert mad == float(np.median(np.abs(response - med)))


def test_median_of_counts_skips_empty_values():
    values = np.array([1.0, 2.0, 5.0, 9.0])
    assert median_of_counts(values, np.array([2, 0, 0, 2])) == 5.0  # 1 1 9 9
    assert median_of_counts(values, np.array([1, 0, 1, 1])) == 5.0


@pytest.mark.parametrize("k", [3, 9, 31])
@pytest.mark.parametrize("seed", range(3))
def test_erode_mask_equals_full_erosion(k, seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((90, 120), bool)
    mask[5 + seed:70, 30:118] = True  # reaches near the right border: the border must not erode
    mask &= ~_blobs(rng, mask.shape, 0.1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    full = cv2.erode(mask.astype(np.uint8), kernel) > 0
    assert np.array_equal(erode_mask(mask, kernel), full)
    where = np.zeros(mask.shape, bool)
    where[40:60, 90:120] = True
    got = erode_mask(mask, kernel, where=where)
    assert np.array_equal(got[where], full[where]) and not got[~where].any()
    assert not erode_mask(np.zeros_like(mask), kernel).any()


def _elongated_reference(candidates, *, min_length, min_elongation, core, core_elongation):
    """The former ``_elongated``: the whole image skeletonised, the core eroded everywhere beforehand."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(candidates.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(candidates, bool)
    skeleton = skeletonize(candidates)
    length = np.bincount(labels[skeleton], minlength=n).astype(np.float64)
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    elongation = length ** 2 / np.maximum(area, 1)
    bound = np.full(n, min_elongation)
    if core is not None and core.any():
        inside = np.bincount(labels[core], minlength=n) / np.maximum(area, 1)
        bound[inside > 0.5] = core_elongation
    keep = (length >= min_length) & (elongation >= bound)
    keep[0] = False
    return keep[labels]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("core_elongation", [20.0, 4.0])
def test_elongated_equals_former(seed, core_elongation):
    rng = np.random.default_rng(seed)
    shape = (200, 260)
    candidates = np.zeros(shape, np.uint8)
    for _ in range(12):  # lines of various lengths and widths, some inside the lesion
        p0, p1 = rng.integers(0, 260, 2), rng.integers(0, 200, 2)
        cv2.line(candidates, (int(p0[0]), int(p1[0])), (int(p0[1]), int(p1[1])), 1, int(rng.integers(1, 4)))
    for x, y in rng.integers(20, 180, size=(30, 2)):  # dots
        cv2.circle(candidates, (int(x), int(y)), int(rng.integers(1, 5)), 1, -1)
    cv2.circle(candidates, (130, 100), 48, 0, -1)
    for k in range(5):  # strokes inside the lesion core, elongation about 5-16: the core decides them
        x, y = 100 + 12 * k, int(rng.integers(70, 90))
        cv2.line(candidates, (x, y), (x + int(rng.integers(-6, 7)), y + int(rng.integers(16, 30))), 1, 1 + k % 3)
    candidates = candidates > 0
    hint = np.zeros(shape, np.uint8)
    cv2.circle(hint, (130, 100), 70, 1, -1)
    hint = hint > 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (21, 21))
    core = cv2.erode(hint.astype(np.uint8), kernel) > 0
    options = dict(min_length=15.0, min_elongation=8.0, core_elongation=core_elongation)
    expected = _elongated_reference(candidates, core=core, **options)
    assert (expected != _elongated_reference(candidates, core=None, **options)).any()  # the core matters here
    assert np.array_equal(_elongated(candidates, hint=hint, core_kernel=kernel, **options), expected)
    assert np.array_equal(_elongated(candidates, hint=None, core_kernel=None, **options),
                          _elongated_reference(candidates, core=None, **options))
