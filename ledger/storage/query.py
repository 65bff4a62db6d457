"""Queries of the user's own: ``ledger sql`` and :meth:`ledger.api.Ledger.sql`.

A query runs in a transaction of its own, read-only unless the caller allows writes (then it
commits when all its rows were read). A ``SELECT`` (or ``WITH``, ``VALUES``, ``TABLE``) is read
through a server-side cursor, a chunk at a time, so a result of any size streams in bounded
memory; other statements (``SHOW``, ``EXPLAIN``, and with writes allowed ``INSERT`` ...) run
as they are. Parameters are passed separately, never pasted into the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy.engine import Engine

from ledger.errors import DatabaseError, first_line
from ledger.storage.database import database_error

__all__ = ["QueryResult", "run_query"]

_STREAMABLE = re.compile(r"\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(select|with|values|table)\b", re.IGNORECASE | re.DOTALL)


@dataclass
class QueryResult:
    """The column names and an iterator over the rows (tuples), read as they are consumed."""

    columns: list[str]
    rows: Iterator[tuple[Any, ...]]


def run_query(
    engine: Engine, sql: str, params: Sequence[Any] | None = None, *, write: bool = False, chunk: int = 2_000
) -> QueryResult:
    """Run ``sql``; the result streams, and the transaction ends when the rows are consumed
    (or the iterator is closed). :class:`~ledger.errors.DatabaseError` names what failed."""
    conn = engine.raw_connection()
    driver = conn.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        if not write:  # the first statement of the transaction psycopg opens
            driver.execute("SET TRANSACTION READ ONLY")
        named = _STREAMABLE.match(sql) is not None
        cur = driver.cursor(name="ledger_sql") if named else driver.cursor()
        cur.execute(sql, params)
        columns = [c.name for c in cur.description or ()]
    except psycopg.Error as e:
        _end(conn, commit=False)
        raise _error(e, write) from None
    if not columns:  # a statement without rows: its transaction ends now
        cur.close()
        _end(conn, commit=write)
        return QueryResult(columns, iter(()))
    return QueryResult(columns, _rows(conn, cur, chunk, write))


def _rows(conn: Any, cur: Any, chunk: int, write: bool) -> Iterator[tuple[Any, ...]]:
    done = False
    try:
        while True:
            batch = cur.fetchmany(chunk)
            yield from batch
            if len(batch) < chunk:
                break
        cur.close()
        done = True
    except psycopg.Error as e:
        raise _error(e, write) from None
    finally:
        _end(conn, commit=done and write)


def _end(conn: Any, *, commit: bool) -> None:
    try:
        driver = conn.driver_connection
        if commit:
            driver.commit()
        else:
            driver.rollback()
    finally:
        conn.close()


def _error(error: psycopg.Error, write: bool) -> DatabaseError:
    """The error of the tree that :func:`~ledger.storage.database.database_error` gives the
    driver's, with a message that says it was the user's query that failed."""
    kind = type(database_error(error))
    if isinstance(error, psycopg.errors.ReadOnlySqlTransaction) and not write:
        return kind(f"{first_line(error)}: the query runs read-only; add --write to change data")
    return kind(f"the query failed: {first_line(error)}")
