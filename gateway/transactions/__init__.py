"""The transaction: its record, and the table of allowed status transitions."""
