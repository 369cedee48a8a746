"""The hub's durable record of transactions, behind one small interface."""

from pathlib import Path

from gateway.ledger.base import (
    Ledger,
    LedgerError,
    LedgerTools,
    Notification,
    TransactionSummary,
    Webhook,
    WebhookRow,
)
from gateway.ledger.sqlite import SqliteLedger, SqliteLedgerTools


def ledger_tools(path: Path | str) -> LedgerTools:
    """Operators' access to the ledger at ``path`` (the hub's ``ledger_path``)."""
    return SqliteLedgerTools(path)


__all__ = ["Ledger", "LedgerError", "LedgerTools", "Notification", "SqliteLedger",
           "SqliteLedgerTools", "TransactionSummary", "Webhook", "WebhookRow", "ledger_tools"]
