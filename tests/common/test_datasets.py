"""The dataset layer: layouts, up-front checks that name every problem, and robust image reading."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from common import datasets
from common.datasets import DatasetError, ImageReadError, check_dataset, open_dataset, read_image, read_mask


def _img(h=64, w=80, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def _mask(h=64, w=80) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[10:40, 20:50] = 255
    return m


def _plain(root: Path, ids, with_masks=True) -> Path:
    for i in ids:
        _write(root / "images" / f"{i}.jpg", _img(seed=hash(i) % 100))
        if with_masks:
            _write(root / "masks" / f"{i}_segmentation.png", _mask())
    return root


def test_isic_sample_has_99_pairs(isic_sample):
    ds = open_dataset(isic_sample, require_masks=True)
    assert len(ds) == 99 and len(ds.labelled) == 99
    assert all(s.mask.name == f"{s.id}_segmentation.png" for s in ds.samples)
    assert check_dataset(ds) == []


def test_labelled_plus_unlabelled_folders(isic2017_256):
    ds = open_dataset([isic2017_256, isic2017_256 / "unlabeled"])
    assert len(ds.labelled) == 1962
    assert len(ds) == 1962 + 734
    assert ds.ids == sorted(ds.ids)


def test_isic2018_layout_gives_splits(tmp_path):
    for split, ids in (("Training", ["ISIC_1", "ISIC_2"]), ("Validation", ["ISIC_3"]), ("Test", ["ISIC_4"])):
        for i in ids:
            _write(tmp_path / f"ISIC2018_Task1-2_{split}_Input" / f"{i}.jpg", _img())
            _write(tmp_path / f"ISIC2018_Task1_{split}_GroundTruth" / f"{i}_segmentation.png", _mask())
    ds = open_dataset(tmp_path, require_masks=True)
    assert [s.id for s in ds.split("train")] == ["ISIC_1", "ISIC_2"]
    assert [s.id for s in ds.split("validation")] == ["ISIC_3"]
    assert [s.id for s in ds.split("test")] == ["ISIC_4"]
    assert datasets.mask_path_for(ds.samples[0].image) == ds.samples[0].mask


def test_broken_folder_names_every_problem(tmp_path):
    root = _plain(tmp_path / "d", ["a", "b", "c", "d", "e"])
    (root / "masks" / "b_segmentation.png").unlink()                       # image without a mask
    _write(root / "masks" / "c_segmentation.png", _mask(32, 32))            # size mismatch
    (root / "images" / "d.jpg").write_bytes(b"")                            # zero-byte image
    grey = _mask()
    grey[0, :5] = 128
    _write(root / "masks" / "e_segmentation.png", grey)                     # non-binary mask
    _write(root / "masks" / "ghost_segmentation.png", _mask())              # mask without an image
    (root / "images" / "dir.jpg").mkdir()                                   # a directory named like an image

    with pytest.raises(DatasetError) as err:
        open_dataset(root, require_masks=True)
    assert "b.jpg: image without a mask" in str(err.value)

    ds = open_dataset(root)
    text = "\n".join(str(p) for p in check_dataset(ds))
    assert "ghost_segmentation.png: mask without an image" in text
    assert "c_segmentation.png: mask size 32x32 differs from image size 80x64" in text
    assert "d.jpg: empty file (0 bytes)" in text
    assert "e_segmentation.png: mask is not binary (values 0, 128, 255)" in text
    assert "dir.jpg: is a directory" in text
    assert "a.jpg" not in text


def test_missing_and_empty_folders_are_fatal(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as err:
        open_dataset([tmp_path / "nope", tmp_path / "empty"])
    msg = str(err.value)
    assert "2 problem(s)" in msg and "nope: folder does not exist" in msg and "empty: no images" in msg


def test_duplicate_ids_across_folders_are_reported(tmp_path):
    a = _plain(tmp_path / "a", ["x", "y"])
    b = _plain(tmp_path / "b", ["y", "z"], with_masks=False)
    ds = open_dataset([a, b])
    assert ds.ids == ["x", "y", "z"]
    assert ds.by_id()["y"].image.parent.parent == a
    assert any("duplicate id 'y'" in p.reason for p in ds.problems)


@pytest.mark.parametrize("case, message", [
    ("grey", "grey-scale image"),
    ("tiny", "image too small"),
    ("truncated", "truncated"),
    ("truncated_smooth", "truncated"),
    ("garbage", "not a readable image"),
])
def test_read_image_rejects_with_reason(tmp_path, case, message):
    path = tmp_path / ("x.png" if case == "grey" else "x.jpg")
    if case == "grey":
        _write(path, _img()[:, :, 0])
    elif case == "tiny":
        _write(path, _img(20, 40))
    elif case.startswith("truncated"):
        image = np.full((200, 200, 3), 90, np.uint8) if case.endswith("smooth") else _img(200, 200)
        full = cv2.imencode(".jpg", image)[1].tobytes()
        path.write_bytes(full[: len(full) // 2])
    else:
        path.write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(ImageReadError, match=message) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_read_image_converts_rgba_and_16_bit(tmp_path):
    rgb = _img()
    rgba = np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 7, np.uint8)])
    out = read_image(_write(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(out, rgb)
    deep = rgb[:, :, ::-1].astype(np.uint16) * 257
    out16 = read_image(_write(tmp_path / "b.png", deep))
    assert out16.dtype == np.uint8
    np.testing.assert_array_equal(out16, rgb)


def test_large_jpeg_is_decoded_reduced(tmp_path):
    big = np.full((3000, 4000, 3), 120, np.uint8)
    path = _write(tmp_path / "big.jpg", big)
    assert datasets.image_size(path) == (3000, 4000)
    small = read_image(path, min_long_side=1000)
    assert small.shape == (750, 1000, 3)
    assert read_image(path).shape == (3000, 4000, 3)


def test_read_mask_accepts_0_1_and_0_255(tmp_path):
    m = _mask()
    np.testing.assert_array_equal(read_mask(_write(tmp_path / "a.png", m)), m > 0)
    np.testing.assert_array_equal(read_mask(_write(tmp_path / "b.png", (m > 0).astype(np.uint8))), m > 0)


def test_a_partly_labelled_folder_logs_a_few_images_without_a_mask_and_counts_the_rest(tmp_path, caplog):
    root = _plain(tmp_path / "d", [f"u{k:02d}" for k in range(10)], with_masks=False)
    _write(root / "masks" / "u00_segmentation.png", _mask())          # one labelled image of ten
    with caplog.at_level("WARNING", logger="common.datasets"):
        dataset = open_dataset(root)
    assert len(dataset.labelled) == 1 and len(dataset.problems) == 9  # every problem kept in the dataset
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == datasets.SHOWN_PER_KIND + 1
    assert all("image without a mask" in line for line in lines)
    assert lines[-1].startswith(f"... and {9 - datasets.SHOWN_PER_KIND} more: image without a mask")
