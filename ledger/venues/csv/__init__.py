"""The L3 CSV venue: the file format and its parser (:mod:`.format`) and its book rules
(:mod:`.rules`). See ``docs/venues/csv.md``."""

from ledger.venues import Venue
from ledger.venues.csv.rules import CsvRules

VENUE = Venue(name="csv", rules=CsvRules)
