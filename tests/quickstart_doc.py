"""The quick-start blocks of docs/quickstart.md as the tests run them (``tests/test_quickstart.py``, and the
session fixture of ``tests/conftest.py`` that runs the segmentation block once for the tests that use its model).

Each block is preceded by a marker line::

    <!-- quickstart NAME: metric KEY >= X[, KEY >= Y]; shortened: KEY >= Z; shorten TOOL with OVERRIDE -->

:func:`run_block` runs a block's commands one by one with ``bash`` in a fresh folder from :func:`workspace` that
links the repository's code (``tools/``, ``configs/``, ``projects/``, ``eva_transfer/``, ``.venv``), as in a fresh
clone. Where the marker names a shortening override, it is appended to the command of that tool (unless
``EVA_QUICKSTART_FULL=1``) and the ``shortened`` thresholds apply.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "quickstart.md"
MARKER = re.compile(r"<!-- quickstart (\w+): (.*?) -->\n```bash\n(.*?)```", re.S)
CHECK = re.compile(r"([\w/]+) (>=|<=) (-?[\d.]+)")
#: EVA_QUICKSTART_FULL=1 runs the blocks without their shortening override (the full promises: box AP >= 50 ...)
FULL = os.environ.get("EVA_QUICKSTART_FULL") == "1"


def parse_blocks(text: str) -> dict:
    blocks = {}
    for name, spec, body in MARKER.findall(text):
        parts = {p.split(" ", 1)[0]: p.split(" ", 1)[1] for p in (s.strip() for s in spec.split(";"))}
        shorten = None
        if "shorten" in parts:
            tool, override = parts["shorten"].split(" with ")
            shorten = (tool.strip(), override.strip())
        commands = [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]
        commands = [c for c in commands if not c.lstrip().startswith("#")]
        blocks[name] = dict(
            commands=commands,
            checks=CHECK.findall(parts["metric"]),
            shortened=CHECK.findall(parts.get("shortened:", parts.get("shortened", ""))),
            shorten=shorten,
        )
    return blocks


def workspace(tmp_path: Path) -> Path:
    work = tmp_path / "clone"
    work.mkdir()
    for item in ("tools", "configs", "projects", "eva_transfer", ".venv"):
        (work / item).symlink_to(REPO / item)
    return work


def run_block(block: dict, work: Path, log: Path) -> list[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the tools find the code next to them, as in a clone
    if not (REPO / ".venv/bin/python").exists():
        pytest.skip("no .venv/bin/python (run bash tools/setup.sh)")
    outputs = []
    for command in block["commands"]:
        if block["shorten"] and not FULL and block["shorten"][0] in command:
            command = f"{command} {block['shorten'][1]}"
        start = time.perf_counter()
        proc = subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=1800
        )
        with open(log, "a") as f:
            f.write(f"$ {command}\n{proc.stdout}\n{proc.stderr}\n")
        print(f"{command}: {time.perf_counter() - start:.0f} s")
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-4000:]}"
        outputs.append(proc.stdout + proc.stderr)
    return outputs


def check(name: str, values: dict, checks: list) -> None:
    for key, op, bound in checks:
        value = values[key]
        ok = value >= float(bound) if op == ">=" else value <= float(bound)
        assert ok, f"{name}: {key} = {value:.3f}, promised {op} {bound}"


def named_block(name: str) -> dict:
    return parse_blocks(DOC.read_text())[name]
