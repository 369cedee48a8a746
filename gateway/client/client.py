"""The merchant client: ``async with connect(...) as client: await client.charge(...)``.

One TLS connection carries many requests at once (pipelining, up to the hub's announced
in-flight bound); each request is signed with the merchant's server key and correlated by
its request id, so responses may come back in any order.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import ssl
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.net import plaintext as plaintext_mode
from gateway.net.backoff import full_jitter_s
from gateway.net.signed import build_request
from protocol.errors import (
    ConnectionLost,
    ErrorCode,
    OutcomeUnknown,
    RemoteError,
    RequestTimeout,
)

from .connection import ClientConnection
from .results import Card, Event, RequestError, TransactionResult

# INFO: each reconnect, failover, resend and unknown-outcome resolution, with the order id,
# request id and reason (so a lab sees the retries); never a key, card number or CVV.
log = logging.getLogger("paywire.client")

REQUEST_TIMEOUT_S_DEFAULT = 10.0
CONNECT_TIMEOUT_S_DEFAULT = 10.0
EVENTS_RECONNECT_DELAY_MAX_S = 5.0


def client_ssl_context(certs_dir: Path | str, merchant_id: str) -> ssl.SSLContext:
    """mTLS context from a ``paywire certs init`` directory (``merchant-<id>.crt``)."""
    from gateway.tls import node_client_context

    return node_client_context(Path(certs_dir), "merchant", merchant_id)


Address = tuple[str, int]


class Client:
    """A merchant's connection to one of several hubs. Methods return ``TransactionResult``
    or raise ``RequestError`` (with ``.code``), ``OutcomeUnknown`` or ``ConnectionLost``.
    A ``RequestError`` is also an instance of its code's class (``NotFound``, ``CardError``
    ..., protocol/errors.py): the correlator builds it with ``error_from_code``.

    Reliability (DESIGN §4): when the connection dies the client reconnects, to the next
    address in the list, after a jittered exponential backoff; requests that were in flight
    are sent again on the new connection, which is safe because every operation carries its
    idempotency key (order id, refund key). After GOAWAY it moves to another hub. A request
    that times out is not sent again blindly: a ``status`` call decides what happened. Each
    of these steps is logged at INFO on the logger ``paywire.client``.

    ``plaintext=True`` (labs only, docs/protocol.md §12) connects without TLS, and only to
    loopback addresses: any other raises ``PlaintextRefused`` (``PLAINTEXT_NOT_LOOPBACK``)
    here. ``trace=True`` logs every frame of this client's connections
    (``gateway/net/trace.py``); ``None`` follows ``PAYWIRE_TRACE``.
    """

    def __init__(self, host: str | list[Address], port: int | None = None, *,
                 merchant_id: str, server_key: str, ssl_context: ssl.SSLContext | None,
                 server_hostname: str | None = None,
                 timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
                 in_flight_max: int = 256, hello: dict[str, Any] | None = None,
                 reconnect: bool = True, retry_attempts_max: int = 8,
                 backoff_min_s: float = 0.05, backoff_max_s: float = 2.0,
                 reconnect_window_s: float = 30.0, resolve_unknown: bool = True,
                 plaintext: bool = False, trace: bool | None = None,
                 hub_wait_s: float | None = None) -> None:
        if isinstance(host, str):
            assert port is not None, "give a port with a host name"
            self.addresses: list[Address] = [(host, port)]
        else:
            self.addresses = list(host)
        self.plaintext = plaintext
        if plaintext:
            for address_host, _ in self.addresses:
                plaintext_mode.check_loopback("plaintext hub address", address_host)
        elif ssl_context is None:
            raise ValueError("give ssl_context (or plaintext=True for a lab on loopback)")
        self.trace = trace
        self._plaintext_warned = False
        self.merchant_id = merchant_id
        self.key = server_key.encode()
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.in_flight_max = in_flight_max
        self.hello = {"in_flight_max": in_flight_max, **(hello or {})}
        self.reconnect = reconnect
        self.retry_attempts_max = retry_attempts_max
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.reconnect_window_s = reconnect_window_s
        # How long one request waits for a hub while none is connected; None: the request's
        # own timeout. Reconnecting goes on in the background for up to reconnect_window_s
        # (one shared attempt loop), so a request never blocks for the whole window.
        self.hub_wait_s = hub_wait_s
        self._reconnecting: asyncio.Future[ClientConnection] | None = None
        self._last_connect_error = ""
        self.resolve_unknown = resolve_unknown
        self.conn: ClientConnection | None = None
        self.welcome: dict[str, Any] = {}
        self.address: Address | None = None
        self._next_address = 0
        self._slots: asyncio.Semaphore | None = None
        self._connecting = asyncio.Lock()
        self._closed = False
        self._rng = random.Random()
        # When each reconnect attempt is due (monotonic; bounded), for labs and the retry-storm
        # test: the time the client chose (loss + jittered backoff), not when a busy loop got
        # round to it, so the spread it shows is the jitter's.
        self.reconnect_attempts: deque[float] = deque(maxlen=1000)
        self.history: deque[ClientConnection] = deque(maxlen=16)
        # Connections that got GOAWAY with requests still waiting for their answers, each
        # with the task that drops it once they are done (``_drain``; ``close`` too).
        self._draining: dict[ClientConnection, asyncio.Task[None]] = {}

    # --- connection management ------------------------------------------------------------
    def _usable(self, conn: ClientConnection | None) -> bool:
        return (conn is not None and conn.transport is not None
                and not conn.transport.is_closing() and conn.goaway is None)

    async def _open(self, address: Address, timeout_s: float | None = None) -> ClientConnection:
        loop = asyncio.get_running_loop()
        host, port = address
        timeout_s = self.connect_timeout_s if timeout_s is None else timeout_s
        conn = ClientConnection(self.merchant_id, self.hello, plaintext=self.plaintext,
                                trace_frames=self.trace)
        if self.plaintext:
            if not self._plaintext_warned:  # once per client, not per reconnect attempt
                self._plaintext_warned = True
                log.warning(plaintext_mode.WARNING.format(where=f"connections to {host}:{port}"))
            connecting = loop.create_connection(lambda: conn.net, host, port)
        else:
            connecting = loop.create_connection(
                lambda: conn.net, host, port,
                ssl=self.ssl_context, server_hostname=self.server_hostname or host)
        await asyncio.wait_for(connecting, timeout_s)
        try:
            self.welcome = await asyncio.wait_for(conn.welcome, timeout_s)
        except BaseException:
            conn.abort_soon()
            raise
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.welcome["in_flight_max"])
        self.address = address
        self.history.append(conn)
        return conn

    def backoff_s(self, attempt: int) -> float:
        return full_jitter_s(attempt, self.backoff_min_s, self.backoff_max_s, self._rng)

    async def connect(self) -> Client:
        await self._connection(first=True)
        return self

    async def _connection(self, first: bool = False) -> ClientConnection:
        conn = self.conn
        if self._usable(conn):
            assert conn is not None
            return conn
        async with self._connecting:
            conn = self.conn
            if self._usable(conn):
                assert conn is not None
                return conn
            if self._closed:
                raise ConnectionLost("client is closed")
            lost = self.address
            why = ""
            if conn is not None:
                if not self.reconnect:
                    raise ConnectionLost(f"connection lost: {conn.lost_reason or 'closed'}")
                why = _why_unusable(conn)
                log.info("reconnect: connection to %s lost (%s)", _addr(lost), why)
                self._next_address += 1  # fail over: start with the next hub
                if conn.goaway is not None and conn.correlator.waiting and \
                        conn.transport is not None and not conn.transport.is_closing():
                    # After GOAWAY the hub still answers the requests it has (up to its
                    # last_request_id) and then closes: let them come (spec §8) rather
                    # than cut them off and send them again elsewhere.
                    if conn not in self._draining:
                        waiting = [f for f, _ in conn.correlator.waiting.values()]
                        self._draining[conn] = asyncio.get_running_loop().create_task(
                            self._drain(conn, waiting))
                else:
                    conn.abort_soon()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (self.connect_timeout_s if first and not self.reconnect
                                      else self.reconnect_window_s)
            attempt = 0
            last: BaseException | None = None
            while True:
                delay_s = self.backoff_s(attempt) if not first or attempt > 0 else 0.0
                self.reconnect_attempts.append(loop.time() + delay_s)
                if delay_s:
                    await asyncio.sleep(delay_s)
                    if attempt > 0 and loop.time() >= deadline:
                        # Out of time after the backoff: report the last real failure, not
                        # the instant timeout of an attempt with no time left.
                        raise ConnectionLost(f"no hub reachable among {self.addresses}: "
                                             f"{last!r}")
                address = self.addresses[self._next_address % len(self.addresses)]
                if lost is not None and address != lost:
                    log.info("failover: from %s to %s (%s)", _addr(lost), _addr(address), why)
                    lost, why = address, "previous address unreachable"
                try:
                    # No attempt outlives the window: a black-holed address would otherwise
                    # hold the caller a whole connect timeout past it.
                    self.conn = await self._open(address, max(0.0, min(
                        self.connect_timeout_s, deadline - loop.time())))
                    if conn is not None or attempt > 0:
                        log.info("reconnect: connected to %s after %d failed attempt(s)",
                                 _addr(address), attempt)
                    return self.conn
                except (TimeoutError, OSError, ssl.SSLError, ConnectionLost, RemoteError) as exc:
                    last = exc
                    self._last_connect_error = f"{_addr(address)}: {_short(exc)}"
                    log.info("reconnect: attempt %d to %s failed: %s", attempt + 1,
                             _addr(address), _short(exc))
                    if isinstance(exc, ssl.SSLCertVerificationError):
                        # Permanent: the hub's certificate does not chain to our CA (or names
                        # another host). Retrying for the whole window cannot change that and
                        # only hides the cause from the person waiting (issue 15).
                        raise
                    lost = lost if lost is not None else address
                    why = _short(exc)
                    if isinstance(exc, RemoteError) and (not self.reconnect or (
                            not exc.code.is_retryable
                            and exc.code is not ErrorCode.TOO_MANY_CONNECTIONS)):
                        raise  # refused for good (wrong certificate, unknown merchant)
                self._next_address += 1
                attempt += 1
                if loop.time() >= deadline:
                    raise ConnectionLost(f"no hub reachable among {self.addresses}: {last!r}")

    async def _connection_by(self, deadline: float, wait_s: float, op: str,
                             order_id: object, sent: bool) -> ClientConnection:
        """The connection for a request, waiting for a reconnect no later than ``deadline``
        (loop time). Past it the request fails with a ``ConnectionLost`` that says so; the
        reconnect attempts go on (shielded, shared by every request) so that the next
        request finds the hub as soon as one answers."""
        conn = self.conn
        if self._usable(conn):
            assert conn is not None
            return conn
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.ensure_future(self._connection())
            self._reconnecting.add_done_callback(_consume)
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(asyncio.shield(self._reconnecting),
                                          max(0.0, deadline - loop.time()))
        except TimeoutError:
            waited = "it may have reached the hub that was lost" if sent else "it was not sent"
            log.info("no hub: %s order_id=%s failed after waiting for a reconnect (%s)", op,
                     order_id, self._last_connect_error or "connecting")
            raise ConnectionLost(
                f"{op}: no hub reachable within {wait_s:g} s; {waited}; last attempt: "
                f"{self._last_connect_error or 'still connecting'}; the client keeps "
                f"reconnecting (up to {self.reconnect_window_s:g} s) and sending the same "
                f"request again is safe") from None

    def _hub_wait_s_for(self, timeout_s: float | None) -> float:
        return self.hub_wait_s if self.hub_wait_s is not None else (timeout_s or self.timeout_s)

    async def _drain(self, conn: ClientConnection,
                     waiting: list[asyncio.Future[dict[str, Any]]]) -> None:
        """A connection that sent GOAWAY: once the requests that were waiting on it have
        their answers, or their own timeouts (every request has one), drop it, whether or
        not the hub closed it (a hub that never does must not hold it open). No shorter
        bound: a request given a longer timeout must not be cut off and sent again."""
        try:
            if waiting:
                await asyncio.wait(waiting)
            conn.abort_soon()
            await conn.closed
        finally:
            self._draining.pop(conn, None)

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None and not self._reconnecting.done():
            self._reconnecting.cancel()
        draining = list(self._draining)
        for conn in draining:
            conn.abort_soon()
        if self.conn is not None:
            self.conn.abort_soon()
            await self.conn.closed
        # Each ends within the adapter's close bound (CLOSE_GRACE_S).
        await asyncio.gather(*(c.closed for c in draining), return_exceptions=True)

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # --- requests --------------------------------------------------------------------------
    async def request(self, op: str, args: dict[str, Any],
                      timeout_s: float | None = None) -> dict[str, Any]:
        """Send one signed request and wait for its response map, retrying where it is safe:
        a lost connection, a hub that is shutting down, and retryable error codes."""
        attempts = 0
        retry_reason: str | None = None
        previous_rid = 0
        order_id = args.get("order_id")
        # While no hub answers, the request waits for one only this long, not the whole
        # reconnect window: a caller is told within its timeout (tests/test_client_failover.py).
        hub_wait_s = self._hub_wait_s_for(timeout_s)
        hub_deadline = asyncio.get_running_loop().time() + hub_wait_s
        lost_in_flight = False  # sent on a connection that died before its answer
        while True:
            attempts += 1
            conn = self.conn  # the common case without a coroutine: the connection is up
            if not self._usable(conn):
                conn = await self._connection_by(hub_deadline, hub_wait_s, op, order_id,
                                                 lost_in_flight)
            assert conn is not None and self._slots is not None
            async with self._slots:
                if not self._usable(conn):
                    # It died while we waited for a slot: a closed connection drops what
                    # is sent on it, and the request would wait out its whole timeout
                    # unsent, then end as OutcomeUnknown (tests/test_batch_faults.py).
                    conn = await self._connection_by(hub_deadline, hub_wait_s, op, order_id,
                                                     lost_in_flight)
                rid, fut = conn.correlator.new(timeout_s or self.timeout_s)
                if retry_reason is not None:
                    log.info("resend: %s order_id=%s request_id=%d (was request_id=%d, attempt "
                             "%d of %d): %s", op, order_id, rid, previous_rid, attempts,
                             self.retry_attempts_max, retry_reason)
                try:
                    # Inside the try: a request too large for the negotiated limit raises
                    # FRAME_TOO_LARGE here, and its waiting entry must go with it.
                    conn.send(build_request(self.key, self.merchant_id, rid, op, args,
                                            stamp_sent=True))
                    return await fut
                except RemoteError as exc:
                    if exc.code is ErrorCode.SHUTTING_DOWN:
                        conn.shutting_down_rids.add(rid)
                        conn.goaway = conn.goaway or {"last_request_id": rid - 1}
                    if not exc.code.is_retryable or attempts >= self.retry_attempts_max:
                        raise  # typed already: the code's class and RequestError
                    retry_reason, previous_rid = f"answered {exc.code.name}", rid
                except ConnectionLost as exc:
                    if not self.reconnect or attempts >= self.retry_attempts_max:
                        raise
                    retry_reason = f"in flight when the connection was lost ({_short(exc)})"
                    lost_in_flight = True
                    previous_rid = rid
                    continue  # in flight when the connection died: send it again
                except RequestTimeout:
                    log.info("timeout: %s order_id=%s request_id=%d had no answer within "
                             "%g s", op, order_id, rid, timeout_s or self.timeout_s)
                    raise
                finally:
                    conn.correlator.forget(rid)
            if conn.goaway is None:
                await asyncio.sleep(self.backoff_s(attempts))

    async def _tx(self, op: str, args: dict[str, Any],
                  timeout_s: float | None) -> TransactionResult:
        try:
            return TransactionResult.from_wire(await self.request(op, args, timeout_s))
        except OutcomeUnknown as exc:
            if exc.order_id is not None or "order_id" not in args:
                raise
            # The hub's OUTCOME_UNKNOWN, or a lost connection: say which order it is about.
            # A copy, because one ConnectionLost may fail every request of a connection.
            named = copy.copy(exc)
            named.order_id = args.get("order_id")
            raise named from None
        except RequestTimeout:
            if not self.resolve_unknown or op == "status":
                # A status by transaction id names no order: the message names the id.
                named_by = args.get("order_id") or args.get("transaction_id")
                raise OutcomeUnknown(f"{op} of {named_by!r}: no answer in time",
                                     order_id=args.get("order_id")) from None
            return await self._resolve(op, args)

    async def _resolve(self, op: str, args: dict[str, Any]) -> TransactionResult:
        """After a timeout, ask what happened instead of sending a money-moving op again."""
        order_id = args["order_id"]
        log.info("unknown outcome: %s order_id=%s timed out; asking status", op, order_id)
        try:
            tx = await self._status_after_timeout(order_id)
        except RequestError as exc:
            log.info("unknown outcome: %s order_id=%s: status answered %s", op, order_id,
                     exc.code.name)
            if exc.code is ErrorCode.OUTCOME_UNKNOWN:
                raise OutcomeUnknown(f"{op} of {order_id!r} timed out and the bank's answer is "
                                     "not known yet; ask status again later",
                                     order_id=order_id) from None
            if exc.code is ErrorCode.NOT_FOUND:
                raise OutcomeUnknown(f"{op} of {order_id!r} timed out and the hub has no "
                                     "record of it yet; sending the same request again is "
                                     "safe", order_id=order_id) from None
            raise
        visible = _effect_visible(op, args, tx)
        log.info("unknown outcome resolved: %s order_id=%s is %s; the %s %s", op, order_id,
                 tx.transaction_status, op, "took effect" if visible else "shows no effect")
        if visible:
            return tx
        raise OutcomeUnknown(f"{op} of {order_id!r} timed out; the transaction is "
                             f"{tx.transaction_status}", order_id=order_id)

    async def _status_after_timeout(self, order_id: str) -> TransactionResult:
        """``status`` of an order whose operation timed out. The hub answers it only after
        that operation has finished (docs/protocol.md §4.5), which can take longer than our
        request timeout with a slow bank; a status is a read, so asking again is safe."""
        attempts = 0
        while True:
            attempts += 1
            try:
                return TransactionResult.from_wire(
                    await self.request("status", {"order_id": order_id}))
            except RequestTimeout:
                if attempts >= self.retry_attempts_max:
                    raise OutcomeUnknown(f"status of {order_id!r}: no answer in time",
                                         order_id=order_id) from None

    async def events(self, since: int | None = None, *, reconnect: bool = True,
                     on_subscribed: Callable[[int], object] | None = None
                     ) -> AsyncGenerator[Event, None]:
        """Yield this merchant's pushed events after ``since`` (all future ones if ``None``),
        in order, each once. Runs on its own connection; when it drops, or a gap in ``seq``
        shows a missed event, it reconnects with ``events_since`` = the last seq yielded and
        the hub replays what was missed from its ledger.

        Raises ``ResumeExpired`` when the hub no longer has events after ``since`` (or
        after the last seq yielded): they are past its resume horizon (docs/protocol.md
        §3.3); retrying with the same ``since`` cannot succeed. Reconcile in this order, or
        a change made in between is in neither: call ``events()`` again without ``since``,
        wait for ``on_subscribed``, *then* ask ``status`` for the orders you have not seen
        settle; every change after that point comes as an event.

        ``on_subscribed(seq)``: called each time the stream is subscribed (the first time
        and after every reconnect), with the last seq before the events it will yield."""
        last = since
        attempt = 0
        while True:
            hello: dict[str, Any] = {"subscribe_events": True}
            if last is not None:
                hello["events_since"] = last
            sub = Client(self.addresses, merchant_id=self.merchant_id,
                         server_key=self.key.decode(), ssl_context=self.ssl_context,
                         server_hostname=self.server_hostname, hello=hello,
                         connect_timeout_s=self.connect_timeout_s, reconnect=False,
                         plaintext=self.plaintext, trace=self.trace)
            try:
                await sub.connect()
                attempt = 0
                if last is None:
                    last = int(sub.welcome["event_seq"])
                if on_subscribed is not None:
                    on_subscribed(last)
                assert sub.conn is not None
                while True:
                    raw = await sub.conn.events.get()
                    if raw is None:
                        expired = sub.conn.peer_error
                        if expired is not None and expired.code is ErrorCode.RESUME_EXPIRED:
                            raise expired  # events after ``last`` are gone: reconcile
                        break  # connection gone: resume from ``last``
                    seq = raw["seq"]
                    if seq <= last:
                        continue  # already seen
                    if seq != last + 1:
                        break  # a gap: reconnect and let the hub replay it
                    last = seq
                    yield Event(seq, raw["type"], raw["merchant_id"],
                                TransactionResult.from_wire(raw["data"]))
            except (TimeoutError, OSError, ConnectionLost, RemoteError) as exc:
                if not reconnect or _permanent(exc):
                    raise
            finally:
                await sub.close()
            if not reconnect:
                raise ConnectionLost("event stream closed")
            await asyncio.sleep(full_jitter_s(attempt, 0.05, EVENTS_RECONNECT_DELAY_MAX_S))
            attempt += 1


    async def charge(self, order_id: str, gross_amount: int, payment_type: str = "credit_card",
                     *, card: Card | dict[str, Any] | None = None, capture: bool = True,
                     bank: str | None = None, provider: str | None = None,
                     currency: str = "IDR", customer: dict[str, Any] | None = None,
                     expiry_s: int | None = None, description: str | None = None,
                     timeout_s: float | None = None,
                     metadata: Mapping[str, str] | None = None,
                     notification_url: str | None = None) -> TransactionResult:
        """Charge a card (authorize + capture, or authorize only with ``capture=False``),
        open a virtual account (``payment_type="bank_transfer"``, ``bank=``), or request an
        e-wallet payment (``payment_type="ewallet"``, ``provider=``). Retrying with the same
        ``order_id`` and content returns the first result (``replayed=True``).

        ``metadata``: the merchant's own string pairs, returned in every result, webhook and
        event of the transaction (at most ``METADATA_KEYS_MAX`` keys; limits in
        docs/protocol.md §5.1.2). ``notification_url``: where this transaction's webhooks go
        instead of the merchant's configured URL (https; refused like a bad merchant URL).
        A declined card is a result with ``transaction_status`` ``deny``, not an error."""
        args: dict[str, Any] = {"order_id": order_id, "gross_amount": gross_amount,
                                "payment_type": payment_type, "currency": currency}
        if card is not None:
            args["card"] = card.to_wire() if isinstance(card, Card) else card
            args["capture"] = capture
        optional = {"bank": bank, "provider": provider, "customer": customer,
                    "expiry_s": expiry_s, "description": description,
                    "metadata": dict(metadata) if metadata else None,
                    "notification_url": notification_url}
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

    async def status(self, order_id: str | None = None, timeout_s: float | None = None, *,
                     transaction_id: str | None = None) -> TransactionResult:
        """The transaction of ``order_id``, or of ``transaction_id`` (give exactly one, as
        Midtrans' status accepts either). Another merchant's transaction id is
        ``NotFound``, like an id nobody issued."""
        if (order_id is None) == (transaction_id is None):
            raise ValueError("give exactly one of order_id and transaction_id")
        args = ({"order_id": order_id} if order_id is not None
                else {"transaction_id": transaction_id})
        return await self._tx("status", args, timeout_s)

    async def expire(self, order_id: str, timeout_s: float | None = None) -> TransactionResult:
        return await self._tx("expire", {"order_id": order_id}, timeout_s)


def _consume(fut: asyncio.Future[ClientConnection]) -> None:
    """A background reconnect nobody awaits any more: its failure was reported to the
    requests that waited (or will be, by the next attempt); do not log it as unretrieved."""
    if not fut.cancelled():
        fut.exception()


def _addr(address: Address | None) -> str:
    return "?" if address is None else f"{address[0]}:{address[1]}"


def _short(exc: BaseException) -> str:
    """An exception as a log reason: its type and first line (messages carry no secrets:
    codes, addresses, order ids)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _why_unusable(conn: ClientConnection) -> str:
    if conn.goaway is not None:
        return "the hub sent GOAWAY"
    return conn.lost_reason or "closed"


def _permanent(exc: BaseException) -> bool:
    """A failure to connect that trying again cannot fix: a hub certificate our CA does not
    verify, or a refusal the hub marks as not retryable (unknown merchant, wrong
    certificate role), except the connection limit, which frees up."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    return isinstance(exc, RemoteError) and not exc.code.is_retryable and (
        exc.code is not ErrorCode.TOO_MANY_CONNECTIONS)


def _effect_visible(op: str, args: dict[str, Any], tx: TransactionResult) -> bool:
    """Does the transaction show that ``op`` took effect?"""
    if op == "charge":
        return bool(tx.gross_amount == args["gross_amount"])
    if op == "refund":
        return any(r.refund_key == args["refund_key"] for r in tx.refunds)
    wanted = {"capture": ("capture",), "cancel": ("cancel",), "expire": ("expire",),
              "approve": ("capture",), "deny": ("deny",)}.get(op, ())
    return tx.transaction_status in wanted


def connect(host: str | list[Address], port: int | None = None, *, merchant_id: str,
            server_key: str,
            ssl_context: ssl.SSLContext | None = None, certs_dir: Path | str | None = None,
            **options: Any) -> Client:
    """``host`` may be a list of ``(host, port)``: the client fails over between them."""
    """Build a client; use as ``async with connect(...) as client:`` or ``await
    connect(...).connect()``. Give ``ssl_context``, or ``certs_dir`` holding
    ``ca.crt`` and ``merchant-<merchant_id>.crt/.key``."""
    if ssl_context is None and not options.get("plaintext"):
        if certs_dir is None:
            raise ValueError("give ssl_context or certs_dir")
        ssl_context = client_ssl_context(certs_dir, merchant_id)
    return Client(host, port, merchant_id=merchant_id, server_key=server_key,
                  ssl_context=ssl_context, **options)
