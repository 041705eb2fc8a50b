"""docs/records/fidelity.md cannot drift: every table row names where the authors set the value and where this toolkit
sets it, the value in *this toolkit* is read back from the config it names (at the line it names), and every test
it cites exists.

Row format (tables whose header is ``| setting | authors' value (source) | this toolkit | config key | test |``):

- *authors' value (source)*: at least one backticked ``EVA-01/<path>:<line>`` or ``EVA-02/<path>:<line>``
  reference into the authors' code (baaivision/EVA, folders ``EVA-01/`` and ``EVA-02/``; lines as ``47``,
  ``144-149`` or ``11,16,20-27``), or the words ``paper Table N`` for a value taken from the paper; every backticked
  ``EVA-01/...`` or ``EVA-02/...`` reference carries a line.
  With ``EVA01_SOURCE`` set to a checkout (or bare git directory) of baaivision/EVA, each cited file must exist
  and hold the cited lines;
- *this toolkit*: the first backticked Python literal is the value (``2.5e-5``, ``[70000]``, ``"beit"``);
- *config key*: zero or more backticked entries (``—`` for a behaviour that is not a config value), each
  ``configs/<part>/<file>.py:LINE: dotted.key`` when the key is set at that line of the config, or
  ``configs/<part>/<file>.py via BASE:LINE: dotted.key`` when it is set in a file the config inherits from
  (``BASE`` relative to the config's folder, e.g. ``common/optim.py``, ``_base_/schedules/x.py``, or an
  ``mmdet::`` config of MMDetection). The value is read from the config; the cited line must contain the key's
  last name (``max_iters`` for ``train_cfg.max_iters``; list indices are skipped:
  ``param_scheduler.1.end`` -> ``end``), so a stale line fails;
- *test*: one or more backticked ``tests/<file>.py::test_name`` entries, each of which must exist.
"""

import ast
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
from doc_tables import REPO, assert_named_tests_exist, table_rows

DOC = REPO / "docs" / "records" / "fidelity.md"
HEADER = ["setting", "authors' value (source)", "this toolkit", "config key", "test"]
ENTRY = re.compile(
    r"^(?P<path>configs/\S+?\.py)(?::(?P<line>\d+)| via (?P<base>\S+?\.py):(?P<base_line>\d+)): (?P<key>[\w.]+)$"
)
AUTHORS_REF = re.compile(
    r"^(?P<part>EVA-0[12])/(?P<file>[\w./+-]+\.\w+):(?P<lines>\d+(?:-\d+)?(?:,\s?\d+(?:-\d+)?)*)$"
)
#: the authors' folders a row may cite
AUTHORS_PARTS = ("EVA-01/", "EVA-02/")
PAPER_TABLE = re.compile(r"\bpaper(?:'s)? Tables? \d+")


