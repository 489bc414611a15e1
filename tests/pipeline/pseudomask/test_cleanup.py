"""Mask clean-up: the one-lesion prior applied to predicted masks."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

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


def test_one_lesion_weighs_components_by_their_plausible_colour():
    from pipeline.pseudomask.cleanup import _plausible_fraction

    mask = np.zeros((200, 300), bool)
    mask[70:130, 110:190] = True       # a sticker at the centre: 4,800 px
    mask[20:50, 20:60] = True          # the lesion, off-centre: 1,200 px
    sticker_colour = np.zeros((50, 75), bool)  # the colour check's grid: a quarter of the size
    sticker_colour[17:33, 27:48] = True
    assert one_lesion(mask)[100, 150]  # the centre prior alone keeps the sticker
    out = one_lesion(mask, implausible=sticker_colour)
    assert out[30, 30] and not out[100, 150] and out.sum() == 1200
    # the fractions, sampled at the grid's cell centres; a component no cell centre hits keeps its score
    labels = np.zeros((200, 300), int)
    labels[70:130, 110:190] = 1
    labels[20:50, 20:60] = 2
    labels[1, 1] = 3
    half = np.zeros((50, 75), bool)
    half[17:25, 27:48] = True          # the top half of component 1's cells
    frac = _plausible_fraction(labels, 3, half)
    assert frac[2] == 1.0 and frac[1] == 1.0
    assert abs(frac[0] - 0.5) < 0.05, frac
    # an all-plausible map changes nothing
    rng = np.random.default_rng(1)
    noisy = ndi.binary_opening(rng.random((60, 80)) < 0.45)
    assert np.array_equal(one_lesion(noisy, implausible=np.zeros((15, 20), bool)), one_lesion(noisy))


def test_implausible_colour_marks_stickers_and_the_frame_not_the_lesion():
    from pipeline.pseudomask.seeds import implausible_colour

    h, w = 192, 256
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(0)
    image = np.array([214, 160, 138], np.float32) + rng.normal(0, 3, (h, w, 3))     # skin
    lesion = (yy - 96) ** 2 + (xx - 100) ** 2 < 30 ** 2
    image[lesion] = (120, 72, 52)                                                   # a brown lesion
    sticker = (yy - 96) ** 2 + (xx - 210) ** 2 < 28 ** 2
    image[sticker] = (250, 150, 20)                                                 # an orange sticker
    corner = (yy - 96) ** 2 / 1.1 + (xx - 128) ** 2 / 1.6 > 110 ** 2
    image[corner] = (8, 8, 8)                                                       # black frame corners
    found = implausible_colour(np.clip(image, 0, 255).astype(np.uint8))
    assert found.shape == (h, w)
    assert found[sticker].mean() > 0.9
    assert found[lesion].mean() < 0.05
    assert found[corner].mean() > 0.9
    skin = ~(lesion | sticker | corner)
    assert found[skin].mean() < 0.1
