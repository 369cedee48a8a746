"""The hub's links to bank nodes: one TLS connection per node, pooled per bank.

A pool sends each call to a healthy node, round robin. A node is healthy when its link is up
(heartbeats prove it) and its circuit breaker is closed. Because bank nodes deduplicate on
``op_id`` and a bank's nodes share their books, any call may be repeated on another node of
the same bank after a timeout or a lost link without moving money twice.

Calls to one node made in the same loop iteration leave as one signed ``bank.batch`` frame
(docs/protocol.md §10.2), up to ``BATCH_OPS_MAX`` a frame: one HMAC, one frame and one SQL
transaction at the bank for all of them. Each call keeps its own request id, future and
timeout in the link's correlator (the ids of a batch's calls are never sent; the batch has
its own), so a caller sees exactly what it saw with one frame per call: its result, its
error, ``RequestTimeout`` at its own deadline, or ``LinkLost`` — and the pool's failover,
breaker and retry rules apply per call, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from gateway import tls
from gateway.net.backoff import full_jitter_s
from gateway.net.framed import FramedProtocol, FrameHandler
from gateway.net.signed import Correlator, build_request
from gateway.stats import DURATION_BUCKETS_US, Histogram
from protocol import banklink
from protocol import body as bodycodec
from protocol.connection import ClientConnection, GoawayReceived, WelcomeReceived
from protocol.errors import (
    BankUnavailable,
    ErrorCode,
    OutcomeUnknown,
    PaywireError,
    RemoteError,
    RequestTimeout,
)
from protocol.frame import (
    BODY_BYTES_MAX_DEFAULT,
    HEADER_BYTES,
    Flags,
    Frame,
    FrameType,
)
from protocol.messages import ROLE_HUB

log = logging.getLogger("paywire.banklink")

RECONNECT_DELAY_MIN_S = 0.05
RECONNECT_DELAY_MAX_S = 2.0
BREAKER_FAILURES_MAX = 5
BREAKER_OPEN_S = 2.0
# Bounds of a dial: the TCP and TLS connect, then HELLO until the node's WELCOME. A dial
# that misses either is closed (bounded, as every close: ``CLOSE_GRACE_S``) before the next.
CONNECT_TIMEOUT_S = 5.0
WELCOME_TIMEOUT_S = 5.0


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
        self.correlator = Correlator(self.loop, self._forget)
        self.ready: asyncio.Future[None] = self.loop.create_future()
        # Set when the node's GOAWAY arrives (§8): no new call goes on this link.
        self.goaway: asyncio.Future[None] = self.loop.create_future()
        # Request id -> op of each call waiting for its answer: what its answer must hold
        # (``banklink.ANSWERS``).
        self._ops: dict[int, str] = {}
        # Calls made this loop iteration, not yet sent: (request id, op, args).
        self._unsent: list[tuple[int, str, dict[str, Any]]] = []
        self._send_scheduled = False
        # Batch request id -> the request ids of its calls, in the order sent; dropped when
        # the batch is answered, when its longest call has timed out, or with the link.
        self._batches: dict[int, list[int]] = {}
        # Ids of the frames sent and not yet answered (nor given up on): at most the node's
        # WELCOME ``in_flight_max`` (§3.4; past it a node answers TOO_MANY_IN_FLIGHT).
        self._frames_out: set[int] = set()
        self.frames_sent = 0

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
            self._frame_done(frame.request_id)
            calls = self._batches.pop(frame.request_id, None)
            if calls is None:
                self._answered(frame)
            else:
                self._batch_answered(frame, calls)
        elif frame.type == FrameType.REQUEST:
            self.node.on_request(self, frame)

    def _answered(self, frame: Frame) -> None:
        """The answer to one call sent alone (an error answer, or nobody waiting: as the
        correlator resolves it)."""
        rid = frame.request_id
        if frame.flags & Flags.ERROR or rid not in self._ops:
            self.correlator.resolve(frame)
            return
        try:
            body = bodycodec.unpack(frame.body)
        except PaywireError as exc:
            self._deliver(rid, exc)
            return
        self._deliver(rid, body)

    def _deliver(self, rid: int, answer: Any) -> None:
        """Settle call ``rid`` with ``answer``: an answer that fails its op's table
        (``banklink.answer_defect``) is one the hub cannot read, settled as
        ``MALFORMED_BODY`` (the node may have applied it: ``EFFECT_UNKNOWN_CODES``)."""
        op = self._ops.pop(rid, None)
        if op is not None and not isinstance(answer, BaseException):
            defect = banklink.answer_defect(op, answer)
            if defect is not None:
                log.warning("unreadable answer to %s from %s: %s", op, self.node.address,
                            defect)
                answer = RemoteError(f"bank node answered {op} unreadably: {defect}",
                                     code=ErrorCode.MALFORMED_BODY)
        _settle(self.correlator, rid, answer)

    def _forget(self, rid: int) -> None:
        """Call ``rid``'s waiter gave up (timeout, lost link): nothing expects it now."""
        self._ops.pop(rid, None)
        self.conn.forget_request(rid)
        self._frame_done(rid)

    def _room(self) -> bool:
        """Whether another frame may go now: fewer unanswered than the node's WELCOME
        ``in_flight_max`` (0 before WELCOME: no bound known yet)."""
        bound = self.conn.in_flight_max
        return bound <= 0 or len(self._frames_out) < bound

    def _frame_done(self, rid: int) -> None:
        """Frame ``rid`` is answered or given up on: calls held for room may go."""
        if rid in self._frames_out:
            self._frames_out.discard(rid)
            if self._unsent and not self._send_scheduled:
                self._send_scheduled = True
                self.loop.call_soon(self._send_unsent)

    def on_welcome(self, event: WelcomeReceived) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def on_goaway(self, event: GoawayReceived) -> None:
        """The node is draining (§8): it answers what it has received up to
        ``last_request_id`` and executes nothing later. No new call goes on this link (the
        node's handle dials a new one); calls queued and not sent yet are settled now as not
        started (``SHUTTING_DOWN``: ``send_failure`` counts it as unavailable). Calls sent
        past the cut wait for the node's own answer, ``SHUTTING_DOWN`` too: it is the node's
        word that it did nothing, where a GOAWAY whose body was unreadable says 0."""
        unsent, self._unsent = self._unsent, []
        for rid, _, _ in unsent:
            self._forget(rid)
            _settle(self.correlator, rid, RemoteError(
                f"bank node {self.node.address} is draining (GOAWAY): not sent",
                code=ErrorCode.SHUTTING_DOWN))
        if not self.goaway.done():
            self.goaway.set_result(None)
        self.node.link_draining(self)

    def call(self, op: str, args: dict[str, Any], timeout_s: float) -> asyncio.Future[Any]:
        """Queue one call for this iteration's frame; its timeout runs from now."""
        rid, fut = self.correlator.new(timeout_s)
        self._ops[rid] = op
        if self.goaway.done():  # (the pool never picks a draining link; a tool might)
            self._deliver(rid, RemoteError(f"bank node {self.node.address} is draining",
                                           code=ErrorCode.SHUTTING_DOWN))
            return fut
        self._unsent.append((rid, op, args))
        if not self._room():
            pass  # held: the answer that frees a frame sends it (``_frame_done``)
        elif len(self._unsent) >= banklink.BATCH_OPS_MAX:
            self._send_unsent()
        elif not self._send_scheduled:
            self._send_scheduled = True
            self.loop.call_soon(self._send_unsent)
        return fut

    def _send_unsent(self) -> None:
        self._send_scheduled = False
        unsent, self._unsent = self._unsent, []
        # A call whose caller gave up before it left (cancelled, timed out) is not sent:
        # nothing of it reached the bank, and nobody waits for its answer.
        waiting = self.correlator.waiting
        calls = [c for c in unsent if c[0] in waiting and not waiting[c[0]][0].done()]
        # Frames of up to BATCH_OPS_MAX calls while the node has room; the rest wait here
        # (their timeouts running) for an answer to free a frame.
        while calls and self._room():
            self._send_calls(calls[:banklink.BATCH_OPS_MAX])
            calls = calls[banklink.BATCH_OPS_MAX:]
        self._unsent = calls

    def _send_calls(self, calls: list[tuple[int, str, dict[str, Any]]]) -> None:
        key, hub_id = self.node.key, self.node.hub_id
        if len(calls) == 1:
            rid, op, args = calls[0]
            data = build_request(key, hub_id, rid, op, args)  # as before batching, byte for byte
        else:
            rid = self.correlator.next_id
            self.correlator.next_id += 1
            data = build_request(key, hub_id, rid, banklink.BATCH,
                                 banklink.batch_args([(op, args) for _, op, args in calls]))
            if len(data) - HEADER_BYTES > self.conn.peer_body_bytes_max:
                half = len(calls) // 2  # rare: unusually large args; each half fits sooner
                self._send_calls(calls[:half])
                self._send_calls(calls[half:])
                return
        try:
            self.send(data)
        except PaywireError as exc:  # a call alone too large for the peer's limit
            for c in calls:
                self._deliver(c[0], PaywireError(exc.message, code=exc.code))
            return
        self.frames_sent += 1
        self._frames_out.add(rid)
        if len(calls) > 1:
            self._batches[rid] = [c[0] for c in calls]
            # Forget the batch once its last call can no longer be waiting (each call's own
            # timer fails it at its deadline; a late answer then finds nobody, as for one).
            longest_s = max((h.when() for _, h in (self.correlator.waiting[c[0]]
                                                   for c in calls) if h is not None),
                            default=self.loop.time()) - self.loop.time()
            self.loop.call_later(max(0.0, longest_s), self._forget_batch, rid)

    def _forget_batch(self, rid: int) -> None:
        """No call of batch ``rid`` can still be waiting: a late answer is ignored, by us and
        by the connection's table of requests sent (which would otherwise keep its id)."""
        if self._batches.pop(rid, None) is not None:
            self.conn.forget_request(rid)
            self._frame_done(rid)

    def _batch_answered(self, frame: Frame, calls: list[int]) -> None:
        """Hand each call of a batch its own answer; an error RESPONSE to the whole frame
        (bad signature, a store failure before any op ran, …) is every call's answer."""
        try:
            body = bodycodec.unpack(frame.body)
        except PaywireError as exc:
            for rid in calls:  # one error object per call: each is raised in its own caller
                self._deliver(rid, PaywireError(exc.message, code=exc.code, field=exc.field))
            return
        answers: list[dict[str, Any] | RemoteError]
        if frame.flags & Flags.ERROR:
            answers = [RemoteError.from_body(body) for _ in calls]
        else:
            answers = banklink.decode_batch_result(body, len(calls))
            # Once per batch, the same for every call: each call's answer carries it.
            timings = body.get(banklink.TIMINGS_US) if isinstance(body, dict) else None
            if timings is not None:
                for answer in answers:
                    if isinstance(answer, dict):
                        answer[banklink.TIMINGS_US] = timings
        for rid, answer in zip(calls, answers, strict=True):
            self._deliver(rid, answer)

    def on_disconnected(self, exc: Exception | None) -> None:
        self._batches.clear()  # their calls wait in the correlator: failed just below
        self._frames_out.clear()
        self._unsent = []  # (waiting in the correlator too)
        self.correlator.fail_all(LinkLost(f"link to {self.node.address} lost"))
        if not self.ready.done():
            self.ready.set_exception(LinkLost("closed during handshake"))
        self.node.link_lost(self)


