"""docs/fidelity.md cannot drift: every table row's value is read back from the config it names, and every test
it cites exists.

Row format (tables whose header is ``| setting | authors' value (source) | this toolkit | config key | test |``):

- *this toolkit*: the first backticked Python literal is the value (``2.5e-5``, ``[70000]``, ``"beit"``);
- *config key*: zero or more backticked ``configs/<part>/<file>.py: dotted.key`` entries (``—`` for a behaviour
  that is not a config value); list items are addressed by index (``lr_multiplier.scheduler.milestones.0``);
- *test*: one or more backticked ``tests/<file>.py::test_name`` entries, each of which must exist.
"""

import ast
import math
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "fidelity.md"
HEADER = ["setting", "authors' value (source)", "this toolkit", "config key", "test"]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def fidelity_rows() -> list[dict]:
    """The rows of every fidelity table, each with its section and line number."""
    rows, header, section = [], None, ""
    for number, line in enumerate(DOC.read_text().splitlines(), 1):
        if line.startswith("#"):
            section, header = line.lstrip("#").strip(), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = cells
            continue
        if header != HEADER or set("".join(cells)) <= set("-: "):
            continue
        assert len(cells) == len(HEADER), (
            f"docs/fidelity.md:{number}: {len(cells)} cells, expected {len(HEADER)}"
        )
        rows.append(dict(zip(HEADER, cells), section=section, line=number))
    return rows


def _ticks(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _load(path: str):
    full = REPO / path
    assert full.is_file(), f"{path} does not exist"
    if path.startswith("configs/detection/"):
        from eva_transfer_projects.detection.engine import load_det_config

        return load_det_config(str(full))
    if path.startswith(("configs/segmentation/", "configs/mmdetection/")):
        from mmengine.config import Config

        return Config.fromfile(str(full))
    if path.startswith("configs/pretrain/"):
        from eva_transfer.pretrain.config import load_pretrain_config

        return load_pretrain_config(full)
    raise AssertionError(f"{path}: no loader for this config folder")


def _resolve(node, dotted: str):
    for part in dotted.split("."):
        if isinstance(node, (list, tuple)) or type(node).__name__ == "ListConfig":
            node = node[int(part)]
        elif hasattr(node, "keys"):
            node = node[part]
        else:
            node = getattr(node, part)
    return node


def _plain(value):
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


ROWS = fidelity_rows() if DOC.exists() else []
_CACHE: dict = {}


def test_the_page_has_rows():
    assert DOC.exists(), "docs/fidelity.md is missing"
    assert ROWS, "docs/fidelity.md has no table rows in the fidelity format"


@pytest.mark.parametrize("row", [r for r in ROWS if _ticks(r["config key"])], ids=lambda r: f"L{r['line']}")
def test_value_matches_the_config(row):
    literals = _ticks(row["this toolkit"])
    assert literals, f"docs/fidelity.md:{row['line']}: 'this toolkit' has no backticked value"
    expected = ast.literal_eval(literals[0])
    for entry in _ticks(row["config key"]):
        path, _, key = (s.strip() for s in entry.partition(":"))
        if path not in _CACHE:
            _CACHE[path] = _load(path)
        got = _plain(_resolve(_CACHE[path], key))
        assert _same(_plain(expected), got), (
            f"docs/fidelity.md:{row['line']} ({row['section']}: {row['setting']}): "
            f"{path}: {key} is {got!r}, the page says {expected!r}"
        )


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"L{r['line']}")
def test_cited_tests_exist(row):
    cited = [t for t in _ticks(row["test"]) if "::" in t]
    assert cited, f"docs/fidelity.md:{row['line']}: no test named"
    for ref in cited:
        file, _, name = ref.partition("::")
        source = REPO / file
        assert source.is_file(), f"docs/fidelity.md:{row['line']}: {file} does not exist"
        name = name.split("[")[0]
        assert re.search(rf"^\s*def {re.escape(name)}\(", source.read_text(), re.M), (
            f"docs/fidelity.md:{row['line']}: {file} has no test {name}"
        )
