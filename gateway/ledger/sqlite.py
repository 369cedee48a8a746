"""The embedded ledger: SQLite in WAL mode, ``synchronous=FULL``, group commit.

Every statement against the ledger file is in this module (``base.py`` says why).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from pathlib import Path
from typing import Any

from gateway.ledger.base import (
    LedgerError,
    Notification,
    PruneResult,
    RetentionPolicy,
    TransactionSummary,
    Webhook,
    WebhookRow,
    event_id,
    swept_prefix,
)
from gateway.storage.groupcommit import GroupCommitWriter, execute, fetch_all
from gateway.transactions.model import Transaction, now_ms

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
    -- A rowid table: rows carry a ~1 KB record, too large for WITHOUT ROWID's clustered
    -- pages (measured: COMMIT 2.3 ms -> see BENCHMARKS.md).
    UNIQUE (merchant_id, order_id)
);
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
# Retention (prune): each merchant's resume floor, the highest seq a sweep deleted. Every
# event at or below it may be gone; the next seq is above it even if no event is left. And
# the delivered webhooks by delivery time, so a sweep finds the old ones without a scan.
_RETENTION_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS event_floors (merchant_id TEXT PRIMARY KEY, "
    "swept_seq INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS webhooks_delivered ON webhooks(delivered_ms) "
    "WHERE state = 'delivered'",
)
SCHEMA += "".join(f"{statement};\n" for statement in _RETENTION_SCHEMA)

def _row(tx: Transaction) -> tuple[object, ...]:
    return (tx.merchant_id, tx.order_id, tx.transaction_id, tx.status, int(tx.unresolved),
            tx.expiry_ms, tx.gross_amount, tx.captured_amount, tx.refunded_amount, tx.bank,
            tx.created_ms, tx.updated_ms, tx.to_record())


_COLUMNS = ("merchant_id, order_id, transaction_id, status, unresolved, expiry_ms, "
            "gross_amount, captured, refunded, bank, created_ms, updated_ms, record")
_UPDATE_ON_CONFLICT = (
    " ON CONFLICT (merchant_id, order_id) DO UPDATE SET status=excluded.status, "
    "unresolved=excluded.unresolved, expiry_ms=excluded.expiry_ms, "
    "captured=excluded.captured, refunded=excluded.refunded, bank=excluded.bank, "
    "updated_ms=excluded.updated_ms, record=excluded.record")
_EXISTING_CHUNK = 400  # keys per lookup: two parameters each, well under SQLite's limit
_ROWS_PER_STATEMENT = 500  # 13 parameters a row: under SQLite's 32766-parameter limit


def _insert_many(conn: sqlite3.Connection, head: str, rows: list[tuple[Any, ...]],
                 tail: str = "") -> None:
    """One multi-row INSERT per chunk: SQLite steps once for all of them, where
    ``executemany`` steps (and crosses between Python and C) once per row."""
    width = len(rows[0])
    one = "(" + ",".join("?" * width) + ")"
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start:start + _ROWS_PER_STATEMENT]
        sql = f"{head} VALUES {','.join([one] * len(chunk))}{tail}"
        conn.execute(sql, [v for row in chunk for v in row])


# One transaction write for the bulk writer, as sent to the writer process: a plain tuple
# ``(insert, row, note)`` — a new transaction (``insert``) or a new state of one, its row
# snapshot taken at submit (merchant, order, txid, status, ..., record), and the
# notification its status change announces as a plain tuple ``(data, webhook_url,
# body_head, body_tail)`` or None. Plain tuples of str, int and bytes, not named tuples:
# pickle writes those in C, where a named tuple (this and ``Notification``) goes through
# ``__reduce_ex__`` and ``__getnewargs__`` in Python for each, and its class is looked up on
# load — measured 5.2 against 2.3 µs per charge for the round trip (issue 12's writer).
_Write = tuple[bool, tuple[Any, ...], tuple[bytes, str | None, bytes, bytes] | None]


def _write(insert: bool, tx: Transaction, note: Notification | None) -> _Write:
    return (insert, _row(tx), None if note is None else
            (note.data, note.webhook_url, note.body_head, note.body_tail))


# A merchant's latest seq: its newest event, or, if a sweep deleted every one, the floor.
_LATEST_SEQ = ("SELECT MAX(COALESCE((SELECT MAX(seq) FROM events WHERE merchant_id = ?), 0), "
               "COALESCE((SELECT swept_seq FROM event_floors WHERE merchant_id = ?), 0))")
_LATEST_SEQS = ("SELECT merchant_id, MAX(s) FROM (SELECT merchant_id, MAX(seq) AS s FROM events "
                "GROUP BY merchant_id UNION ALL SELECT merchant_id, swept_seq FROM "
                "event_floors) GROUP BY merchant_id")


class _LedgerBulk:
    """Applies a batch of transaction writes with a few multi-row statements. Built and run
    in the ledger's writer process.

    Event sequence numbers are kept here, in the writer process, the ledger's only writer:
    read once per merchant, then counted in memory, and restored if a batch rolls back, so
    they never have gaps.
    """

    def __init__(self) -> None:
        self._seq: dict[str, int] = {}
        self._snapshot: dict[str, int] = {}

    def rollback(self) -> None:
        self._seq = dict(self._snapshot)

    def _next_seq(self, conn: sqlite3.Connection, merchant_id: str) -> int:
        seq = self._seq.get(merchant_id)
        if seq is None:
            seq = conn.execute(_LATEST_SEQ, (merchant_id, merchant_id)).fetchone()[0]
        seq += 1
        self._seq[merchant_id] = seq
        return seq

    def apply(self, conn: sqlite3.Connection, writes: list[_Write]) -> list[Any]:
        self._snapshot = dict(self._seq)
        results: list[Any] = [None] * len(writes)
        existing = self._existing(conn, [w[1][:2] for w in writes if w[0]])
        inserts, saves, events, hooks = [], [], [], []
        created = now_ms()
        for i, (insert, row, note) in enumerate(writes):
            if insert:
                stored = existing.get(row[:2])
                if stored is not None:
                    results[i] = Transaction.from_record(stored)
                    continue
                inserts.append(row)
            else:
                saves.append(row)
            if note is None:
                continue
            data, webhook_url, body_head, body_tail = note
            merchant_id, txid, status = row[0], row[2], row[3]
            seq = self._next_seq(conn, merchant_id)
            results[i] = seq
            events.append((merchant_id, seq, txid, status, created, data))
            if webhook_url is not None:
                hooks.append((merchant_id, txid, event_id(merchant_id, seq), webhook_url,
                              body_head + str(seq).encode() + body_tail, created, created))
        if inserts:
            _insert_many(conn, f"INSERT INTO transactions ({_COLUMNS})", inserts)
        if saves:
            _insert_many(conn, f"INSERT INTO transactions ({_COLUMNS})", saves,
                         _UPDATE_ON_CONFLICT)
        if events:
            _insert_many(conn, "INSERT INTO events", events)
        if hooks:
            _insert_many(conn, "INSERT INTO webhooks (merchant_id, transaction_id, event_id, "
                               "url, body, state, attempts, next_attempt_ms, created_ms)",
                         [(m, t, e, u, b, "pending", 0, n, c) for m, t, e, u, b, n, c in hooks])
        return results

    def _existing(self, conn: sqlite3.Connection, keys: list[tuple[Any, ...]]
                  ) -> dict[tuple[Any, ...], bytes]:
        found: dict[tuple[Any, ...], bytes] = {}
        for start in range(0, len(keys), _EXISTING_CHUNK):
            chunk = keys[start:start + _EXISTING_CHUNK]
            params = [v for key in chunk for v in key]
            for m, o, rec in conn.execute(existing_sql(len(chunk)), params):
                found[(m, o)] = rec
        return found


def existing_sql(keys: int) -> str:
    """The stored records among ``keys`` (merchant, order) pairs.

    Written as a join from the key list so SQLite searches the (merchant_id, order_id)
    index once per key. The row-value form ``WHERE (merchant_id, order_id) IN (VALUES ...)``
    is planned as a scan of the whole table: it made every commit cost O(ledger size), and
    throughput fell as the ledger grew (BENCHMARKS.md). A test checks the plan.
    """
    marks = ",".join("(?,?)" for _ in range(keys))
    return ("SELECT t.merchant_id, t.order_id, t.record "
            f"FROM (VALUES {marks}) AS k JOIN transactions AS t "
            "ON t.merchant_id = k.column1 AND t.order_id = k.column2")


# Webhook bookkeeping: calls run in the writer process, so module-level functions.
def _webhook_delivered(conn: sqlite3.Connection, wid: int, attempts: int, at_ms: int) -> None:
    conn.execute("UPDATE webhooks SET state='delivered', attempts=?, delivered_ms=?, "
                 "last_error=NULL WHERE id=?", (attempts, at_ms, wid))


def _webhook_retry(conn: sqlite3.Connection, wid: int, attempts: int, next_ms: int,
                   error: str | None) -> None:
    # Pending only: an attempt's late outcome never undoes a delivery recorded meanwhile.
    conn.execute("UPDATE webhooks SET attempts=?, next_attempt_ms=?, last_error=? "
                 "WHERE id=? AND state='pending'", (attempts, next_ms, error, wid))


def _webhook_dead(conn: sqlite3.Connection, wid: int, attempts: int, error: str | None
                  ) -> None:
    conn.execute("UPDATE webhooks SET state='dead', attempts=?, last_error=? "
                 "WHERE id=? AND state='pending'", (attempts, error, wid))


# Retention: a loose index scan of the events' primary key, one step per merchant (not a
# scan of every event, which SELECT DISTINCT would be).
_EVENT_MERCHANTS = """
WITH RECURSIVE m(id) AS (
    SELECT MIN(merchant_id) FROM events
    UNION ALL
    SELECT (SELECT MIN(merchant_id) FROM events WHERE merchant_id > m.id) FROM m
    WHERE m.id IS NOT NULL)
