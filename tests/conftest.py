"""Shared fixtures: where the real data lives, and small seeded synthetic inputs.

The real-data tests read ``../shared/data`` beside the repository. Without it they are skipped, and the run ends
with one line saying so and where the data goes; with ``EDGEDINO_REQUIRE_DATA=1`` (what ``.ci/run`` sets) its
absence is an error instead, so CI never passes without them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REQUIRE_DATA = "EDGEDINO_REQUIRE_DATA"  # "1": missing real data is an error, not a skip
_SKIPPED = pytest.StashKey[bool]()  # set when a test was skipped for want of the real data


def missing_data_line() -> str:
    """The one line that ends a run whose real-data tests were skipped."""
    return (f"real-data tests did not run: put the ISIC data in {SHARED_DATA} (isic_sample/, isic2017_256/; see "
            "README); CI (.ci/run) requires it")


@pytest.fixture(scope="session")
def shared_data(request: pytest.FixtureRequest) -> Path:
    """``../shared/data`` beside the repository; a test that needs it is skipped when it is missing (an error
    when ``EDGEDINO_REQUIRE_DATA=1``)."""
    if (SHARED_DATA / "isic_sample").is_dir():
        return SHARED_DATA
    reason = f"real-data tests need {SHARED_DATA}/isic_sample (see README)"
    if os.environ.get(REQUIRE_DATA) == "1":
        raise FileNotFoundError(f"{reason}; {REQUIRE_DATA}=1 makes them mandatory")
    request.config.stash[_SKIPPED] = True
    pytest.skip(reason)


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


@pytest.hookimpl(wrapper=True, tryfirst=True)  # around the terminal's own summary: this line comes last
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    result = yield
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if session.config.stash.get(_SKIPPED, False) and reporter is not None:
        reporter.write_line(missing_data_line(), yellow=True, bold=True)
    return result
