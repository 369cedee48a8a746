"""The embedded ledger: SQLite in WAL mode, ``synchronous=FULL``, group commit."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from gateway.storage.groupcommit import GroupCommitWriter
from gateway.transactions.model import Transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    merchant_id    TEXT NOT NULL,
    order_id       TEXT NOT NULL,
    transaction_id TEXT NOT NULL UNIQUE,
    status         TEXT NOT NULL,
    unresolved     INTEGER NOT NULL,
    expiry_ms      INTEGER,
    gross_amount   INTEGER NOT NULL,
    captured       INTEGER NOT NULL,
    refunded       INTEGER NOT NULL,
    bank           TEXT,
    updated_ms     INTEGER NOT NULL,
    record         BLOB NOT NULL,
    PRIMARY KEY (merchant_id, order_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS transactions_unresolved ON transactions(unresolved)
    WHERE unresolved = 1;
CREATE INDEX IF NOT EXISTS transactions_pending ON transactions(status)
    WHERE status = 'pending';
"""

_UPSERT = (
    "INSERT INTO transactions (merchant_id, order_id, transaction_id, status, unresolved, "
    "expiry_ms, gross_amount, captured, refunded, bank, updated_ms, record) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (merchant_id, order_id) DO UPDATE SET status=excluded.status, "
    "unresolved=excluded.unresolved, expiry_ms=excluded.expiry_ms, "
    "captured=excluded.captured, refunded=excluded.refunded, bank=excluded.bank, "
    "updated_ms=excluded.updated_ms, record=excluded.record"
)
_INSERT = (
    "INSERT INTO transactions (merchant_id, order_id, transaction_id, status, unresolved, "
    "expiry_ms, gross_amount, captured, refunded, bank, updated_ms, record) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (merchant_id, order_id) DO NOTHING"
)


def _row(tx: Transaction) -> tuple[object, ...]:
    return (tx.merchant_id, tx.order_id, tx.transaction_id, tx.status, int(tx.unresolved),
            tx.expiry_ms, tx.gross_amount, tx.captured_amount, tx.refunded_amount, tx.bank,
            tx.updated_ms, tx.to_record())


class SqliteLedger:
    def __init__(self, path: Path | str, *, synchronous: str = "FULL",
                 queue_writes_max: int = 50_000) -> None:
        self.writer = GroupCommitWriter(path, SCHEMA, synchronous=synchronous,
                                        queue_writes_max=queue_writes_max)

    async def start(self) -> None:
        self.writer.start(asyncio.get_running_loop())

    async def close(self) -> None:
        await self.writer.close()

    @property
    def queued(self) -> int:
        return self.writer.queued

    def insert_new(self, tx: Transaction) -> asyncio.Future[Transaction | None]:
        row = _row(tx)

        def work(conn: sqlite3.Connection) -> Transaction | None:
            if conn.execute(_INSERT, row).rowcount == 1:
                return None
            found = conn.execute(
                "SELECT record FROM transactions WHERE merchant_id=? AND order_id=?",
                (row[0], row[1]),
            ).fetchone()
            return Transaction.from_record(found[0])

        return self.writer.submit(work)

    def save(self, tx: Transaction) -> asyncio.Future[None]:
        row = _row(tx)
        return self.writer.submit(lambda conn: conn.execute(_UPSERT, row) and None)

    def delete(self, tx: Transaction) -> asyncio.Future[None]:
        key = (tx.merchant_id, tx.order_id)
        return self.writer.submit(lambda conn: conn.execute(
            "DELETE FROM transactions WHERE merchant_id=? AND order_id=?", key) and None)

    async def _query(self, sql: str, params: tuple[object, ...]) -> list[Transaction]:
        def work(conn: sqlite3.Connection) -> list[Transaction]:
            return [Transaction.from_record(r[0]) for r in conn.execute(sql, params)]

        result: list[Transaction] = await self.writer.submit(work)
        return result

    async def get(self, merchant_id: str, order_id: str) -> Transaction | None:
        rows = await self._query(
            "SELECT record FROM transactions WHERE merchant_id=? AND order_id=?",
            (merchant_id, order_id))
        return rows[0] if rows else None

    async def get_by_id(self, transaction_id: str) -> Transaction | None:
        rows = await self._query("SELECT record FROM transactions WHERE transaction_id=?",
                                 (transaction_id,))
        return rows[0] if rows else None

    async def unresolved(self) -> list[Transaction]:
        return await self._query("SELECT record FROM transactions WHERE unresolved=1", ())

    async def pending(self) -> list[Transaction]:
        return await self._query("SELECT record FROM transactions WHERE status='pending'", ())
