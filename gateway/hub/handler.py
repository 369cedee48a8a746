"""What a merchant session may ask of the hub's transaction service, and nothing more.

Sessions hold a ``RequestHandler`` (today ``gateway.hub.service.TransactionService``), never
the service's cache, locks or ledger: the session decodes, authenticates and validates a
request, then hands plain data here. Admission is synchronous and in decode order, so the
per-order lock order is the arrival order (docs/protocol.md §4.5).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from protocol.errors import PaywireError
from protocol.operations import Operation

Key = tuple[str, str]  # (merchant_id, order_id)


class Requester(Protocol):
    """What the handler may do to the connection a request came on (a merchant session):
    answer it, and mark it in flight until it is answered."""

    def respond(self, request_id: int, result: dict[str, Any], replayed: bool = False) -> None:
        ...

    def respond_error(self, request_id: int, exc: PaywireError) -> None: ...

    def request_started(self, rid: int) -> None: ...

    def request_finished(self, rid: int) -> None: ...

    def track(self, task: asyncio.Task[None]) -> None: ...


class RequestHandler(Protocol):
    def status_now(self, key: Key) -> dict[str, Any] | None:
        """The ``status`` result when it needs no waiting (nothing admitted earlier on the
        order is unfinished and the committed transaction is at hand and settled), else
        None: then the request is admitted and executed like any other."""

    def order_of(self, merchant_id: str, transaction_id: str) -> str | None:
        """The order id of the merchant's transaction ``transaction_id`` if it is at hand
        without a ledger read, else None (``execute`` then looks it up)."""

    def admit(self, key: Key) -> bool:
        """Count a request on ``key`` in decode order; True when earlier ones on the same
        order are unfinished (a ``status`` then passes ``after_earlier=True``). Pair with
        exactly one ``finished``."""

    def finished(self, key: Key) -> None:
        """The admitted request on ``key`` is done (answered or failed)."""

    async def execute(self, merchant_id: str, op: Operation, args: dict[str, Any],
                      received_us: int, *, after_earlier: bool = False,
                      sent_us: int | None = None) -> tuple[dict[str, Any], bool]:
        """Run one validated operation: (result map, replayed?), or raise a ``PaywireError``
        whose code is the answer."""

    def answered(self, key: Key, at_us: int) -> None:
        """Telemetry: the answer of a non-replayed request on ``key`` was sent at ``at_us``."""

    def start(self, requester: Requester, rid: int, op: Operation, key: Key,
              args: dict[str, Any], received_us: int, *, sent_us: int | None = None
              ) -> bool:
        """Run a validated request without a task when it is the common case (nothing
        earlier on its order unfinished; for an operation after the charge, its transaction
        cached and settled): it admits, answers and finishes the request itself; False
        leaves the request to ``admit`` and ``execute``, nothing done."""
