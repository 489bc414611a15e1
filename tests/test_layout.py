"""The package layout's rules, read from the source with ``ast`` (docs/ARCHITECTURE.md, "Who may import whom").

- ``common`` (helpers both stages use) imports neither ``pipeline`` nor ``trainer``;
- ``pipeline`` (stage 1) never imports ``trainer`` (stage 2);
- ``trainer`` imports from ``pipeline`` only stage 1's output and method: :data:`TRAINER_MAY_IMPORT_FROM_PIPELINE`;
- inside ``trainer``, a folder imports only the folders below it (:data:`ALLOWED`): ``engine`` (plumbing) imports
  no other trainer folder; ``data`` and ``losses`` import only ``engine``; ``models`` imports ``engine`` and
  ``data``; ``inference`` also ``losses`` and ``models``; ``eval`` also ``inference``; ``train`` also ``eval``;
  the modules at the top of ``trainer`` (the comparison table) may import every folder, and no folder imports them;
- no module imports a private (underscore) name from another trainer folder or another package, nor reaches one
  through an imported module (``module._name``): what a folder offers the others is its public names;
- no import circle, counting imports inside functions too (they hide circles, they do not remove them).

Every rule is a function of a source tree, so the tests also run each rule on a small tree built to break it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "pipeline", "trainer")
# trainer folder -> the trainer folders it may import (modules at trainer/ top, e.g. table.py, are "top")
ALLOWED = {
    "engine": {"engine"},
    "data": {"engine", "data"},
    "losses": {"engine", "losses"},
    "models": {"engine", "data", "models"},
    "inference": {"engine", "data", "losses", "models", "inference"},
    "eval": {"engine", "data", "losses", "models", "inference", "eval"},
    "train": {"engine", "data", "losses", "models", "inference", "eval", "train"},
}
# what the trainer may take from stage 1: its output (shards, the run that makes them, the exported masks) and
# its method (the per-image pseudo-mask code); module -> the names allowed from it (None: any)
TRAINER_MAY_IMPORT_FROM_PIPELINE = {
    "pipeline.shards": None,
    "pipeline.run": None,
    "pipeline.export": {"export_masks"},
    "pipeline.pseudomask": None,  # and every module under it
}


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = REPO) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def _resolve(node: ast.ImportFrom, path: Path, root: Path) -> str:
    """The absolute module of a ``from ... import`` (relative imports resolved against the package)."""
    if node.level == 0:
        return node.module or ""
    base = module_name(path, root).split(".")
    base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, modules: dict[str, Path], root: Path = REPO) -> set[str]:
    """The project modules that ``path`` imports anywhere in its body (``from pkg import mod`` included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node, path, root)
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    found.discard(module_name(path, root))
    return found


def imported_names(path: Path, modules: dict[str, Path], root: Path = REPO) -> list[tuple[str, str]]:
    """``(module, name)`` for every name ``path`` takes from a project module: ``from module import name`` (when
    ``name`` is not itself a module) and ``alias.name`` where ``alias`` is an imported project module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules and a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node, path, root)
            for a in node.names:
                if f"{mod}.{a.name}" in modules:
                    aliases[a.asname or a.name] = f"{mod}.{a.name}"
                elif mod in modules:
                    found.append((mod, a.name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            found.append((aliases[node.value.id], node.attr))
    return found


def graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(path, modules, root) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (c := visit(n)):
            return c
    return None


def _package(module: str) -> str:
    return module.split(".")[0]


def _folder(module: str) -> str | None:
    """The trainer folder of a module (``engine``, ..., ``train``); None outside ``trainer`` and at its top."""
    parts = module.split(".")
    return parts[1] if parts[0] == "trainer" and len(parts) > 1 and parts[1] in ALLOWED else None


def _room(module: str) -> tuple[str, str | None]:
    """Where a module lives, for the private-name rule: its package and, inside ``trainer``, its folder."""
    return _package(module), _folder(module)


def stage_violations(edges: dict[str, set[str]], package: str) -> list[str]:
    """The imports of ``package`` that cross a stage boundary: ``common`` importing a stage, ``pipeline`` importing
    ``trainer``."""
    forbidden = {"common": ("pipeline", "trainer"), "pipeline": ("trainer",)}[package]
    return sorted(f"{m} -> {d}" for m, deps in edges.items() for d in deps
                  if _package(m) == package and _package(d) in forbidden)


def folder_violations(edges: dict[str, set[str]], folder: str) -> list[str]:
    """``folder``'s imports of trainer folders it may not import (a folder above it, or a module at the top)."""
    return sorted(f"{m} -> {d}" for m, deps in edges.items() if _folder(m) == folder for d in deps
                  if _package(d) == "trainer" and _folder(d) not in ALLOWED[folder])


