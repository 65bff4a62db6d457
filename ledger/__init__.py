"""ledger: rebuild limit order books from Level-3 market data kept in PostgreSQL.

The library's entry is :func:`open` (see :mod:`ledger.api`)::

    import ledger

    with ledger.open() as lg:
        lg.ingest_csv("l3_data_v3.1.csv")
        lg.project()
        print(lg.book("csv:l3_data_v3.1").book.top())
"""

from ledger.api import L1Record, Ledger, ProjectSettings, open
from ledger.errors import LedgerError, StreamError, UnknowableBook

__all__ = ["L1Record", "Ledger", "LedgerError", "ProjectSettings", "StreamError", "UnknowableBook", "open"]
