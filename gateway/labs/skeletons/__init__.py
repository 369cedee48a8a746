"""Lab files (see gateway/labs/checks.py); a package so mypy tells the copies apart."""
