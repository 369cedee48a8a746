"""Paywire's nodes: the hub, the bank nodes, the client library, the ledger and the CLI.

Everything here is an adapter around the sans-I/O core in ``protocol``, or domain logic
(ledger, routing, transaction states) that the adapters call.
"""

__version__ = "0.1.0"
