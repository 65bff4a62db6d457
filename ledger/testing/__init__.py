"""Test doubles for ledger: a local Coinbase-Exchange-like exchange.

:mod:`ledger.testing.matching` is the pure matching engine that publishes full-channel
and compact ``level3`` messages (its types and formats are in :mod:`ledger.testing.market`);
:mod:`ledger.testing.flow` feeds it seeded random orders; :mod:`ledger.testing.exchange`
serves it over a websocket and the REST level-3 book, with faults on demand. Nothing here
is used by ledger at run time.
"""

from ledger.testing.credentials import Credentials, sign, subscribe_message
from ledger.testing.exchange import AUTH_CHANNELS, CHANNELS, ConnectionStats, Faults, LocalExchange
from ledger.testing.flow import RandomOrderFlow
from ledger.testing.market import (
    LEVEL3_SCHEMA,
    Bbo,
    BookEntry,
    BookView,
    Level3Message,
    Level3Snapshot,
    MatchingError,
    Message,
    OrderRejectedError,
    RestingOrder,
    SnapshotUnavailableError,
    UnknownOrderError,
    fixed_clock,
    format_amount,
    format_time,
)
from ledger.testing.matching import MatchingEngine

__all__ = [
    "AUTH_CHANNELS",
    "CHANNELS",
    "LEVEL3_SCHEMA",
    "Bbo",
    "BookEntry",
    "BookView",
    "ConnectionStats",
    "Credentials",
    "Faults",
    "Level3Message",
    "Level3Snapshot",
    "LocalExchange",
    "MatchingEngine",
    "MatchingError",
    "Message",
    "OrderRejectedError",
    "RandomOrderFlow",
    "RestingOrder",
    "SnapshotUnavailableError",
    "UnknownOrderError",
    "fixed_clock",
    "format_amount",
    "format_time",
    "sign",
    "subscribe_message",
]
