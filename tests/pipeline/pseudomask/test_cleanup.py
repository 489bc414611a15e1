"""Mask clean-up: the one-lesion prior applied to predicted masks."""
from __future__ import annotations

import numpy as np

from pipeline.pseudomask.cleanup import one_lesion


def test_one_lesion_keeps_the_largest_component_with_its_holes_filled():
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:25] = True          # the lesion: 400 px ...
    mask[12:16, 12:16] = False       # ... with a 16 px hole
    mask[30:38, 30:38] = True        # a corner blob: 64 px
    mask[0:3, 36:40] = True          # another one touching the border
    out = one_lesion(mask)
    expected = np.zeros_like(mask)
    expected[5:25, 5:25] = True
    assert np.array_equal(out, expected)
    # diagonal neighbours belong to the same lesion (8-connectivity)
    diag = np.zeros((10, 10), bool)
    diag[2:4, 2:4] = True
    diag[4:7, 4:7] = True
    assert np.array_equal(one_lesion(diag), diag)
    # nothing to keep, one component: unchanged apart from holes
    assert not one_lesion(np.zeros((5, 5), bool)).any()
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert one_lesion(ring).sum() == 25


def test_one_lesion_prefers_the_central_component_unless_another_outweighs_it():
    mask = np.zeros((100, 100), bool)
    mask[45:55, 45:55] = True          # a small central lesion: 100 px
    mask[0:15, 0:15] = True            # a dark vignette corner: 225 px, far from the centre
    out = one_lesion(mask)
    assert out[50, 50] and not out[0:15, 0:15].any()  # the largest component would have been the corner
    big = np.zeros((100, 100), bool)
    big[10:60, 5:55] = True            # a large lesion off the centre: 2,500 px
    big[70:73, 70:73] = True           # a speck nearer the centre line: 9 px
    out = one_lesion(big)
    assert out[30, 30] and not out[70:73, 70:73].any()


def test_one_lesion_scores_components_by_the_seeds_centre_prior():
    from scipy import ndimage as ndi

    from pipeline.pseudomask.cleanup import centre_grids, fill_holes

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(20, 90, 2))
        mask = ndi.binary_opening(rng.random((h, w)) < 0.45)
        labels, n = ndi.label(fill_holes(mask), structure=np.ones((3, 3), bool))
        if n <= 1:
            continue
        prior = centre_grids(h, w, 0.25)[0]  # the full (H, W) prior the separable sums stand for
        best = int(np.argmax(np.bincount(labels.ravel(), weights=prior.ravel(), minlength=n + 1)[1:])) + 1
        assert np.array_equal(one_lesion(mask), labels == best)
        checked += 1
    assert checked > 20
