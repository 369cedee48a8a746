"""Lab 6, reference solution: a client that moves to another hub when its hub dies."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

from gateway.client import Card, Client, ConnectionLost, TransactionResult

Address = tuple[str, int]

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 2.0
ATTEMPTS_MAX = 12


def backoff_s(attempt: int, rng: random.Random, base_s: float = BACKOFF_BASE_S,
              cap_s: float = BACKOFF_CAP_S) -> float:
    """Full jitter: uniform in ``[0, min(cap_s, base_s * 2 ** attempt)]``. The exponent is
    capped first so a long outage cannot overflow the float."""
    return rng.uniform(0.0, min(cap_s, base_s * 2 ** min(attempt, 32)))


class FailoverCharger:
    """Charges through the first hub that answers, moving on when one dies."""

    def __init__(self, addresses: list[Address],
                 open_client: Callable[[Address], Awaitable[Client]],
                 rng: random.Random | None = None) -> None:
        self.addresses = addresses
        self.open_client = open_client
        self.rng = rng or random.Random()
        self.current = 0
        self.client: Client | None = None
        self.moves: list[tuple[Address, Address]] = []

    async def charge(self, order_id: str, amount: int, card: Card) -> TransactionResult:
        last: BaseException | None = None
        for attempt in range(ATTEMPTS_MAX):
            try:
                if self.client is None:
                    self.client = await self.open_client(self.addresses[self.current])
                # The same order id every time: a retry is a replay, never a second charge.
                return await self.client.charge(order_id, amount, card=card)
            except (ConnectionLost, OSError, TimeoutError) as exc:
                last = exc
                await self._move()
                await asyncio.sleep(backoff_s(attempt, self.rng))
        raise ConnectionLost(f"no hub answered {order_id} after {ATTEMPTS_MAX} attempts: "
                             f"{last!r}")

    async def _move(self) -> None:
        dead, self.client = self.client, None
        if dead is not None:
            with contextlib.suppress(Exception):
                await dead.close()
        before = self.addresses[self.current]
        self.current = (self.current + 1) % len(self.addresses)
        self.moves.append((before, self.addresses[self.current]))

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
