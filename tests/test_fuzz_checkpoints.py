"""Property-based fuzz test: malformed checkpoint files given to every loading entry point.

Only documented exception types escape, each message names the file (and the key at fault), no malformed file
is accepted silently, no case hangs, and valid files load. The default run draws a few hundred cases;
``tools/fuzz_checkpoints.py`` runs 10,000 and prints the counts.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

hypothesis = pytest.importorskip("hypothesis")
from checkpoint_cases import FORMAT, KINDS, SCHEMA, check, entry_points, make_case  # noqa: E402
from fuzz_harness import FuzzFinding, run_case  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

POINTS = entry_points()


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def test_every_part_has_an_entry_point():
    names = {p.name for p in POINTS}
    assert {"eva_transfer.read_checkpoint", "eva_transfer.load_checkpoint"} <= names
    assert {"detection checkpointer", "segmentation runner reader"} <= names


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31 - 1))
def test_malformed_checkpoints_fail_with_documented_named_errors(kind, seed):
    with tempfile.TemporaryDirectory() as tmp:
        case = make_case(kind, seed, Path(tmp))
        for point in POINTS:
            outcome = check(case, point, timeout=20.0)
            if (case.schema_violation and point.loads_into_model) or case.format_violation:
                assert outcome.startswith("refused:")


@pytest.mark.parametrize("kind", FORMAT + SCHEMA)
def test_every_malformed_kind_is_refused_by_the_core_loader(tmp_path, kind):
    """One fixed case of each kind (the same every run), so that no kind depends on what hypothesis draws."""
    case = make_case(kind, 0, tmp_path)
    loader = next(p for p in POINTS if p.name == "eva_transfer.load_checkpoint")
    assert check(case, loader) == "refused:CheckpointError"


def test_the_harness_reports_what_it_must():
    """The harness itself can fail: undocumented types, unnamed files, silent acceptance and hangs."""
    documented = (ValueError,)
    with pytest.raises(FuzzFinding, match="undocumented KeyError"):
        run_case(lambda: {}["x"], case="c", documented=documented)
    with pytest.raises(FuzzFinding, match="does not name 'f.pth'"):
        run_case(
            lambda: (_ for _ in ()).throw(ValueError("bad")), case="c", documented=documented, names=["f.pth"]
        )
    with pytest.raises(FuzzFinding, match="accepted silently"):
        run_case(lambda: None, case="c", documented=documented, must_fail=True)
    with pytest.raises(FuzzFinding, match="hangs"):
        run_case(lambda: [0 for _ in iter(int, 1)], case="c", documented=documented, timeout=0.2)
    assert run_case(lambda: None, case="c", documented=documented) == "accepted"