def _pipeline_module_allowed(module: str) -> bool:
    return module in TRAINER_MAY_IMPORT_FROM_PIPELINE or module.startswith("pipeline.pseudomask.")


def pipeline_violations(root: Path = REPO) -> list[str]:
    """What ``trainer`` takes from ``pipeline`` beyond stage 1's output and method."""
    modules = project_modules(root)
    bad = []
    for m, path in modules.items():
        if _package(m) != "trainer":
            continue
        bad += [f"{m} -> {d}" for d in imports_of(path, modules, root)
                if _package(d) == "pipeline" and not _pipeline_module_allowed(d)]
        for mod, name in imported_names(path, modules, root):
            allowed = TRAINER_MAY_IMPORT_FROM_PIPELINE.get(mod)
            if allowed is not None and name not in allowed:
                bad.append(f"{m} -> {mod}.{name}")
    return sorted(bad)


def private_violations(root: Path = REPO) -> list[str]:
    """A private (underscore) name taken from a module in another package or another trainer folder."""
    modules = project_modules(root)
    bad = []
    for m, path in modules.items():
        for mod, name in imported_names(path, modules, root):
            if name.startswith("_") and not name.startswith("__") and _room(mod) != _room(m):
                bad.append(f"{m} -> {mod}.{name}")
    return sorted(bad)


# --- the rules on this repository ---------------------------------------------------------------------------

def test_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_pipeline_never_imports_trainer():
    assert stage_violations(graph(), "pipeline") == []


def test_common_imports_neither_stage():
    assert stage_violations(graph(), "common") == []


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_trainer_folders_import_only_the_folders_below_them(folder):
    assert folder_violations(graph(), folder) == []


def test_trainer_takes_only_stage_1s_output_and_method_from_pipeline():
    assert pipeline_violations() == []


def test_no_private_name_crosses_a_folder():
    assert private_violations() == []


def test_every_folder_of_the_layout_exists():
    for folder in ("common", "pipeline/pseudomask", "trainer/data", "trainer/models", "trainer/losses",
                   "trainer/engine", "trainer/inference", "trainer/eval", "trainer/train"):
        assert (REPO / folder / "__init__.py").is_file(), folder
    folders = {p.parent.name for p in (REPO / "trainer").glob("*/__init__.py")}
    assert folders == set(ALLOWED), "a trainer folder without a rule in ALLOWED (or a rule without its folder)"


def test_imports_inside_functions_are_seen():
    # s3net.py imports its torch layers inside _make_net only (start-up time of walker-only workers)
    edges = imports_of(REPO / "pipeline" / "pseudomask" / "s3net.py", project_modules())
    assert {"common.s3net_layers", "pipeline.pseudomask.cleanup"} <= edges


# --- the rules fire on trees built to break them -------------------------------------------------------------

def test_find_cycle_sees_a_circle_and_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def _tree(root: Path, files: dict[str, str]) -> Path:
    for pkg in PACKAGES:
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").write_text("")
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.name in ALLOWED or path.parent.name == "pseudomask":
            (path.parent / "__init__.py").touch()
        path.write_text(text)
    return root


