"""Command lines: thin wrappers (parse flags, call library code)."""
