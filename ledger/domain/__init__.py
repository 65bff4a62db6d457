"""The pure core of ledger: events, the L3 book, the L1 rule and sequencing. No I/O here."""
