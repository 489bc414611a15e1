"""The documentation holds together inside the repository: a clone has no ``../shared``, so every pointer the
code and the docs make must land on a file, a section or a link that the repository itself carries.

- README.md is a user's guide: at most :data:`README_MAX_LINES` lines, ``make demo`` and ``make test`` in its first
  code block, no dates and no issue numbers (measurements and histories live in docs/);
- every ``docs/NAME.md`` named in a ``.py``, ``.md`` file or the Makefile exists; code names docs by their path
  (``docs/METHOD.md``), not by a bare file name;
- every numbered section pointer (``docs/METHOD.md, section 3.4``, ``METHOD.md section 7``, ``sections 3.1 and
  3.2``; in METHOD.md itself a plain ``section 6.2``) names a numbered heading of that document, and every titled
  one (``docs/ARCHITECTURE.md, "Who may import whom"``) a heading that holds the title;
- every relative link and picture of README.md and docs/*.md resolves.

Each check is a function of text, so the last tests also run each one on a string built to break it (this file,
whose strings are about pointers, is left out of the scan).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README_MAX_LINES = 250
SKIP_DIRS = {".git", ".venv", "venv", "artifacts", "build", "dist", "__pycache__", ".pytest_cache"}

DOC_PATH = re.compile(r"(?<![\w/.-])docs/([A-Za-z0-9_-]+\.md)\b")
BARE_DOC = re.compile(r"(?<![\w/.-])([A-Z][A-Z0-9_]*\.md)\b")
SECTIONS = re.compile(r"(?<![\w/.-])((?:docs/)?[A-Z][A-Z0-9_]*\.md),?\s+(sections?\s+\d+(?:\.\d+)*"
                      r"(?:\s*(?:,|and|or|to|-)\s*(?:sections?\s+)?\d+(?:\.\d+)*)*)")
OWN_SECTIONS = re.compile(r"(?<![\w/.-])(?<!\.md )(?<!\.md, )\bsections?\s+(\d+(?:\.\d+)*"
                          r"(?:\s*(?:,|and|or|to|-)\s*\d+(?:\.\d+)*)*)")
TITLED = re.compile(r"(?<![\w/.-])((?:docs/)?[A-Z][A-Z0-9_]*\.md),?\s+(?:section\s+)?\"([^\"]{2,100})\"")
NUMBER = re.compile(r"\d+(?:\.\d+)*")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
NUMBERED_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
ISSUE = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def repo_files(*suffixes: str, names: tuple[str, ...] = ()) -> list[Path]:
    """The repository's files ending in ``suffixes`` (or named ``names``), outside virtual environments, build
    outputs and hidden folders."""
    found = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        found += [Path(folder) / f for f in sorted(files) if f.endswith(suffixes) or f in names]
    return found


def flat(text: str) -> str:
    """``text`` with every run of white space as one space: pointers wrap across lines in docstrings."""
    return re.sub(r"\s+", " ", text)


def headings(markdown: str) -> list[str]:
    return HEADING.findall(FENCE.sub("", markdown))


def section_numbers(markdown: str) -> set[str]:
    return set(NUMBERED_HEADING.findall(FENCE.sub("", markdown)))


def resolve_doc(name: str, where: Path) -> Path:
    """Where a pointer to ``name`` (``docs/X.md`` from anywhere, ``X.md`` beside the file or at the top) leads."""
    if name.startswith("docs/"):
        return REPO / name
    beside = where.parent / name
    return beside if beside.exists() else REPO / name


def pointer_problems(text: str, where: Path) -> list[str]:
    """What in ``text`` (the content of the file at ``where``) points at a document, section or heading that is
    not in the repository: one line per problem."""
    problems = []
    one_line = flat(text)
    for name in DOC_PATH.findall(one_line):
        if not (DOCS / name).is_file():
            problems.append(f"docs/{name}: no such document")
    if where.suffix == ".py":
        problems += [f"{name}: name it by its path (docs/{name})" for name in BARE_DOC.findall(one_line)
                     if name != "README.md"]
    elif where.suffix == ".md":
        problems += [f"{name}: no such document" for name in BARE_DOC.findall(one_line)
                     if not resolve_doc(name, where).is_file()]
    for name, run in SECTIONS.findall(one_line):
        target = resolve_doc(name, where)
        numbers = section_numbers(target.read_text()) if target.is_file() else set()
        problems += [f"{name}, section {n}: no such section" for n in NUMBER.findall(run) if n not in numbers]
    if where.name == "METHOD.md":  # a plain "section N" inside METHOD.md is one of its own
        numbers = section_numbers(text)
        for run in OWN_SECTIONS.findall(one_line):
            problems += [f"section {n}: no such section of {where.name}" for n in NUMBER.findall(run)
                         if n not in numbers]
    for name, title in TITLED.findall(one_line):
        target = resolve_doc(name, where)
        titles = [h.lower() for h in headings(target.read_text())] if target.is_file() else []
        if not any(title.lower() in h for h in titles):
            problems.append(f'{name}, "{title}": no such heading')
    return problems


def link_problems(markdown: str, where: Path) -> list[str]:
    """Relative links and pictures of a markdown file (``where``) that lead nowhere."""
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    problems = []
    for target in LINK.findall(prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a web address, mail, or an anchor in the same page
        path = (where.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            problems.append(f"{target}: no such file")
    return problems


def readme_problems(readme: str) -> list[str]:
    """What keeps a README from being a short user's guide."""
    problems = []
    lines = readme.splitlines()
    if len(lines) > README_MAX_LINES:
        problems.append(f"{len(lines)} lines, at most {README_MAX_LINES}: measurements belong in docs/")
    first_block = FENCE.search(readme)
    if not first_block or "make demo" not in first_block.group() or "make test" not in first_block.group():
        problems.append("the first code block must show `make demo` and `make test`")
    problems += [f"names {m!r}: describe the topic, not the issue" for m in ISSUE.findall(readme)]
    problems += [f"dated ({d}): dates belong in docs/RESULTS.md or docs/EXPERIMENTS.md" for d in DATE.findall(readme)]
    return problems


