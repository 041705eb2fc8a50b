"""The benchmark command lines (tools/benchmark_*.py, tools/gpu_check.py) are thin: each runs the ``main`` of one
eva_transfer_bench module, and that module's parser knows every option the tool's examples use."""

from __future__ import annotations

import ast
import importlib
import os
import re
import stat
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(REPO.glob("tools/benchmark_*.py")) + [REPO / "tools" / "gpu_check.py"]


def _main_module(tree: ast.Module) -> str | None:
    for node in tree.body:
        if (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("eva_transfer_bench.")
            and [a.name for a in node.names] == ["main"]
        ):
            return node.module
    return None


def _logic(tree: ast.Module) -> list[str]:
    """Functions, classes and loops: what a thin command line does not hold."""
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.While)
    return [f"{type(n).__name__} at line {n.lineno}" for n in ast.walk(tree) if isinstance(n, kinds)]


def test_the_thin_tool_scan_sees_logic():
    assert _logic(ast.parse("def f():\n    pass\nfor i in x:\n    pass\n")) == [
        "FunctionDef at line 1",
        "For at line 3",
    ]
    assert (
        _main_module(ast.parse("from eva_transfer_bench.backbone import main\n"))
        == "eva_transfer_bench.backbone"
    )
    assert _main_module(ast.parse("from benchmark_backbone import main\n")) is None


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.name)
def test_tool_is_a_thin_command_line(tool):
    text = tool.read_text()
    tree = ast.parse(text)
    assert (
        text.startswith("#!/usr/bin/env python")
        and tool.stat().st_mode & stat.S_IXUSR
        and os.access(tool, os.X_OK)
    )
    assert _main_module(tree), f"{tool.name} should run `from eva_transfer_bench.<module> import main`"
    assert not _logic(tree), (
        f"{tool.name} holds logic; it belongs in its eva_transfer_bench module: {_logic(tree)}"
    )


OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]


def _cited_options(tool: Path) -> set[str]:
    """Options after ``tools/<tool>`` on one line of the tool's docstring or of the docs (up to a comment or the
    end of an inline code span)."""
    texts = [ast.get_docstring(ast.parse(tool.read_text())) or ""] + [d.read_text() for d in DOCS]
    cited = re.compile(rf"tools/{re.escape(tool.name)}([^`\n#]*)")
    return {o for text in texts for tail in cited.findall(text) for o in OPTION.findall(tail)}


def test_cited_options_are_read_from_docstrings_and_docs():
    assert {"--quick", "--backward", "--profile", "--no-memory"} <= _cited_options(
        REPO / "tools/benchmark_backbone.py"
    )


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.name)
def test_module_parser_knows_the_options_the_tool_is_cited_with(tool, capsys):
    options = _cited_options(tool)
    module = importlib.import_module(_main_module(ast.parse(tool.read_text())))
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert not {o for o in options if o not in help_text}, (tool.name, options)