# The hops (``Transaction.hops_us``) a bank answer's ``timings_us`` fill in, by timing key:
# named for the node, whose clock they are on (docs/protocol.md §5.2).
BANK_NODE_HOPS = (("received", "bank_node_received"), ("committed", "bank_node_committed"),
                  ("answered", "bank_node_answered"))


def note_answer(hops_us: dict[str, int], result: dict[str, Any], at_us: int) -> None:
    """Record a bank answer's hops: ``bank_answered`` (the hub's clock, ``at_us``) and the
    node's own timings of it, if it sent valid ones. The hops are the charge's: a later
    operation's answer changes none (``setdefault``)."""
    hops_us.setdefault("bank_answered", at_us)
    timings = banklink.answer_timings(result)
    if timings:
        for key, hop in BANK_NODE_HOPS:
            if key in timings:
                hops_us.setdefault(hop, timings[key])


def _settle(correlator: Correlator, rid: int, answer: dict[str, Any] | BaseException) -> None:
    """Resolve one waiting call of ``correlator`` (nothing if it already timed out)."""
    entry = correlator.waiting.pop(rid, None)
    if entry is None:
        return
    fut, handle = entry
    if handle is not None:
        handle.cancel()
    if fut.done():
        return
    if isinstance(answer, BaseException):
        fut.set_exception(answer)
    else:
        fut.set_result(answer)


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
        self.label = self.expected_name or self.address  # its ``node`` label in /metrics
        host, _, port = self.address.rpartition(":")
        self.host, self.port = host, int(port)
        self.link: BankLink | None = None
        self.breaker = CircuitBreaker()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Links whose node sent GOAWAY: still read for the answers they owe, until the node
        # closes them or ``call_budget_s`` (the longest any call waits) has passed.
        self.draining: set[BankLink] = set()
        # While the node is dialled again after its GOAWAY: resolved by the dial's end (up or
        # failed), so a call finding no node ready waits for it rather than giving up.
        self.redial: asyncio.Future[None] | None = None

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
        for link in list(self.draining):
            link.abort_soon()

    @property
    def healthy(self) -> bool:
        link = self.link
        return (link is not None and link.ready.done() and link.transport is not None
                and not link.transport.is_closing()
                and self.breaker.allows(asyncio.get_running_loop().time()))

    def link_lost(self, link: BankLink) -> None:
        if self.link is link:
            self.link = None
        self.draining.discard(link)

    def link_draining(self, link: BankLink) -> None:
        """``link``'s node sent GOAWAY: it takes no new call (``_run`` dials again); it is
        closed once every call on it has had its time."""
        if self.link is link:
            self.link = None
            if self.redial is None or self.redial.done():
                self.redial = asyncio.get_running_loop().create_future()
        if link.net.closed.done():
            return
        self.draining.add(link)
        asyncio.get_running_loop().call_later(self.pool.call_budget_s, link.abort_soon)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stopping:
            link = BankLink(self)
            redial = self.redial
            try:
                await asyncio.wait_for(loop.create_connection(
                    link.protocol_factory, self.host, self.port, ssl=self.pool.ssl_ctx,
                    server_hostname=self.host), CONNECT_TIMEOUT_S)
                await asyncio.wait_for(link.ready, WELCOME_TIMEOUT_S)
                self.link = link
                self.breaker.success()
                _resolve(redial)
                log.info("link up to %s (%s)", self.address, self.pool.name)
                attempt = 0
                await asyncio.wait([link.closed, link.goaway],
                                   return_when=asyncio.FIRST_COMPLETED)
                if link.goaway.done() and not link.closed.done():
                    log.warning("%s (%s) is draining: dialling it again", self.address,
                                self.pool.name)
                else:
                    log.warning("link down to %s (%s)", self.address, self.pool.name)
            except asyncio.CancelledError:
                link.abort_soon()
                _resolve(redial)
                raise
            except (TimeoutError, OSError, ssl.SSLError, LinkLost) as exc:
                _resolve(redial)  # the node is not back: waiting callers decide now
                # A dial given up on (no WELCOME in time, a refused peer) is closed, bounded
                # by CLOSE_GRACE_S, not left open beside the next one.
                link.abort_soon()
                log.debug("connect to %s failed: %r", self.address, exc)
            await asyncio.sleep(full_jitter_s(attempt, RECONNECT_DELAY_MIN_S,
                                              RECONNECT_DELAY_MAX_S))
            attempt += 1


