"""The synthetic dermoscopy generator: determinism, ground truth that means what it says, realistic spread."""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.synth import contact_sheet, generate_sample, write_synthetic_dataset

SIZE = (256, 192)


def test_same_seed_and_index_give_the_same_arrays():
    a, b = generate_sample(3, 7, size=SIZE), generate_sample(3, 7, size=SIZE)
    for name in ("image", "clean", "lesion", "hair"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, generate_sample(4, 7, size=SIZE).image)
    assert not np.array_equal(a.image, generate_sample(3, 8, size=SIZE).image)


def test_spread_of_lesions_hair_and_optics():
    samples = [generate_sample(0, i, size=SIZE) for i in range(40)]
    fractions = np.array([s.lesion_fraction for s in samples])
    assert fractions.min() < 0.08 and fractions.max() > 0.35 and ((fractions > 0.01) & (fractions < 0.75)).all()
    assert np.mean([s.hair.any() for s in samples]) > 0.6
    assert any(s.n_light_hairs for s in samples)
    assert {s.optics for s in samples} == {"none", "vignette", "frame"}
    touching = [s.lesion[0].any() or s.lesion[-1].any() or s.lesion[:, 0].any() or s.lesion[:, -1].any()
                for s in samples]
    assert 0 < sum(touching) < len(samples)


def test_ground_truth_matches_the_pixels():
    for i in range(6):
        s = generate_sample(1, i, size=SIZE)
        assert s.lesion.dtype == bool and s.hair.dtype == bool
        diff = np.abs(s.image.astype(int) - s.clean.astype(int)).max(axis=2)
        if s.hair.any():
            assert diff[s.hair].mean() > 25                        # hair pixels really differ from clean
        assert np.percentile(diff[~s.hair], 99) < 25             # elsewhere the image is the clean image
        inside = s.clean[s.lesion].mean(axis=0).sum()
        outside = s.clean[~s.lesion].mean(axis=0).sum()
        assert inside < outside - 30                              # the lesion is darker than the skin


def test_written_dataset_is_byte_identical_on_rerun(tmp_path):
    ids = write_synthetic_dataset(tmp_path / "a", 4, seed=5, size=SIZE, progress=False)
    write_synthetic_dataset(tmp_path / "b", 4, seed=5, size=SIZE, jobs=2, progress=False)
    assert ids == [f"SYN_{i:07d}" for i in range(4)]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 16
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    mask = cv2.imread(str(tmp_path / "a" / "masks" / "SYN_0000000_segmentation.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (192, 256) and set(np.unique(mask)) <= {0, 255}


def test_contact_sheet_is_written(tmp_path):
    path = contact_sheet([generate_sample(0, i, size=SIZE) for i in range(3)], tmp_path / "sheet.png")
    sheet = cv2.imread(str(path))
    assert sheet.shape[0] > 300 and sheet.std() > 20
