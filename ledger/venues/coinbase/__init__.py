"""The Coinbase Exchange venue: its feed codec (full and level3 channels), signing, REST
level-3 books, the per-product sync rules and the live capture (``docs/venues/coinbase.md``)."""
