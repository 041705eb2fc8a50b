"""The README's MMDetection snippet runs as written (fresh interpreter, repository root as working directory)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_block(heading: str) -> str:
    """The first ```python block under the README heading ``heading``, before the next heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(f"\n{heading}\n") + len(heading) + 2 :]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, f"README.md: no python block under {heading!r}"
    assert not re.search(r"^#{1,6} ", section[: m.start()], re.M), (
        f"README.md: {heading!r} has no python block"
    )
    return m.group(1)


def test_readme_mmdetection_snippet_runs():
    code = readme_block("### In MMDetection")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600, env=None
    )
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    shapes = [tuple(int(n) for n in s.split(", ")) for s in re.findall(r"torch\.Size\(\[([\d, ]+)\]\)", last)]
    assert shapes[:5] == [(1, 32, 128 // s, 128 // s) for s in (4, 8, 16, 32, 64)]
    assert len(shapes) == 6 and shapes[5][1] == 4  # the detections' boxes (N, 4)
