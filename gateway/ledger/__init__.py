"""The hub's durable record of transactions, behind one small interface."""

from gateway.ledger.base import Ledger
from gateway.ledger.sqlite import SqliteLedger

__all__ = ["Ledger", "SqliteLedger"]
