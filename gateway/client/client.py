"""The merchant client: ``async with connect(...) as client: await client.charge(...)``.

One TLS connection carries many requests at once (pipelining, up to the hub's announced
in-flight bound); each request is signed with the merchant's server key and correlated by
its request id, so responses may come back in any order.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.net.signed import build_request
from protocol.errors import RemoteError

from .connection import ClientConnection
from .results import Card, ConnectionLost, Event, RequestError, TransactionResult

REQUEST_TIMEOUT_S_DEFAULT = 10.0
CONNECT_TIMEOUT_S_DEFAULT = 10.0
EVENTS_RECONNECT_DELAY_MAX_S = 5.0


def client_ssl_context(certs_dir: Path | str, merchant_id: str) -> ssl.SSLContext:
    """mTLS context from a ``paywire certs init`` directory (``merchant-<id>.crt``)."""
    from gateway.tls import node_client_context

    return node_client_context(Path(certs_dir), "merchant", merchant_id)


class Client:
    """A connection to a hub for one merchant. Methods return ``TransactionResult`` or raise
    ``RequestError`` (with ``.code``), ``ConnectionLost`` or ``RequestTimeout``."""

    def __init__(self, host: str, port: int, *, merchant_id: str, server_key: str,
                 ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                 timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
                 in_flight_max: int = 256, hello: dict[str, Any] | None = None) -> None:
        self.host = host
        self.port = port
        self.merchant_id = merchant_id
        self.key = server_key.encode()
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.in_flight_max = in_flight_max
        self.hello = {"in_flight_max": in_flight_max, **(hello or {})}
        self.conn: ClientConnection | None = None
        self.welcome: dict[str, Any] = {}
        self._slots: asyncio.Semaphore | None = None

    async def connect(self) -> Client:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(
            lambda: ClientConnection(self.merchant_id, self.hello), self.host, self.port,
            ssl=self.ssl_context, server_hostname=self.server_hostname),
            self.connect_timeout_s)
        try:
            self.welcome = await asyncio.wait_for(conn.welcome, self.connect_timeout_s)
        except BaseException:
            conn.abort_soon()
            raise
        self.conn = conn
        self._slots = asyncio.Semaphore(self.welcome["in_flight_max"])
        return self

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.abort_soon()
            await self.conn.closed

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def request(self, op: str, args: dict[str, Any],
                      timeout_s: float | None = None) -> dict[str, Any]:
        """Send one signed request and wait for its response map."""
        conn, slots = self.conn, self._slots
        if conn is None or slots is None:
            raise ConnectionLost("not connected")
        async with slots:
            if conn.transport is None or conn.transport.is_closing():
                raise ConnectionLost(f"connection lost: {conn.lost_reason or 'closed'}")
            rid, fut = conn.correlator.new(timeout_s or self.timeout_s)
            conn.send(build_request(self.key, self.merchant_id, rid, op, args))
            try:
                return await fut
            except RemoteError as exc:
                raise RequestError(exc.message, code=exc.code, field=exc.field) from None
            finally:
                conn.correlator.forget(rid)

    async def events(self, since: int | None = None, *, reconnect: bool = True
                     ) -> AsyncIterator[Event]:
        """Yield this merchant's pushed events after ``since`` (all future ones if ``None``),
        in order, each once. Runs on its own connection; when it drops, or a gap in ``seq``
        shows a missed event, it reconnects with ``events_since`` = the last seq yielded and
        the hub replays what was missed from its ledger."""
        last = since
        delay_s = 0.05
        while True:
            hello: dict[str, Any] = {"subscribe_events": True}
            if last is not None:
                hello["events_since"] = last
            sub = Client(self.host, self.port, merchant_id=self.merchant_id,
                         server_key=self.key.decode(), ssl_context=self.ssl_context,
                         server_hostname=self.server_hostname, hello=hello,
                         connect_timeout_s=self.connect_timeout_s)
            try:
                await sub.connect()
                delay_s = 0.05
                if last is None:
                    last = int(sub.welcome["event_seq"])
                assert sub.conn is not None
                while True:
                    raw = await sub.conn.events.get()
                    if raw is None:
                        break  # connection gone: resume from ``last``
                    seq = raw["seq"]
                    if seq <= last:
                        continue  # already seen
                    if seq != last + 1:
                        break  # a gap: reconnect and let the hub replay it
                    last = seq
                    yield Event(seq, raw["type"], raw["merchant_id"],
                                TransactionResult.from_wire(raw["data"]))
            except (TimeoutError, OSError, ConnectionLost, RemoteError):
                if not reconnect:
                    raise
            finally:
                await sub.close()
            if not reconnect:
                raise ConnectionLost("event stream closed")
            # Full jitter, so many subscribers that lost one hub do not return in lockstep.
            await asyncio.sleep(random.uniform(0, delay_s))
            delay_s = min(delay_s * 2, EVENTS_RECONNECT_DELAY_MAX_S)

    async def _tx(self, op: str, args: dict[str, Any],
                  timeout_s: float | None) -> TransactionResult:
        return TransactionResult.from_wire(await self.request(op, args, timeout_s))

    async def charge(self, order_id: str, gross_amount: int, payment_type: str = "credit_card",
                     *, card: Card | dict[str, Any] | None = None, capture: bool = True,
                     bank: str | None = None, provider: str | None = None,
                     currency: str = "IDR", customer: dict[str, Any] | None = None,
                     expiry_s: int | None = None, description: str | None = None,
                     timeout_s: float | None = None) -> TransactionResult:
        """Charge a card (authorize + capture, or authorize only with ``capture=False``),
        open a virtual account (``payment_type="bank_transfer"``, ``bank=``), or request an
        e-wallet payment (``payment_type="ewallet"``, ``provider=``). Retrying with the same
        ``order_id`` and content returns the first result (``replayed=True``)."""
        args: dict[str, Any] = {"order_id": order_id, "gross_amount": gross_amount,
                                "payment_type": payment_type, "currency": currency}
        if card is not None:
            args["card"] = card.to_wire() if isinstance(card, Card) else card
            args["capture"] = capture
        optional = {"bank": bank, "provider": provider, "customer": customer,
                    "expiry_s": expiry_s, "description": description}
        args.update({k: v for k, v in optional.items() if v is not None})
        return await self._tx("charge", args, timeout_s)

    async def capture(self, order_id: str, gross_amount: int | None = None,
                      timeout_s: float | None = None) -> TransactionResult:
        args: dict[str, Any] = {"order_id": order_id}
        if gross_amount is not None:
            args["gross_amount"] = gross_amount
        return await self._tx("capture", args, timeout_s)

    async def cancel(self, order_id: str, timeout_s: float | None = None) -> TransactionResult:
        return await self._tx("cancel", {"order_id": order_id}, timeout_s)

    async def refund(self, order_id: str, refund_key: str, amount: int | None = None,
                     reason: str | None = None,
                     timeout_s: float | None = None) -> TransactionResult:
        """Refund all or part of a captured amount. Each refund has its own ``refund_key``;
        repeating a key returns the first result instead of refunding again."""
        args: dict[str, Any] = {"order_id": order_id, "refund_key": refund_key}
        if amount is not None:
            args["amount"] = amount
        if reason is not None:
            args["reason"] = reason
        return await self._tx("refund", args, timeout_s)

    async def approve(self, order_id: str, timeout_s: float | None = None) -> TransactionResult:
        return await self._tx("approve", {"order_id": order_id}, timeout_s)

    async def deny(self, order_id: str, timeout_s: float | None = None) -> TransactionResult:
        return await self._tx("deny", {"order_id": order_id}, timeout_s)

    async def status(self, order_id: str, timeout_s: float | None = None) -> TransactionResult:
        return await self._tx("status", {"order_id": order_id}, timeout_s)

    async def expire(self, order_id: str, timeout_s: float | None = None) -> TransactionResult:
        return await self._tx("expire", {"order_id": order_id}, timeout_s)


def connect(host: str, port: int, *, merchant_id: str, server_key: str,
            ssl_context: ssl.SSLContext | None = None, certs_dir: Path | str | None = None,
            **options: Any) -> Client:
    """Build a client; use as ``async with connect(...) as client:`` or ``await
    connect(...).connect()``. Give ``ssl_context``, or ``certs_dir`` holding
    ``ca.crt`` and ``merchant-<merchant_id>.crt/.key``."""
    if ssl_context is None:
        if certs_dir is None:
            raise ValueError("give ssl_context or certs_dir")
        ssl_context = client_ssl_context(certs_dir, merchant_id)
    return Client(host, port, merchant_id=merchant_id, server_key=server_key,
                  ssl_context=ssl_context, **options)
