"""Lab 6: a client that moves to another hub when its hub dies.

You write two pieces (the handout, docs/labs/06-failover.md, says why each matters):

1. ``backoff_s``: how long to wait before attempt ``attempt`` ("full jitter": a uniform
   random delay between 0 and an exponentially growing cap). Without the jitter, every
   client that lost the same hub reconnects at the same instants and knocks the survivor
   over together.
2. ``FailoverCharger.charge``: send one charge to the current hub; when the connection dies
   (``ConnectionLost``), or the hub cannot be reached (``OSError``, ``TimeoutError``), move
   to the next address, wait ``backoff_s(attempt)``, and send **the same charge with the same
   order id** again. The order id is the idempotency key: the hub that answers the retry
   returns the first charge's result if it had been made, so the customer is charged once.

The check gives you ``open_client``: it connects a ``gateway.client.Client`` to one address
with the library's own failover switched off (``reconnect=False``), so moving is your job.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from gateway.client import Card, Client, TransactionResult

Address = tuple[str, int]

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 2.0
ATTEMPTS_MAX = 12


def backoff_s(attempt: int, rng: random.Random, base_s: float = BACKOFF_BASE_S,
              cap_s: float = BACKOFF_CAP_S) -> float:
    """The wait before retry number ``attempt`` (0 for the first retry): a uniform random
    value in ``[0, min(cap_s, base_s * 2 ** attempt)]``, drawn from ``rng``."""
    raise NotImplementedError("lab 6, step 3: return a full-jitter delay (see the docstring)")


class FailoverCharger:
    """Charges through the first hub that answers, moving on when one dies.

    ``moves`` records every move as ``(from_address, to_address)``, in order: the check
    compares it with the hub it killed.
    """

    def __init__(self, addresses: list[Address],
                 open_client: Callable[[Address], Awaitable[Client]],
                 rng: random.Random | None = None) -> None:
        self.addresses = addresses
        self.open_client = open_client
        self.rng = rng or random.Random()
        self.current = 0  # index into addresses of the hub in use
        self.client: Client | None = None
        self.moves: list[tuple[Address, Address]] = []

    async def charge(self, order_id: str, amount: int, card: Card) -> TransactionResult:
        """Charge ``amount`` on ``card`` under ``order_id``, surviving the death of hubs.

        Open a client to ``self.addresses[self.current]`` when you have none; call
        ``client.charge(order_id, amount, card=card)``; on ``ConnectionLost``, ``OSError``
        or ``TimeoutError``: close the dead client (ignore errors while closing), move to
        the next address (wrap around), record the move in ``self.moves``, sleep
        ``backoff_s(attempt, self.rng)`` (``await asyncio.sleep(...)``) and try again, at
        most ``ATTEMPTS_MAX`` times (then raise ``gateway.client.ConnectionLost``). Any other
        error is the hub's answer: let it out.
        """
        raise NotImplementedError("lab 6, step 3: write the failover loop (see the docstring)")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
