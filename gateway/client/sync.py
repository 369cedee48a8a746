"""A blocking client for scripts and labs: the async client runs on a private loop thread.

    with SyncClient("127.0.0.1", 7400, merchant_id="M1", server_key="...",
                    certs_dir="certs") as c:
        print(c.charge("order-1", 10000, card=card).transaction_status)
        for event in c.events():
            print(event.seq, event.transaction.transaction_status)

Every method is written out with the signature of its ``Client`` coroutine (no
``__getattr__`` forwarding), so a merchant's type checker sees the same parameters and
results as for the async client; ``tests/test_client_typing.py`` runs ``mypy --strict`` on
merchant-style code to keep it so, and checks that each ``Client`` coroutine has a blocking
twin with the same parameters.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .client import (
    CONNECT_TIMEOUT_S_DEFAULT,
    REQUEST_TIMEOUT_S_DEFAULT,
    Address,
    Client,
    connect,
)
from .results import Card, Event, TransactionResult

_T = TypeVar("_T")

THREAD_JOIN_TIMEOUT_S = 5.0


class SyncClient:
    """``Client`` without ``await``: connects in the constructor, ``close()`` (or ``with``)
    ends it. Errors are the same typed exceptions the async client raises. Thread-safe in
    the sense that any thread may call it: calls run on the client's own loop thread."""

    def __init__(self, host: str | list[Address], port: int | None = None, *,
                 merchant_id: str, server_key: str,
                 ssl_context: ssl.SSLContext | None = None,
                 certs_dir: Path | str | None = None,
                 server_hostname: str | None = None,
                 timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
                 in_flight_max: int = 256, hello: dict[str, Any] | None = None,
                 reconnect: bool = True, retry_attempts_max: int = 8,
                 backoff_min_s: float = 0.05, backoff_max_s: float = 2.0,
                 reconnect_window_s: float = 30.0, resolve_unknown: bool = True) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="paywire-sync-client")
        self._thread.start()
        try:
            self._client: Client = self._run(connect(
                host, port, merchant_id=merchant_id, server_key=server_key,
                ssl_context=ssl_context, certs_dir=certs_dir, server_hostname=server_hostname,
                timeout_s=timeout_s, connect_timeout_s=connect_timeout_s,
                in_flight_max=in_flight_max, hello=hello, reconnect=reconnect,
                retry_attempts_max=retry_attempts_max, backoff_min_s=backoff_min_s,
                backoff_max_s=backoff_max_s, reconnect_window_s=reconnect_window_s,
                resolve_unknown=resolve_unknown).connect())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def client(self) -> Client:
        """The async client underneath (its attributes: ``welcome``, ``address``...)."""
        return self._client

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(THREAD_JOIN_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()

    # --- the Client's coroutines, blocking ---------------------------------------------------
    def connect(self) -> SyncClient:
        """Connected already by the constructor; reconnects if the connection was lost."""
        self._run(self._client.connect())
        return self

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def request(self, op: str, args: dict[str, Any],
                timeout_s: float | None = None) -> dict[str, Any]:
        return self._run(self._client.request(op, args, timeout_s))

    def charge(self, order_id: str, gross_amount: int, payment_type: str = "credit_card",
               *, card: Card | dict[str, Any] | None = None, capture: bool = True,
               bank: str | None = None, provider: str | None = None,
               currency: str = "IDR", customer: dict[str, Any] | None = None,
               expiry_s: int | None = None, description: str | None = None,
               timeout_s: float | None = None,
               metadata: Mapping[str, str] | None = None,
               notification_url: str | None = None) -> TransactionResult:
        return self._run(self._client.charge(
            order_id, gross_amount, payment_type, card=card, capture=capture, bank=bank,
            provider=provider, currency=currency, customer=customer, expiry_s=expiry_s,
            description=description, timeout_s=timeout_s, metadata=metadata,
            notification_url=notification_url))

    def capture(self, order_id: str, gross_amount: int | None = None,
                timeout_s: float | None = None) -> TransactionResult:
        return self._run(self._client.capture(order_id, gross_amount, timeout_s))

    def cancel(self, order_id: str, timeout_s: float | None = None) -> TransactionResult:
        return self._run(self._client.cancel(order_id, timeout_s))

    def refund(self, order_id: str, refund_key: str, amount: int | None = None,
               reason: str | None = None, timeout_s: float | None = None) -> TransactionResult:
        return self._run(self._client.refund(order_id, refund_key, amount, reason, timeout_s))

    def approve(self, order_id: str, timeout_s: float | None = None) -> TransactionResult:
        return self._run(self._client.approve(order_id, timeout_s))

    def deny(self, order_id: str, timeout_s: float | None = None) -> TransactionResult:
        return self._run(self._client.deny(order_id, timeout_s))

    def status(self, order_id: str | None = None, timeout_s: float | None = None, *,
               transaction_id: str | None = None) -> TransactionResult:
        return self._run(self._client.status(order_id, timeout_s,
                                             transaction_id=transaction_id))

    def expire(self, order_id: str, timeout_s: float | None = None) -> TransactionResult:
        return self._run(self._client.expire(order_id, timeout_s))

    def events(self, since: int | None = None, *, reconnect: bool = True,
               on_subscribed: Callable[[int], object] | None = None) -> Iterator[Event]:
        """A blocking iterator over the pushed events (``Client.events``): each ``next``
        waits for the next event. Leaving the loop (``break``) or closing the iterator
        closes the event stream's connection. ``on_subscribed`` runs on the client's event
        loop thread."""
        stream = self._client.events(since, reconnect=reconnect, on_subscribed=on_subscribed)

        async def next_event() -> Event | None:
            try:
                return await stream.__anext__()
            except StopAsyncIteration:  # kept inside the loop: None marks the end
                return None

        try:
            while True:
                event = self._run(next_event())
                if event is None:
                    return
                yield event
        finally:
            if not self._loop.is_closed():
                self._run(stream.aclose())

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