SELECT id FROM m WHERE id IS NOT NULL
"""
# The lowest seq of a merchant's events whose webhook is pending: event_id() is
# "evt_<merchant>_<seq>", so the seq starts at character len(merchant) + 6.
_PENDING_SEQ_MIN = ("SELECT MIN(CAST(substr(event_id, ?) AS INTEGER)) FROM webhooks "
                    "WHERE state = 'pending' AND merchant_id = ?")


def _prune(conn: sqlite3.Connection, policy: RetentionPolicy, now: int, dry_run: bool
           ) -> PruneResult:
    """``Ledger.prune`` on one connection inside the caller's transaction (the writer's
    batch, or the tools' ``BEGIN IMMEDIATE``)."""
    hooks_before = now - policy.webhooks_delivered_keep_ms
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM webhooks WHERE state = 'delivered' AND delivered_ms < ? "
        "ORDER BY delivered_ms LIMIT ?", (hooks_before, policy.rows_max))]
    if ids and not dry_run:
        for start in range(0, len(ids), _EXISTING_CHUNK):
            chunk = ids[start:start + _EXISTING_CHUNK]
            conn.execute(f"DELETE FROM webhooks WHERE state = 'delivered' AND id IN "
                         f"({','.join('?' * len(chunk))})", chunk)
    events_before = now - policy.events_resume_horizon_ms
    budget = policy.rows_max
    events = 0
    floors: dict[str, int] = {}
    for (merchant,) in conn.execute(_EVENT_MERCHANTS).fetchall():
        if budget <= 0:
            break
        pending_min = conn.execute(_PENDING_SEQ_MIN, (len(merchant) + 6, merchant)
                                   ).fetchone()[0]
        rows = conn.execute("SELECT seq, created_ms FROM events WHERE merchant_id = ? "
                            "ORDER BY seq LIMIT ?", (merchant, budget)).fetchall()
        last, count = swept_prefix(rows, events_before, pending_min)
        if last is None:
            continue
        if not dry_run:
            conn.execute("DELETE FROM events WHERE merchant_id = ? AND seq <= ?",
                         (merchant, last))
            conn.execute("INSERT INTO event_floors VALUES (?, ?) ON CONFLICT (merchant_id) "
                         "DO UPDATE SET swept_seq = MAX(swept_seq, excluded.swept_seq)",
                         (merchant, last))
        floors[merchant] = last
        events += count
        budget -= count
    return PruneResult(len(ids), events, floors)


