"""docs/records/reliability.md cannot drift: every case names a test, and every named test exists."""

import pytest
from doc_tables import REPO, assert_named_tests_exist, table_rows

DOC = REPO / "docs" / "records" / "reliability.md"
HEADER = ["case", "before", "now", "test"]


ROWS = table_rows(DOC, HEADER) if DOC.exists() else []


def test_the_page_has_rows():
    assert ROWS, "docs/records/reliability.md has no rows in the reliability format"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"L{r['line']}")
def test_named_tests_exist(row):
    assert_named_tests_exist(DOC, row, row["test"])
