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
