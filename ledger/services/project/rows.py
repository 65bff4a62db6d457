"""One stream's projector: its venue's rules turn each stored row into a typed event, which
the pure :class:`~ledger.domain.projector.Projector` applies before the next row is decoded
(the rules are a generator: one pass, and no list of events). No I/O here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.domain.projector import L1Row, Projector, StoredKinds
from ledger.venues import Rules

__all__ = ["StreamProjector"]


class StreamProjector(Projector):
    """A :class:`~ledger.domain.projector.Projector` fed with a venue's stored rows
    ``(seq, kind, order_id, side, price, size, ts)``, decoded by that venue's rules."""

    __slots__ = ("_kinds", "rules")

    def __init__(self, error_threshold: int | None, rules: Rules) -> None:
        super().__init__(error_threshold)
        self.rules = rules
        # Rules whose records each are one book operation by kind: the rows are applied as
        # they are (Projector.apply_stored), no event made of them.
        self._kinds: StoredKinds | None = rules if hasattr(rules, "ops") else None  # type: ignore[assignment]

    def apply_rows(self, rows: Sequence[Sequence[Any]], out: list[L1Row] | None, *, l1: bool = True) -> int:
        """Apply stored rows in order (see :meth:`Projector.apply`): one event per row, so
        the count returned is a count of rows. A row the rules refuse raises when its turn
        comes, after the rows before it were applied."""
        if self._kinds is not None:
            return self.apply_stored(rows, self._kinds, out, l1=l1)
        return self.apply(self.rules.iter_events(rows), out, l1=l1)