def test_readme_is_a_short_guide_that_starts_with_the_two_commands():
    assert readme_problems((REPO / "README.md").read_text()) == []


def test_every_pointer_into_the_docs_resolves():
    files = [p for p in repo_files(".py", ".md", names=("Makefile",)) if p != Path(__file__).resolve()]
    assert (DOCS / "METHOD.md").is_file(), "docs/METHOD.md is missing"
    problems = [f"{p.relative_to(REPO)}: {line}" for p in files for line in pointer_problems(p.read_text(), p)]
    assert problems == []


def test_the_code_points_at_method_sections():
    """The method's modules name the section that describes them; at least those of both stages do."""
    text = {p: flat(p.read_text()) for p in repo_files(".py")}
    pointing = {p.relative_to(REPO).parts[0] for p, t in text.items() if SECTIONS.search(t)}
    assert {"pipeline", "trainer", "common"} <= pointing


def test_every_relative_link_of_the_docs_resolves():
    pages = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    problems = [f"{p.relative_to(REPO)}: {line}" for p in pages for line in link_problems(p.read_text(), p)]
    assert problems == []


def test_the_readme_links_every_document():
    readme = (REPO / "README.md").read_text()
    assert [d.name for d in sorted(DOCS.glob("*.md")) if f"docs/{d.name}" not in readme] == []


# The checks above, on text built to break them (names assembled so that this file itself points nowhere).
MISSING = "docs/" + "NOWHERE.md"
METHOD = "docs/" + "METHOD.md"


@pytest.mark.parametrize("text, expected", [
    (f"see {MISSING} for more", "NOWHERE.md: no such document"),
    (f"({METHOD}, section 99)", "section 99: no such section"),
    (f"({METHOD}, sections 3.1 and 3.99)", "section 3.99: no such section"),
    (f'({METHOD}, "Nothing of the kind")', '"Nothing of the kind": no such heading'),
    ("(" + "METHOD" + ".md section 3)", "name it by its path"),
])
def test_a_pointer_that_leads_nowhere_is_named(text, expected):
    problems = pointer_problems(f'"""{text}"""\n', REPO / "pipeline" / "example.py")
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("text", [
    f"({METHOD}, section 3.4)",
    f"({METHOD},\n    section 6.2)",
    f"({METHOD}, sections 3.1 (field of view) and 3.2)",
    f'({METHOD}, "Self-training")',
    f'({METHOD}, section\n    "Self-training")',
    f"see {'docs/' + 'RESULTS.md'}",
])
def test_a_pointer_that_resolves_is_not_named(text):
    assert pointer_problems(f'"""{text}"""\n', REPO / "pipeline" / "example.py") == []


def test_a_section_of_method_that_it_does_not_have_is_named():
    text = (DOCS / "METHOD.md").read_text() + "\nAs section 42.7 says.\n"
    assert pointer_problems(text, DOCS / "METHOD.md") == ["section 42.7: no such section of METHOD.md"]


def test_a_broken_link_is_named_and_a_web_address_or_code_is_not():
    page = ("[ok](METHOD.md) [gone](GONE.md) ![pic](missing.png) [web](https://example.org/x.md) [top](#top)\n"
            "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n")
    assert link_problems(page, DOCS / "page.md") == ["GONE.md: no such file", "missing.png: no such file"]


def test_a_readme_that_is_a_log_is_named():
    log = "\n".join(["# x", "", "```bash", "make demo", "make test", "```"] + ["line"] * README_MAX_LINES)
    log += "\nas issue 13 asked, measured 2026-12-01; see issue #7\n"
    problems = readme_problems(log)
    assert any("lines, at most" in p for p in problems)
    assert sum("describe the topic" in p for p in problems) == 2
    assert any("dated (2026-12-01)" in p for p in problems)
    assert readme_problems("# x\n\n```bash\nmake test\n```\n\n```bash\nmake demo\n```\n") == [
        "the first code block must show `make demo` and `make test`"]
