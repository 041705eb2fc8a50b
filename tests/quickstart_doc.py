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


def block_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the tools find the code next to them, as in a clone
    if not (REPO / ".venv/bin/python").exists():
        pytest.skip("no .venv/bin/python (run bash tools/setup.sh)")
    return env


def as_run(block: dict, command: str) -> str:
    """``command`` with the block's shortening override appended where it names that tool (unless FULL)."""
    if block["shorten"] and not FULL and block["shorten"][0] in command:
        return f"{command} {block['shorten'][1]}"
    return command


def run_block(block: dict, work: Path, log: Path) -> list[str]:
    env = block_env()
    outputs = []
    for command in block["commands"]:
        command = as_run(block, command)
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


def run_until_killed(
    block: dict, command: str, work: Path, log: Path, written: Path, timeout: float = 1800
) -> None:
    """Runs ``command`` (as :func:`run_block` would) until the file ``written`` exists, then kills it with SIGKILL
    (no clean-up code runs), as a job killed by its scheduler."""
    command = as_run(block, command)
    with open(log, "a") as f:
        f.write(f"$ {command}  (killed once {written.name} exists)\n")
        f.flush()
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=work, env=block_env(), stdout=f, stderr=f
        )
    deadline = time.time() + timeout
    try:
        while not written.exists():
            assert proc.poll() is None, (
                f"{command} ended before writing {written}:\n{log.read_text()[-4000:]}"
            )
            assert time.time() < deadline, f"{command}: no {written} after {timeout} s"
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()


def check(name: str, values: dict, checks: list) -> None:
    for key, op, bound in checks:
        value = values[key]
        ok = value >= float(bound) if op == ">=" else value <= float(bound)
        assert ok, f"{name}: {key} = {value:.3f}, promised {op} {bound}"


def named_block(name: str) -> dict:
    return parse_blocks(DOC.read_text())[name]
