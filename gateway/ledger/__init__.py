"""The hub's durable record of transactions, behind one small interface."""

import importlib.util
from pathlib import Path

from gateway.ledger.base import (
    Ledger,
    LedgerError,
    LedgerTools,
    Notification,
    PruneResult,
    RetentionPolicy,
    SharedLedger,
    TransactionSummary,
    Webhook,
    WebhookRow,
)
from gateway.ledger.sqlite import SqliteLedger, SqliteLedgerTools

# What ``[ledger] url`` may start with; anything else there is refused at load.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(where: Path | str) -> bool:
    """Whether ``where`` names a PostgreSQL ledger (a URL) rather than a SQLite file."""
    return isinstance(where, str) and where.startswith(POSTGRES_SCHEMES)


def _require_asyncpg() -> None:
    """The PostgreSQL module is imported only when asked for: asyncpg is an optional
    dependency (``pip install 'paywire[postgres]'``), and the SQLite hub does without it."""
    if importlib.util.find_spec("asyncpg") is None:
        raise LedgerError("the PostgreSQL ledger needs asyncpg: "
                          "pip install 'paywire[postgres]'")


def open_ledger(path: Path | str, url: str | None = None, *, synchronous: str = "FULL",
                queue_writes_max: int = 50_000, connect_timeout_s: float = 10.0,
                commit_timeout_s: float = 30.0) -> Ledger:
    """The hub's ledger: PostgreSQL at ``url`` if given, else the SQLite file ``path``."""
    if url is None:
        return SqliteLedger(path, synchronous=synchronous, queue_writes_max=queue_writes_max)
    _require_asyncpg()
    from gateway.ledger.postgres import PostgresLedger

    # Shared: several hubs may open the same database (docs/postgres.md).
    return PostgresLedger(url, queue_writes_max=queue_writes_max,
                          connect_timeout_s=connect_timeout_s,
                          commit_timeout_s=commit_timeout_s, exclusive=False)


def ledger_tools(where: Path | str) -> LedgerTools:
    """Operators' access to the ledger at ``where``: the hub's ``ledger_path``, or its
    ``[ledger] url`` (``postgresql://...``)."""
    if is_postgres_url(where):
        _require_asyncpg()
        from gateway.ledger.postgres import PostgresLedgerTools

        return PostgresLedgerTools(str(where))
    return SqliteLedgerTools(where)


__all__ = ["POSTGRES_SCHEMES", "Ledger", "LedgerError", "LedgerTools", "Notification",
           "PruneResult", "RetentionPolicy", "SharedLedger", "SqliteLedger",
           "SqliteLedgerTools", "TransactionSummary", "Webhook", "WebhookRow",
           "is_postgres_url", "ledger_tools", "open_ledger"]
