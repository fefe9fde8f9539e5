"""Where the code is: lines per module, the longest functions, and what a command loads.

    python benchmarks/code_map.py src/fcnseg --longest 12 --walk predict --walk train

A walk follows every import of a command module, function-local ones included, through
fcnseg's modules: the modules a command can load, and whether it reaches PyTorch.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def function_lengths(path: Path) -> list[tuple[int, str]]:
    """(lines, "module:function") of every function and method in ``path``."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((node.end_lineno - node.lineno + 1, f"{path.name}:{node.name}"))
    return found


def imports_of(path: Path, root: Path) -> tuple[set[str], set[str]]:
    """(fcnseg modules, third-party top-level packages) that ``path`` imports anywhere."""
    package = path.relative_to(root.parent).with_suffix("").parts[:-1]  # a/b.py, a/__init__
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                (inner if top == root.name else outer).add(alias.name if top == root.name
                                                           else top)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
                inner.add(name)
                if not node.module:  # from . import x: x may be a module
                    inner.update(f"{base}.{a.name}" for a in node.names)
            elif node.module.split(".")[0] == root.name:
                inner.add(node.module)
            else:
                outer.add(node.module.split(".")[0])
    return inner, outer


def module_file(name: str, root: Path) -> Path | None:
    rel = Path(*name.split(".")[1:])
    if not rel.parts:
        return root / "__init__.py"
    for candidate in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def walk(command: str, root: Path) -> tuple[list[str], set[str]]:
    """Every fcnseg module ``fcnseg <command>`` can load, and the packages they import."""
    seen: set[str] = set()
    outer: set[str] = set()
    todo = [f"{root.name}.commands.{command}"]
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if name in seen or path is None:
            continue
        seen.add(name)
        parts = name.split(".")  # a module's packages run their __init__ first
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        inner, third = imports_of(path, root)
        todo.extend(inner)
        outer |= third
    return sorted(seen), outer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--longest", type=int, default=12)
    parser.add_argument("--largest", type=int, default=10)
    parser.add_argument("--walk", action="append", default=[], metavar="COMMAND")
    args = parser.parse_args()
    files = sorted(args.root.rglob("*.py"))
    sizes = sorted(((len(f.read_text().splitlines()), f.relative_to(args.root).as_posix())
                    for f in files), reverse=True)
    functions = sorted((fn for f in files for fn in function_lengths(f)), reverse=True)
    print(f"{len(files)} modules, {sum(n for n, _ in sizes)} lines, {len(functions)} functions; "
          f"over 60 lines: {sum(n > 60 for n, _ in functions)}")
    print("largest modules: " + ", ".join(f"{name} {n}" for n, name in sizes[:args.largest]))
    print("longest functions: " + ", ".join(f"{name} {n}" for n, name in
                                             functions[:args.longest]))
    for command in args.walk:
        modules, outer = walk(command, args.root)
        packages = sorted({m.split(".")[1] for m in modules if m.count(".") >= 1})
        heavy = sorted(outer & {"torch", "torchvision", "timm", "matplotlib"})
        print(f"walk {command}: {len(modules)} modules in {', '.join(packages)}; "
              f"reaches {', '.join(heavy) or 'no torch'}")


if __name__ == "__main__":
    main()
