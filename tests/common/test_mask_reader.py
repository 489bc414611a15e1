"""One mask reader for every command (``common.datasets.read_mask``): the formats annotation tools save are read
as the lesion they mark, or refused with the file named, never read as an empty mask; the data check, ``finetune``
and ``evaluate`` agree (round 3, item 2)."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from common.datasets import ImageReadError, read_mask
from trainer.eval.metrics import evaluate_folders

H, W = 40, 50


def lesion() -> np.ndarray:
    """``(40, 50) bool``: an off-centre rectangle of 20 x 20 = 400 px."""
    m = np.zeros((H, W), bool)
    m[10:30, 15:35] = True
    return m


def rgb(colour, background=(0, 0, 0)) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB: ``colour`` on the lesion, ``background`` elsewhere."""
    out = np.empty((H, W, 3), np.uint8)
    out[...] = background
    out[lesion()] = colour
    return out


def rgba(colour, alpha_lesion, alpha_background, background=(0, 0, 0)) -> np.ndarray:
    alpha = np.where(lesion(), alpha_lesion, alpha_background).astype(np.uint8)
    return np.dstack([rgb(colour, background), alpha])


def palette(colours: list[int]) -> Image.Image:
    im = Image.fromarray(lesion().astype(np.uint8), "P")
    im.putpalette(colours + [0] * (768 - len(colours)))
    return im


def antialiased() -> np.ndarray:
    """A 0/255 mask with one grey (128) row along its top edge, as smoothing leaves it."""
    m = lesion().astype(np.uint8) * 255
    m[9, 15:35] = 128
    return m


def jpeg_bytes(array: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# name -> what a file of that kind holds (a PIL image, an array for PIL, or raw bytes)
READ_AS_THE_LESION = {
    "grey 0/255": lambda: lesion().astype(np.uint8) * 255,
    "grey 0/1": lambda: lesion().astype(np.uint8),
    "1-bit": lambda: Image.fromarray(lesion()).convert("1"),
    "16-bit 0/65535": lambda: Image.fromarray(lesion().astype(np.uint16) * 65535),
    "16-bit 0/1": lambda: Image.fromarray(lesion().astype(np.uint16)),
    "red on black": lambda: rgb((255, 0, 0)),
    "blue on black": lambda: rgb((0, 0, 255)),
    "dark green on black": lambda: rgb((0, 90, 0)),
    "white RGB on black": lambda: rgb((255, 255, 255)),
    "red on black RGBA opaque": lambda: rgba((255, 0, 0), 255, 255),
    "red on transparent": lambda: rgba((255, 0, 0), 255, 0),
    "black on transparent": lambda: rgba((0, 0, 0), 255, 0),
    "grey + alpha": lambda: Image.fromarray(np.dstack([lesion().astype(np.uint8) * 255,
                                                       np.full((H, W), 255, np.uint8)]), "LA"),
    "palette red": lambda: palette([0, 0, 0, 255, 0, 0]),
    "palette white": lambda: palette([0, 0, 0, 255, 255, 255]),
}

REFUSED = {
    "two lesion colours": (lambda: np.where(np.arange(W)[None, :, None] < 25, rgb((255, 0, 0)), rgb((0, 255, 0))),
                           "2 colours"),
    "red JPEG noise": (lambda: jpeg_bytes(rgb((255, 0, 0)), 80), "colours besides its black background"),
    "grey JPEG noise": (lambda: jpeg_bytes(lesion().astype(np.uint8) * 255, 75), "not binary"),
    "anti-aliased edge": (lambda: antialiased(), "not binary (values 0, 128, 255)"),
    "partly transparent": (lambda: rgba((255, 0, 0), 255, 100), "partly transparent"),
    "one colour everywhere": (lambda: np.full((H, W, 3), (200, 30, 30), np.uint8), "without a black background"),
    "16-bit 0/1000": (lambda: Image.fromarray(lesion().astype(np.uint16) * 1000), "16-bit 0/65535"),
    "red on white": (lambda: rgb((255, 0, 0), background=(255, 255, 255)), "colours besides its black background"),
}


def write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, Image.Image):
        content.save(path)
    else:
        Image.fromarray(content).save(path)
    return path


