"""The PostgreSQL ledger (asyncpg): the same interface as the SQLite one, for several machines.

Every statement against the PostgreSQL ledger is in this module (``base.py`` says why).

Group commit: writes are queued on the loop; one task sends everything queued since its last
commit as *one* call of the server-side function ``paywire_apply`` (arrays, one element per
write), in autocommit mode. So a batch of intents or results is one round trip and one
commit, whatever its size, and the commit waits for the WAL flush (``synchronous_commit`` is
set ``on`` for the writer's connection, whatever the server's default; with a synchronous
standby, that also waits for the standby). Commits are in submission order: one call at a
time on one connection. If a batch fails (a unique-constraint clash on one write), it is
rolled back whole and each write is sent again alone, so one bad write fails by itself.

The schema is made for several hubs on one database (the scale-out issue); the hub opens it
``shared`` (``exclusive=False``), and ``exclusive=True`` keeps one hub per ledger with an
advisory lock (``LEDGER_LOCK_KEY``). For several hubs:

* ``transactions`` has the primary key ``(merchant_id, order_id)``; a new transaction is an
  ``INSERT .. ON CONFLICT DO NOTHING``, so of two hubs inserting the same order one wins and
  the other gets the stored transaction back (a replay), by the database's constraint;
* event numbers are allocated in the database: ``event_counters`` holds each merchant's last
  seq, locked (``FOR UPDATE``, merchants in one order, so two batches never deadlock on them)
  and advanced in the same transaction that writes the events. A rolled-back batch gives its
  numbers back with everything else: no gap, no duplicate, whichever process wrote them;
* records are the same versioned, self-describing bytes as in SQLite
  (``Transaction.to_record``), in a ``bytea`` column.

A lost connection to the server under the writer is the ledger's death (``died``): a batch in
flight may or may not have committed, and only a restart's recovery can tell.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import asyncpg

from gateway.ledger.base import (
    LedgerError,
    Notification,
    PruneResult,
    RetentionPolicy,
    TransactionSummary,
    Webhook,
    WebhookRow,
    swept_prefix,
)
from gateway.stats import CommitStats
from gateway.storage.lockfile import LockHeld
from gateway.transactions.model import Transaction, now_ms
from protocol.errors import ErrorCode, PaywireError, StorageClosed

log = logging.getLogger("paywire.ledger")
T = TypeVar("T")

SCHEMA_VERSION = 1
# Held by the hub's writer connection for its lifetime: one hub per ledger until the
# multi-hub behaviours (order locks across hubs, webhook claims, shared nonces) exist. An
# advisory lock belongs to one database, so the key needs to be unique only among ours.
LEDGER_LOCK_KEY = 0x5061_7977  # "Payw"
SCHEMA_LOCK_KEY = 0x5061_7978  # serialises schema creation of hubs starting together
# Order locks of a shared ledger: pg_advisory_lock(ORDER_LOCK_CLASS, hashtext(order key)), the
# two-int form, a key space apart from the bigint keys above. Two orders whose keys hash
# alike only wait for each other, never run wrongly.
ORDER_LOCK_CLASS = 0x5077  # "Pw"
ORDER_LOCK_POLL_S_MAX = 0.05  # the longest pause between two tries of a held order lock
NONCE_PURGE_INTERVAL_S = 10.0  # expired nonces are deleted this often (bounds the table)
BATCH_WRITES_MAX = 4_000  # writes per call of paywire_apply (~4 MB of records at most)
READ_CONNECTIONS_MAX = 4  # the reader pool: lookups, event replay, the webhook outbox
READ_TIMEOUT_S = 30.0  # one read's deadline: a request never waits on a stuck server for ever
# Closing a connection or the reader pool at stop (after the writer has committed what was
# queued): past this, the connections are dropped. A pool waits for connections still
# checked out (a read cut off by the stop), so this bounds the hub's stop, too.
CLOSE_TIMEOUT_S = 5.0
APPLICATION_NAME = "paywire-hub"

SCHEMA = """
CREATE TABLE IF NOT EXISTS paywire_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    merchant_id    text NOT NULL,
    order_id       text NOT NULL,
    transaction_id text NOT NULL UNIQUE,
    status         text NOT NULL,
    unresolved     boolean NOT NULL,
    expiry_ms      bigint,
    gross_amount   bigint NOT NULL,
    captured       bigint NOT NULL,
    refunded       bigint NOT NULL,
    bank           text,
    created_ms     bigint NOT NULL,
    updated_ms     bigint NOT NULL,
    record         bytea NOT NULL,      -- Transaction.to_record(): versioned, named fields
    PRIMARY KEY (merchant_id, order_id) -- idempotency across hubs is this constraint
);
CREATE INDEX IF NOT EXISTS transactions_created ON transactions (created_ms);
CREATE INDEX IF NOT EXISTS transactions_unresolved ON transactions (unresolved)
    WHERE unresolved;
CREATE INDEX IF NOT EXISTS transactions_pending ON transactions (status)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS transactions_challenged ON transactions (status)
    WHERE status = 'authorize';
