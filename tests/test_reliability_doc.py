"""docs/records/reliability.md cannot drift: every case names a test, and every named test exists."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "records" / "reliability.md"
HEADER = ["case", "before", "now", "test"]


def reliability_rows() -> list[dict]:
    rows, header = [], None
    for number, line in enumerate(DOC.read_text().splitlines(), 1):
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if header != HEADER or set("".join(cells)) <= set("-: "):
            continue
        assert len(cells) == len(HEADER), (
            f"docs/records/reliability.md:{number}: {len(cells)} cells, expected 4"
        )
        rows.append(dict(zip(HEADER, cells), line=number))
    return rows


ROWS = reliability_rows() if DOC.exists() else []


def test_the_page_has_rows():
    assert ROWS, "docs/records/reliability.md has no rows in the reliability format"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"L{r['line']}")
def test_named_tests_exist(row):
    cited = [t for t in re.findall(r"`([^`]+)`", row["test"]) if "::" in t]
    assert cited, f"docs/records/reliability.md:{row['line']} ({row['case']}): no test named"
    for ref in cited:
        file, _, name = ref.partition("::")
        source = REPO / file
        assert source.is_file(), f"docs/records/reliability.md:{row['line']}: {file} does not exist"
        name = name.split("[")[0]
        assert re.search(rf"^\s*def {re.escape(name)}\(", source.read_text(), re.M), (
            f"docs/records/reliability.md:{row['line']}: {file} has no test {name}"
        )
