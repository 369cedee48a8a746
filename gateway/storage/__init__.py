"""Durable storage shared by the hub's ledger and the bank nodes' stores."""
