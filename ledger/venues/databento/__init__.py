"""The Databento MBO venue: DBN files (plain or zstd) to typed records and stored rows
(:mod:`.dbn`), and Databento's book rules (:mod:`.rules`). See ``docs/venues/databento.md``."""

from ledger.venues import Venue
from ledger.venues.databento.rules import DatabentoRules

VENUE = Venue(name="databento", rules=DatabentoRules, fields=("flags", "ts_event"), dense_seqs=False)
