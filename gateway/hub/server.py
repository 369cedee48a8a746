"""The hub process: listener, ledger, bank pools, recovery, expiry and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway import tls
from gateway.config import HubConfig
from gateway.hub.auth import Authenticator
from gateway.hub.banklink import BankLink, BankPool
from gateway.hub.routing import Router
from gateway.hub.service import TransactionService
from gateway.hub.session import MerchantSession
from gateway.ledger.sqlite import SqliteLedger
from gateway.transactions.model import now_ms
from protocol import banklink, messages, signing
from protocol.errors import ErrorCode, PaywireError
from protocol.frame import Frame

log = logging.getLogger("paywire.hub")

RECOVERY_AT_START_S = 10.0


class Hub:
    def __init__(self, cfg: HubConfig) -> None:
        self.cfg = cfg
        self.link_key = cfg.link_key.encode()
        self.ledger = SqliteLedger(cfg.ledger_path, synchronous=cfg.ledger_synchronous,
                                   queue_writes_max=cfg.ledger_queue_writes_max)
        self.auth = Authenticator({m.id: m.server_key.encode() for m in cfg.merchants},
                                  cfg.timestamp_window_s, cfg.nonce_cache_entries_max)
        client_ctx = tls.node_client_context(cfg.certs_dir, "hub", cfg.node_id)
        self.pools = {
            b.name: BankPool(b.name, b.nodes, hub_id=cfg.node_id, key=self.link_key,
                             ssl_ctx=client_ctx, on_bank_request=self.on_bank_request,
                             timeout_s=cfg.bank_timeout_s,
                             attempts_max=cfg.bank_retry_attempts_max)
            for b in cfg.banks
        }
        self.service = TransactionService(cfg, self.ledger, self.pools, Router(cfg.banks))
        self.sessions: set[MerchantSession] = set()
        self.connections_by_merchant: dict[str, int] = {}
        self.port = cfg.listen_port
        self._server: asyncio.Server | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._busy: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._drained = asyncio.Event()
        self.stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self.ledger.start()
        for pool in self.pools.values():
            pool.start()
        await asyncio.gather(*(p.wait_ready(3.0) for p in self.pools.values()))
        await self._recover()
        ctx = tls.node_server_context(self.cfg.certs_dir, "hub", self.cfg.node_id)
        self._server = await loop.create_server(
            lambda: MerchantSession(self), self.cfg.listen_host, self.cfg.listen_port, ssl=ctx,
            ssl_handshake_timeout=self.cfg.tls_handshake_timeout_s, reuse_address=True,
            backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        self._arm(self.cfg.expiry_check_interval_s, self._expiry_tick)
        self._arm(self.cfg.recovery_interval_s, self._resolver_tick)
        log.info("hub %s listening on %s:%d", self.cfg.node_id, self.cfg.listen_host, self.port)

    async def _recover(self) -> None:
        """Before serving: settle every bank call that has no recorded answer, and re-arm
        expiry for pending payments. What cannot be settled now stays marked unresolved and
        the resolver keeps trying; requests touching it get OUTCOME_UNKNOWN meanwhile."""
        unresolved = await self.ledger.unresolved()
        for tx in unresolved:
            self.service.publish(tx, tx.status)
        for tx in await self.ledger.pending():
            self.service.publish(tx, tx.status)
        if unresolved:
            log.warning("recovery: %d transactions with unanswered bank calls", len(unresolved))
            keys = [(tx.merchant_id, tx.order_id) for tx in unresolved]
            results = await asyncio.wait_for(asyncio.gather(
                *(self.service.resolve_key(k) for k in keys), return_exceptions=True),
                RECOVERY_AT_START_S)
            failed = sum(1 for r in results if isinstance(r, BaseException))
            log.warning("recovery: %d settled, %d left for the resolver",
                        len(keys) - failed, failed)

    def _arm(self, interval_s: float, fn: Any) -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            if self.stopping:
                return
            fn()
            self._timers.append(loop.call_later(interval_s, tick))

        self._timers.append(loop.call_later(interval_s, tick))

    def _spawn(self, key: tuple[str, str], coro: Any) -> None:
        if key in self._busy:
            coro.close()
            return
        self._busy.add(key)
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._busy.discard(key)
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.info("background work on %s: %r", key, t.exception())

        task.add_done_callback(done)

    def _expiry_tick(self) -> None:
        for key in self.service.due_expiries(now_ms()):
            self._spawn(key, self.service.expire_due(key))

    def _resolver_tick(self) -> None:
        for key in list(self.service.unresolved):
            self._spawn(key, self.service.resolve_key(key))

    # --- requests from bank nodes (payment notifications) ---------------------------------
    def on_bank_request(self, link: BankLink, frame: Frame) -> None:
        rid = frame.request_id
        try:
            req = messages.decode_request(rid, frame.body)
            if not signing.verify_request(self.link_key, req.signature, req.merchant_id, rid,
                                          req.op, req.timestamp_ms, req.nonce, req.args):
                raise PaywireError("bad link signature", code=ErrorCode.BAD_SIGNATURE)
            if req.op != banklink.PAYMENT:
                raise PaywireError(f"hub does not serve {req.op}",
                                   code=ErrorCode.UNKNOWN_OPERATION)
            note = banklink.validate(req.op, req.args)
        except PaywireError as exc:
            link.respond_error(rid, exc)
            return

        async def settle() -> None:
            try:
                await self.service.on_payment(note)
                link.respond(rid, {"ok": True})
            except PaywireError as exc:
                link.respond_error(rid, exc)

        task = asyncio.get_running_loop().create_task(settle())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- shutdown ----------------------------------------------------------------------------
    def session_drained(self, session: MerchantSession) -> None:
        if all(s.in_flight == 0 for s in self.sessions):
            self._drained.set()

    async def stop(self) -> None:
        """GOAWAY, stop accepting, finish in-flight work, flush the ledger, close."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.send_goaway()
        if any(s.in_flight for s in self.sessions):
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), self.cfg.shutdown_grace_s)
            except TimeoutError:
                log.warning("shutdown grace expired with requests in flight")
        for t in self._timers:
            t.cancel()
        for session in list(self.sessions):
            session.flush_now()
            session.abort_soon()
        for task in list(self._background):
            task.cancel()
        for pool in self.pools.values():
            await pool.stop()
        await self.ledger.close()
        log.info("hub %s stopped", self.cfg.node_id)