# Per transaction only the oldest pending row is eligible (order per transaction).
_DUE = """
SELECT id, merchant_id, transaction_id, event_id, url, body, attempts FROM webhooks w
WHERE state = 'pending' AND next_attempt_ms <= ?
  AND id = (SELECT MIN(id) FROM webhooks v WHERE v.transaction_id = w.transaction_id
            AND v.state = 'pending')
ORDER BY id LIMIT ?
"""


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


class SqliteLedger:
    shared = False  # one hub per file (its lock): no cross-hub coordination to pay for

    def __init__(self, path: Path | str, *, synchronous: str = "FULL",
                 queue_writes_max: int = 50_000) -> None:
        # One writing process per ledger file: the bulk writer numbers events in memory.
        self.path = Path(path)
        self.writer = GroupCommitWriter(path, SCHEMA, synchronous=synchronous,
                                        queue_writes_max=queue_writes_max, bulk=_LedgerBulk,
                                        exclusive="ledger")
        self.stats = self.writer.stats  # writes per commit, commit time (/metrics)
        # The webhook outbox is polled on a read-only connection of its own, in one thread
        # (sqlite3 objects stay on their thread): polls never queue behind the writer's
        # commits, and a WAL reader never blocks the writer.
        self._reader: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def start(self) -> None:
        await self.writer.start()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "ledger-reader")

    async def close(self) -> None:
        await self.writer.close()
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor,
                                                             self._close_reader)
            self._executor.shutdown(wait=False)
            self._executor = None

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def queued(self) -> int:
        return self.writer.queued

    @property
    def died(self) -> asyncio.Future[None] | None:
        """Done if the ledger's writer process exited under the hub."""
        return self.writer.died

    def insert_new(self, tx: Transaction, note: Notification | None = None
                   ) -> asyncio.Future[Transaction | int | None]:
        return self.writer.submit_record(_write(True, tx, note))

    def save(self, tx: Transaction, note: Notification | None = None) -> asyncio.Future[int | None]:
        return self.writer.submit_record(_write(False, tx, note))

    def delete(self, tx: Transaction) -> asyncio.Future[None]:
        key = (tx.merchant_id, tx.order_id)
        return self.writer.submit(
            execute, "DELETE FROM transactions WHERE merchant_id=? AND order_id=?", key)

    async def _query(self, sql: str, params: tuple[object, ...]) -> list[Transaction]:
        rows: list[tuple[bytes]] = await self.writer.submit(fetch_all, sql, params)
        return [Transaction.from_record(r[0]) for r in rows]

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
        rows: list[tuple[str, int]] = await self.writer.submit(fetch_all, _LATEST_SEQS)
        return dict(rows)

    async def event_floors(self) -> dict[str, int]:
        rows: list[tuple[str, int]] = await self.writer.submit(
            fetch_all, "SELECT merchant_id, swept_seq FROM event_floors")
        return dict(rows)

    async def prune(self, policy: RetentionPolicy, now_ms: int, dry_run: bool = False
                    ) -> PruneResult:
        # A call in the writer process: one savepoint of a group commit, bounded by rows_max.
        result: PruneResult = await self.writer.submit(_prune, policy, now_ms, dry_run)
        return result

    async def events_after(self, merchant_id: str, seq: int, limit: int
                           ) -> list[tuple[int, bytes]]:
        rows: list[tuple[int, bytes]] = await self.writer.submit(
            fetch_all, "SELECT seq, data FROM events WHERE merchant_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?", (merchant_id, seq, limit))
        return rows

    async def due_webhooks(self, now_ms: int, limit: int) -> list[Webhook]:
        assert self._executor is not None, "start() first"
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._due,
                                                                now_ms, limit)

    def _due(self, now: int, limit: int) -> list[Webhook]:
        try:
            if self._reader is None:
                self._reader = _read_only(self.path)
            return [Webhook(*r) for r in self._reader.execute(_DUE, (now, limit))]
        except sqlite3.Error as exc:
            raise LedgerError(f"webhook outbox read failed: {exc}") from exc

    async def outbox_backlog(self) -> int:
        """Webhooks not delivered yet (pending: due or waiting for a retry; dead rows
        excluded), for /metrics: counted over the pending rows' partial index on the
        outbox reader's connection, off the loop and never queued behind commits."""
        assert self._executor is not None, "start() first"
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._backlog)

    def _backlog(self) -> int:
        try:
            if self._reader is None:
                self._reader = _read_only(self.path)
            row = self._reader.execute(
                "SELECT count(*) FROM webhooks WHERE state = 'pending'").fetchone()
            return int(row[0])
        except sqlite3.Error as exc:
            raise LedgerError(f"webhook outbox count failed: {exc}") from exc

    def webhook_delivered(self, webhook_id: int, attempts: int, at_ms: int
                          ) -> asyncio.Future[None]:
        return self.writer.submit(_webhook_delivered, webhook_id, attempts, at_ms)

    def webhook_retry(self, webhook_id: int, attempts: int, next_attempt_ms: int,
                      error: str | None) -> asyncio.Future[None]:
        return self.writer.submit(_webhook_retry, webhook_id, attempts, next_attempt_ms, error)

    def webhook_dead(self, webhook_id: int, attempts: int, error: str | None
                     ) -> asyncio.Future[None]:
        return self.writer.submit(_webhook_dead, webhook_id, attempts, error)


