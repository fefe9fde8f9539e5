"""Where the code is: lines per module and the longest functions (a refactoring's before/after).

    python benchmarks/code_map.py src/fcnseg --longest 12
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--longest", type=int, default=12)
    parser.add_argument("--largest", type=int, default=10)
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


if __name__ == "__main__":
    main()
