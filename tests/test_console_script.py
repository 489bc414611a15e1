"""The ``edgedino`` console command (pyproject's ``[project.scripts]``) and ``python cli.py`` run the same click
group, and the install ships every package (``common``, ``pipeline``, ``trainer``)."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_edgedino_command_resolves_to_the_click_group(pyproject):
    target = pyproject["project"]["scripts"]["edgedino"]
    module_name, _, attr = target.partition(":")
    assert (module_name, attr) == ("cli", "main")
    assert module_name in pyproject["tool"]["setuptools"]["py-modules"]  # the module the command imports is shipped
    main = getattr(importlib.import_module(module_name), attr)
    result = CliRunner().invoke(main, ["--help"], prog_name="edgedino")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: edgedino [OPTIONS] COMMAND [ARGS]...")
    for command in ("synth", "pseudomasks", "inspect", "pretrain", "finetune", "predict", "evaluate", "table"):
        assert f"\n  {command} " in result.output, command


def test_every_package_is_installed(pyproject):
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(p.parent.name for p in REPO.glob("*/__init__.py"))
    assert packages == ["common", "pipeline", "trainer"]
    for package in packages:
        assert package in include and f"{package}.*" in include, package


def test_python_cli_py_still_works():
    run = subprocess.run([sys.executable, "cli.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Usage: cli.py [OPTIONS] COMMAND [ARGS]...") and "pseudomasks" in run.stdout
