"""One merchant connection to the hub: handshake, authentication, pipelined requests.

Requests are decoded, authenticated and validated synchronously in ``data_received``;
failures are answered at once (gathered into the same write). A request that needs the
ledger or a bank runs as a task; everything before that costs no task. The in-flight bound
is enforced by pausing reads, so a client that pipelines more than it was told simply waits
on TCP flow control; frames past the bound that already arrived are refused with
TOO_MANY_IN_FLIGHT rather than buffered.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from gateway import tls
from gateway.net.framed import WRITE_BUFFER_HIGH_BYTES, FramedProtocol, FrameHandler
from gateway.net.plaintext import PlaintextServerConnection, peer_is_loopback
from gateway.transactions.model import now_ms
from protocol import body as bodycodec
from protocol.connection import HelloReceived, ServerConnection
from protocol.errors import ErrorCode, PaywireError
from protocol.frame import SUPPORTED_VERSIONS, Frame, FrameType
from protocol.messages import ROLE_MERCHANT

if TYPE_CHECKING:
    from gateway.hub.pipeline import SessionHost

log = logging.getLogger("paywire.session")


class MerchantSession(FrameHandler):
    """A handler held by its adapter (``self.net``): give ``lambda: MerchantSession(hub).net``
    to ``create_server``. The HELLO rule, limits, heartbeat, duplicate request ids and the
    GOAWAY cut live in the connection (``self.net.conn``)."""

    def __init__(self, hub: SessionHost, plaintext: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.hub = hub
        self.cfg = hub.cfg
        # Plaintext lab mode (gateway/net/plaintext.py): no certificate, the HELLO's claim.
        self.plaintext = plaintext
        self.conn = (PlaintextServerConnection if plaintext else ServerConnection)(
            role=ROLE_MERCHANT, body_bytes_max=hub.cfg.body_bytes_max,
            in_flight_max=hub.cfg.in_flight_max,
            heartbeat_interval_s=hub.cfg.heartbeat_interval_s,
            hello_timeout_s=hub.cfg.hello_timeout_s, versions=SUPPORTED_VERSIONS)
        self.net = FramedProtocol(self, self.conn)
        self.merchant_id: str | None = None
        self.cert_name: str | None = None
        self.in_flight = 0
        # request id -> (operation, received µs) until answered (gateway/metrics.py).
        self.answering: dict[int, tuple[str, int, str | None]] = {}
        self.metrics = hub.pipeline.metrics
        self.in_flight_max = hub.cfg.in_flight_max
        self.goaway_sent = False
        self.tasks: set[asyncio.Task[None]] = set()
        # Pushed events: the last seq sent; while replaying the past from the ledger, live
        # events are not pushed (the replay reads them from the ledger when it gets there).
        self.events_sent_seq = 0
        self.replaying = False
        # Set while the transport accepts writes; the replay waits on it (backpressure).
        self._writable = asyncio.Event()
        self._writable.set()
        # The most bytes ever buffered for this connection right after an event was queued
        # (telemetry, and what the backpressure test observes).
        self.event_buffer_bytes_peak = 0

    def on_connected(self) -> None:
        assert self.transport is not None
        self.metrics.connections_opened += 1
        log.info("connection opened peer=%s", self.peer)
        if self.plaintext:
            if not peer_is_loopback(self.peer):
                self.fail(ErrorCode.FORBIDDEN, "plaintext connections only from loopback")
                return
            self.hub.sessions.add(self)
            return
        # Before anything is read or sent: the peer must hold a merchant certificate (one OU,
        # one CN, clientAuth only) naming a merchant this hub knows.
        peer = tls.check_peer(self.transport, "merchant", tls.Use.CLIENT)
        if isinstance(peer, tls.PeerRefused):
            self.fail(ErrorCode.FORBIDDEN, f"a merchant certificate is required: {peer.reason}")
            return
        if self.cfg.merchant(peer.name) is None:
            self.fail(ErrorCode.UNAUTHENTICATED, f"unknown merchant {peer.name!r}")
            return
        self.cert_name = peer.name
        self.conn.peer_identity = peer.name
        self.hub.sessions.add(self)

    def frame_received(self, frame: Frame) -> None:
        if frame.type == FrameType.REQUEST:
            self._on_request(frame)

    # --- handshake -----------------------------------------------------------------------
    def on_hello(self, event: HelloReceived) -> None:
        """The HELLO passed the common rule (``protocol.handshake``, in the connection);
        the hub's own checks follow (§3.1.1 steps 5-7)."""
        accepted = event.hello
        hello = accepted.body
        merchant = self.cfg.merchant(hello["identity"])
        if merchant is None:
            self.fail(ErrorCode.UNAUTHENTICATED, f"unknown merchant {hello['identity']!r}",
                      "identity")
            return
        if self.plaintext and hello.get("subscribe_events"):
            # Events are not requests: no signature would stand for the HELLO's claim.
            self.fail(ErrorCode.FORBIDDEN, "pushed events need TLS (a plaintext HELLO proves "
                      "no identity)", "subscribe_events")
            return
        since = hello.get("events_since")
        latest_seq = self.hub.event_seq.get(merchant.id, 0)
        if since is not None and not hello.get("subscribe_events"):
            self.fail(ErrorCode.INVALID_FIELD, "events_since needs subscribe_events: true",
                      "events_since")
            return
        if since is not None and since > latest_seq:
            # Accepting it would silently skip the events up to ``since`` once they exist.
            self.fail(ErrorCode.INVALID_FIELD, f"events_since {since} is beyond the latest "
                      f"event seq {latest_seq}", "events_since")
            return
        floor = self.hub.event_floor.get(merchant.id, 0)
        if since is not None and since < floor:
            # Events after ``since`` were deleted (retention): a resume would skip them.
            self.fail(ErrorCode.RESUME_EXPIRED, _expired(since, floor), "events_since")
            return
        count = self.hub.connections_by_merchant.get(merchant.id, 0)
        if count >= merchant.connections_max:
            self.fail(ErrorCode.TOO_MANY_CONNECTIONS,
                      f"merchant already has {count} connections (max {merchant.connections_max})")
            return
        self.hub.connections_by_merchant[merchant.id] = count + 1
        self.merchant_id = merchant.id
        self.in_flight_max = accepted.in_flight_max
        self.net.send_welcome(
            server=f"paywire-hub/{self.cfg.node_id}", session_id=os.urandom(8).hex(),
            resume_token=os.urandom(16), event_seq=self.hub.event_seq.get(merchant.id, 0),
            server_time_ms=now_ms())
        if self.hub.stopping:
            # Connected before the drain began, HELLO after the others got their GOAWAY:
            # told at once (cut 0), so it goes to another hub (spec §8); no events (a
            # replay would read a ledger that is about to close).
            self.send_goaway()
            return
        if hello.get("subscribe_events"):
            since = hello.get("events_since")
            self.hub.subscribe(self)
            if since is None:
                self.events_sent_seq = self.hub.event_seq.get(merchant.id, 0)
            else:
                self.events_sent_seq = since
                self.replaying = True
                task = self.loop.create_task(self._replay_events(since))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    # --- requests ------------------------------------------------------------------------
    def _on_request(self, frame: Frame) -> None:
        # A duplicate id and a request past our GOAWAY never get here (the connection); all
        # the per-request work is the pipeline's.
        self.hub.pipeline.request(self, frame)

    def respond(self, request_id: int, result: dict[str, Any], replayed: bool = False) -> None:
        self.net.respond(request_id, result, replayed)
        seen = self.answering.pop(request_id, None)
        if seen is not None:
            # The outcome code: the answer's status_code (a declined charge is "202").
            self.answered(request_id, seen, str(result.get("status_code", "OK")))

    def respond_error(self, request_id: int, exc: PaywireError) -> None:
        self.net.respond_error(request_id, exc)
        seen = self.answering.pop(request_id, None)
        if seen is not None:
            self.answered(request_id, seen, exc.code.name)

    def answered(self, rid: int, seen: tuple[str, int, str | None], outcome: str) -> None:
        """Count one answer for /metrics and, at INFO, log it: one line per request, with
        ids and codes only (never a key or a card number)."""
        latency_us = self.metrics.answered(seen[0], outcome, seen[1])
        if log.isEnabledFor(logging.INFO):
            fields = {"request_id": rid, "merchant": self.merchant_id, "operation": seen[0],
                      "order_id": seen[2], "outcome": outcome, "latency_us": latency_us}
            log.info("request %s", " ".join(f"{k}={v}" for k, v in fields.items()),
                     extra={"fields": fields})

    def fail(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        if self.merchant_id is None:  # refused before or at the handshake
            self.metrics.handshake_refused(code.name)
            log.info("handshake refused peer=%s code=%s reason=%s", self.peer, code.name,
                     message)
        self.net.fail(code, message, field)

    def request_started(self, rid: int) -> None:
        """A request is in flight until its ``request_finished`` (answered or abandoned)."""
        self.in_flight += 1
        if self.in_flight >= self.in_flight_max:
            self._update_reading()

    def request_finished(self, rid: int) -> None:
        self.in_flight -= 1
        self._update_reading()
        if self.goaway_sent and self.in_flight == 0:
            self.hub.session_drained(self)

    def track(self, task: asyncio.Task[None]) -> None:
        """Keep a task of this session referenced until it ends."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def wants_reading(self) -> bool:
        return self.in_flight < self.in_flight_max

    # --- pushed events ------------------------------------------------------------------------
    def event_buffered_bytes(self) -> int:
        """Bytes queued for this connection and not yet handed to the kernel: gathered output
        plus the (TLS) transport's write buffer."""
        if self.transport is None:
            return 0
        return self.conn.bytes_to_send + self.transport.get_write_buffer_size()

    def _event_queued(self, frame: bytes) -> None:
        self.send(frame)
        self.event_buffer_bytes_peak = max(self.event_buffer_bytes_peak,
                                           self.event_buffered_bytes())

    def push_event(self, seq: int, frame: bytes) -> None:
        if self.replaying:
            return  # committed already: the replay reads it from the ledger
        if seq <= self.events_sent_seq:
            return  # already sent during the replay
        if self.transport is not None and \
                self.event_buffered_bytes() + len(frame) > self.cfg.event_buffer_bytes_max:
            # A consumer this slow would make us buffer without bound: drop it; it resumes
            # from its last seq and loses nothing.
            self.fail(ErrorCode.QUEUE_FULL, "event consumer too slow; resume with events_since")
            return
        self.events_sent_seq = seq
        self._event_queued(frame)

    def on_writing_paused(self, paused: bool) -> None:
        if paused:
            self._writable.clear()
        else:
            self._writable.set()

    async def _room_for(self, frame_bytes: int) -> bool:
        """Wait until ``frame_bytes`` more fit in ``event_buffer_bytes_max``; ``False`` if the
        connection closed meanwhile.

        The transport's high-water mark is at most half the bound (``_replay_events``), so
        while writing is not paused at least half the bound is free: one event fits unless
        it alone is larger than that, and then it is sent once nothing else is queued ahead
        of it beyond the high-water mark (progress over a tighter bound)."""
        bound = self.cfg.event_buffer_bytes_max
        while True:
            if self.transport is None or self.transport.is_closing() or self.closed.done():
                return False
            if self.event_buffered_bytes() + frame_bytes <= bound and not self.writing_paused:
                return True
            self.flush_now()  # hand gathered output over so the transport's flow control sees it
            if not self.writing_paused:
                return not (self.transport.is_closing() or self.closed.done())
            writable = self.loop.create_task(self._writable.wait())
            try:
                await asyncio.wait((writable, self.closed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                writable.cancel()

    async def _replay_events(self, since: int) -> None:
        """Send the stored events after ``since``, then switch to live ones without a gap
        or a duplicate.

        Backpressure: each event waits for room in the same per-connection bound as live
        events (``event_buffer_bytes_max``), so a subscriber that asks for its whole history
        and does not read costs one ledger batch and that bound, never the history. Live
        events are not held meanwhile (they are in the ledger before they are pushed); the
        replay keeps reading until it has sent everything up to the merchant's latest seq,
        and switches to live in the same step as that check, so nothing falls between."""
        assert self.merchant_id is not None and self.transport is not None
        high = max(1, min(WRITE_BUFFER_HIGH_BYTES, self.cfg.event_buffer_bytes_max // 2))
        self.transport.set_write_buffer_limits(high, high // 4)
        batch = self.cfg.event_replay_batch_max
        try:
            while self.transport is not None and not self.transport.is_closing():
                rows = await self.hub.ledger.events_after(self.merchant_id,
                                                          self.events_sent_seq, batch)
                if not await self._resumable(rows):
                    return
                for seq, data in rows:
                    if seq <= self.events_sent_seq:
                        continue
                    # Stored by the hub itself: read without the peer limits.
                    frame = self.hub.event_frame(self.merchant_id, seq,
                                                 bodycodec.unpack_own(data))
                    if not await self._room_for(len(frame)):
                        return
                    self.events_sent_seq = seq
                    self._event_queued(frame)
                if len(rows) < batch and \
                        self.events_sent_seq >= self.hub.event_seq.get(self.merchant_id, 0):
                    break  # caught up: from here on, live events are pushed
        finally:
            self.replaying = False

    async def _resumable(self, rows: list[tuple[int, bytes]]) -> bool:
        """Whether the replay can go on without a gap; if not, end it with RESUME_EXPIRED.

        The HELLO was checked against this hub's copy of the floor, which a sweep run
        since (by another hub, or ``paywire ledger prune``) may have passed: seqs have no
        gaps, so a first row above the next seq, or no row at all below the merchant's
        latest while the ledger's floor is above what was sent, means deleted events."""
        assert self.merchant_id is not None
        sent = self.events_sent_seq
        gap = bool(rows) and rows[0][0] > sent + 1
        if not gap and (rows or sent >= self.hub.event_seq.get(self.merchant_id, 0)):
            return True
        floor = (await self.hub.ledger.event_floors()).get(self.merchant_id, 0)
        if not gap and floor <= sent:
            return True  # a commit not visible to this read yet: read again
        if gap:
            floor = max(floor, rows[0][0] - 1)
        known = self.hub.event_floor
        known[self.merchant_id] = max(floor, known.get(self.merchant_id, 0))
        self.fail(ErrorCode.RESUME_EXPIRED, _expired(sent, floor), "events_since")
        return False

    # --- shutdown ------------------------------------------------------------------------
    def send_goaway(self) -> None:
        """Tell the client the last request id this hub will process, then drain."""
        if self.goaway_sent or self.merchant_id is None:
            return
        self.goaway_sent = True
        self.net.send_goaway(code=ErrorCode.SHUTTING_DOWN, message="hub is shutting down",
                             refusal="hub is shutting down; retry on another hub")

    def on_disconnected(self, exc: Exception | None) -> None:
        self.metrics.connections_closed += 1
        log.info("connection closed peer=%s merchant=%s reason=%s", self.peer,
                 self.merchant_id, type(exc).__name__ if exc is not None else "closed")
        self.hub.sessions.discard(self)
        self.hub.unsubscribe(self)
        if self.merchant_id is not None:
            n = self.hub.connections_by_merchant.get(self.merchant_id, 1) - 1
            self.hub.connections_by_merchant[self.merchant_id] = max(n, 0)


def _expired(since: int, floor: int) -> str:
    return (f"events_since {since} is below the resume floor {floor}: events after it are "
            f"past the hub's resume horizon and deleted; subscribe again without "
            f"events_since, then reconcile with status")
