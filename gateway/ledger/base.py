"""The ledger interface. SQLite is the embedded default; PostgreSQL can sit behind the same.

The ledger owns every statement against its store: transactions, the event log, the
webhook outbox and its delivery state. Nothing outside ``gateway/ledger/`` knows the
schema (``tests/test_no_sql_outside_stores.py`` checks it), so a second implementation
needs only this interface and ``tests/test_ledger_contract.py``, which every
implementation must pass.

Two faces:

* ``Ledger``, opened by the one hub that writes it (or, ``shared``, by each of several hubs:
  ``SharedLedger``). Every method that changes state returns
  a future resolved only after the change is durable (group commit), because the hub
  answers a client only after that (DESIGN §4 rule 1). Commits are in submission order: an
  answer for a later write implies every earlier write is committed too. Within one group
  commit the transaction writes (``insert_new``, ``save``) are applied in submission order
  and before the other writes (``delete``, webhook bookkeeping), which follow in theirs;
  the hub never has a transaction's save and its delete in one group (the delete is of an
  intent no bank saw, awaited under the order's lock).
* ``LedgerTools``, for operators' commands and the audit, which run beside a live hub (or
  after it): list and re-queue webhooks, read every transaction's money columns.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NamedTuple, Protocol

from gateway.transactions.model import Transaction


def event_id(merchant_id: str, seq: int) -> str:
    """The name of a merchant's event ``seq``: the webhook row's key, and in its body."""
    return f"evt_{merchant_id}_{seq}"


class Notification(NamedTuple):
    """What a status change announces; written in the same commit as the change.

    Everything in it is built by the hub: the ledger's writer stores these bytes and knows
    no merchant key. The event's seq is assigned by the ledger in the commit, and the
    webhook body names its event, so the body comes in two parts and the stored body is
    ``body_head + str(seq) + body_tail`` (``gateway/webhooks/payload.py``).

    A named tuple, cheap to build per status change; the SQLite ledger sends its fields to
    the writer process as a plain tuple (``gateway/ledger/sqlite.py``, ``_Write``)."""

    data: bytes  # msgpack of the transaction as merchants see it: the event's ``data``
    webhook_url: str | None  # no webhook row without one
    body_head: bytes
    body_tail: bytes


class Webhook(NamedTuple):
    """An outbox row due for delivery."""

    id: int
    merchant_id: str
    transaction_id: str
    event_id: str
    url: str
    body: bytes
    attempts: int  # attempts made so far


class WebhookRow(NamedTuple):
    """An outbox row as ``paywire webhooks list`` shows it."""

    id: int
    merchant_id: str
    event_id: str
    state: str  # pending | delivered | dead
    attempts: int
    last_error: str | None
    url: str


class TransactionSummary(NamedTuple):
    """A transaction's money and status columns, for the audit (no record decoding)."""

    merchant_id: str
    order_id: str
    transaction_id: str
    status: str
    unresolved: bool
    captured: int
    refunded: int
    bank: str | None


class RetentionPolicy(NamedTuple):
    """What a retention sweep may delete (``Ledger.prune``; docs/operations.md "Retention
    and the resume horizon"). Never a transaction, a pending or dead webhook, nor an event
    newer than the horizon or whose webhook is pending."""

    events_resume_horizon_ms: int  # an event older than this may go...
    webhooks_delivered_keep_ms: int  # ...and a webhook delivered longer ago than this
    rows_max: int  # at most this many rows of each table per call: a short transaction


class PruneResult(NamedTuple):
    """What one sweep deleted (or, dry run, would delete)."""

    webhooks: int
    events: int
    # Merchants whose resume floor moved, and to where: every event with a seq at or
    # below the floor may be gone, every one above it is kept.
    floors: dict[str, int]


