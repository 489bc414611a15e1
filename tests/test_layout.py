"""The package layout's rules, read from the source with ``ast`` (docs/ARCHITECTURE.md, "Who may import whom").

- ``pipeline`` (stage 1) never imports ``trainer`` (stage 2);
- inside ``trainer``, a folder imports only the folders below it: ``engine`` (plumbing) imports no other
  trainer folder; ``data`` and ``losses`` import only ``engine``; ``models`` imports ``engine`` and ``data``;
  the loops at the top of ``trainer`` may import every folder, and no folder imports a loop;
- no import circle, counting imports inside functions too (they hide circles, they do not remove them).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "pipeline", "trainer")
# trainer folder -> the trainer folders it may import (the loops at trainer/ top are "loops")
ALLOWED = {
    "engine": {"engine"},
    "data": {"engine", "data"},
    "losses": {"engine", "losses"},
    "models": {"engine", "data", "models"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``path`` imports anywhere in its body (``from pkg import mod`` included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative import: resolve against the package
            base = module_name(path).split(".")
            base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    found.discard(module_name(path))
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


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


def test_find_cycle_sees_a_circle_and_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_are_seen():
    # s3net.py imports its torch layers inside _make_net only (start-up time of walker-only workers)
    edges = imports_of(REPO / "pipeline" / "pseudomask" / "s3net.py", project_modules())
    assert {"common.s3net_layers", "pipeline.pseudomask.cleanup"} <= edges


def test_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_pipeline_never_imports_trainer():
    bad = {m: sorted(d for d in deps if d.startswith("trainer")) for m, deps in graph().items()
           if m.startswith("pipeline")}
    assert {m: d for m, d in bad.items() if d} == {}


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "trainer" and len(parts) > 1 and parts[1] in ALLOWED else None


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_trainer_folders_import_only_the_folders_below_them(folder):
    bad = []
    for m, deps in graph().items():
        if _folder(m) != folder:
            continue
        for d in deps:
            if d.startswith("trainer.") and _folder(d) not in ALLOWED[folder]:
                bad.append(f"{m} -> {d}")
    assert bad == []


def test_every_folder_of_the_layout_exists():
    for folder in ("trainer/data", "trainer/models", "trainer/losses", "trainer/engine", "pipeline/pseudomask"):
        assert (REPO / folder / "__init__.py").is_file(), folder
