"""The L3 CSV venue: the file format, its parser and its book rules. See ``docs/venues/csv.md``."""
