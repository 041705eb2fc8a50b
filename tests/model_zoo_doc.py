"""The command lines of ``docs/model_zoo.md`` (and of ``docs/model_zoo_eva02.md``: ``doc=DOC_EVA02``), as a user
copies them, for the tests that run each one.

Every code span that starts with ``.venv/bin/python tools/`` is a command. ``[--tta]`` (an optional flag in the
table) gives two commands, without and with it. :func:`commands_for` hands a test the commands of its tools;
``tests/test_model_zoo_doc.py`` checks that every command belongs to a tool whose test runs it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "model_zoo.md"
DOC_EVA02 = REPO / "docs" / "model_zoo_eva02.md"
PREFIX = ".venv/bin/python tools/"

#: tool -> the test module that runs every documented command of that tool
RUNNERS = {
    "train_net.py": "tests/detection/test_model_zoo.py",
    "demo.py": "tests/detection/test_model_zoo.py",
    "test_seg.py": "tests/segmentation/test_model_zoo.py",
    "train_seg.py": "tests/segmentation/test_model_zoo.py",
    "convert_checkpoint.py": "tests/pretrain/test_model_zoo.py",
    "pretrain.py": "tests/pretrain/test_model_zoo.py",
}


def commands(doc: Path = DOC) -> list[str]:
    """Every command line of the page ``doc``, in its order, optional flags expanded."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # fenced blocks hold no tool command
    spans = re.findall(r"`([^`]+)`", text)
    out = []
    for span in spans:
        span = " ".join(span.split())  # a span may run over a line break of the page
        if not span.startswith(PREFIX):
            continue
        optional = re.findall(r"\s*\[(--[\w-]+)\]", span)
        base = re.sub(r"\s*\[--[\w-]+\]", "", span)
        out.append(base)
        out += [f"{base} {flag}" for flag in optional]
    return out


def tool_of(command: str) -> str:
    return shlex.split(command)[1].split("/", 1)[1]


def commands_for(*tools: str, doc: Path = DOC) -> list[str]:
    found = [c for c in commands(doc) if tool_of(c) in tools]
    assert found, f"{doc.relative_to(REPO)} has no command of {tools}: the parser or the page changed"
    return found


def argv(command: str, replace: dict[str, str] | None = None) -> list[str]:
    """The command's arguments after the tool, with each ``old -> new`` substring replaced (paths, GPU count)."""
    for old, new in (replace or {}).items():
        command = command.replace(old, new)
    return shlex.split(command)[2:]
