"""Code structure: library code logs instead of printing (tools decide what reaches the console)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("eva_transfer", "projects")


def _modules(packages=PRODUCT_PACKAGES):
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def _print_calls(tree: ast.AST) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]


def test_scan_finds_print_calls():
    # the scan itself can see a print, nested or not
    tree = ast.parse("def f():\n    if True:\n        print('x')\nprint(1)\nlogger.info('y')\n")
    assert sorted(_print_calls(tree)) == [3, 4]


def test_no_print_in_library_code():
    found = [f"{path.relative_to(REPO)}:{line}" for path, tree in _modules() for line in _print_calls(tree)]
    assert not found, "library code logs, tools print; print() calls in: " + ", ".join(found)