def _resolve(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


# Error answers by which a node says it did not start the call: BANK_UNAVAILABLE, and a
# server's refusals of work it never began (§3.4: TOO_MANY_IN_FLIGHT past its in-flight
# bound; §8: SHUTTING_DOWN past its GOAWAY). Another node (or this one, later) may take it,
# and a charge none took is forgotten (its order id stays free), as for BANK_UNAVAILABLE.
NOT_STARTED_CODES = frozenset({ErrorCode.BANK_UNAVAILABLE, ErrorCode.TOO_MANY_IN_FLIGHT,
                               ErrorCode.SHUTTING_DOWN})

# Error answers after which a call may have taken effect at the bank: the node failed while
# applying it (INTERNAL), its answer did not fit (RESPONSE_TOO_LARGE: §10.2, the effects
# stand), or the answer could not be read (MALFORMED_BODY). Like a timeout, the call counts
# as maybe sent: it is tried on another node (same op_id: at most once) and, if none
# answers, settled by inquiry; never reported as the operation's own error.
EFFECT_UNKNOWN_CODES = frozenset({ErrorCode.INTERNAL, ErrorCode.RESPONSE_TOO_LARGE,
                                  ErrorCode.MALFORMED_BODY})


def send_failure(exc: BaseException) -> str | None:
    """How a failed send counts: ``"unavailable"`` (provably not applied: another node may
    take it), ``"maybe_sent"`` (it may have been applied), or None (the call's own error,
    raised to the caller)."""
    if isinstance(exc, (RequestTimeout, LinkLost)):
        return "maybe_sent"
    if isinstance(exc, PaywireError):
        if exc.code in NOT_STARTED_CODES and isinstance(exc, RemoteError):
            return "unavailable"
        if exc.code in EFFECT_UNKNOWN_CODES:
            return "maybe_sent"
    return None


class FirstSend(NamedTuple):
    """A call's first send (``BankPool.send_first``)."""

    node: BankNodeHandle
    future: asyncio.Future[Any]
    deadline_s: float  # loop time by which every attempt of the call ends
    op: str
    sent_s: float  # ``time.perf_counter()`` when sent (its latency in /metrics)


def call_outcome(exc: BaseException) -> str:
    """A failed send's ``outcome`` label in /metrics: its error code's name (``TIMEOUT``,
    ``BANK_UNAVAILABLE``, ...), ``LINK_LOST``, or the exception's class name."""
    if isinstance(exc, PaywireError):
        return exc.code.name
    if isinstance(exc, LinkLost):
        return "LINK_LOST"
    return type(exc).__name__


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
        # For /metrics (plain numbers, read at scrape time): sends by (node label, op,
        # outcome), and each node's send-to-answer latency in µs, whatever the outcome.
        self.sends: dict[tuple[str, str, str], int] = {}
        self.send_us: dict[str, Histogram] = {}

    def counted(self, node: BankNodeHandle, op: str, outcome: str, sent_s: float) -> None:
        """One send to ``node`` ended with ``outcome`` (``"ok"``: answered; else
        ``call_outcome``): two dict updates and a bisect."""
        key = (node.label, op, outcome)
        sends = self.sends
        sends[key] = sends.get(key, 0) + 1
        histogram = self.send_us.get(node.label)
        if histogram is None:
            histogram = self.send_us[node.label] = Histogram(DURATION_BUCKETS_US)
        # perf_counter, not the loop's clock: uvloop's ``time()`` moves in milliseconds.
        histogram.observe(int((time.perf_counter() - sent_s) * 1e6))

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Admit one operation for this bank, from before its intent is written until its
        answer is in. Taken synchronously, so a burst cannot slip past the bound; past it,
        QUEUE_FULL, before anything is recorded or sent."""
        self.take_slot()
        try:
            yield
        finally:
            self.release_slot()

    def take_slot(self) -> None:
        """``slot`` for code driven by callbacks: pair with exactly one ``release_slot``."""
        if self.calls_admitted >= self.calls_max:
            raise PaywireError(f"too many calls queued for bank {self.name}",
                               code=ErrorCode.QUEUE_FULL)
        self.calls_admitted += 1

    def release_slot(self) -> None:
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

    def send_first(self, op: str, args: dict[str, Any]) -> FirstSend | None:
        """The first attempt of ``call`` without a coroutine, for the hub's callback-driven
        operations (``gateway.hub.flows``): sent to a healthy node now, or ``None`` if no
        node's link is ready (then ``call`` decides). Its future is judged by
        ``first_result``; if that returns ``None``, ``call_after_first`` makes the remaining
        attempts within the same deadline (``deadline``: one call budget), exactly as
        ``call`` would have."""
        node = self._pick(set())
        if node is None or node.link is None:
            return None
        return FirstSend(node, node.link.call(op, args, min(self.timeout_s, self.call_budget_s)),
                         self.deadline(), op, time.perf_counter())

    @staticmethod
    def first_result(first: FirstSend) -> dict[str, Any] | None:
        """The answer of a successful first send (the node's breaker told), else ``None``."""
        fut = first.future
        if fut.cancelled() or fut.exception() is not None:
            return None  # counted by ``call_after_first``, which gets the error
        first.node.pool.counted(first.node, first.op, "ok", first.sent_s)
        first.node.breaker.success()
        result: dict[str, Any] = fut.result()
        return result

    async def call_after_first(self, first: FirstSend, exc: BaseException, op: str,
                               args: dict[str, Any]) -> dict[str, Any]:
        """``call`` after its first send (``send_first``) failed with ``exc``."""
        self.counted(first.node, op, call_outcome(exc), first.sent_s)
        kind = send_failure(exc)
        if kind is None:
            raise exc
        first.node.breaker.failure(asyncio.get_running_loop().time())
        maybe_sent = kind == "maybe_sent"
        return await self.call(op, args, first.deadline_s, tried={first.node},
                               maybe_sent=maybe_sent, attempts_used=1)

    async def call(self, op: str, args: dict[str, Any],
                   deadline_s: float | None = None, *, tried: set[BankNodeHandle] | None = None,
                   maybe_sent: bool = False, attempts_used: int = 0) -> dict[str, Any]:
        """Send to a healthy node; on failure try another, up to ``attempts_max`` sends,
        all of them (and the pauses between) ending by ``deadline_s`` (loop time; default
        one call budget from now): each send waits at most ``timeout_s`` and never past it.

        Raises ``BankUnavailable`` when no attempt can have reached the bank, and
        ``OutcomeUnknown`` when at least one was sent and none was answered.
        """
        loop = asyncio.get_running_loop()
        if deadline_s is None:
            deadline_s = loop.time() + self.call_budget_s
        tried = set() if tried is None else tried
        for attempt in range(attempts_used, self.attempts_max):
            remaining_s = deadline_s - loop.time()
            if remaining_s <= 0:
                break
            node = self._pick(tried)
            if node is None or node.link is None:
                # A node dialled again after its GOAWAY is back in a moment: wait for that
                # dial (bounded by the deadline) before counting this attempt as idle.
                redials = [n.redial for n in self.nodes
                           if n.redial is not None and not n.redial.done()]
                if redials:
                    await asyncio.wait(redials, timeout=remaining_s)
                    remaining_s = deadline_s - loop.time()
                    node = self._pick(tried) if remaining_s > 0 else None
            if node is None or node.link is None:
                if remaining_s > 0 and attempt + 1 < self.attempts_max:
                    await asyncio.sleep(min(full_jitter_s(attempt, 0.05, 0.5), remaining_s))
                continue
            tried.add(node)
            sent_s = time.perf_counter()
            try:
                result: dict[str, Any] = await node.link.call(op, args,
                                                              min(self.timeout_s, remaining_s))
            except (PaywireError, LinkLost) as exc:
                self.counted(node, op, call_outcome(exc), sent_s)
                kind = send_failure(exc)
                if kind is None:
                    raise
                maybe_sent = maybe_sent or kind == "maybe_sent"
                node.breaker.failure(loop.time())
                continue
            self.counted(node, op, "ok", sent_s)
            node.breaker.success()
            return result
        if maybe_sent:
            raise OutcomeUnknown(f"{op} to {self.name}: no answer after {len(tried)} node(s)")
        raise BankUnavailable(f"no node of {self.name} is available")