GOOD = {
    "common/atomic.py": "import os\n",
    "pipeline/shards.py": "from common.atomic import os\n",
    "pipeline/export.py": "def export_masks(): ...\ndef _encode(): ...\n",
    "pipeline/guard.py": "",
    "pipeline/pseudomask/cleanup.py": "def one_lesion(): ...\n",
    "trainer/engine/checkpoint.py": "from common import atomic\n",
    "trainer/models/segmenter.py": "from trainer.engine.checkpoint import atomic\n",
    "trainer/inference/segment.py": "from trainer.models import segmenter\ndef _test_input(): ...\n"
                                    "def predict_image(): _test_input()\n",
    "trainer/eval/scoring.py": "from trainer.inference.segment import predict_image\n"
                               "from pipeline.pseudomask import cleanup\nfrom pipeline.shards import os\n",
    "trainer/train/finetune.py": "from trainer.eval import scoring\nfrom trainer.inference import segment\n"
                                 "segment.predict_image()\n",
    "trainer/table.py": "from trainer.train import finetune\nfrom pipeline.export import export_masks\n",
}


def test_the_rules_pass_a_tree_that_keeps_them(tmp_path):
    root = _tree(tmp_path, GOOD)
    edges = graph(root)
    assert "trainer.inference.segment" in edges["trainer.train.finetune"]  # the tree is read at all
    assert find_cycle(edges) is None
    assert stage_violations(edges, "pipeline") == [] and stage_violations(edges, "common") == []
    assert all(folder_violations(edges, folder) == [] for folder in ALLOWED)
    assert pipeline_violations(root) == [] and private_violations(root) == []


@pytest.mark.parametrize("name, text, rule, expected", [
    ("pipeline/run.py", "def f():\n    from trainer.table import x\n", "stage", "pipeline.run -> trainer.table"),
    ("common/guard.py", "from pipeline import shards\n", "stage", "common.guard -> pipeline.shards"),
    ("trainer/inference/predict.py", "from trainer.train.finetune import MODEL\n", "folder",
     "trainer.inference.predict -> trainer.train.finetune"),
    ("trainer/eval/pictures.py", "import trainer.table\n", "folder", "trainer.eval.pictures -> trainer.table"),
    ("trainer/models/unet.py", "from trainer.inference import segment\n", "folder",
     "trainer.models.unet -> trainer.inference.segment"),
    ("trainer/train/objective.py", "from trainer.inference.segment import _test_input\n", "private",
     "trainer.train.objective -> trainer.inference.segment._test_input"),
    ("trainer/train/unet_pseudo.py", "from trainer.inference import segment\nsegment._test_input()\n", "private",
     "trainer.train.unet_pseudo -> trainer.inference.segment._test_input"),
    ("trainer/table.py", "import pipeline.export as export\nexport._encode()\n", "private",
     "trainer.table -> pipeline.export._encode"),
    ("trainer/eval/metrics.py", "from pipeline.guard import x\n", "pipeline", "trainer.eval.metrics -> pipeline.guard"),
    ("trainer/inference/masks.py", "from pipeline.export import _encode\n", "pipeline",
     "trainer.inference.masks -> pipeline.export._encode"),
])
def test_each_rule_fires_on_a_tree_that_breaks_it(tmp_path, name, text, rule, expected):
    root = _tree(tmp_path, {**GOOD, name: text})
    package, folder = expected.split(".")[:2]
    found = {"stage": lambda: stage_violations(graph(root), package),
             "folder": lambda: folder_violations(graph(root), folder),
             "private": lambda: private_violations(root), "pipeline": lambda: pipeline_violations(root)}[rule]()
    assert expected in found


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    root = _tree(tmp_path, {**GOOD, "trainer/engine/checkpoint.py": "def f():\n    from trainer.models import "
                                                                    "segmenter\n"})
    assert find_cycle(graph(root)) == ["trainer.engine.checkpoint", "trainer.models.segmenter",
                                       "trainer.engine.checkpoint"]
