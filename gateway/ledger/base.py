"""The ledger interface. SQLite is the embedded default; PostgreSQL can sit behind the same.

Every method that changes state returns a future resolved only after the change is durable
(group commit), because the hub answers a client only after that (DESIGN §4 rule 1).
Writes are applied in submission order: an answer for a later write implies every earlier
write is committed too.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple, Protocol

from gateway.transactions.model import Transaction


class Notification(NamedTuple):
    """What a status change announces; written in the same commit as the change.

    A named tuple, not a dataclass: it is pickled to the ledger's writer process with every
    status change, and a slotted dataclass pickles through ``dataclasses.fields`` (~4x
    slower, measured in the hub's profile)."""

    result: dict[str, Any]  # the transaction as merchants see it
    data: bytes  # msgpack of ``result``, the event's ``data``
    webhook_url: str | None
    server_key: str


class Ledger(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def insert_new(self, tx: Transaction, note: Notification | None = None
                   ) -> asyncio.Future[Transaction | int | None]:
        """Record a new transaction. Resolves to the stored transaction when
        ``(merchant_id, order_id)`` already exists (nothing written), else to the event
        sequence number of ``note`` (or ``None`` without one)."""
        ...

    def save(self, tx: Transaction, note: Notification | None = None
             ) -> asyncio.Future[int | None]:
        """Store the transaction's current state (snapshotted at the call) and, in the same
        commit, the event and webhook rows of ``note``; resolves to the event's seq."""
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

    async def challenged(self) -> list[Transaction]: ...

    async def last_event_seqs(self) -> dict[str, int]: ...

    async def events_after(self, merchant_id: str, seq: int, limit: int
                           ) -> list[tuple[int, bytes]]: ...

    def submit(self, fn: Any, *args: Any) -> asyncio.Future[Any]: ...

    @property
    def queued(self) -> int: ...
