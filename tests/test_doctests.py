"""The examples in the docstrings of the core, the venues' rules and formats and the
event log's COPY text run as written."""

from __future__ import annotations

import doctest
import importlib
from decimal import Decimal

import pytest

import ledger.domain.events as events

MODULES = [
    "ledger.domain.book",
    "ledger.domain.events",
    "ledger.domain.projector",
    "ledger.venues",
    "ledger.venues.csv.rules",
    "ledger.venues.coinbase.rules",
    "ledger.storage.copy",
    "ledger.venues.csv.format",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    names = {k: v for k, v in vars(events).items() if not k.startswith("_")}
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"Decimal": Decimal, **names}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0
