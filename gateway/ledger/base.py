"""The ledger interface. SQLite is the embedded default; PostgreSQL can sit behind the same.

Every method that changes state returns a future resolved only after the change is durable
(group commit), because the hub answers a client only after that (DESIGN §4 rule 1).
Writes are applied in submission order: an answer for a later write implies every earlier
write is committed too.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway.transactions.model import Transaction


class Ledger(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def insert_new(self, tx: Transaction) -> asyncio.Future[Transaction | None]:
        """Record a new transaction. Resolves to ``None`` when inserted, or to the stored
        transaction when ``(merchant_id, order_id)`` already exists (nothing written)."""
        ...

    def save(self, tx: Transaction) -> asyncio.Future[None]:
        """Store the transaction's current state (snapshotted at the call)."""
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

    @property
    def queued(self) -> int: ...