def swept_prefix(rows: list[tuple[int, int]], before_ms: int, pending_min: int | None
                 ) -> tuple[int | None, int]:
    """Of a merchant's oldest events ``(seq, created_ms)`` in seq order, the last seq of
    the run that may go (recorded before ``before_ms``, below the first pending webhook's
    seq) and its length: what stays is always every seq above a floor."""
    last: int | None = None
    count = 0
    for seq, created_ms in rows:
        if created_ms >= before_ms or (pending_min is not None and seq >= pending_min):
            break
        last = seq
        count += 1
    return last, count


class LedgerError(Exception):
    """The ledger's store failed a read (the store's own error is the cause). Callers that
    poll, like the webhook dispatcher, log it and try again later."""


class Ledger(Protocol):
    @property
    def shared(self) -> bool:
        """Whether other hubs write this ledger at the same time (PostgreSQL, opened by the
        hub). Then the ledger is a ``SharedLedger`` and the hub uses its order locks, nonces
        and webhook claims, and trusts no cached copy; a ledger only this hub writes (SQLite)
        pays for none of that."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Commit everything submitted, then release the store."""
        ...

    @property
    def queued(self) -> int:
        """Writes submitted and not yet durable."""
        ...

    @property
    def died(self) -> asyncio.Future[None] | None:
        """Once started: a future done if the ledger can no longer commit under the hub (its
        writer exited), which must then stop. Not done by a clean ``close``."""
        ...

    def insert_new(self, tx: Transaction, note: Notification | None = None
                   ) -> asyncio.Future[Transaction | int | None]:
        """Record a new transaction. Resolves to the stored transaction when
        ``(merchant_id, order_id)`` already exists (nothing written), else to the event
        sequence number of ``note`` (or ``None`` without one)."""
        ...

    def save(self, tx: Transaction, note: Notification | None = None
             ) -> asyncio.Future[int | None]:
        """Store the transaction's current state (snapshotted at the call) and, in the same
        commit, the event and webhook rows of ``note``; resolves to the event's seq, which
        counts 1, 2, 3, ... per merchant without gaps."""
        ...

    def delete(self, tx: Transaction) -> asyncio.Future[None]:
        """Remove a transaction whose intent provably never reached a bank."""
        ...

    async def get(self, merchant_id: str, order_id: str) -> Transaction | None: ...

    async def get_by_id(self, transaction_id: str) -> Transaction | None: ...

    async def unresolved(self) -> list[Transaction]:
        """Transactions with a bank call whose answer is not recorded (recovery)."""
        ...

    async def pending(self) -> list[Transaction]:
        """Transactions waiting for payment (so expiry survives a restart)."""
        ...

    async def created_since(self, since_ms: int) -> list[Transaction]: ...

    async def challenged(self) -> list[Transaction]:
        """Authorized transactions (a fraud challenge waits on them)."""
        ...

    async def last_event_seqs(self) -> dict[str, int]: ...

    async def events_after(self, merchant_id: str, seq: int, limit: int
                           ) -> list[tuple[int, bytes]]:
        """``(seq, data)`` of the merchant's events after ``seq``, oldest first."""
        ...

    async def event_floors(self) -> dict[str, int]:
        """Each merchant's resume floor (``PruneResult.floors``), for merchants that have
        one: a subscriber may resume from ``events_since`` >= its merchant's floor without
        missing an event; below it, events it has not seen are gone."""
        ...

    async def prune(self, policy: RetentionPolicy, now_ms: int, dry_run: bool = False
                    ) -> PruneResult:
        """One bounded retention batch at ``now_ms`` (a parameter: tests move the clock):
        delete up to ``policy.rows_max`` webhooks delivered before ``now_ms -
        webhooks_delivered_keep_ms``, and up to ``rows_max`` events, per merchant its oldest
        ones, stopping at the first one recorded at or after ``now_ms -
        events_resume_horizon_ms`` or whose webhook is pending; so what stays of a merchant's
        events is every seq above its floor. Its latest seq survives (a seq is never given
        out twice). Safe beside other writers and other hubs' sweeps (idempotent; a shared
        ledger runs one sweep at a time, the others find nothing to do)."""
        ...

    async def due_webhooks(self, now_ms: int, limit: int) -> list[Webhook]:
        """Pending webhooks due at ``now_ms``, oldest first, at most one per transaction:
        the oldest pending one, so a merchant sees ``pending`` before ``settlement``.
        Reads committed state and may lag the newest commit by a poll; raises
        ``LedgerError`` if the store cannot be read.

        It does not claim the rows: one hub writes such a ledger (its lock), and the
        dispatcher keeps its own rows in flight in memory. A ``SharedLedger`` is read with
        ``claim_webhooks`` instead."""
        ...

    def webhook_delivered(self, webhook_id: int, attempts: int, at_ms: int
                          ) -> asyncio.Future[None]: ...

    def webhook_retry(self, webhook_id: int, attempts: int, next_attempt_ms: int,
                      error: str | None) -> asyncio.Future[None]:
        """A failed attempt with retries left: due again at ``next_attempt_ms``."""
        ...

    def webhook_dead(self, webhook_id: int, attempts: int, error: str | None
                     ) -> asyncio.Future[None]:
        """A failed attempt with no retry left: dead-lettered until redelivered."""
        ...


