"""The Coinbase Exchange venue: its feed codec (full and level3 channels), signing, REST
level-3 books, the per-product sync rules and the live capture (``docs/venues/coinbase.md``)."""

from ledger.venues import Venue
from ledger.venues.coinbase.rest import rest_book
from ledger.venues.coinbase.rules import CoinbaseRules, taker_of

VENUE = Venue(name="coinbase", rules=CoinbaseRules, source_book=rest_book, fill_taker=taker_of)