-- Each merchant's last event seq: locked and advanced in the commit that writes the events.
CREATE TABLE IF NOT EXISTS event_counters (
    merchant_id text PRIMARY KEY,
    last_seq    bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    merchant_id    text NOT NULL,
    seq            bigint NOT NULL,
    transaction_id text NOT NULL,
    status         text NOT NULL,
    created_ms     bigint NOT NULL,
    data           bytea NOT NULL,
    PRIMARY KEY (merchant_id, seq)
);
CREATE TABLE IF NOT EXISTS webhooks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id     text NOT NULL,
    transaction_id  text NOT NULL,
    event_id        text NOT NULL UNIQUE,
    url             text NOT NULL,
    body            bytea NOT NULL,
    state           text NOT NULL,          -- pending | delivered | dead
    attempts        integer NOT NULL,
    next_attempt_ms bigint NOT NULL,
    last_error      text,
    created_ms      bigint NOT NULL,
    delivered_ms    bigint,
    -- A delivery lease (claim_webhooks): the hub delivering the row, and until when no
    -- other may take it. Any attempt's outcome ends the lease.
    claimed_by      text,
    claimed_until_ms bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (next_attempt_ms) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhooks_tx_pending ON webhooks (transaction_id, id)
    WHERE state = 'pending';
-- Request nonces spent within the timestamp window, shared by every hub of the ledger: a
-- request replayed to another hub is refused. A row is live until expires_ms (its request's
-- timestamp + the window); expired rows are purged (NONCE_PURGE_INTERVAL_S).
CREATE TABLE IF NOT EXISTS nonces (
    merchant_id text NOT NULL,
    nonce       bytea NOT NULL,
    expires_ms  bigint NOT NULL,
    PRIMARY KEY (merchant_id, nonce)
);
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_ms);
-- Retention (prune): each merchant's resume floor, the highest seq a sweep deleted (every
-- event at or below it may be gone); and delivered webhooks by delivery time, so a sweep
-- finds the old ones without a scan. (Seqs come from event_counters, which no sweep
-- touches.)
CREATE TABLE IF NOT EXISTS event_floors (
    merchant_id text PRIMARY KEY,
    swept_seq   bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_delivered ON webhooks (delivered_ms)
    WHERE state = 'delivered';
"""

# Kinds of write in a batch (the a_kind array).
INSERT, SAVE, DELETE, DELIVERED, RETRY, DEAD, NONCE = range(7)
NONCE_REPLAYED = -1  # what a NONCE write resolves to when the nonce is live already

# One batch, applied in array order. Per write: a transaction insert (nothing written if the
# order exists: its stored record is returned instead), an upsert, a delete, or a webhook's
# bookkeeping; a write with a notification (a_data not null) also writes its event and, with
# a URL, its webhook, numbered from the merchant's locked counter. Returns a row per write
# that has a result: its event seq, or the stored record of an existing order.
APPLY_FUNCTION = """
CREATE OR REPLACE FUNCTION paywire_apply(
    a_kind smallint[], a_merchant text[], a_order text[], a_txid text[], a_status text[],
    a_unresolved boolean[], a_expiry bigint[], a_gross bigint[], a_captured bigint[],
    a_refunded bigint[], a_bank text[], a_created bigint[], a_updated bigint[],
    a_record bytea[], a_data bytea[], a_url text[], a_head bytea[], a_tail bytea[],
    a_wid bigint[], a_attempts integer[], a_at bigint[], a_error text[], a_now bigint)
RETURNS TABLE (out_i integer, out_seq bigint, out_existing bytea)
LANGUAGE plpgsql AS $fn$
DECLARE
    merchants text[];
    seqs bigint[];
    p integer;
    s bigint;
BEGIN
    SELECT array_agg(DISTINCT a_merchant[j] ORDER BY a_merchant[j]) INTO merchants
        FROM generate_subscripts(a_kind, 1) AS j WHERE a_data[j] IS NOT NULL;
    IF merchants IS NOT NULL THEN
        INSERT INTO event_counters (merchant_id, last_seq)
            SELECT x, 0 FROM unnest(merchants) AS x ORDER BY x ON CONFLICT DO NOTHING;
        SELECT array_agg(c.last_seq ORDER BY c.merchant_id) INTO seqs FROM (
            SELECT merchant_id, last_seq FROM event_counters
            WHERE merchant_id = ANY (merchants) ORDER BY merchant_id FOR UPDATE) AS c;
    END IF;
    FOR j IN 1 .. coalesce(array_length(a_kind, 1), 0) LOOP
        IF a_kind[j] = 0 THEN
            INSERT INTO transactions (merchant_id, order_id, transaction_id, status,
                unresolved, expiry_ms, gross_amount, captured, refunded, bank, created_ms,
                updated_ms, record)
            VALUES (a_merchant[j], a_order[j], a_txid[j], a_status[j], a_unresolved[j],
                a_expiry[j], a_gross[j], a_captured[j], a_refunded[j], a_bank[j],
                a_created[j], a_updated[j], a_record[j])
            ON CONFLICT (merchant_id, order_id) DO NOTHING;
            IF NOT FOUND THEN
                out_i := j;
                out_seq := NULL;
                SELECT t.record INTO out_existing FROM transactions t
                    WHERE t.merchant_id = a_merchant[j] AND t.order_id = a_order[j];
                RETURN NEXT;
                CONTINUE;
            END IF;
        ELSIF a_kind[j] = 1 THEN
            INSERT INTO transactions AS t (merchant_id, order_id, transaction_id, status,
                unresolved, expiry_ms, gross_amount, captured, refunded, bank, created_ms,
                updated_ms, record)
            VALUES (a_merchant[j], a_order[j], a_txid[j], a_status[j], a_unresolved[j],
                a_expiry[j], a_gross[j], a_captured[j], a_refunded[j], a_bank[j],
                a_created[j], a_updated[j], a_record[j])
            ON CONFLICT (merchant_id, order_id) DO UPDATE SET status = excluded.status,
                unresolved = excluded.unresolved, expiry_ms = excluded.expiry_ms,
                captured = excluded.captured, refunded = excluded.refunded,
                bank = excluded.bank, updated_ms = excluded.updated_ms,
                record = excluded.record;
        ELSIF a_kind[j] = 2 THEN
            DELETE FROM transactions t
                WHERE t.merchant_id = a_merchant[j] AND t.order_id = a_order[j];
            CONTINUE;
        ELSIF a_kind[j] = 3 THEN
            UPDATE webhooks SET state = 'delivered', attempts = a_attempts[j],
                delivered_ms = a_at[j], last_error = NULL, claimed_by = NULL,
                claimed_until_ms = 0 WHERE id = a_wid[j];
            CONTINUE;
        ELSIF a_kind[j] = 4 THEN
            -- Pending only: a late outcome (this hub's lease ran out and another hub
            -- delivered the row meanwhile) never undoes a recorded delivery.
            UPDATE webhooks SET attempts = a_attempts[j], next_attempt_ms = a_at[j],
                last_error = a_error[j], claimed_by = NULL, claimed_until_ms = 0
                WHERE id = a_wid[j] AND state = 'pending';
            CONTINUE;
        ELSIF a_kind[j] = 5 THEN
            UPDATE webhooks SET state = 'dead', attempts = a_attempts[j],
                last_error = a_error[j], claimed_by = NULL, claimed_until_ms = 0
                WHERE id = a_wid[j] AND state = 'pending';
            CONTINUE;
        ELSE
            -- A request's nonce (a_record) spent until a_expiry: a row still live means a
            -- replay (-1); an expired one not purged yet is taken over.
            INSERT INTO nonces AS n (merchant_id, nonce, expires_ms)
                VALUES (a_merchant[j], a_record[j], a_expiry[j])
                ON CONFLICT (merchant_id, nonce) DO UPDATE SET expires_ms = excluded.expires_ms
                WHERE n.expires_ms < a_now;
            IF NOT FOUND THEN
                out_i := j;
                out_seq := -1;
                out_existing := NULL;
                RETURN NEXT;
            END IF;
            CONTINUE;
        END IF;
        IF a_data[j] IS NOT NULL THEN
            p := array_position(merchants, a_merchant[j]);
            s := seqs[p] + 1;
            seqs[p] := s;
            INSERT INTO events (merchant_id, seq, transaction_id, status, created_ms, data)
                VALUES (a_merchant[j], s, a_txid[j], a_status[j], a_now, a_data[j]);
            IF a_url[j] IS NOT NULL THEN
                -- event_id() and the body as base.Notification describes them.
                INSERT INTO webhooks (merchant_id, transaction_id, event_id, url, body, state,
                    attempts, next_attempt_ms, created_ms)
                VALUES (a_merchant[j], a_txid[j], 'evt_' || a_merchant[j] || '_' || s,
                    a_url[j], a_head[j] || convert_to(s::text, 'UTF8') || a_tail[j],
                    'pending', 0, a_now, a_now);
            END IF;
            out_i := j;
            out_seq := s;
            out_existing := NULL;
            RETURN NEXT;
        END IF;
    END LOOP;
    IF merchants IS NOT NULL THEN
        UPDATE event_counters c SET last_seq = v.s
            FROM unnest(merchants, seqs) AS v(m, s) WHERE c.merchant_id = v.m;
    END IF;
END
$fn$;
"""

_APPLY = ("SELECT out_i, out_seq, out_existing FROM paywire_apply($1, $2, $3, $4, $5, $6, $7, "
          "$8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)")
_FIELDS = 22  # arrays per batch, before a_now


class _Op(NamedTuple):
    """One queued write, snapshotted at submission: ``_FIELDS`` values for the arrays."""

    kind: int
    values: tuple[Any, ...]


_NO_TX = (None,) * 13
_NO_NOTE = (None, None, None, None)
_NO_HOOK = (None, None, None, None)


def _tx_values(tx: Transaction) -> tuple[Any, ...]:
    return (tx.merchant_id, tx.order_id, tx.transaction_id, tx.status, tx.unresolved,
            tx.expiry_ms, tx.gross_amount, tx.captured_amount, tx.refunded_amount, tx.bank,
            tx.created_ms, tx.updated_ms, tx.to_record())


def _note_values(note: Notification | None) -> tuple[Any, ...]:
    if note is None:
        return _NO_NOTE
    return (note.data, note.webhook_url, note.body_head, note.body_tail)


def _arrays(ops: list[_Op]) -> list[list[Any]]:
    columns: list[list[Any]] = [[op.kind for op in ops]]
    columns += [list(c) for c in zip(*(op.values for op in ops), strict=True)]
    return columns


_DUE = """
SELECT id, merchant_id, transaction_id, event_id, url, body, attempts FROM webhooks w
WHERE state = 'pending' AND next_attempt_ms <= $1
  AND id = (SELECT min(v.id) FROM webhooks v WHERE v.transaction_id = w.transaction_id
            AND v.state = 'pending')
ORDER BY id LIMIT $2
"""


# Per transaction only its oldest pending row, and only while no other hub's lease holds
# it: so each notification is delivered by one hub at a time, in order per transaction. Rows
# another hub is claiming at this instant are skipped, not waited for.
_CLAIM = """
WITH due AS (
    SELECT id FROM webhooks w
    WHERE state = 'pending' AND next_attempt_ms <= $1 AND claimed_until_ms <= $1
      AND id = (SELECT min(v.id) FROM webhooks v WHERE v.transaction_id = w.transaction_id
                AND v.state = 'pending')
    ORDER BY id LIMIT $4
    FOR UPDATE SKIP LOCKED)
UPDATE webhooks h SET claimed_by = $2, claimed_until_ms = $1 + $3
FROM due WHERE h.id = due.id
RETURNING h.id, h.merchant_id, h.transaction_id, h.event_id, h.url, h.body, h.attempts
"""


# Retention. One sweep at a time on a ledger, whichever hub (or ``paywire ledger prune``)
# runs it: a transaction-level advisory lock, tried, not waited for; a sweep that does not
# get it finds nothing to do (the one holding it is doing it). Deletes are idempotent
# anyway, and only rows in a final state go (``delivered``: no lease, no claim left).
RETENTION_LOCK_KEY = 0x5061_7979
_PRUNE_WEBHOOKS = """
WITH gone AS (
    SELECT id FROM webhooks WHERE state = 'delivered' AND delivered_ms < $1
    ORDER BY delivered_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
DELETE FROM webhooks h USING gone WHERE h.id = gone.id AND h.state = 'delivered'
"""
_OLD_WEBHOOKS = """
SELECT count(*) FROM (SELECT 1 FROM webhooks WHERE state = 'delivered' AND delivered_ms < $1
                      LIMIT $2) AS x
"""
# The lowest seq of a merchant's events whose webhook is pending: event_id() is
# "evt_<merchant>_<seq>", so the seq starts at character length(merchant) + 6.
_PENDING_SEQ_MIN = """
SELECT min(substr(event_id, length($1) + 6)::bigint) FROM webhooks
WHERE state = 'pending' AND merchant_id = $1
"""


async def prune_on(conn: asyncpg.Connection, policy: RetentionPolicy, now: int,
                   dry_run: bool) -> PruneResult:
    """``Ledger.prune`` in one transaction of ``conn`` (each statement bounded by
    ``READ_TIMEOUT_S``)."""
    t = READ_TIMEOUT_S
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                   RETENTION_LOCK_KEY, timeout=t):
            return PruneResult(0, 0, {})
        hooks_before = now - policy.webhooks_delivered_keep_ms
        if dry_run:
            hooks = int(await conn.fetchval(_OLD_WEBHOOKS, hooks_before, policy.rows_max,
                                            timeout=t))
        else:
            done = await conn.execute(_PRUNE_WEBHOOKS, hooks_before, policy.rows_max,
                                      timeout=t)
            hooks = int(done.split()[-1])  # the command tag: "DELETE n"
        events_before = now - policy.events_resume_horizon_ms
        budget = policy.rows_max
        events = 0
        floors: dict[str, int] = {}
        merchants = await conn.fetch("SELECT merchant_id FROM event_counters "
                                     "ORDER BY merchant_id", timeout=t)
        for (merchant,) in merchants:
            if budget <= 0:
                break
            pending_min = await conn.fetchval(_PENDING_SEQ_MIN, merchant, timeout=t)
            rows = await conn.fetch("SELECT seq, created_ms FROM events WHERE merchant_id = $1 "
                                    "ORDER BY seq LIMIT $2", merchant, budget, timeout=t)
            last, count = swept_prefix([(r[0], r[1]) for r in rows], events_before,
                                       pending_min)
            if last is None:
                continue
            if not dry_run:
                await conn.execute("DELETE FROM events WHERE merchant_id = $1 AND seq <= $2",
                                   merchant, last, timeout=t)
                await conn.execute(
                    "INSERT INTO event_floors AS f VALUES ($1, $2) ON CONFLICT (merchant_id) "
                    "DO UPDATE SET swept_seq = greatest(f.swept_seq, excluded.swept_seq)",
                    merchant, last, timeout=t)
            floors[merchant] = last
            events += count
            budget -= count
        return PruneResult(hooks, events, floors)


async def _connect(url: str, timeout_s: float) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        url, timeout=timeout_s,
        server_settings={"application_name": APPLICATION_NAME, "synchronous_commit": "on"})
    return conn


async def create_schema(conn: asyncpg.Connection) -> None:
    """Create (or check) the schema, serialised between processes starting together."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
        await conn.execute(SCHEMA)
        found = await conn.fetchval("SELECT value FROM paywire_meta "
                                    "WHERE key = 'schema_version'")
        if found is not None and int(found) > SCHEMA_VERSION:
            # A newer hub changed the schema: this code could misread or damage it.
            raise LedgerError(f"the ledger's schema version is {found}; this paywire "
                              f"knows version {SCHEMA_VERSION} at most")
        if found is None:
            await conn.execute("INSERT INTO paywire_meta VALUES ('schema_version', $1)",
                               str(SCHEMA_VERSION))
        await conn.execute(APPLY_FUNCTION)


# What a connection attempt raises when the server is unreachable or refuses us.
_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _lost(exc: BaseException, conn: asyncpg.Connection) -> bool:
    """Whether ``exc`` means the connection (not one write) failed."""
    if isinstance(exc, asyncpg.PostgresError):
        return conn.is_closed()
    return True  # OSError, timeouts, InterfaceError: the outcome of the call is unknown


class PostgresLedger:
    """``Ledger`` on a PostgreSQL database; see the module's docstring."""

    def __init__(self, url: str, *, queue_writes_max: int = 50_000,
                 connect_timeout_s: float = 10.0, commit_timeout_s: float = 30.0,
                 lock_wait_s: float = 10.0, exclusive: bool = True) -> None:
        self.url = url
        self.queue_writes_max = queue_writes_max
        self.connect_timeout_s = connect_timeout_s
        self.commit_timeout_s = commit_timeout_s
        # A hub killed a moment ago may still hold the lock until its server session ends.
        self.lock_wait_s = lock_wait_s
        # True: one hub per ledger (a session advisory lock, as a SQLite file's lock). The
        # hub opens its PostgreSQL ledger shared (``exclusive=False``): several hubs at once,
        # with the order locks, nonces and claims below (docs/postgres.md).
        self.exclusive = exclusive
        # The connection holding this hub's order locks (shared ledgers): session-level
        # advisory locks, so they go with the session if the hub dies (kill -9 included).
        self._lock_conn: asyncpg.Connection | None = None
        self._lock_use = asyncio.Lock()  # one statement at a time on that connection
        self._purger: asyncio.Task[None] | None = None
        self.nonce_purge_interval_s = NONCE_PURGE_INTERVAL_S
        self._conn: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._queue: list[tuple[_Op, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last: asyncio.Future[Any] | None = None  # the newest write submitted
        self._died: asyncio.Future[None] | None = None
        self._closing = False
        self._failed = False
        self._in_flight = 0
        self.commits = 0
        self.stats = CommitStats()  # writes per commit and commit time (gateway/stats.py)

    async def start(self) -> None:
        """Connect, take the ledger's lock (``LockHeld`` if another hub has it), create
        the schema; ``LedgerError`` (one line, for the operator) if the server cannot be
        reached or refuses."""
        loop = asyncio.get_running_loop()
        try:
            conn = await _connect(self.url, self.connect_timeout_s)
        except _UNREACHABLE as exc:
            raise LedgerError(f"cannot open the ledger {_safe_url(self.url)}: "
                              f"{exc!r}") from exc
        try:
            if self.exclusive:
                await self._lock(conn)
            await create_schema(conn)
            if not self.exclusive:
                self._lock_conn = await _connect(self.url, self.connect_timeout_s)
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=READ_CONNECTIONS_MAX,
                timeout=self.connect_timeout_s,
                server_settings={"application_name": APPLICATION_NAME})
        except _UNREACHABLE as exc:
            await self._close_partial(conn)
            raise LedgerError(f"cannot open the ledger {_safe_url(self.url)}: "
                              f"{exc!r}") from exc
        except BaseException:
            await self._close_partial(conn)
            raise
        self._conn = conn
        self._died = loop.create_future()
        conn.add_termination_listener(self._terminated)
        if self._lock_conn is not None:
            self._lock_conn.add_termination_listener(self._terminated)
            self._purger = asyncio.create_task(self._purge_nonces(), name="ledger-nonce-purge")
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def _close_partial(self, conn: asyncpg.Connection) -> None:
        await conn.close()
        if self._lock_conn is not None:
            await self._lock_conn.close()
            self._lock_conn = None

    @property
    def shared(self) -> bool:
        """Whether other hubs may write this ledger too: the hub then takes the order locks
        here (``lock_order``), reads through its cache, spends nonces here and claims
        webhooks (docs/postgres.md)."""
        return not self.exclusive

    # --- several hubs: order locks and nonces -------------------------------------------
    async def _on_lock_conn(self, sql: str, *args: Any) -> Any:
        conn = self._lock_conn
        assert conn is not None, "a shared ledger, started"
        try:
            async with self._lock_use:
                return await conn.fetchval(sql, *args, timeout=READ_TIMEOUT_S)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            if self._closing:
                # Closed under a late unlock (work cancelled at the hub's stop): the locks
                # go with the session; a stop is not the ledger dying (exit code 1).
                raise StorageClosed("the ledger is closed") from None
            # Whether the lock is held is unknown now: this hub must not go on (its locks
            # went with the session if the session is gone).
            self._die(f"the order-lock connection failed: {exc!r}")
            raise StorageClosed("the ledger's lock connection failed; this node is "
                                "stopping") from None

    async def lock_order(self, merchant_id: str, order_id: str, wait_s: float) -> bool:
        """Take the order's lock across hubs, waiting up to ``wait_s``; ``False`` if another
        hub still held it then. Held until ``unlock_order``, or until this hub's session with
        the server ends (it died): the lease a dead hub's orders are taken over by.

        Tries without blocking the connection (which holds every order lock of this hub) and
        polls while another hub holds it: two hubs work on one order at once only for
        duplicates and races, rare, and then briefly or for one bank call."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        pause_s = 0.002
        while True:
            if await self._on_lock_conn("SELECT pg_try_advisory_lock($1, hashtext($2))",
                                        ORDER_LOCK_CLASS, f"{merchant_id}\x1f{order_id}"):
                return True
            if loop.time() + pause_s > deadline:
                return False
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, ORDER_LOCK_POLL_S_MAX)

    async def unlock_order(self, merchant_id: str, order_id: str) -> None:
        await self._on_lock_conn("SELECT pg_advisory_unlock($1, hashtext($2))",
                                 ORDER_LOCK_CLASS, f"{merchant_id}\x1f{order_id}")

    def spend_nonce(self, merchant_id: str, nonce: bytes, expires_ms: int
                    ) -> asyncio.Future[int | None]:
        """Record a request's nonce as spent until ``expires_ms``, in the next group commit;
        resolves to ``NONCE_REPLAYED`` if any hub of the ledger spent it and it has not
        expired, else ``None``. Futures resolve in submission order, like every write."""
        row = (merchant_id, None, None, None, None, expires_ms, None, None, None, None,
               None, None, nonce)
        return self._submit(_Op(NONCE, (*row, *_NO_NOTE, *_NO_HOOK)))

    async def _purge_nonces(self) -> None:
        """Delete expired nonces now and then: the table holds only live ones (a bound:
        requests accepted within the window, plus one purge interval)."""
        while not self._closing and not self._failed:
            await asyncio.sleep(self.nonce_purge_interval_s)
            try:
                assert self._pool is not None
                await self._pool.execute("DELETE FROM nonces WHERE expires_ms < $1", now_ms(),
                                         timeout=READ_TIMEOUT_S)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                    TimeoutError) as exc:
                log.warning("purging expired nonces failed (tried again later): %r", exc)

    async def _lock(self, conn: asyncpg.Connection) -> None:
        await conn.execute(f"SET lock_timeout = {int(self.lock_wait_s * 1000)}")
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", LEDGER_LOCK_KEY)
        except asyncpg.LockNotAvailableError:
            holder = await conn.fetchrow(
                "SELECT a.pid, a.application_name, a.client_addr::text AS addr "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.objid = $1 AND l.granted",
                LEDGER_LOCK_KEY)
            who = (f"server session {holder['pid']} ({holder['application_name']} from "
                   f"{holder['addr'] or 'a local socket'})" if holder else "another session")
            raise LockHeld(f"ledger {_safe_url(self.url)} is in use by {who}; one hub per "
                           f"ledger") from None
        finally:
            await conn.execute("RESET lock_timeout")

    def _terminated(self, conn: Any) -> None:
        if not self._closing:
            self._die("the connection to the ledger's database was lost")

    def _die(self, why: str) -> None:
        if self._died is not None and not self._died.done():
            log.critical("ledger %s: %s", _safe_url(self.url), why)
            self._died.set_result(None)
        self._failed = True
        queued, self._queue = self._queue, []
        for _, fut in queued:
            if not fut.done():
                fut.set_exception(StorageClosed("the ledger's database connection was lost "
                                                "before committing; this node is stopping"))
        self._wake.set()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task  # commits what is queued, then returns
        if self._purger is not None:
            self._purger.cancel()
        for conn in (self._conn, self._lock_conn):  # the lock's: releases this hub's locks
            if conn is not None:
                try:
                    await conn.close(timeout=CLOSE_TIMEOUT_S)
                except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    conn.terminate()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("ledger: the reader pool did not close within %g s (a read still "
                            "running?): its connections are dropped", CLOSE_TIMEOUT_S)
                self._pool.terminate()

    @property
    def queued(self) -> int:
        return len(self._queue) + self._in_flight

    @property
    def died(self) -> asyncio.Future[None] | None:
        """Done if the writer's connection was lost under the hub."""
        return self._died

    # --- writes -------------------------------------------------------------------------
    def _submit(self, op: _Op) -> asyncio.Future[Any]:
        if self._task is None:
            raise RuntimeError("start() first")
        if self._closing:
            raise StorageClosed("storage is closing")
        if self._failed:
            raise StorageClosed("the ledger's database connection was lost; this node is "
                                "stopping")
        if self.queued >= self.queue_writes_max:
            raise PaywireError("storage queue is full", code=ErrorCode.QUEUE_FULL)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        self._last = fut
        self._wake.set()
        return fut

    def insert_new(self, tx: Transaction, note: Notification | None = None
                   ) -> asyncio.Future[Transaction | int | None]:
        return self._submit(_Op(INSERT, (*_tx_values(tx), *_note_values(note), *_NO_HOOK)))

    def save(self, tx: Transaction, note: Notification | None = None) -> asyncio.Future[int | None]:
        return self._submit(_Op(SAVE, (*_tx_values(tx), *_note_values(note), *_NO_HOOK)))

    def delete(self, tx: Transaction) -> asyncio.Future[None]:
        row = (tx.merchant_id, tx.order_id, *_NO_TX[2:])
        return self._submit(_Op(DELETE, (*row, *_NO_NOTE, *_NO_HOOK)))

    def _webhook(self, kind: int, wid: int, attempts: int, at_ms: int | None,
                 error: str | None) -> asyncio.Future[None]:
        return self._submit(_Op(kind, (*_NO_TX, *_NO_NOTE, wid, attempts, at_ms, error)))

    def webhook_delivered(self, webhook_id: int, attempts: int, at_ms: int
                          ) -> asyncio.Future[None]:
        return self._webhook(DELIVERED, webhook_id, attempts, at_ms, None)

    def webhook_retry(self, webhook_id: int, attempts: int, next_attempt_ms: int,
                      error: str | None) -> asyncio.Future[None]:
        return self._webhook(RETRY, webhook_id, attempts, next_attempt_ms, error)

    def webhook_dead(self, webhook_id: int, attempts: int, error: str | None
                     ) -> asyncio.Future[None]:
        return self._webhook(DEAD, webhook_id, attempts, None, error)

    async def _run(self) -> None:
        """The group-commit loop: one call of ``paywire_apply`` per batch, one at a time."""
        while True:
            if not self._queue:
                if self._closing or self._failed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            taken = self._queue[:BATCH_WRITES_MAX]
            del self._queue[:BATCH_WRITES_MAX]
            # Transaction writes first, then the rest, each in submission order (base.py).
            batch = [w for w in taken if w[0].kind <= SAVE] + \
                    [w for w in taken if w[0].kind > SAVE]
            self._in_flight = len(batch)
            try:
                await self._commit(batch)
            finally:
                self._in_flight = 0
            if self._failed:
                return

    async def _commit(self, batch: list[tuple[_Op, asyncio.Future[Any]]]) -> None:
        conn = self._conn
        assert conn is not None
        try:
            rows = await self._call(conn, [op for op, _ in batch])
        except Exception as exc:
            if _lost(exc, conn):
                self._fail_all(batch, exc)
                return
            if len(batch) == 1:
                _resolve(batch[0][1], exc)
                return
            # One write spoiled the batch (rolled back whole): each alone, so it fails alone.
            for item in batch:
                await self._commit([item])
                if self._failed:
                    self._fail_all(batch, exc)
                    return
            return
        results: list[Any] = [None] * len(batch)
        for i, seq, existing in rows:
            results[i - 1] = Transaction.from_record(existing) if existing is not None else seq
        for (_, fut), value in zip(batch, results, strict=True):
            _resolve(fut, value)

    async def _call(self, conn: asyncpg.Connection, ops: list[_Op]) -> list[Any]:
        started_ns = time.perf_counter_ns()
        rows = await conn.fetch(_APPLY, *_arrays(ops), now_ms(),
                                timeout=self.commit_timeout_s)
        self.commits += 1
        # For /metrics: the round trip of the commit (the WAL flush included).
        self.stats.committed(len(ops), (time.perf_counter_ns() - started_ns) // 1000)
        return [tuple(r) for r in rows]

    def _fail_all(self, batch: list[tuple[_Op, asyncio.Future[Any]]],
                  exc: BaseException) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(StorageClosed(
                    "the ledger's database connection failed during a commit whose outcome "
                    "is unknown; this node is stopping"))
        self._die(f"commit failed: {exc!r}")

    # --- reads --------------------------------------------------------------------------
    async def _after_writes(self) -> asyncpg.Pool:
        """Reads see every write submitted before them (as the SQLite writer's queue
        gives): wait until the newest submitted write is answered, then read."""
        last = self._last
        if last is not None and not last.done():
            await asyncio.wait([last])
        assert self._pool is not None, "start() first"
        return self._pool

    async def _records(self, sql: str, *args: Any) -> list[Transaction]:
        pool = await self._after_writes()
        rows = await pool.fetch(sql, *args, timeout=READ_TIMEOUT_S)
        return [Transaction.from_record(r[0]) for r in rows]

    async def get(self, merchant_id: str, order_id: str) -> Transaction | None:
        rows = await self._records("SELECT record FROM transactions WHERE merchant_id = $1 "
                                   "AND order_id = $2", merchant_id, order_id)
        return rows[0] if rows else None

    async def get_by_id(self, transaction_id: str) -> Transaction | None:
        rows = await self._records("SELECT record FROM transactions WHERE transaction_id = $1",
                                   transaction_id)
        return rows[0] if rows else None

    async def unresolved(self) -> list[Transaction]:
        return await self._records("SELECT record FROM transactions WHERE unresolved")

    async def pending(self) -> list[Transaction]:
        return await self._records("SELECT record FROM transactions WHERE status = 'pending'")

    async def created_since(self, since_ms: int) -> list[Transaction]:
        return await self._records("SELECT record FROM transactions WHERE created_ms >= $1",
                                   since_ms)

    async def challenged(self) -> list[Transaction]:
        return await self._records(
            "SELECT record FROM transactions WHERE status = 'authorize'")

    async def last_event_seqs(self) -> dict[str, int]:
        pool = await self._after_writes()
        rows = await pool.fetch("SELECT merchant_id, last_seq FROM event_counters "
                                "WHERE last_seq > 0", timeout=READ_TIMEOUT_S)
        return {r[0]: r[1] for r in rows}

    async def events_after(self, merchant_id: str, seq: int, limit: int
                           ) -> list[tuple[int, bytes]]:
        pool = await self._after_writes()
        rows = await pool.fetch("SELECT seq, data FROM events WHERE merchant_id = $1 AND "
                                "seq > $2 ORDER BY seq LIMIT $3", merchant_id, seq, limit,
                                timeout=READ_TIMEOUT_S)
        return [(r[0], r[1]) for r in rows]

    async def event_floors(self) -> dict[str, int]:
        pool = await self._after_writes()
        rows = await pool.fetch("SELECT merchant_id, swept_seq FROM event_floors",
                                timeout=READ_TIMEOUT_S)
        return {r[0]: r[1] for r in rows}

    async def prune(self, policy: RetentionPolicy, now_ms: int, dry_run: bool = False
                    ) -> PruneResult:
        """On a connection of the read pool, not the writer's: commits go on meanwhile."""
        assert self._pool is not None, "start() first"
        try:
            async with self._pool.acquire(timeout=READ_TIMEOUT_S) as conn:
                return await prune_on(cast(asyncpg.Connection, conn), policy, now_ms,
                                      dry_run)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise LedgerError(f"retention sweep failed: {exc}") from exc

    async def due_webhooks(self, now_ms: int, limit: int) -> list[Webhook]:
        assert self._pool is not None, "start() first"
        try:
            rows = await self._pool.fetch(_DUE, now_ms, limit, timeout=READ_TIMEOUT_S)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise LedgerError(f"webhook outbox read failed: {exc}") from exc
        return [Webhook(*r) for r in rows]

    async def outbox_backlog(self) -> int:
        """Webhooks not delivered yet (pending: due, or waiting for a retry or a lease; dead
        rows excluded), for /metrics: one count over the pending rows' partial index."""
        assert self._pool is not None, "start() first"
        try:
            n = await self._pool.fetchval("SELECT count(*) FROM webhooks WHERE state = "
                                          "'pending'", timeout=READ_TIMEOUT_S)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise LedgerError(f"webhook outbox count failed: {exc}") from exc
        return int(n)

    async def claim_webhooks(self, owner: str, now_ms: int, lease_ms: int, limit: int
                             ) -> list[Webhook]:
        """Take a delivery lease of ``lease_ms`` on due webhooks (as ``due_webhooks``
        chooses them) for ``owner``, oldest first: what several hubs sharing one outbox
        need instead of ``due_webhooks``. A row whose lease has run out (its hub died) is
        due again; ``webhook_delivered``/``retry``/``dead`` end the lease.

        The webhook dispatcher uses it when the ledger is ``shared``."""
        assert self._pool is not None, "start() first"
        try:
            rows = await self._pool.fetch(_CLAIM, now_ms, owner, lease_ms, limit,
                                          timeout=self.commit_timeout_s)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise LedgerError(f"webhook outbox claim failed: {exc}") from exc
        return sorted((Webhook(*r) for r in rows), key=lambda w: w.id)


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if fut.done():
        return
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)


def _safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, where = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{where}"


def _blocking(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` to completion on an event loop of its own, in a thread: the tools are
    synchronous and may be called from a running loop (a test, the demo)."""

    async def main() -> T:
        return await work()

    with concurrent.futures.ThreadPoolExecutor(1, "ledger-tools") as executor:
        return executor.submit(asyncio.run, main()).result()


class PostgresLedgerTools:
    """``LedgerTools`` on a PostgreSQL ledger: a short-lived connection per call."""

    CONNECT_TIMEOUT_S = 10.0

    def __init__(self, url: str) -> None:
        self.url = url

    def _with_conn(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def work() -> T:
            try:
                conn = await asyncpg.connect(self.url, timeout=self.CONNECT_TIMEOUT_S)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    TimeoutError) as exc:
                raise LedgerError(f"cannot reach the ledger {_safe_url(self.url)}: "
                                  f"{exc}") from exc
            try:
                return await fn(conn)
            except asyncpg.UndefinedTableError as exc:
                raise LedgerError(f"{_safe_url(self.url)} holds no paywire ledger: "
                                  f"{exc}") from exc
            finally:
                await conn.close()

        return _blocking(work)

    def webhooks(self, state: str | None = None, limit: int = 100) -> list[WebhookRow]:
        async def fn(conn: asyncpg.Connection) -> list[WebhookRow]:
            rows = await conn.fetch(
                "SELECT id, merchant_id, event_id, state, attempts, last_error, url "
                "FROM webhooks WHERE $1::text IS NULL OR state = $1 ORDER BY id DESC LIMIT $2",
                state, limit)
            return [WebhookRow(*r) for r in rows]

        return self._with_conn(fn)

    def webhook_count(self) -> int:
        async def fn(conn: asyncpg.Connection) -> int:
            count: int = await conn.fetchval("SELECT count(*) FROM webhooks")
            return count

        return self._with_conn(fn)

    def redeliver(self, ids: list[int], all_dead: bool = False) -> int:
        async def fn(conn: asyncpg.Connection) -> int:
            if all_dead:
                done = await conn.execute("UPDATE webhooks SET state = 'pending', attempts = 0, "
                                          "next_attempt_ms = 0, claimed_until_ms = 0 "
                                          "WHERE state = 'dead'")
            else:
                done = await conn.execute("UPDATE webhooks SET state = 'pending', attempts = 0, "
                                          "next_attempt_ms = 0, claimed_until_ms = 0 "
                                          "WHERE id = ANY ($1::bigint[])", ids)
            return int(done.split()[-1])  # the command tag: "UPDATE n"

        return self._with_conn(fn)

    def summaries(self) -> list[TransactionSummary]:
        async def fn(conn: asyncpg.Connection) -> list[TransactionSummary]:
            rows = await conn.fetch("SELECT merchant_id, order_id, transaction_id, status, "
                                    "unresolved, captured, refunded, bank FROM transactions")
            return [TransactionSummary(*r) for r in rows]

        return self._with_conn(fn)

    def backup(self, dest: Path | str) -> None:
        """A consistent copy with ``pg_dump`` (custom format, one snapshot: pg_dump reads
        in a single REPEATABLE READ transaction); restore with ``pg_restore``."""
        target = Path(dest)
        if target.exists():
            raise LedgerError(f"{target} already exists: backup refuses to overwrite a file")
        pg_dump = shutil.which("pg_dump")
        if pg_dump is None:
            raise LedgerError("backing up a PostgreSQL ledger needs pg_dump on PATH "
                              "(the postgresql-client package)")
        try:
            proc = subprocess.run([pg_dump, "--format=custom", "--file", str(target),
                                   "--dbname", self.url], capture_output=True, text=True,
                                  timeout=self.BACKUP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise LedgerError(f"pg_dump took over {self.BACKUP_TIMEOUT_S:.0f} s") from exc
        if proc.returncode != 0:
            raise LedgerError("pg_dump failed (it must be as new as the server): "
                              + " ".join(proc.stderr.split()))

    BACKUP_TIMEOUT_S = 3600.0

    def transactions(self) -> list[Transaction]:
        async def fn(conn: asyncpg.Connection) -> list[bytes]:
            rows = await conn.fetch("SELECT record FROM transactions "
                                    "ORDER BY created_ms, transaction_id")
            return [r[0] for r in rows]

        return [Transaction.from_record(r) for r in self._with_conn(fn)]

    def prune(self, policy: RetentionPolicy, now_ms: int, dry_run: bool = False
              ) -> PruneResult:
        async def fn(conn: asyncpg.Connection) -> PruneResult:
            # A ledger last opened by an older hub lacks the retention table and index.
            await create_schema(conn)
            return await prune_on(conn, policy, now_ms, dry_run)

        try:
            return self._with_conn(fn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                TimeoutError) as exc:
            raise LedgerError(f"cannot prune the ledger {_safe_url(self.url)}: "
                              f"{exc}") from exc

    def transaction(self, merchant_id: str, order_id: str) -> Transaction | None:
        async def fn(conn: asyncpg.Connection) -> bytes | None:
            record: bytes | None = await conn.fetchval(
                "SELECT record FROM transactions WHERE merchant_id = $1 AND order_id = $2",
                merchant_id, order_id)
            return record

        record = self._with_conn(fn)
        return None if record is None else Transaction.from_record(record)

