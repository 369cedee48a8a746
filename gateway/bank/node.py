"""The bank node server: hubs connect over mTLS and send ``bank.*`` operations.

Each operation is applied to the books synchronously and answered from the completion of
its group commit (a callback, not a task). Payments by simulated customers are pushed to a
connected hub as ``bank.payment`` requests and kept in a durable outbox until a hub
acknowledges them, so a hub that was down learns of every payment when it comes back.

With ``health_listen`` set, the node serves ``/healthz``, ``/readyz`` (200 once its books
are open and its listener accepts) and ``/metrics`` (``gateway.metrics.BankMetrics``) in
plain HTTP on that port, as a hub does (gateway/health.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import Counter
from typing import Any

from gateway import secret_keys, tls
from gateway.bank.store import BankStore, Outcome
from gateway.config import BankNodeConfig
from gateway.health import HealthServer, HealthState, Phase, parse_listen
from gateway.metrics import OPERATION_UNKNOWN, BankMetrics
from gateway.net.framed import FramedProtocol, FrameHandler
from gateway.net.signed import Correlator, build_request, verified_request
from gateway.transactions.model import now_us
from protocol import banklink, messages
from protocol.connection import HelloReceived, ServerConnection
from protocol.errors import ErrorCode, PaywireError
from protocol.frame import BODY_BYTES_MAX_DEFAULT, PROTOCOL_VERSION, Frame, FrameType
from protocol.messages import IN_FLIGHT_MAX_CEILING, ROLE_HUB

log = logging.getLogger("paywire.bank")

# How long a ``bank.payment`` report waits for the hub's answer before it is sent again
# (the outbox keeps it until a hub acknowledges it, so a lost answer costs a repeat only).
NOTIFICATION_ANSWER_TIMEOUT_S = 10.0


class BankSession(FrameHandler):
    """One hub's link to this node, held by its adapter (``self.net``). The HELLO rule,
    limits and heartbeat live in the connection (``self.net.conn``), shared with the hub."""

    def __init__(self, node: BankNode) -> None:
        self.loop = asyncio.get_running_loop()
        self.node = node
        self.identity: str | None = None
        # The hub's request ids are its correlator's (never reused): not tracked here, as
        # before, so a request a lab's black hole swallows holds nothing.
        self.conn = ServerConnection(
            role=ROLE_HUB, body_bytes_max=BODY_BYTES_MAX_DEFAULT,
            in_flight_max=IN_FLIGHT_MAX_CEILING,
            heartbeat_interval_s=node.cfg.heartbeat_interval_s,
            hello_timeout_s=node.cfg.hello_timeout_s,
            versions=frozenset({PROTOCOL_VERSION}), check_request_ids=False)
        self.net = FramedProtocol(self, self.conn)
        self.correlator = Correlator(self.loop, self.conn.forget_request)
        self.counted = False  # in /metrics' connections opened (a hub's certificate passed)

    def on_connected(self) -> None:
        assert self.transport is not None
        peer = tls.check_peer(self.transport, "hub", tls.Use.CLIENT)
        if isinstance(peer, tls.PeerRefused):
            self.fail(ErrorCode.FORBIDDEN,
                      f"only hub certificates may connect to a bank node: {peer.reason}")
            return
        self.identity = peer.name
        self.conn.peer_identity = peer.name
        self.node.metrics.connections_opened += 1
        self.counted = True

    def frame_received(self, frame: Frame) -> None:
        if frame.type == FrameType.REQUEST:
            self.node.handle_request(self, frame)
        elif frame.type == FrameType.RESPONSE:
            self.correlator.resolve(frame)

    def on_hello(self, event: HelloReceived) -> None:
        self.net.send_welcome(server=f"paywire-bank/{self.node.cfg.node_id}",
                              session_id=f"{self.node.cfg.node_id}-{id(self):x}")
        self.node.sessions.add(self)
        self.node.push_notifications()

    def on_disconnected(self, exc: Exception | None) -> None:
        if self.counted:
            self.node.metrics.connections_closed += 1
        self.node.sessions.discard(self)
        self.correlator.fail_all(ConnectionError("link closed"))


class BankNode:
    def __init__(self, cfg: BankNodeConfig) -> None:
        self.cfg = cfg
        self.key = secret_keys.load_link_key(cfg.secrets_file, cfg.link_key)
        self.store = BankStore(cfg.store_path, cfg.accounts, synchronous=cfg.store_synchronous,
                               va_prefix=cfg.va_prefix, currency=cfg.currency,
                               account_currencies=cfg.account_currencies)
        self.sessions: set[BankSession] = set()
        self.rng = random.Random(cfg.seed)
        self.latency_ms = cfg.latency_ms
        self.failure_rate = cfg.failure_rate
        self.blackhole = False
        # Per operation name: requests that passed validation (``received``, counted even
        # when a fault then swallows them) and answers sent after the books were written
        # (``applied``). Read with ``admin.stats``, so tests and labs can wait for "the bank
        # has the request" or "the bank has applied it" instead of sleeping.
        self.received: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()
        # REQUEST frames carrying ``bank.*`` operations (a batch counts once), next to the
        # operations they carried (``received``): how well the hub batches.
        self.frames_received = 0
        self._server: asyncio.Server | None = None
        self._in_flight_notes: set[int] = set()
        self._notify_timer: asyncio.TimerHandle | None = None
        self.port = cfg.listen_port
        self.metrics = BankMetrics(self.store.writer.stats,
                                   lambda: {"sessions": len(self.sessions)})
        # /readyz: ready once the books are open and the listener accepts, until stop.
        self.health = HealthState(cfg.node_id, lambda: {"sessions": len(self.sessions)})
        self.health_server: HealthServer | None = None
        if cfg.health_listen is not None:
            self.health_server = HealthServer(self.health, *parse_listen(cfg.health_listen))
            self.health_server.add_route("/metrics", self.metrics.route())

    @property
    def storage_died(self) -> asyncio.Future[None] | None:
        return self.store.died

    async def start(self) -> None:
        if self.health_server is not None:
            await self.health_server.start()  # first: "not ready" rather than silence
        await self.store.start()
        loop = asyncio.get_running_loop()
        ctx = tls.node_server_context(self.cfg.certs_dir, "bank", self.cfg.node_id)
        self._server = await loop.create_server(
            lambda: BankSession(self).net, self.cfg.listen_host, self.cfg.listen_port, ssl=ctx,
            ssl_handshake_timeout=5.0, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        for txid in await self.store.pending_payments():
            self._schedule_auto_pay(txid)
        self._notify_timer = loop.call_later(self.cfg.notify_retry_interval_s, self._notify_tick)
        self.health.phase = Phase.READY
        log.info("bank node %s (%s) listening on %s:%d", self.cfg.node_id, self.cfg.bank,
                 self.cfg.listen_host, self.port)

    async def stop(self) -> None:
        self.health.phase = Phase.DRAINING
        if self._notify_timer is not None:
            self._notify_timer.cancel()
        if self._server is not None:
            self._server.close()
        for s in list(self.sessions):
            s.abort_soon()
        await self.store.close()
        self.health.phase = Phase.STOPPED
        if self.health_server is not None:
            await self.health_server.stop()

    # --- requests from hubs --------------------------------------------------------------
    def handle_request(self, session: BankSession, frame: Frame) -> None:
        rid = frame.request_id
        received_us = now_us()  # the answer's ``timings_us`` (§10.3): telemetry only
        try:
            req = verified_request(self.key, frame)  # one HMAC, for a batch too
            args = banklink.validate_at_node(req.op, messages.decode_args(req.args_raw))
        except PaywireError as exc:
            self.metrics.done(OPERATION_UNKNOWN, exc.code.name)
            session.respond_error(rid, exc)
            return
        if req.op.startswith("admin."):
            self._admin(session, rid, req.op, args)
            return
        self.frames_received += 1
        metrics = self.metrics
        metrics.frames_received += 1
        batch = req.op == banklink.BATCH
        if batch:
            ops, errors = banklink.split_batch(args)
            count = len(args["ops"])
            for err in errors.values():  # an invalid inner op: its name is not trusted
                metrics.done(OPERATION_UNKNOWN, err.code.name)
        else:
            ops, errors, count = [banklink.BatchOp(0, req.op, args)], {}, 1
        for o in ops:
            self.received[o.op] += 1
        if self.blackhole:
            for o in ops:
                metrics.done(o.op, "dropped")
            return  # a lab fault: the request vanishes, as into a dead network
        if self.failure_rate:
            # Drawn per operation, as if each had come alone: a failing inner op fails alone.
            kept = []
            for o in ops:
                if self.rng.random() < self.failure_rate:
                    errors[o.index] = PaywireError("bank node is failing (simulated)",
                                                   code=ErrorCode.BANK_UNAVAILABLE)
                    self.metrics.done(o.op, ErrorCode.BANK_UNAVAILABLE.name)
                else:
                    kept.append(o)
            ops = kept
        if self.latency_ms:
            delay_s = max(0.0, self.latency_ms + self.rng.uniform(
                -self.cfg.latency_jitter_ms, self.cfg.latency_jitter_ms)) / 1000
            self._loop().call_later(delay_s, self._apply, session, rid, batch, count, ops,
                                    errors, received_us)
        else:
            self._apply(session, rid, batch, count, ops, errors, received_us)

    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def _apply(self, session: BankSession, rid: int, batch: bool, count: int,
               ops: list[banklink.BatchOp], errors: dict[int, PaywireError],
               received_us: int) -> None:
        """Apply ``ops`` (one transaction with whatever else the writer commits with them)
        and answer the frame once: a single op as its own RESPONSE, a batch as one RESPONSE
        listing the ``count`` answers in order (``errors`` already holds the refused ones).
        ``received_us``: when the frame arrived, for the answer's ``timings_us``."""
        timings = {"received": received_us}
        if not ops:
            self._answer(session, rid, batch, count, [], errors, timings)
            return

        def answer(fut: asyncio.Future[list[Outcome]]) -> None:
            timings["committed"] = now_us()  # the books' transaction is durable (or failed)
            exc = fut.exception()
            if exc is not None:
                log.error("bank store failed on %d operation(s): %r", len(ops), exc)
                outcomes: list[Outcome] = [(1, repr(exc))] * len(ops)
            else:
                outcomes = fut.result()
            results: list[tuple[banklink.BatchOp, dict[str, Any]]] = []
            for o, (failed, value) in zip(ops, outcomes, strict=True):
                if failed:
                    if exc is None:
                        log.error("bank store failed on %s: %s", o.op, value)
                    errors[o.index] = PaywireError("bank store failed", code=ErrorCode.INTERNAL)
                    self.metrics.done(o.op, ErrorCode.INTERNAL.name)
                    continue
                self.applied[o.op] += 1
                self.metrics.done(o.op, "ok")
                results.append((o, value))
                if o.op == banklink.OPEN_PAYMENT and not value.get("duplicate"):
                    self._schedule_auto_pay(o.args["transaction_id"])
            self._answer(session, rid, batch, count, results, errors, timings)

        try:
            applying = self.store.apply_batch([(o.op, o.args) for o in ops])
        except PaywireError as exc:
            # Refused before anything was queued (the store's queue full, its writer gone):
            # nothing happened, so the hub may try another node or give up cleanly.
            for o in ops:
                errors[o.index] = PaywireError(f"bank store unavailable: {exc.message}",
                                               code=ErrorCode.BANK_UNAVAILABLE)
                self.metrics.done(o.op, ErrorCode.BANK_UNAVAILABLE.name)
            self._answer(session, rid, batch, count, [], errors, timings)
            return
        applying.add_done_callback(answer)

    @staticmethod
    def _answer(session: BankSession, rid: int, batch: bool, count: int,
                results: list[tuple[banklink.BatchOp, dict[str, Any]]],
                errors: dict[int, PaywireError], timings: dict[str, int]) -> None:
        timings["answered"] = now_us()
        if not batch:
            if errors:
                session.respond_error(rid, errors[0])
            else:
                # A copy: the stored answer (returned again for a repeat) stays as stored.
                session.respond(rid, {**results[0][1], banklink.TIMINGS_US: timings})
            return
        # Every position is either refused (``errors``) or applied (``results``).
        entries: list[dict[str, Any] | PaywireError] = [{}] * count
        for i, err in errors.items():
            entries[i] = err
        for o, result in results:
            entries[o.index] = result
        session.respond(rid, banklink.batch_result(entries, timings))

    def _admin(self, session: BankSession, rid: int, op: str, args: dict[str, Any]) -> None:
        if op == banklink.ADMIN_FAULTS:
            if "latency_ms" in args:
                self.latency_ms = float(args["latency_ms"])
            if "failure_rate_pct" in args:
                self.failure_rate = args["failure_rate_pct"] / 100
            if "blackhole" in args:
                self.blackhole = bool(args["blackhole"])
            session.respond(rid, {"latency_ms": int(self.latency_ms),
                                  "failure_rate_pct": int(self.failure_rate * 100),
                                  "blackhole": self.blackhole})
            return
        if op == banklink.ADMIN_STATS:
            session.respond(rid, {"received": dict(self.received),
                                  "applied": dict(self.applied),
                                  "frames_received": self.frames_received,
                                  "sql_transactions": self.store.writer.commits})
            return
        if op == banklink.ADMIN_BALANCES:
            fut: asyncio.Future[Any] = self.store.balances()
            wrap = "balances"
        elif op == banklink.ADMIN_PAYMENTS:
            fut, wrap = self.store.payments(), "payments"
        else:
            fut, wrap = self.store.pay(args.get("transaction_id"), args.get("number")), ""

        def done(f: asyncio.Future[Any]) -> None:
            if f.exception() is not None:
                session.respond_error(rid, PaywireError("bank store failed",
                                                        code=ErrorCode.INTERNAL))
                return
            session.respond(rid, {wrap: f.result()} if wrap else f.result())
            if not wrap:
                self.push_notifications()

        fut.add_done_callback(done)

    # --- simulated customers and notifications to the hub ---------------------------------
    def _schedule_auto_pay(self, txid: str) -> None:
        after_s = self.cfg.auto_pay_after_s
        if after_s is None or self.rng.random() >= self.cfg.auto_pay_ratio:
            return
        self._loop().call_later(after_s * self.rng.uniform(0.5, 1.5), self._auto_pay, txid)

    def _auto_pay(self, txid: str) -> None:
        self.store.pay(txid).add_done_callback(lambda _f: self.push_notifications())

    def _notify_tick(self) -> None:
        self.push_notifications()
        self._notify_timer = self._loop().call_later(self.cfg.notify_retry_interval_s,
                                                     self._notify_tick)

    def push_notifications(self) -> None:
        """Send every unacknowledged payment notification to a connected hub."""
        if self._reporting_links():
            self.store.outbox().add_done_callback(self._send_notifications)

    def _reporting_links(self) -> list[BankSession]:
        """The hub links a new ``bank.payment`` REQUEST may go on: open ones only. A link
        whose hub sent GOAWAY is draining, and a draining server starts no new work on it
        (docs/protocol.md §3 send table, §8.1)."""
        return [s for s in self.sessions if s.conn.may_send(FrameType.REQUEST)]

    def _send_notifications(self, fut: asyncio.Future[list[dict[str, Any]]]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        # Read now, not when the outbox was asked for: a link may have drained meanwhile.
        links = self._reporting_links()
        if not links:
            return  # kept in the outbox: the next tick or a newly welcomed link sends them
        for note in fut.result():
            nid = note["notification_id"]
            if nid not in self._in_flight_notes:
                self._send_notification(self.rng.choice(links), nid, note)

    def _send_notification(self, session: BankSession, nid: int, note: dict[str, Any]) -> None:
        """Report one payment on ``session``. Whatever sending raises, the notification is
        not left "in flight" (which would keep it from ever being sent again until a
        restart): its waiter is dropped and it goes out again from the outbox."""
        rid, answer = session.correlator.new(NOTIFICATION_ANSWER_TIMEOUT_S)
        self._in_flight_notes.add(nid)
        try:
            session.send(build_request(self.key, self.cfg.node_id, rid, banklink.PAYMENT, note))
        except Exception as exc:  # a callback: nothing may escape as a traceback
            session.correlator.forget(rid)
            self._in_flight_notes.discard(nid)
            log.warning("bank.payment %d not sent to hub %s (%r): it is sent again later",
                        nid, session.identity, exc)
            return
        answer.add_done_callback(functools.partial(self._notification_done, nid))

    def _notification_done(self, nid: int, fut: asyncio.Future[dict[str, Any]]) -> None:
        if fut.exception() is not None:
            self._in_flight_notes.discard(nid)
            return
        self.store.ack_notification(nid).add_done_callback(
            lambda _f: self._in_flight_notes.discard(nid))

