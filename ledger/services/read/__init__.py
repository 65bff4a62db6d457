"""Reading: a book at any point, the live top of a book, and per-stream status."""
