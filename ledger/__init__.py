"""ledger: rebuild limit order books from Level-3 market data kept in PostgreSQL.

The library's entry is :func:`open` (see :mod:`ledger.api`)::

    import ledger

    with ledger.open() as lg:
        lg.ingest_csv("l3_data_v3.1.csv")
        lg.project()
        print(lg.book("csv:l3_data_v3.1").book.top())

The names below load on first use, so that ``import ledger`` (and the command line's start)
stays quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ledger.api import L1Record, Ledger, ProjectSettings, open
    from ledger.errors import LedgerError, StreamError, UnknowableBook

__all__ = ["L1Record", "Ledger", "LedgerError", "ProjectSettings", "StreamError", "UnknowableBook", "open"]

_WHERE = {
    "L1Record": "ledger.api",
    "Ledger": "ledger.api",
    "ProjectSettings": "ledger.api",
    "open": "ledger.api",
    "LedgerError": "ledger.errors",
    "StreamError": "ledger.errors",
    "UnknowableBook": "ledger.errors",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ledger' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
