"""A reusable harness for fuzz tests of entry points that read user files.

Each case calls one entry point on one generated input under a per-case time limit and checks the outcome:

- only documented exception types may escape (anything else is a finding, reported with the case);
- the message of a documented error names the file, and the key (or field) at fault where the case has one;
- a case that violates the entry point's schema must be refused: returning normally is "accepted silently".

:func:`run_case` does one case and returns its outcome label (``accepted`` or ``refused:<ExceptionType>``), so
that a script can count outcomes over thousands of cases (``tools/fuzz_checkpoints.py``) and a hypothesis test can
assert on a few hundred. The time limit uses ``SIGALRM`` (main thread, POSIX): it stops a Python-level hang; a
hang inside one C call ends at its next return to Python.
"""

from __future__ import annotations

import signal
import traceback
from contextlib import contextmanager
from typing import Callable, Iterable, Optional, Sequence

__all__ = ["CaseTimeout", "FuzzFinding", "run_case", "time_limit"]


class CaseTimeout(Exception):
    """A case ran past its time limit."""


class FuzzFinding(AssertionError):
    """A case ended in a way the entry point does not document."""


@contextmanager
def time_limit(seconds: float):
    """Raises :class:`CaseTimeout` inside the block when it runs longer than ``seconds``."""

    def _expire(signum, frame):
        raise CaseTimeout(f"no result within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_case(
    call: Callable[[], object],
    *,
    case: str,
    documented: Sequence[type[BaseException]],
    names: Iterable[str] = (),
    must_fail: bool = False,
    must_pass: bool = False,
    timeout: float = 10.0,
    key: Optional[str] = None,
) -> str:
    """Runs ``call()`` once and checks its outcome (see the module docstring).

    Args:
        case: a description of the input, repeated in every finding.
        documented: the exception types the entry point documents.
        names: strings every documented error message must contain (the file's path).
        must_fail: the input violates the schema; returning normally is a finding.
        must_pass: the input is valid; any error is a finding (a control against a harness that refuses all).
        key: the key or field at fault, which the message must also name.
    Returns:
        ``"accepted"`` or ``"refused:<ExceptionType>"``.
    """
    try:
        with time_limit(timeout):
            call()
    except CaseTimeout as e:
        raise FuzzFinding(f"{case}: hangs ({e})") from None
    except tuple(documented) as e:
        if must_pass:
            raise FuzzFinding(f"{case}: a valid input was refused: {type(e).__name__}: {e}") from e
        message = str(e)
        for name in [*names, *([key] if key else [])]:
            if name not in message:
                raise FuzzFinding(
                    f"{case}: {type(e).__name__} does not name {name!r}: {message[:500]}"
                ) from e
        return f"refused:{type(e).__name__}"
    except Exception as e:
        trace = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
        raise FuzzFinding(f"{case}: undocumented {type(e).__name__} escaped: {e}\n{trace}") from e
    if must_fail:
        raise FuzzFinding(f"{case}: accepted silently")
    return "accepted"
