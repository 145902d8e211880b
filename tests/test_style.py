"""House rules that a linter does not check."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ddet"


def public_functions(tree: ast.Module):
    """Module-level functions and the methods of public classes, private names left out
    (``__init__`` kept: its parameters are the class's public interface)."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from ((f"{node.name}.{f.name}", f) for f in node.body if isinstance(f, ast.FunctionDef))
        elif isinstance(node, ast.FunctionDef):
            yield node.name, node


def unannotated(function: ast.FunctionDef) -> list[str]:
    arguments = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
    missing = [a.arg for a in arguments if a.annotation is None and a.arg not in ("self", "cls")]
    if function.returns is None and function.name != "__init__":
        missing.append("return")
    return missing


def test_every_public_function_of_ddet_is_annotated():
    gaps = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, function in public_functions(ast.parse(path.read_text())):
            if function.name.startswith("_") and function.name != "__init__":
                continue
            missing = unannotated(function)
            if missing:
                gaps.append(f"{path.relative_to(PACKAGE.parent)}: {name} ({', '.join(missing)})")
    assert not gaps, "public functions without annotations:\n" + "\n".join(gaps)
