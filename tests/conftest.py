"""Shared fixtures: where the real data lives, and small seeded synthetic inputs."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (CI guarantees it; a missing folder is an error, not a skip)."""
    if not (SHARED_DATA / "isic_sample").is_dir():
        raise FileNotFoundError(
            f"real-data tests need {SHARED_DATA}/isic_sample (see README: 'Real data for tests')"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def isic_sample(shared_data: Path) -> Path:
    return shared_data / "isic_sample"


@pytest.fixture(scope="session")
def isic2017_256(shared_data: Path) -> Path:
    return shared_data / "isic2017_256"


def _labelled(root: Path, n: int, *, mask_kind: str = "grey", first: int = 0) -> Path:
    """``root/images`` + ``root/masks``: ``n`` 64 x 48 images ``L<i>.png`` (``i`` from ``first``) with a dark
    rectangular lesion, each mask saved as ``mask_kind``: 'grey' (0/255), 'red' (red on black RGB), 'empty'."""
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(first, first + n):
        rng = np.random.default_rng(i)
        image = np.clip(rng.normal(170, 20, (48, 64, 3)), 0, 255).astype(np.uint8)
        lesion = np.zeros((48, 64), bool)
        lesion[8 + i % 5:30, 12:40 + i % 7] = True
        image[lesion] = (40, 60, 90)
        Image.fromarray(image).save(root / "images" / f"L{i:02d}.png")
        if mask_kind == "red":
            mask = np.zeros((48, 64, 3), np.uint8)
            mask[lesion] = (255, 0, 0)
        else:
            mask = lesion.astype(np.uint8) * (255 if mask_kind == "grey" else 0)
        Image.fromarray(mask).save(root / "masks" / f"L{i:02d}_segmentation.png")
    return root


@pytest.fixture(scope="session")
def make_labelled():
    """A small labelled folder maker (see :func:`_labelled`): ``make_labelled(root, n, mask_kind=, first=)``."""
    return _labelled


@pytest.fixture(scope="session")
def tiny_model_pt(tmp_path_factory) -> Path:
    """A tiny untrained ViT-Ti segmenter (patch 8, 32 px) saved as ``finetune`` saves one, with a predict scale of 1
    and no one-lesion clean-up: for tests of what happens around a model, not of what it predicts."""
    import torch

    from trainer.models.segmenter import build_seg_model, save_seg_model

    torch.manual_seed(0)
    model, info = build_seg_model("scratch", arch="vit_tiny_patch16_224", img_size=32, decoder_hidden=16, patch=8)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_seg_model(model, info, path, extra={"config": {"predict_scale": 1.0, "one_lesion": False}})
    return path
