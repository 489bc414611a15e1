"""The synthetic dermoscopy generator: determinism, ground truth that means what it says, realistic spread."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from scipy import ndimage as ndi

from pipeline.synth import (
    VIGNETTE_LESION_FRACTION,
    SynthSample,
    contact_sheet,
    generate_sample,
    sample_id,
    vignette_case,
    write_synthetic_dataset,
)

SIZE = (256, 192)


@pytest.fixture(scope="module")
def samples() -> list[SynthSample]:
    return [generate_sample(0, i, size=SIZE) for i in range(40)]


def test_same_seed_and_index_give_the_same_arrays():
    a, b = generate_sample(3, 7, size=SIZE), generate_sample(3, 7, size=SIZE)
    for name in ("image", "clean", "lesion", "hair"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.lesion_fraction, a.n_dark_hairs, a.optics) == (b.lesion_fraction, b.n_dark_hairs, b.optics)
    assert not np.array_equal(a.image, generate_sample(4, 7, size=SIZE).image)
    assert not np.array_equal(a.image, generate_sample(3, 8, size=SIZE).image)


@pytest.mark.parametrize("size", [(512, 384), (256, 192), (96, 72), (64, 96)])
def test_shapes_dtypes_and_binary_masks(size):
    s = generate_sample(0, 1, size=size)
    w, h = size
    assert s.image.shape == s.clean.shape == (h, w, 3) and s.image.dtype == s.clean.dtype == np.uint8
    assert s.lesion.shape == s.hair.shape == (h, w) and s.lesion.dtype == s.hair.dtype == bool
    assert s.lesion_fraction == pytest.approx(s.lesion.mean())
    assert not s.image.flags.writeable


@pytest.mark.parametrize("bad", [dict(seed=-1, index=0), dict(seed=0, index=0, size=(16, 100))])
def test_bad_arguments_are_named(bad):
    with pytest.raises(ValueError, match="seed|size"):
        generate_sample(**bad)


def test_spread_of_lesions_hair_and_optics(samples):
    fractions = np.array([s.lesion_fraction for s in samples])
    assert fractions.min() < 0.08 and fractions.max() > 0.35
    assert ((fractions > 0.01) & (fractions < 0.75)).all()
    assert np.mean([s.hair.any() for s in samples]) > 0.6           # dark hair on most images
    assert 0 < sum(s.n_light_hairs > 0 for s in samples) < len(samples) / 2
    assert {s.optics for s in samples} == {"none", "vignette", "frame"}
    assert 0 < sum(s.has_vignette for s in samples) < len(samples)
    assert 0 < sum(s.touches_border for s in samples) < len(samples)
    assert len({s.pigment for s in samples}) >= 3
    edges = [s.edge_width for s in samples]
    assert min(edges) < 1.0 and max(edges) > 3.0                       # sharp and fuzzy borders


def test_touches_border_flag_matches_the_mask(samples):
    for s in samples:
        border = s.lesion[0].any() or s.lesion[-1].any() or s.lesion[:, 0].any() or s.lesion[:, -1].any()
        assert s.touches_border == border


def test_ground_truth_matches_the_pixels(samples):
    for s in samples[:12]:
        diff = np.abs(s.image.astype(int) - s.clean.astype(int)).max(axis=2)
        if s.hair.any():
            off_lesion = s.hair & ~s.lesion                             # (dark hair on a dark lesion is faint)
            assert np.mean(diff[off_lesion] > 5) > 0.9                   # hair pixels really differ from clean
            assert diff[s.hair].mean() > 20
        near_hair = cv2.dilate(s.hair.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert np.percentile(diff[~near_hair], 99.5) <= 5                # elsewhere the image is the clean image
        if not s.n_dark_hairs + s.n_light_hairs:
            assert diff.max() == 0
        lum = s.clean.astype(float).sum(axis=2)
        ring = cv2.dilate(s.lesion.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool) & ~s.lesion
        assert lum[s.lesion].mean() < lum[ring].mean() - 20             # darker than the skin around it


@pytest.mark.parametrize("fov", ["auto", "vignette"])
def test_written_dataset_is_byte_identical_on_rerun(tmp_path, fov):
    ids = write_synthetic_dataset(tmp_path / "a", 4, seed=5, size=SIZE, progress=False, fov=fov)
    write_synthetic_dataset(tmp_path / "b", 4, seed=5, size=SIZE, jobs=2, progress=False, fov=fov)
    assert ids == [sample_id(i) for i in range(4)] == [f"SYN_{i:07d}" for i in range(4)]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 16
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    sample = generate_sample(5, 0, size=SIZE, fov=fov)
    mask = cv2.imread(str(tmp_path / "a" / "masks" / "SYN_0000000_segmentation.png"), cv2.IMREAD_UNCHANGED)
    hair = cv2.imread(str(tmp_path / "a" / "hair" / "SYN_0000000_hair.png"), cv2.IMREAD_UNCHANGED)
    clean = cv2.imread(str(tmp_path / "a" / "clean" / "SYN_0000000.png"))
    assert mask.shape == (192, 256) and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask > 0, sample.lesion)
    np.testing.assert_array_equal(hair > 0, sample.hair)
    np.testing.assert_array_equal(clean[:, :, ::-1], sample.clean)
    jpeg = cv2.imread(str(tmp_path / "a" / "images" / "SYN_0000000.jpg"))[:, :, ::-1]
    assert np.abs(jpeg.astype(int) - sample.image).mean() < 3       # quality-95 JPEG of the image


def test_contact_sheet_is_written(tmp_path, samples):
    path = contact_sheet(samples[:4], tmp_path / "sheet.png", per_row=2)
    sheet = cv2.imread(str(path))
    assert path.stat().st_size > 20_000
    assert sheet.shape[0] > 200 and sheet.shape[1] > 600 and sheet.std() > 20


def test_circle_option_gives_a_circular_field_of_view_with_dark_corners():
    for i in range(6):
        s = generate_sample(0, i, size=SIZE, fov="circle")
        assert s.optics == "circle"
        grey = s.clean.mean(axis=2)
        corners = np.concatenate([grey[:4, :4].ravel(), grey[:4, -4:].ravel(), grey[-4:, :4].ravel(),
                                  grey[-4:, -4:].ravel()])
        assert np.median(corners) < 70                           # black or dark grey
        h, w = grey.shape
        assert np.percentile(grey[h // 4:3 * h // 4, w // 4:3 * w // 4], 90) > np.median(corners) + 60
        assert not s.lesion[:2, :2].any() and not s.lesion[-2:, -2:].any()   # the mask stays inside


def test_large_option_fills_the_frame_or_crosses_its_edge():
    samples = [generate_sample(0, i, size=SIZE, lesion="large") for i in range(16)]
    fractions = np.array([s.lesion_fraction for s in samples])
    assert all(s.touches_border for s in samples)
    assert (fractions > 0.6).sum() >= 4 and fractions.max() > 0.85
    assert (fractions > 0.2).all()


def test_options_leave_the_default_images_unchanged():
    a = generate_sample(0, 3, size=SIZE)
    b = generate_sample(0, 3, size=SIZE, fov="auto", lesion="auto")
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, generate_sample(0, 3, size=SIZE, fov="circle").image)
    assert not np.array_equal(a.image, generate_sample(0, 3, size=SIZE, fov="vignette").image)
    with pytest.raises(ValueError, match="fov"):
        generate_sample(0, 0, fov="square")
    with pytest.raises(ValueError, match="lesion"):
        generate_sample(0, 0, lesion="tiny")


@pytest.fixture(scope="module")
def vignettes() -> list[SynthSample]:
    return vignette_case(12, size=SIZE)


def test_vignette_option_gives_a_small_lesion_in_a_bright_disc_inside_a_wide_dark_brown_rim(vignettes):
    h, w = SIZE[1], SIZE[0]
    strip = w // 12                                         # the left and right edges: always in the rim
    yy, xx = np.mgrid[:h, :w]
    near_centre = np.hypot(yy - h / 2, xx - w / 2) < 0.3 * h
    lo, hi = VIGNETTE_LESION_FRACTION
    offsets = []
    for s in vignettes:
        assert s.optics == "lens" and s.pigment in {"tan", "brown", "dark"}
        assert lo <= s.lesion_fraction <= hi, s.lesion_fraction
        # the mask is the lesion only: one blob, none of it in the rim
        assert ndi.label(s.lesion)[1] == 1
        assert not s.lesion[:, :strip].any() and not s.lesion[:, -strip:].any()
        rgb = s.clean.astype(float)
        rim = np.concatenate([rgb[:, :strip].reshape(-1, 3), rgb[:, -strip:].reshape(-1, 3)])
        skin = rgb[near_centre & ~s.lesion]
        assert skin.mean() > 150                            # light skin
        assert rim.mean() < 0.25 * skin.mean()              # a wide dark rim ...
        corners = rgb.mean(axis=2)[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert np.median(corners) < 40                      # ... near black in the corners
        rb = lambda px: px[:, 0].mean() / px[:, 2].mean()   # noqa: E731
        assert rb(rim) > 1.4 * rb(skin)                     # ... and tinted brown
        lum = rgb.sum(axis=2)
        ring = cv2.dilate(s.lesion.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~s.lesion
        assert lum[s.lesion].mean() < lum[ring].mean() - 20  # the lesion is darker than the skin around it
        cy, cx = ndi.center_of_mass(s.lesion)
        offsets.append(np.hypot(cy - h / 2, cx - w / 2) / w)
    assert np.mean(np.array(offsets) > 0.03) >= 0.5          # usually off the centre
    assert sum(s.hair.any() for s in vignettes) >= len(vignettes) // 2


def test_vignette_case_is_the_first_images_of_a_vignette_set():
    case = vignette_case(3, seed=2, size=(96, 72))
    for i, s in enumerate(case):
        again = generate_sample(2, i, size=(96, 72), fov="vignette")
        np.testing.assert_array_equal(s.image, again.image)
        np.testing.assert_array_equal(s.lesion, again.lesion)
    assert not np.array_equal(case[0].image, vignette_case(1, seed=3, size=(96, 72))[0].image)
    with pytest.raises(ValueError, match="n must be"):
        vignette_case(0)


def test_synth_command_writes_the_vignette_set(tmp_path):
    from click.testing import CliRunner

    import cli

    result = CliRunner().invoke(cli.main, ["synth", "--out", str(tmp_path), "--n", "2", "--size", "96x72",
                                           "--fov", "vignette"])
    assert result.exit_code == 0, result.output
    mask = cv2.imread(str(tmp_path / "masks" / "SYN_0000001_segmentation.png"), cv2.IMREAD_GRAYSCALE) > 0
    np.testing.assert_array_equal(mask, generate_sample(0, 1, size=(96, 72), fov="vignette").lesion)
