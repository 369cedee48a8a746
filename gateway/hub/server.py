"""The hub process: listener, ledger, bank pools, recovery, expiry, configuration reload
(SIGHUP) and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

from gateway import config as configmod
from gateway import secret_keys, tls
from gateway.config import HubConfig
from gateway.fraud import FraudEngine
from gateway.health import HealthServer, HealthState, Phase
from gateway.hub.auth import Authenticator, TokenBucket
from gateway.hub.banklink import BankLink, BankPool
from gateway.hub.multihub import EventPoller, Rescanner
from gateway.hub.notifications import EventFanout, event_frame
from gateway.hub.pipeline import RequestPipeline
from gateway.hub.reload import plan as reload_plan
from gateway.hub.retention import RetentionSweeper
from gateway.hub.routing import Router
from gateway.hub.schedulers import Schedulers
from gateway.hub.service import TransactionService
from gateway.hub.session import MerchantSession
from gateway.ledger import SharedLedger, open_ledger
from gateway.net import plaintext
from gateway.net.signed import verified_request
from gateway.transactions.model import now_ms
from gateway.webhooks.dispatcher import WebhookDispatcher
from protocol import banklink, messages
from protocol.errors import ErrorCode, PaywireError
from protocol.frame import Frame

log = logging.getLogger("paywire.hub")

# One step of the hub's stop (bank links, webhook dispatcher, pollers, health server) that
# takes longer than this is abandoned with a WARNING naming it: a stop always ends.
STOP_STEP_S = 10.0


async def _bounded(step: Awaitable[object], what: str) -> None:
    """Await ``step`` at most ``STOP_STEP_S``; then cancel it and go on without waiting for
    it to end (``asyncio.wait_for`` would wait for the cancelled step, for ever if it
    ignores its cancellation)."""
    task = asyncio.ensure_future(step)
    _, pending = await asyncio.wait({task}, timeout=STOP_STEP_S)
    if pending:
        task.cancel()
        log.warning("stopping %s took over %g s: abandoned", what, STOP_STEP_S)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("stopping %s failed: %r", what, task.exception())


class Hub:
    def __init__(self, cfg: HubConfig, *, reuse_port: bool = False,
                 config_path: Path | None = None) -> None:
        self.cfg = cfg
        # ``config_path``: the file ``cfg`` was read from; SIGHUP re-reads it (``reload``).
        # What the file said at start (before the command line's overrides), to tell which
        # settings a reloaded file changes that need a restart.
        self.config_path = config_path
        self._started_from: HubConfig | None = None
        if config_path is not None:
            self._started_from = configmod.load(HubConfig, config_path)
            # SIGHUP's default action ends the process: ignored from here until ``start``
            # installs the reload, so a reload sent to a starting hub is not its end. (The
            # ledger's writer process ignores it on its own: gateway/storage/writer_process.)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # ``paywire hub --workers N``: N processes bind the same port (SO_REUSEPORT) and the
        # kernel spreads connections over them (gateway/hub/workers.py).
        self.reuse_port = reuse_port
        # What /readyz answers (gateway/health.py): ready only between the end of start-up
        # (recovery run, listener up) and the start of a shutdown.
        self.health = HealthState(cfg.node_id, lambda: {"sessions": len(self.sessions)})
        self.health_server: HealthServer | None = None
        if cfg.health_listen is not None:
            from gateway.health import parse_listen

            self.health_server = HealthServer(self.health, *parse_listen(cfg.health_listen))
        # One key per purpose (link signing, card fingerprints, idempotency hashes), from the
        # deployment's 0600 secrets file; SecretsError here keeps the hub from starting.
        self.secrets = secret_keys.load_hub(cfg.secrets_file, cfg.link_key)
        self.link_key = self.secrets.link_key
        self.ledger = open_ledger(cfg.ledger_path, cfg.ledger.url,
                                  synchronous=cfg.ledger_synchronous,
                                  queue_writes_max=cfg.ledger_queue_writes_max,
                                  connect_timeout_s=cfg.ledger.connect_timeout_s,
                                  commit_timeout_s=cfg.ledger.commit_timeout_s)
        self.auth = Authenticator(self._auth_keys(cfg.merchants), cfg.timestamp_window_s,
                                  {m.id: cfg.nonce_entries_max(m) for m in cfg.merchants})
        client_ctx = tls.node_client_context(cfg.certs_dir, "hub", cfg.node_id)
        self.pools = {
            b.name: BankPool(b.name, b.nodes, hub_id=cfg.node_id, key=self.link_key,
                             ssl_ctx=client_ctx, on_bank_request=self.on_bank_request,
                             timeout_s=cfg.bank_timeout_s,
                             attempts_max=cfg.bank_retry_attempts_max,
                             calls_max=cfg.bank_calls_queued_max)
            for b in cfg.banks
        }
        self.fraud = FraudEngine(cfg.fraud, self.secrets.fingerprint_key)
        self.service = TransactionService(cfg, self.ledger, self.pools, Router(cfg.banks),
                                          self.fraud, self.secrets.idempotency_key)
        self.webhooks = WebhookDispatcher(cfg.webhooks, self.ledger,
                                          {m.id: m.server_key for m in cfg.merchants})
        # Committed changes become EVENT frames and webhook wake-ups; sessions read
        # ``event_seq`` and (un)subscribe through the hub.
        self.events = EventFanout(self.webhooks,
                                  {m.id for m in cfg.merchants if m.webhook_url})
        self.service.listeners.append(self.events)
        self.event_seq = self.events.event_seq
        self.subscribe = self.events.subscribe
        self.unsubscribe = self.events.unsubscribe
        self.schedulers = Schedulers(self.service, cfg.expiry_check_interval_s,
                                     cfg.recovery_interval_s)
        # Each merchant's resume floor (a HELLO's events_since below it: RESUME_EXPIRED),
        # loaded at start and raised by the retention sweeper (gateway/hub/retention.py).
        self.event_floor: dict[str, int] = {}
        self.retention = (RetentionSweeper(self.ledger, cfg.retention, self.event_floor)
                          if cfg.retention.enabled else None)
        # Other hubs share the ledger (PostgreSQL): nonces spent there, events pushed from
        # its log, their open work and charges picked up from it (docs/postgres.md).
        self.event_poller: EventPoller | None = None
        self.rescanner: Rescanner | None = None
        if self.ledger.shared:
            self.auth.shared = cast(SharedLedger, self.ledger)
            self.event_poller = self.events.poller = EventPoller(self.ledger, self.events)
            assert self.service.fraud_counted is not None
            self.rescanner = Rescanner(self.ledger, self.service, self.fraud,
                                       self.service.fraud_counted, cfg.recovery_interval_s,
                                       self.schedulers.resolver_tick)
        self.buckets = {m.id: TokenBucket(m.rate_per_s, m.rate_burst, 0.0)
                        for m in cfg.merchants}
        # The per-request work of every merchant connection (decode, authenticate, validate,
        # admit); sessions hand it their REQUEST frames.
        self.pipeline = RequestPipeline(self.auth, self.buckets, self.service)
        self.pipeline.metrics.live = lambda: {
            "sessions": len(self.sessions),
            "requests_in_flight": sum(s.in_flight for s in self.sessions)}
        self.pipeline.metrics.banks = lambda: [
            (bank, n.expected_name or n.address, n.healthy,
             not n.breaker.allows(asyncio.get_running_loop().time()), n.breaker.failures)
            for bank, pool in self.pools.items() for n in pool.nodes]
        self.pipeline.metrics.attach(
            hops=self.service.runner.hops, pools=self.pools,
            ledger_stats=getattr(self.ledger, "stats", None), webhooks=self.webhooks,
            unresolved=lambda: len(self.service.unresolved),
            backlog=getattr(self.ledger, "outbox_backlog", None))
        if self.health_server is not None:
            self.health_server.add_route("/metrics", self.pipeline.metrics.route())
        self.sessions: set[MerchantSession] = set()
        self.connections_by_merchant: dict[str, int] = {}
        self.port = cfg.listen_port
        self._server: asyncio.Server | None = None
        self._plaintext_server: asyncio.Server | None = None
        self.plaintext_port: int | None = None
        self._drained = asyncio.Event()
        self.stopping = False

    @property
    def storage_died(self) -> asyncio.Future[None] | None:
        return self.ledger.died

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config_path is not None:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.health_server is not None:
            # First, so a balancer probing a starting hub hears "not ready", not silence.
            await self.health_server.start()
        await self.ledger.start()
        for pool in self.pools.values():
            pool.start()
        await asyncio.gather(*(p.wait_ready(3.0) for p in self.pools.values()))
        self.event_seq.update(await self.ledger.last_event_seqs())
        self.event_floor.update(await self.ledger.event_floors())
        await self._rebuild_fraud_memory()
        self.health.phase = Phase.RECOVERING
        await self._recover()
        await self.webhooks.start()
        if self.event_poller is not None:
            self.event_poller.start()
        if self.rescanner is not None:
            self.rescanner.start()
        ctx = tls.node_server_context(self.cfg.certs_dir, "hub", self.cfg.node_id)
        self._server = await loop.create_server(
            lambda: MerchantSession(self).net, self.cfg.listen_host, self.cfg.listen_port, ssl=ctx,
            ssl_handshake_timeout=self.cfg.tls_handshake_timeout_s, reuse_address=True,
            reuse_port=self.reuse_port or None, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.cfg.plaintext_listen:
            await self._start_plaintext(self.cfg.plaintext_listen)
        self.schedulers.start()
        if self.retention is not None:
            self.retention.start()
        self.health.phase = Phase.READY
        log.info("hub %s listening on %s:%d", self.cfg.node_id, self.cfg.listen_host, self.port)

    async def _start_plaintext(self, listen: str) -> None:
        """The lab's extra listener without TLS (gateway/net/plaintext.py), loopback only:
        the config refused any other address already; checked again here, where it binds."""
        host, port = plaintext.parse_listen(listen)
        self._plaintext_server = await asyncio.get_running_loop().create_server(
            lambda: MerchantSession(self, plaintext=True).net, host, port,
            reuse_address=True, backlog=128)
        self.plaintext_port = self._plaintext_server.sockets[0].getsockname()[1]
        log.warning(plaintext.WARNING.format(where=f"{host}:{self.plaintext_port}"))

    async def _recover(self) -> None:
        """Before serving: settle every bank call that has no recorded answer, and re-arm
        expiry for pending payments. Waits at most ``recovery_at_start_s``: what is not
        settled by then keeps being settled in the background (the same tasks, then the
        resolver), and start-up goes on. It stays marked unresolved meanwhile, so a request
        touching it waits for its order's lock and gets OUTCOME_UNKNOWN or the settled
        result; a charge is never sent to the bank a second time (the retry only inquires)."""
        unresolved = await self.ledger.unresolved()
        for tx in unresolved:
            self.service.publish(tx)
        for tx in await self.ledger.pending():
            self.service.publish(tx)
        for tx in await self.ledger.challenged():
            self.service.publish(tx)
        if not unresolved:
            return
        log.warning("recovery: %d transactions with unanswered bank calls", len(unresolved))
        tasks = [t for tx in unresolved
                 if (t := self.schedulers.resolve((tx.merchant_id, tx.order_id))) is not None]
        if not tasks:
            return
        # asyncio.wait, not wait_for: reaching the bound must neither cancel the settling
        # (it may be half-way through an inquiry) nor fail start-up (a black-holed bank
        # would otherwise make the hub exit and crash-loop under a supervisor).
        done, running = await asyncio.wait(tasks, timeout=self.cfg.recovery_at_start_s)
        failed = sum(1 for t in done if t.cancelled() or t.exception() is not None)
        log.warning("recovery: %d settled, %d left for the resolver, %d still settling in "
                    "the background after %g s", len(done) - failed, failed, len(running),
                    self.cfg.recovery_at_start_s)

    async def _rebuild_fraud_memory(self) -> None:
        """Velocity windows survive a restart: recount the charges still inside them."""
        if self.fraud.window_s_max <= 0:
            return
        since_ms = now_ms() - int(self.fraud.window_s_max * 1000)
        for tx in await self.ledger.created_since(since_ms):
            customer = tx.customer or {}
            self.fraud.record(tx.merchant_id, tx.card_fingerprint, customer.get("email"),
                              customer.get("ip"), tx.created_ms / 1000)
            if self.service.fraud_counted is not None:
                self.service.fraud_counted[tx.transaction_id] = tx.created_ms

    @staticmethod
    def event_frame(merchant_id: str, seq: int, data: dict[str, Any]) -> bytes:
        return event_frame(merchant_id, seq, data)

    # --- requests from bank nodes (payment notifications) ---------------------------------
    def on_bank_request(self, link: BankLink, frame: Frame) -> None:
        rid = frame.request_id
        try:
            req = verified_request(self.link_key, frame)
            if req.op != banklink.PAYMENT:
                raise PaywireError(f"hub does not serve {req.op}",
                                   code=ErrorCode.UNKNOWN_OPERATION)
            note = banklink.validate(req.op, messages.decode_args(req.args_raw))
        except PaywireError as exc:
            link.respond_error(rid, exc)
            return

        async def settle() -> None:
            try:
                await self.service.on_payment(note, link.node.pool.name)
                link.respond(rid, {"ok": True})
            except PaywireError as exc:
                link.respond_error(rid, exc)

        if not self.schedulers.keep(settle()):
            # Stopping: not taken; the node keeps it in its outbox and reports it again to
            # whichever hub is up (spec §10: SHUTTING_DOWN, nothing was done).
            link.respond_error(rid, PaywireError("hub is shutting down",
                                                 code=ErrorCode.SHUTTING_DOWN))

    # --- configuration reload (SIGHUP) ----------------------------------------------------
    @staticmethod
    def _auth_keys(merchants: list[configmod.MerchantConfig]) -> dict[str, tuple[bytes, ...]]:
        """Each merchant's accepted request keys, the primary first."""
        return {m.id: tuple(k.encode() for k in m.server_keys()) for m in merchants}

    def reload(self) -> bool:
        """Re-read the config file and apply its merchants (keys, webhook URLs, limits, the
        set itself) without touching a connection of a merchant that stays. A file that
        does not load or validate changes nothing: one ERROR line, the hub runs on. Returns
        whether the new merchants were applied. Settings that need a restart are named in a
        WARNING and keep their running values (``gateway.hub.reload``)."""
        assert self.config_path is not None and self._started_from is not None
        if self.stopping:
            log.warning("config reload ignored: the hub is stopping")
            return False
        try:
            new = configmod.load(HubConfig, self.config_path)
            change = reload_plan(self.cfg, self._started_from, new)
        except (configmod.ConfigError, OSError, ValueError) as exc:  # ValueError: bad TOML
            log.error("config reload failed, still running the previous configuration: "
                      "%s", " ".join(str(exc).split()))
            return False
        if change.not_applied:
            log.warning("config reload: %s changed in %s but only take effect at a restart; "
                        "still running with the previous values",
                        ", ".join(change.not_applied), self.config_path)
        self._apply_merchants(change.merchants, set(change.removed))
        log.info("config reloaded from %s: %s", self.config_path, change.summary())
        return True

    def _apply_merchants(self, merchants: list[configmod.MerchantConfig],
                         removed: set[str]) -> None:
        """Swap in the new merchants everywhere they are read. The objects are updated in
        place (the config's list, the dispatcher's keys, the token buckets), since sessions
        and the service hold references to them."""
        cfg = self.cfg
        cfg.merchants = merchants  # the shared HubConfig: HELLOs from now on see these
        self.auth.update(self._auth_keys(merchants),
                         {m.id: cfg.nonce_entries_max(m) for m in merchants})
        self.service.notifier.merchants = {m.id: m for m in merchants}
        # Webhooks are signed with the primary key only. A removed merchant's key is kept
        # for the rows already queued for it (they were committed with a body and a URL).
        self.webhooks.server_keys.update({m.id: m.server_key for m in merchants})
        self.events.has_webhook.clear()
        self.events.has_webhook.update(m.id for m in merchants if m.webhook_url)
        for m in merchants:
            bucket = self.buckets.get(m.id)
            if bucket is None:
                self.buckets[m.id] = TokenBucket(m.rate_per_s, m.rate_burst, 0.0)
            else:
                bucket.rate_per_s, bucket.burst = m.rate_per_s, m.rate_burst
                bucket.tokens = min(bucket.tokens, float(m.rate_burst))
        # (A removed merchant's bucket stays: its open connections still pass the pipeline's
        # rate check on their way to the authenticator's refusal.)
        for session in list(self.sessions):
            if session.merchant_id in removed:
                self._close_removed(session)

    def _close_removed(self, session: MerchantSession) -> None:
        """An open connection of a merchant the reload removed: no more events; GOAWAY, so
        a client stops sending on it (a request reaching it meanwhile is refused:
        SHUTTING_DOWN past the cut, UNAUTHENTICATED within it, by the authenticator; a new
        connection is refused UNAUTHENTICATED at the handshake); closed as soon as the
        requests it had in flight are answered."""
        self.unsubscribe(cast(Any, session))  # (a Subscriber; mypy: ``peer`` is read-only)
        if not session.goaway_sent:
            session.goaway_sent = True
            session.net.send_goaway(
                code=ErrorCode.SHUTTING_DOWN,
                message=f"merchant {session.merchant_id} is no longer configured on this hub",
                refusal="merchant no longer configured on this hub")
        if session.in_flight == 0:
            session.flush_now()
            session.abort_soon()

    # --- shutdown ----------------------------------------------------------------------------
    def session_drained(self, session: MerchantSession) -> None:
        if not self.stopping and session.goaway_sent:
            # A removed merchant's connection has answered its last request (reload); even
            # if a later reload added the merchant back, it was told to go (GOAWAY).
            session.flush_now()
            session.abort_soon()
            return
        if all(s.in_flight == 0 for s in self.sessions):
            self._drained.set()

    async def stop(self) -> None:
        """GOAWAY, stop accepting, finish in-flight work, flush the ledger, close."""
        self.health.phase = Phase.DRAINING  # first: the balancer stops sending new clients
        self.stopping = True
        self.schedulers.stopping = True
        if self._server is not None:
            self._server.close()
        if self._plaintext_server is not None:
            self._plaintext_server.close()
        for session in list(self.sessions):
            session.send_goaway()
        if any(s.in_flight for s in self.sessions):
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), self.cfg.shutdown_grace_s)
            except TimeoutError:
                log.warning("shutdown grace expired with requests in flight")
        self.schedulers.stop_timers()
        for session in list(self.sessions):
            session.flush_now()
            session.abort_soon()
        # The pollers first: the rescanner's rounds spawn resolutions.
        for poller in (self.event_poller, self.rescanner, self.retention):
            if poller is not None:
                await _bounded(poller.stop(), type(poller).__name__)
        left = await self.schedulers.cancel_background(STOP_STEP_S)
        if left:
            log.warning("stopping: %d background tasks still running after %g s: abandoned "
                        "(their orders are settled by recovery at the next start)", len(left),
                        STOP_STEP_S)
        for pool in self.pools.values():
            await _bounded(pool.stop(), f"the bank links of {pool.name}")
        await _bounded(self.webhooks.stop(), "the webhook dispatcher")
        # Not bounded: it commits what is queued (the ledger bounds its own connections).
        await self.ledger.close()
        self.health.phase = Phase.STOPPED
        if self.health_server is not None:
            await _bounded(self.health_server.stop(), "the health server")
        log.info("hub %s stopped", self.cfg.node_id)