class SharedLedger(Ledger, Protocol):
    """A ledger several hubs write at once (``shared``): what they coordinate through."""

    async def lock_order(self, merchant_id: str, order_id: str, wait_s: float) -> bool:
        """Take the order's lock across every hub, waiting up to ``wait_s``; ``False`` if
        it is still held by another hub then. A hub that dies loses its locks."""
        ...

    async def unlock_order(self, merchant_id: str, order_id: str) -> None: ...

    def spend_nonce(self, merchant_id: str, nonce: bytes, expires_ms: int
                    ) -> asyncio.Future[int | None]:
        """Spend a request's nonce for every hub until ``expires_ms``; resolves to a negative
        number if it was spent already and has not expired, else ``None``."""
        ...

    async def claim_webhooks(self, owner: str, now_ms: int, lease_ms: int, limit: int
                             ) -> list[Webhook]:
        """``due_webhooks`` with a delivery lease of ``lease_ms`` for ``owner``: no other
        hub gets these rows until an outcome is recorded or the lease runs out."""
        ...


class LedgerTools(Protocol):
    """Operators' access, safe beside the running hub. Synchronous: command-line tools."""

    def webhooks(self, state: str | None = None, limit: int = 100) -> list[WebhookRow]:
        """Outbox rows, newest first, optionally only those in ``state``."""
        ...

    def webhook_count(self) -> int: ...

    def redeliver(self, ids: list[int], all_dead: bool = False) -> int:
        """Queue webhooks again, due now, attempts reset; the running hub's dispatcher picks
        them up. Returns how many rows were queued."""
        ...

    def summaries(self) -> list[TransactionSummary]:
        """Every transaction's money and status columns (the audit)."""
        ...

    def transaction(self, merchant_id: str, order_id: str) -> Transaction | None:
        """One stored transaction, as the hub last committed it (``paywire trace --ledger``);
        raises ``LedgerError`` if the file cannot be read as a ledger, ``RecordFormatError``
        for a record this code cannot read."""
        ...

    def backup(self, dest: Path | str) -> None:
        """A consistent copy of the live ledger at ``dest`` (which must not exist), taken
        while the hub keeps writing; raises ``LedgerError``."""
        ...

    def transactions(self) -> list[Transaction]:
        """Every transaction, decoded, oldest first (``paywire ledger export``)."""
        ...

    def prune(self, policy: RetentionPolicy, now_ms: int, dry_run: bool = False
              ) -> PruneResult:
        """``Ledger.prune`` beside the running hub (``paywire ledger prune``); raises
        ``LedgerError``."""
        ...
