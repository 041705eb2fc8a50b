"""The "did you mean" hint of every error about a misspelt name (preset, argument, config key, override)."""

from __future__ import annotations

import difflib
from typing import Callable, Iterable

__all__ = ["did_you_mean"]


def did_you_mean(
    word: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6, show: Callable[[str], str] = repr
) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the (up to ``n``) choices closest to ``word``; ``""`` when none is
    close. ``show`` writes each choice (``repr`` by default)."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)
    return f"; did you mean {' or '.join(show(c) for c in close)}?" if close else ""
