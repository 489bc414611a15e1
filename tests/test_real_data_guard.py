"""Without ``../shared/data`` the real-data tests are skipped and the run ends with one line saying where the data
goes; with ``EDGEDINO_REQUIRE_DATA=1`` (``.ci/run``) the missing data is an error. Checked by running pytest on a
tiny copy of the test tree (this suite's ``conftest.py``, one real-data test, one synthetic one) in a subprocess."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TINY_SUITE = '''
import numpy as np

from trainer.eval.metrics import binary_scores


def test_synthetic():  # a data-free test of the package itself: half a lesion found is Jaccard 0.5
    truth = np.zeros((4, 4), bool)
    truth[:2] = True
    assert binary_scores(truth & (np.arange(4) < 2), truth)["jaccard"] == 0.5


def test_real(isic_sample):
    assert isic_sample.name == "isic_sample"
'''


@pytest.fixture()
def tiny_repo(tmp_path) -> Path:
    """``tmp_path/repo`` with this suite's conftest; ``tmp_path/shared/data`` (the data's place) is left empty."""
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", tests / "conftest.py")
    (tests / "test_tiny.py").write_text(TINY_SUITE)
    return tmp_path / "repo"


def _pytest(repo: Path, *, require: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGEDINO_REQUIRE_DATA"}
    if require:
        env["EDGEDINO_REQUIRE_DATA"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "tests"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=120)


def test_missing_data_skips_and_says_so_on_the_last_line(tiny_repo):
    run = _pytest(tiny_repo, require=False)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    where = tiny_repo.parent / "shared" / "data"
    assert lines[-1] == (f"real-data tests did not run: put the ISIC data in {where} (isic_sample/, isic2017_256/; "
                         "see README); CI (.ci/run) requires it")
    assert "1 passed, 1 skipped" in run.stdout
    assert sum("real-data tests did not run" in line for line in lines) == 1


def test_missing_data_is_an_error_when_required(tiny_repo):
    run = _pytest(tiny_repo, require=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 passed, 1 error" in run.stdout and "EDGEDINO_REQUIRE_DATA=1 makes them mandatory" in run.stdout
    assert "real-data tests did not run" not in run.stdout


def test_present_data_runs_every_test_and_says_nothing(tiny_repo):
    (tiny_repo.parent / "shared" / "data" / "isic_sample").mkdir(parents=True)
    for require in (False, True):
        run = _pytest(tiny_repo, require=require)
        assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout + run.stderr
        assert "real-data tests did not run" not in run.stdout


def test_ci_requires_the_data():
    ci = (TESTS.parent / ".ci" / "run").read_text()
    assert "export EDGEDINO_REQUIRE_DATA=1" in ci and "isic_sample" in ci