@pytest.mark.parametrize("kind", sorted(READ_AS_THE_LESION))
def test_masks_of_one_lesion_colour_are_read_as_that_lesion(tmp_path, kind):
    mask = read_mask(write(tmp_path / "m_segmentation.png", READ_AS_THE_LESION[kind]()))
    assert mask.dtype == bool and mask.shape == (H, W)
    np.testing.assert_array_equal(mask, lesion())  # every pixel: not empty, not inverted, not a stray channel


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_ambiguous_masks_are_refused_naming_the_file(tmp_path, kind):
    make, words = REFUSED[kind]
    path = write(tmp_path / "m_segmentation.png", make())
    with pytest.raises(ImageReadError) as err:
        read_mask(path)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["black RGB", "transparent RGBA", "grey 0"])
def test_an_empty_mask_stays_empty(tmp_path, kind):
    content = {"black RGB": np.zeros((H, W, 3), np.uint8), "transparent RGBA": np.zeros((H, W, 4), np.uint8),
               "grey 0": np.zeros((H, W), np.uint8)}[kind]
    assert not read_mask(write(tmp_path / "m.png", content)).any()


def test_the_evaluate_cut_applies_to_grey_values_only(tmp_path):
    grey = np.where(lesion(), 200, 60).astype(np.uint8)  # a probability-like grey mask: ISIC's > 128 rule
    np.testing.assert_array_equal(read_mask(write(tmp_path / "g.png", grey), soft="cut"), lesion())
    with pytest.raises(ImageReadError, match="not binary"):
        read_mask(tmp_path / "g.png")
    two = REFUSED["two lesion colours"][0]()
    with pytest.raises(ImageReadError, match="2 colours"):  # colour stays strict: no cut guesses a lesion colour
        read_mask(write(tmp_path / "c.png", two), soft="cut")


@pytest.mark.parametrize("kind", ["red on black", "palette red", "red on transparent", "two lesion colours"])
def test_evaluate_and_training_read_expert_masks_alike(tmp_path, kind):
    """evaluate scores a perfect prediction of a colour mask as 1.0 exactly when training reads the lesion; when
    training refuses the mask, evaluate refuses it too, naming it."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir(), pred.mkdir()
    make = READ_AS_THE_LESION.get(kind) or REFUSED[kind][0]
    path = write(truth / "X_segmentation.png", make())
    cv2.imwrite(str(pred / "X_segmentation.png"), lesion().astype(np.uint8) * 255)
    if kind in READ_AS_THE_LESION:
        np.testing.assert_array_equal(read_mask(path), lesion())
        result = evaluate_folders(pred, truth)
        assert result.means["jaccard"] == 1.0 and result.means["sensitivity"] == 1.0
    else:
        with pytest.raises(ImageReadError, match=str(path)):
            read_mask(path)
        with pytest.raises(ValueError, match=str(path)):
            evaluate_folders(pred, truth)


def test_evaluate_refuses_an_expert_mask_training_refuses_and_names_every_problem_on_one_line(tmp_path):
    """A grey 0/128 expert mask would be all background under the scorer's > 128 cut (a perfect prediction scored
    0): evaluate refuses it as training does, on one line with the other problems."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir(), pred.mkdir()
    cv2.imwrite(str(truth / "A_segmentation.png"), lesion().astype(np.uint8) * 128)
    cv2.imwrite(str(truth / "B_segmentation.png"), lesion().astype(np.uint8) * 255)
    for name in ("A", "B"):
        cv2.imwrite(str(pred / f"{name}_segmentation.png"), lesion().astype(np.uint8) * 255)
    with pytest.raises(ImageReadError, match=r"A_segmentation.png: mask is not binary \(values 0, 128\)"):
        evaluate_folders(pred, truth)
    (pred / "A_segmentation.png").unlink()
    cv2.imwrite(str(truth / "A_segmentation.png"), lesion().astype(np.uint8) * 255)
    cv2.imwrite(str(truth / "C_segmentation.png"), lesion().astype(np.uint8) * 255)
    cv2.imwrite(str(pred / "D_segmentation.png"), lesion().astype(np.uint8) * 255)
    with pytest.raises(ValueError) as err:
        evaluate_folders(pred, truth)
    assert "\n" not in str(err.value) and "no prediction for 2 id(s): A, C" in str(err.value)
    assert "1 prediction(s) without ground truth" in str(err.value)
