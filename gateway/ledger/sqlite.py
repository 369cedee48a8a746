"""The embedded ledger: SQLite in WAL mode, ``synchronous=FULL``, group commit."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from gateway.ledger.base import Notification
from gateway.storage.groupcommit import GroupCommitWriter
from gateway.transactions.model import Transaction, now_ms
from gateway.webhooks.payload import event_id, notification_body

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
    created_ms     INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL,
    record         BLOB NOT NULL,
    PRIMARY KEY (merchant_id, order_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS transactions_created ON transactions(created_ms);
-- The event log: one row per committed status change, numbered per merchant without gaps.
CREATE TABLE IF NOT EXISTS events (
    merchant_id    TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    transaction_id TEXT NOT NULL,
    status         TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    data           BLOB NOT NULL,
    PRIMARY KEY (merchant_id, seq)
) WITHOUT ROWID;
-- The webhook outbox: written in the same commit as the status change it announces.
CREATE TABLE IF NOT EXISTS webhooks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    merchant_id     TEXT NOT NULL,
    transaction_id  TEXT NOT NULL,
    event_id        TEXT NOT NULL UNIQUE,
    url             TEXT NOT NULL,
    body            BLOB NOT NULL,
    state           TEXT NOT NULL,           -- pending | delivered | dead
    attempts        INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT,
    created_ms      INTEGER NOT NULL,
    delivered_ms    INTEGER
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks(state, next_attempt_ms) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhooks_tx ON webhooks(transaction_id, id);
CREATE INDEX IF NOT EXISTS transactions_unresolved ON transactions(unresolved)
    WHERE unresolved = 1;
CREATE INDEX IF NOT EXISTS transactions_pending ON transactions(status)
    WHERE status = 'pending';
"""

_UPSERT = (
    "INSERT INTO transactions (merchant_id, order_id, transaction_id, status, unresolved, "
    "expiry_ms, gross_amount, captured, refunded, bank, created_ms, updated_ms, record) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (merchant_id, order_id) DO UPDATE SET status=excluded.status, "
    "unresolved=excluded.unresolved, expiry_ms=excluded.expiry_ms, "
    "captured=excluded.captured, refunded=excluded.refunded, bank=excluded.bank, "
    "updated_ms=excluded.updated_ms, record=excluded.record"
)
_INSERT = (
    "INSERT INTO transactions (merchant_id, order_id, transaction_id, status, unresolved, "
    "expiry_ms, gross_amount, captured, refunded, bank, created_ms, updated_ms, record) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (merchant_id, order_id) DO NOTHING"
)


def _row(tx: Transaction) -> tuple[object, ...]:
    return (tx.merchant_id, tx.order_id, tx.transaction_id, tx.status, int(tx.unresolved),
            tx.expiry_ms, tx.gross_amount, tx.captured_amount, tx.refunded_amount, tx.bank,
            tx.created_ms, tx.updated_ms, tx.to_record())


_NEXT_SEQ = "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE merchant_id = ?"


def _write_notification(conn: sqlite3.Connection, tx: Transaction, note: Notification) -> int:
    """Event row and webhook row for a status change, inside the caller's transaction.
    The sequence number is taken here, under the write lock, so it never has gaps."""
    seq: int = conn.execute(_NEXT_SEQ, (tx.merchant_id,)).fetchone()[0]
    created = now_ms()
    conn.execute("INSERT INTO events VALUES (?,?,?,?,?,?)",
                 (tx.merchant_id, seq, tx.transaction_id, tx.status, created, note.data))
    if note.webhook_url is not None:
        conn.execute(
            "INSERT INTO webhooks (merchant_id, transaction_id, event_id, url, body, state, "
            "attempts, next_attempt_ms, created_ms) VALUES (?,?,?,?,?,'pending',0,?,?)",
            (tx.merchant_id, tx.transaction_id, event_id(tx.merchant_id, seq),
             note.webhook_url, notification_body(note.result, note.server_key, seq),
             created, created))
    return seq


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

    def insert_new(self, tx: Transaction, note: Notification | None = None
                   ) -> asyncio.Future[Transaction | int | None]:
        row = _row(tx)

        def work(conn: sqlite3.Connection) -> Transaction | int | None:
            if conn.execute(_INSERT, row).rowcount == 1:
                return _write_notification(conn, tx, note) if note is not None else None
            found = conn.execute(
                "SELECT record FROM transactions WHERE merchant_id=? AND order_id=?",
                (row[0], row[1]),
            ).fetchone()
            return Transaction.from_record(found[0])

        return self.writer.submit(work)

    def save(self, tx: Transaction, note: Notification | None = None) -> asyncio.Future[int | None]:
        row = _row(tx)

        def work(conn: sqlite3.Connection) -> int | None:
            conn.execute(_UPSERT, row)
            return _write_notification(conn, tx, note) if note is not None else None

        return self.writer.submit(work)

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

    async def created_since(self, since_ms: int) -> list[Transaction]:
        return await self._query("SELECT record FROM transactions WHERE created_ms >= ?",
                                 (since_ms,))

    async def challenged(self) -> list[Transaction]:
        return await self._query(
            "SELECT record FROM transactions WHERE status='authorize'", ())

    async def last_event_seqs(self) -> dict[str, int]:
        rows: list[tuple[str, int]] = await self.writer.submit(lambda conn: conn.execute(
            "SELECT merchant_id, MAX(seq) FROM events GROUP BY merchant_id").fetchall())
        return dict(rows)

    async def events_after(self, merchant_id: str, seq: int, limit: int
                           ) -> list[tuple[int, bytes]]:
        rows: list[tuple[int, bytes]] = await self.writer.submit(lambda conn: conn.execute(
            "SELECT seq, data FROM events WHERE merchant_id = ? AND seq > ? ORDER BY seq "
            "LIMIT ?", (merchant_id, seq, limit)).fetchall())
        return rows

    def submit(self, work: Any) -> asyncio.Future[Any]:
        """Run ``work(conn)`` in the next group commit (webhook bookkeeping)."""
        return self.writer.submit(work)