def _ticks(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _where(row) -> str:
    return f"docs/records/fidelity.md:{row['line']} ({row['section']}: {row['setting']})"


def _entries(row) -> list[re.Match]:
    """The config-key cell's entries, each parsed (path, line or base and its line, key)."""
    entries = []
    for text in _ticks(row["config key"]):
        match = ENTRY.match(text)
        assert match, (
            f"{_where(row)}: config key {text!r} is not `configs/<part>/<file>.py:LINE: dotted.key` "
            f"or `configs/<part>/<file>.py via BASE:LINE: dotted.key`"
        )
        entries.append(match)
    return entries


def _mmdet_configs() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("mmdet")
    assert spec is not None and spec.origin, "mmdet is not installed"
    return Path(spec.origin).parent / ".mim" / "configs"


def _line_file(entry: re.Match) -> tuple[Path, int]:
    """The file and line an entry cites for its key: the config's own, or the base file's."""
    if entry["base"] is None:
        return REPO / entry["path"], int(entry["line"])
    base = entry["base"]
    if base.startswith("mmdet::"):
        return _mmdet_configs() / base.removeprefix("mmdet::"), int(entry["base_line"])
    return (REPO / entry["path"]).parent / base, int(entry["base_line"])


def _key_name(key: str) -> str:
    """The last name of a dotted key, list indices skipped: ``param_scheduler.1.end`` -> ``end``."""
    return [part for part in key.split(".") if not part.isdigit()][-1]


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


def _line_numbers(spec: str) -> list[int]:
    """``11,16,20-27`` -> the first and last line of each part: [11, 11, 16, 16, 20, 27]."""
    numbers = []
    for part in spec.replace(" ", "").split(","):
        first, _, last = part.partition("-")
        numbers += [int(first), int(last or first)]
    return numbers


def _authors_lines(path: str) -> list[str] | None:
    """The lines of an EVA-01 / EVA-02 file from ``EVA01_SOURCE`` (a checkout or a bare git directory of
    baaivision/EVA); None if absent."""
    if path in _AUTHORS:
        return _AUTHORS[path]
    source = Path(os.environ["EVA01_SOURCE"])
    text = None
    if (source / path).is_file():
        text = (source / path).read_text(errors="replace")
    else:
        shown = subprocess.run(
            ["git", f"--git-dir={source}", "show", f"HEAD:{path}"], capture_output=True, check=False
        )
        if shown.returncode == 0:
            text = shown.stdout.decode(errors="replace")
    _AUTHORS[path] = None if text is None else text.splitlines()
    return _AUTHORS[path]


ROWS = table_rows(DOC, HEADER) if DOC.exists() else []
_CACHE: dict = {}
_AUTHORS: dict = {}


def test_the_page_has_rows():
    assert DOC.exists(), "docs/records/fidelity.md is missing"
    assert ROWS, "docs/records/fidelity.md has no table rows in the fidelity format"


@pytest.mark.parametrize("row", [r for r in ROWS if _ticks(r["config key"])], ids=lambda r: f"L{r['line']}")
def test_value_matches_the_config(row):
    literals = _ticks(row["this toolkit"])
    assert literals, f"docs/records/fidelity.md:{row['line']}: 'this toolkit' has no backticked value"
    expected = ast.literal_eval(literals[0])
    for entry in _entries(row):
        path, key = entry["path"], entry["key"]
        if path not in _CACHE:
            _CACHE[path] = _load(path)
        got = _plain(_resolve(_CACHE[path], key))
        assert _same(_plain(expected), got), (
            f"{_where(row)}: {path}: {key} is {got!r}, the page says {expected!r}"
        )


@pytest.mark.parametrize("row", [r for r in ROWS if _ticks(r["config key"])], ids=lambda r: f"L{r['line']}")
def test_cited_line_sets_the_key(row):
    for entry in _entries(row):
        file, number = _line_file(entry)
        shown = file.relative_to(REPO) if file.is_relative_to(REPO) else file
        assert file.is_file(), f"{_where(row)}: {shown} does not exist"
        lines = file.read_text().splitlines()
        assert 1 <= number <= len(lines), (
            f"{_where(row)}: {shown} has {len(lines)} lines, the page cites {number}"
        )
        name = _key_name(entry["key"])
        assert re.search(rf"\b{re.escape(name)}\b", lines[number - 1]), (
            f"{_where(row)}: {shown}:{number} does not set {name!r} ({entry['key']}): {lines[number - 1].strip()!r}"
        )


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"L{r['line']}")
def test_authors_source_is_cited_with_its_line(row):
    cell = row["authors' value (source)"]
    refs = [t for t in _ticks(cell) if t.startswith(AUTHORS_PARTS)]
    for ref in refs:
        assert AUTHORS_REF.match(ref), (
            f"{_where(row)}: {ref!r} is not `EVA-01/<path>:<line>` or `EVA-02/<path>:<line>` (e.g. `...py:47`)"
        )
    assert refs or PAPER_TABLE.search(cell), (
        f"{_where(row)}: the authors' value names no `EVA-01/<path>:<line>` or `EVA-02/<path>:<line>` and no "
        "'paper Table N'"
    )


@pytest.mark.skipif(not os.environ.get("EVA01_SOURCE"), reason="EVA01_SOURCE (baaivision/EVA) not set")
@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"L{r['line']}")
def test_authors_lines_exist_in_their_code(row):
    for ref in _ticks(row["authors' value (source)"]):
        match = AUTHORS_REF.match(ref)
        if not match:
            continue
        path = f"{match['part']}/{match['file']}"
        lines = _authors_lines(path)
        assert lines is not None, f"{_where(row)}: {path} is not in {os.environ['EVA01_SOURCE']}"
        numbers = _line_numbers(match["lines"])
        assert numbers == sorted(numbers), f"{_where(row)}: {ref}: lines out of order"
        assert 1 <= numbers[0] and numbers[-1] <= len(lines), (
            f"{_where(row)}: {path} has {len(lines)} lines: {ref}"
        )


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"L{r['line']}")
def test_cited_tests_exist(row):
    assert_named_tests_exist(DOC, row, row["test"])
