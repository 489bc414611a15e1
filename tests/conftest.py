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


@pytest.hookimpl(wrapper=True, tryfirst=True)  # around the terminal's own summary: this line comes last
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    result = yield
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if session.config.stash.get(_SKIPPED, False) and reporter is not None:
        reporter.write_line(missing_data_line(), yellow=True, bold=True)
    return result
