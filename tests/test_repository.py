"""Standing rules of the tree: method.md citations resolve, the README's layout is the tree, modules stay small."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dsgl_cli"
MAX_LINES = 400

# "method.md 4.2", "method.md section 6", "method.md sections 3, 5.1-5.3 and 7"
CITATION = re.compile(r"method\.md(?: sections?)? ((?:\d+(?:\.\d+)?)(?:(?:-|, | and )\d+(?:\.\d+)?)*)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", re.M)


def _sources() -> list[Path]:
    return [p for folder in ("dsgl_cli", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")]


def _sections() -> set[str]:
    return set(HEADING.findall((ROOT / "docs" / "method.md").read_text(encoding="utf-8")))


def _cited(text: str) -> set[str]:
    numbers: set[str] = set()
    for group in CITATION.findall(text):
        numbers.update(re.findall(r"\d+(?:\.\d+)?", group))
    return numbers


def test_every_method_md_citation_resolves_to_a_heading():
    sections = _sections()
    assert {"1", "3.1", "4.2", "5.3", "8"} <= sections   # the headings themselves are numbered
    missing = {}
    for path in _sources():
        bad = _cited(path.read_text(encoding="utf-8")) - sections
        if bad:
            missing[str(path.relative_to(ROOT))] = sorted(bad)
    assert not missing, missing


def test_the_citation_parser_sees_lists_and_ranges():
    assert _cited("see method.md sections 3, 5.1-5.3 and 7; also method.md 4.2.") == {"3", "5.1", "5.3", "7", "4.2"}


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout of the code", 1)[1]
    return section.split("```", 2)[1]


def test_readme_layout_names_every_package_module_and_nothing_else():
    block = _layout_block()
    named = set(re.findall(r"[\w]+(?:/|\.py)", block))
    # the per-command modules are listed as a group ("one module per command"), not one by one
    modules = {p.name for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" and (p.parent.name != "commands" or p.name == "common.py")}
    folders = {p.name + "/" for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    named_modules = {n for n in named if n.endswith(".py")}
    named_dirs = {n for n in named if n.endswith("/")} - {"dsgl_cli/", "benchmarks/", "docs/", "tests/", "fixtures/"}
    assert named_modules == modules, "README layout is stale"
    assert named_dirs == folders


def test_no_module_is_over_the_length_limit():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_no_two_package_modules_share_a_file_name_outside_commands():
    names = Counter(p.name for p in PACKAGE.rglob("*.py")
                    if p.name != "__init__.py" and p.parent.name != "commands")
    assert [n for n, c in names.items() if c > 1] == []


def _module_imports() -> dict[str, set[str]]:
    """Each package module and the package modules it imports anywhere (top level, in a function, or
    only for type checking: each is a dependency a reader follows)."""
    import ast

    names = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in names.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                       [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if isinstance(node, ast.ImportFrom) and node.module:
                targets += [f"{node.module}.{a.name}" for a in node.names]
            found.update(t for t in targets if t in names and t != name)
        edges[name] = found
    return edges


def test_no_two_modules_import_each_other():
    """Layers, not cycles (issue 25); a package may import its own modules and they it."""
    edges = _module_imports()
    pairs = sorted({tuple(sorted((a, b))) for a, deps in edges.items() for b in deps if a in edges[b]})
    cycles = [(a, b) for a, b in pairs if not b.startswith(a + ".")]
    assert not cycles, cycles
