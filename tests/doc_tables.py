"""The record pages' tables (docs/records/*.md) as rows, and the check that the tests a row names exist: shared by
the pages' own tests (test_fidelity_doc.py, test_reliability_doc.py)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def table_rows(doc: Path, header: list[str]) -> list[dict]:
    """The rows of every table of ``doc`` whose header is ``header``: a dict of the cells by column name, with the
    ``section`` (the heading above the table) and the ``line`` number."""
    rows, current, section = [], None, ""
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if line.startswith("#"):
            section, current = line.lstrip("#").strip(), None
            continue
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if current is None:
            current = cells
            continue
        if current != header or set("".join(cells)) <= set("-: "):
            continue
        where = f"{doc.relative_to(REPO)}:{number}"
        assert len(cells) == len(header), f"{where}: {len(cells)} cells, expected {len(header)}"
        rows.append(dict(zip(header, cells), section=section, line=number))
    return rows


def assert_named_tests_exist(doc: Path, row: dict, cell: str) -> None:
    """Every ``file::test`` in backticks in ``cell`` names a test function that exists; at least one is named."""
    where = f"{doc.relative_to(REPO)}:{row['line']}"
    cited = [t for t in re.findall(r"`([^`]+)`", cell) if "::" in t]
    assert cited, f"{where}: no test named"
    for ref in cited:
        file, _, name = ref.partition("::")
        source = REPO / file
        assert source.is_file(), f"{where}: {file} does not exist"
        name = name.split("[")[0]
        assert re.search(rf"^\s*def {re.escape(name)}\(", source.read_text(), re.M), (
            f"{where}: {file} has no test {name}"
        )
