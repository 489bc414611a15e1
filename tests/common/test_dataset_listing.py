"""What a data folder holds that the layouts do not read is named, never dropped without a word; an id that would
make an unprintable file name is left out by name; a data-check error is one line (round 3, item 6)."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from common.datasets import DatasetError, Problem, open_dataset


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((48, 64, 3), 140, np.uint8))
    return path


@pytest.mark.parametrize("layout", ["flat", "images/"])
def test_images_in_sub_folders_are_named_as_not_read(tmp_path, layout, caplog):
    root = tmp_path / "data"
    top = root if layout == "flat" else root / "images"
    for name in ("a.jpg", "b.png"):
        image(top / name)
    image(top / "more" / "c.jpg")
    image(top / "more" / "deeper" / "d.jpg")
    image(top / ".cache" / "e.jpg")                          # hidden: not data
    (top / "more" / "c_segmentation.png").write_bytes(b"")   # an expert mask is not an image to read
    with caplog.at_level(logging.WARNING, logger="common.datasets"):
        dataset = open_dataset(root)
    assert dataset.ids == ["a", "b"]
    nested = [p for p in dataset.problems if "not read" in p.reason]
    assert len(nested) == 1 and nested[0].path == top / "more" and not nested[0].fatal
    assert nested[0].reason.startswith("2 image(s) in this sub-folder are not read (e.g. c.jpg)")
    assert f"{top / 'more'}: 2 image(s) in this sub-folder are not read" in caplog.text


def test_a_folder_beside_the_layouts_own_is_named_unless_it_holds_companions(tmp_path):
    """isic2017_256 keeps unlabeled/ beside images/ and masks/: its images are not read, and that is said; a
    synthetic set's hair/ and clean/ hold companions of the images read (same ids), which is not news."""
    root = tmp_path / "data"
    for i in range(3):
        image(root / "images" / f"ISIC_{i:07d}.jpg")
        image(root / "hair" / f"ISIC_{i:07d}_hair.png")
        image(root / "clean" / f"ISIC_{i:07d}.png")
    image(root / "unlabeled" / "ISIC_0009999.jpg")
    image(root / "unlabeled" / "ISIC_0000001.jpg")  # a companion of an image read: not counted
    problems = [str(p) for p in open_dataset(root).problems]
    assert problems == [f"{root / 'unlabeled'}: 1 image(s) in this sub-folder are not read (e.g. ISIC_0009999.jpg): "
                        f"only images/ of {root} are; pass the sub-folder as another data folder to use them"]


@pytest.mark.parametrize("name", ["evil\x1b[31mx", "two\nlines", "tab\tbed", "bell\x07"])
def test_an_image_whose_name_is_not_printable_is_left_out_by_name(tmp_path, name, caplog):
    root = tmp_path / "data"
    image(root / "ok.jpg")
    image(root / f"{name}.jpg")
    with caplog.at_level(logging.WARNING, logger="common.datasets"):
        dataset = open_dataset(root)
    assert dataset.ids == ["ok"]
    assert f"{root}: file name {name + '.jpg'!r} holds a control or unprintable character; skipped" in caplog.text
    assert "\x1b" not in caplog.text and "\x07" not in caplog.text


def test_a_dataset_error_is_one_line_naming_every_problem():
    one = DatasetError([Problem(Path("/d/a.png"), "empty file (0 bytes)")])
    assert str(one) == "/d/a.png: empty file (0 bytes)"
    many = DatasetError([Problem(Path(f"/d/{i}.png"), "empty file (0 bytes)") for i in range(12)])
    text = str(many)
    assert "\n" not in text and text.startswith("12 problem(s) with the data: /d/0.png: empty file (0 bytes); ")
    assert "/d/9.png" in text and "/d/10.png" not in text and text.endswith("; and 2 more")
    assert len(many.problems) == 12


def test_a_data_check_error_is_one_line_in_the_cli(tmp_path):
    root = tmp_path / "data"
    (root / "masks").mkdir(parents=True)
    for i in range(6):
        image(root / "images" / f"I{i}.png")
        mask = np.zeros((48, 64), np.uint8)
        mask[10:30, 10:40] = 255
        cv2.imwrite(str(root / "masks" / f"I{i}_segmentation.png"), mask)
    (root / "masks" / "I0_segmentation.png").write_bytes(b"junk")
    result = CliRunner().invoke(cli.main, ["finetune", "--data", str(root), "--frac", "1", "--init", "scratch",
                                           "--device", "cpu", "--no-progress", "--out", str(tmp_path / "ft")])
    lines = [ln for ln in result.output.strip().splitlines() if not ln.startswith(("INFO", "WARNING"))]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(f"edgedino: error: {root / 'masks' / 'I0_segmentation.png'}: not a readable image")
