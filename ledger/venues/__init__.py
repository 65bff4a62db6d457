"""Venues: everything ledger knows of one data source lives in ``ledger/venues/<name>/``."""
