"""The floors of docs/DESIGN.md hold: no module imports one from a floor above its own, and
no command imports another command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fcnseg"
# docs/DESIGN.md's floors, lowest first: the first part of a module's name under fcnseg.
FLOORS = [
    {"errors", "fileio", "allocator", "device"},
    {"data", "models", "metrics", "viz"},
    {"checkpoint", "distributed"},
    {"inference"},
    {"training"},
    {"demo"},
    {"serve"},
    {"commands"},
    {"cli", "__main__", "__init__"},
]


def floor_of(part: str) -> int:
    return next(i for i, names in enumerate(FLOORS) if part in names)


def imported_parts(path: Path) -> set[str]:
    """The first name under fcnseg of every module ``path`` imports, anywhere in it."""
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            names = (node.module.split(".") if node.module else [a.name for a in node.names])
            full = [*base, *names] if node.module else [*base, names[0]]
            if len(full) > 1:
                found.add(full[1])
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module]
            found |= {n.split(".")[1] for n in names if n.startswith("fcnseg.")}
    return found - {"__version__"}


MODULES = sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(SRC)) for p in MODULES])
def test_a_module_imports_only_its_floor_and_below(path):
    own = path.relative_to(SRC).with_suffix("").parts[0]
    above = {part for part in imported_parts(path) if floor_of(part) > floor_of(own)}
    assert not above, f"{path.relative_to(SRC)} imports {sorted(above)} from a higher floor"


def test_no_command_imports_another():
    for path in (SRC / "commands").glob("*.py"):
        tree = ast.parse(path.read_text())
        others = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                  and node.level == 1 and node.module not in (None, "options")}
        assert not others, f"commands/{path.name} imports commands {sorted(others)}"