class SqliteLedgerTools:
    """``LedgerTools`` on a ledger file: short-lived connections of their own, beside the
    hub's writer (WAL lets them read while it commits; a write waits for its lock)."""

    WRITE_WAIT_S = 10.0  # how long a redelivery waits for the hub's writer to let go

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def webhooks(self, state: str | None = None, limit: int = 100) -> list[WebhookRow]:
        where, params = ("WHERE state = ?", (state,)) if state else ("", ())
        conn = _read_only(self.path)
        try:
            rows = conn.execute(
                f"SELECT id, merchant_id, event_id, state, attempts, last_error, url "
                f"FROM webhooks {where} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        finally:
            conn.close()
        return [WebhookRow(*r) for r in rows]

    def webhook_count(self) -> int:
        conn = _read_only(self.path)
        try:
            count: int = conn.execute("SELECT COUNT(*) FROM webhooks").fetchone()[0]
        finally:
            conn.close()
        return count

    def redeliver(self, ids: list[int], all_dead: bool = False) -> int:
        conn = sqlite3.connect(self.path, timeout=self.WRITE_WAIT_S)
        try:
            with conn:
                if all_dead:
                    cur = conn.execute("UPDATE webhooks SET state='pending', attempts=0, "
                                       "next_attempt_ms=0 WHERE state='dead'")
                else:
                    cur = conn.executemany("UPDATE webhooks SET state='pending', attempts=0, "
                                           "next_attempt_ms=0 WHERE id=?",
                                           [(i,) for i in ids])
                return cur.rowcount
        finally:
            conn.close()

    def summaries(self) -> list[TransactionSummary]:
        conn = _read_only(self.path)
        try:
            rows = conn.execute("SELECT merchant_id, order_id, transaction_id, status, "
                                "unresolved, captured, refunded, bank "
                                "FROM transactions").fetchall()
        finally:
            conn.close()
        return [TransactionSummary(m, o, t, s, bool(u), c, r, b)
                for m, o, t, s, u, c, r, b in rows]

    def transaction(self, merchant_id: str, order_id: str) -> Transaction | None:
        try:
            conn = _read_only(self.path)
            try:
                row = conn.execute("SELECT record FROM transactions WHERE merchant_id=? AND "
                                   "order_id=?", (merchant_id, order_id)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:  # no such file, not a ledger: the operator's mistake
            raise LedgerError(f"cannot read the ledger {self.path}: {exc}") from exc
        return None if row is None else Transaction.from_record(row[0])

    BACKUP_PAGES_PER_STEP = 256  # pages copied between yields to the hub's writer

    def backup(self, dest: Path | str) -> None:
        """A consistent copy of the live ledger at ``dest`` through SQLite's online backup
        API, read from a connection of its own: the hub keeps committing meanwhile (a step
        that sees a commit restarts from a consistent page set; WAL readers never block the
        writer)."""
        target = Path(dest)
        if target.exists():
            raise LedgerError(f"{target} already exists: backup refuses to overwrite a file")
        try:
            src = _read_only(self.path)
            try:
                out = sqlite3.connect(target)
                try:
                    src.backup(out, pages=self.BACKUP_PAGES_PER_STEP)
                finally:
                    out.close()
            finally:
                src.close()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot back up the ledger {self.path}: {exc}") from exc

    def prune(self, policy: RetentionPolicy, now_ms: int, dry_run: bool = False
              ) -> PruneResult:
        """``Ledger.prune`` from a connection of its own, beside the hub: ``BEGIN
        IMMEDIATE`` takes the write lock before reading (waiting ``WRITE_WAIT_S`` for the
        hub's writer), so what it reads cannot change before it deletes. The hub's writer
        keeps counting seqs from memory, above the floor."""
        try:
            conn = sqlite3.connect(self.path, timeout=self.WRITE_WAIT_S,
                                   isolation_level=None)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from exc
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # A ledger last opened by an older hub lacks the retention table and index.
                for statement in _RETENTION_SCHEMA:
                    conn.execute(statement)
                result = _prune(conn, policy, now_ms, dry_run)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot prune the ledger {self.path}: {exc}") from exc
        finally:
            conn.close()

    def transactions(self) -> list[Transaction]:
        """Every transaction, decoded, ordered by creation time (for ``ledger export``)."""
        try:
            conn = _read_only(self.path)
            try:
                rows = conn.execute("SELECT record FROM transactions "
                                    "ORDER BY created_ms, transaction_id").fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the ledger {self.path}: {exc}") from exc
        return [Transaction.from_record(r[0]) for r in rows]
