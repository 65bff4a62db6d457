"""Services grouped by use: ``ingest`` (files into the log), ``project`` (the log into books
and L1 rows: batch, follow mode, replay) and ``read`` (books, watch, status)."""
