"""Exact numbers from stored text, through a cache: a book sees the same few hundred prices
and sizes over and over, and a dictionary lookup costs far less than making a Decimal."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NoReturn

from ledger.domain.events import Number
from ledger.errors import StreamError

__all__ = ["Numbers", "exact", "kept_exact", "unknown_kind"]


def exact(text: str) -> Number:
    """The exact number of validated decimal text: an int when it has no point, else a Decimal."""
    return Decimal(text) if "." in text else int(text)


def kept_exact(known: dict[str, Number], value: Any) -> Any:
    """The exact number of a stored text (:func:`exact`), kept in ``known`` (cleared past
    100,000 texts), for a hot loop that looks in ``known`` first; a number (a row made in
    memory) or None as it is, never kept: ``Decimal("2.0") == 2``, and its text differs."""
    if value.__class__ is not str:
        return value
    if len(known) > 100_000:
        known.clear()
    number = known[value] = exact(value)
    return number


def unknown_kind(seq: int, kind: str, venue: str) -> NoReturn:
    """A stored record of a kind its venue's rules do not know (a log written by another version)."""
    raise StreamError(f"seq {seq}: {venue} has no event kind {kind!r}")


class Numbers:
    """``numbers(seq, text)``: the exact number ``text`` spells (an int when it has no
    point, else a Decimal). Hot loops call :attr:`get` first (the cache's own lookup, None
    on a miss) and this only on a miss. The cache is cleared past 100,000 entries."""

    __slots__ = ("_cache", "get")

    def __init__(self) -> None:
        self._cache: dict[str | None, Number] = {}
        self.get = self._cache.get

    def __call__(self, seq: int, text: str | None) -> Number:
        value = self._cache.get(text)
        if value is not None:
            return value
        if text is None:
            raise StreamError(f"seq {seq}: an event without the price or size it needs")
        if len(self._cache) > 100_000:
            self._cache.clear()
        value = self._cache[text] = exact(text)
        return value
