"""The hub's links to bank nodes: one TLS connection per node, pooled per bank.

A pool sends each call to a healthy node, round robin. A node is healthy when its link is up
(heartbeats prove it) and its circuit breaker is closed. Because bank nodes deduplicate on
``op_id`` and a bank's nodes share their books, any call may be repeated on another node of
the same bank after a timeout or a lost link without moving money twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterator
from typing import Any

from gateway import tls
from gateway.net.backoff import full_jitter_s
from gateway.net.framed import FramedProtocol, FrameHandler
from gateway.net.signed import Correlator, RequestTimeout, build_request
from protocol.connection import ClientConnection, WelcomeReceived
from protocol.errors import ErrorCode, PaywireError, RemoteError
from protocol.frame import BODY_BYTES_MAX_DEFAULT, Frame, FrameType
from protocol.messages import ROLE_HUB

log = logging.getLogger("paywire.banklink")

RECONNECT_DELAY_MIN_S = 0.05
RECONNECT_DELAY_MAX_S = 2.0
BREAKER_FAILURES_MAX = 5
BREAKER_OPEN_S = 2.0


class BankUnavailable(PaywireError):
    """No node of the bank could be asked. Nothing happened at the bank."""

    code = ErrorCode.BANK_UNAVAILABLE


class OutcomeUnknown(PaywireError):
    """The call was sent and no answer came: it may or may not have taken effect."""

    code = ErrorCode.OUTCOME_UNKNOWN


class LinkLost(ConnectionError):
    pass


BankRequestHandler = Callable[["BankLink", Frame], None]


class BankLink(FrameHandler):
    """The hub's end of one bank-node link, held by its adapter (``self.net``; give
    ``lambda: BankLink(node).net`` to ``create_connection``)."""

    def __init__(self, node: BankNodeHandle) -> None:
        self.loop = asyncio.get_running_loop()
        self.node = node
        self.conn = ClientConnection(role=ROLE_HUB, identity=node.hub_id)
        self.net = FramedProtocol(self, self.conn)
        self.correlator = Correlator(self.loop, self.conn.forget_request)
        self.ready: asyncio.Future[None] = self.loop.create_future()

    def on_connected(self) -> None:
        # The server must prove it is a bank node before it gets a HELLO, let alone a bank
        # call: any certificate of the CA passes the TLS handshake, and a merchant's posing
        # as a bank could approve charges (or report payments) the hub would record.
        assert self.transport is not None
        peer = tls.check_peer(self.transport, "bank", tls.Use.SERVER)
        expected = self.node.expected_name
        if not isinstance(peer, tls.PeerRefused) and expected and peer.name != expected:
            # A genuine node of *another* bank (or another node) at this address: it would
            # approve this bank's charges and report payments the hub would credit to it.
            peer = tls.PeerRefused(f"certificate names bank node {peer.name!r}, this address "
                                   f"is configured for {expected!r}")
        if isinstance(peer, tls.PeerRefused):
            log.warning("refusing %s as a node of %s: %s", self.node.address,
                        self.node.pool.name, peer.reason)
            self.ready.set_exception(LinkLost(f"not a bank node: {peer.reason}"))
            self.abort_soon()
            return
        self.net.send_hello({"body_bytes_max": BODY_BYTES_MAX_DEFAULT, "client": "paywire-hub"})

    def frame_received(self, frame: Frame) -> None:
        if frame.type == FrameType.RESPONSE:
            self.correlator.resolve(frame)
        elif frame.type == FrameType.REQUEST:
            self.node.on_request(self, frame)

    def on_welcome(self, event: WelcomeReceived) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def call(self, op: str, args: dict[str, Any], timeout_s: float) -> asyncio.Future[Any]:
        rid, fut = self.correlator.new(timeout_s)
        self.send(build_request(self.node.key, self.node.hub_id, rid, op, args))
        return fut

    def on_disconnected(self, exc: Exception | None) -> None:
        self.correlator.fail_all(LinkLost(f"link to {self.node.address} lost"))
        if not self.ready.done():
            self.ready.set_exception(LinkLost("closed during handshake"))
        self.node.link_lost(self)


class CircuitBreaker:
    """Closed → open after ``failures_max`` failures in a row; half-open after ``open_s``."""

    def __init__(self, failures_max: int = BREAKER_FAILURES_MAX,
                 open_s: float = BREAKER_OPEN_S) -> None:
        self.failures_max = failures_max
        self.open_s = open_s
        self.failures = 0
        self.open_until = 0.0

    def allows(self, now_s: float) -> bool:
        return self.failures < self.failures_max or now_s >= self.open_until

    def success(self) -> None:
        self.failures = 0

    def failure(self, now_s: float) -> None:
        self.failures += 1
        if self.failures >= self.failures_max:
            self.open_until = now_s + self.open_s


class BankNodeHandle:
    """One node address: keeps a link up (reconnecting with jittered backoff)."""

    def __init__(self, pool: BankPool, address: str) -> None:
        self.pool = pool
        # "NODE@HOST:PORT": the node's certificate must name NODE (its CN), so a genuine node
        # of another bank at this address is refused. A bare "HOST:PORT" (the bank-admin
        # tool only; configs require the name) accepts any bank node.
        self.expected_name, _, self.address = address.rpartition("@")
        host, _, port = self.address.rpartition(":")
        self.host, self.port = host, int(port)
        self.link: BankLink | None = None
        self.breaker = CircuitBreaker()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def key(self) -> bytes:
        return self.pool.key

    @property
    def hub_id(self) -> str:
        return self.pool.hub_id

    def on_request(self, link: BankLink, frame: Frame) -> None:
        self.pool.on_bank_request(link, frame)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        if self.link is not None:
            self.link.abort_soon()

    @property
    def healthy(self) -> bool:
        link = self.link
        return (link is not None and link.ready.done() and link.transport is not None
                and not link.transport.is_closing()
                and self.breaker.allows(asyncio.get_running_loop().time()))

    def link_lost(self, link: BankLink) -> None:
        if self.link is link:
            self.link = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stopping:
            try:
                link = BankLink(self)
                await asyncio.wait_for(loop.create_connection(
                    link.protocol_factory, self.host, self.port, ssl=self.pool.ssl_ctx,
                    server_hostname=self.host), 5.0)
                await asyncio.wait_for(link.ready, 5.0)
                self.link = link
                self.breaker.success()
                log.info("link up to %s (%s)", self.address, self.pool.name)
                attempt = 0
                await link.closed
                log.warning("link down to %s (%s)", self.address, self.pool.name)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, OSError, ssl.SSLError, LinkLost) as exc:
                log.debug("connect to %s failed: %r", self.address, exc)
            await asyncio.sleep(full_jitter_s(attempt, RECONNECT_DELAY_MIN_S,
                                              RECONNECT_DELAY_MAX_S))
            attempt += 1


class BankPool:
    """The nodes of one bank, and the call policy across them."""

    def __init__(self, name: str, addresses: list[str], *, hub_id: str, key: bytes,
                 ssl_ctx: ssl.SSLContext, on_bank_request: BankRequestHandler,
                 timeout_s: float, attempts_max: int, calls_max: int = 20_000) -> None:
        self.name = name
        self.hub_id = hub_id
        self.key = key
        self.ssl_ctx = ssl_ctx
        self.on_bank_request = on_bank_request
        self.timeout_s = timeout_s
        self.attempts_max = attempts_max
        self.nodes = [BankNodeHandle(self, a) for a in addresses]
        self._next = 0
        self.calls_max = calls_max
        self.calls_admitted = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Admit one operation for this bank, from before its intent is written until its
        answer is in. Taken synchronously, so a burst cannot slip past the bound; past it,
        QUEUE_FULL, before anything is recorded or sent."""
        if self.calls_admitted >= self.calls_max:
            raise PaywireError(f"too many calls queued for bank {self.name}",
                               code=ErrorCode.QUEUE_FULL)
        self.calls_admitted += 1
        try:
            yield
        finally:
            self.calls_admitted -= 1

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()

    async def wait_ready(self, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if any(n.healthy for n in self.nodes):
                return True
            await asyncio.sleep(0.02)
        return False

    def _pick(self, avoid: set[BankNodeHandle]) -> BankNodeHandle | None:
        """Round robin over healthy nodes, preferring ones not tried for this call."""
        n = len(self.nodes)
        first = self.nodes[self._next]
        self._next = (self._next + 1) % n
        if first not in avoid and first.healthy:
            return first  # the common case, once per bank call: no lists built
        candidates = [first] + [self.nodes[(self._next - 1 + i) % n] for i in range(1, n)]
        healthy = [c for c in candidates if c.healthy]
        fresh = [c for c in healthy if c not in avoid]
        pick = fresh or healthy
        return pick[0] if pick else None

    @property
    def call_budget_s(self) -> float:
        """The most one ``call`` may take: ``timeout_s * attempts_max`` (docs/protocol.md
        §5.3 states the OUTCOME_UNKNOWN bound in these terms)."""
        return self.timeout_s * self.attempts_max

    def deadline(self) -> float:
        """A loop-time deadline one call budget from now (several calls may share it)."""
        return asyncio.get_running_loop().time() + self.call_budget_s

    async def call(self, op: str, args: dict[str, Any],
                   deadline_s: float | None = None) -> dict[str, Any]:
        """Send to a healthy node; on failure try another, up to ``attempts_max`` sends,
        all of them (and the pauses between) ending by ``deadline_s`` (loop time; default
        one call budget from now): each send waits at most ``timeout_s`` and never past it.

        Raises ``BankUnavailable`` when no attempt can have reached the bank, and
        ``OutcomeUnknown`` when at least one was sent and none was answered.
        """
        loop = asyncio.get_running_loop()
        if deadline_s is None:
            deadline_s = loop.time() + self.call_budget_s
        tried: set[BankNodeHandle] = set()
        maybe_sent = False
        for attempt in range(self.attempts_max):
            remaining_s = deadline_s - loop.time()
            if remaining_s <= 0:
                break
            node = self._pick(tried)
            if node is None or node.link is None:
                if attempt + 1 < self.attempts_max:
                    await asyncio.sleep(min(full_jitter_s(attempt, 0.05, 0.5), remaining_s))
                continue
            tried.add(node)
            try:
                result: dict[str, Any] = await node.link.call(op, args,
                                                              min(self.timeout_s, remaining_s))
            except RemoteError as exc:
                if exc.code is not ErrorCode.BANK_UNAVAILABLE:
                    raise
                node.breaker.failure(loop.time())
                continue
            except (RequestTimeout, LinkLost):
                maybe_sent = True
                node.breaker.failure(loop.time())
                continue
            node.breaker.success()
            return result
        if maybe_sent:
            raise OutcomeUnknown(f"{op} to {self.name}: no answer after {len(tried)} node(s)")
        raise BankUnavailable(f"no node of {self.name} is available")
