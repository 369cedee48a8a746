"""The hub's retention sweeper: deletes delivered webhooks and pushed events once they are
past their keep time (``[retention]``, docs/operations.md "Retention and the resume
horizon"), in bounded batches, and keeps the hub's copy of each merchant's resume floor,
against which a HELLO's ``events_since`` is checked (``RESUME_EXPIRED``).

The rules are the ledger's (``Ledger.prune``): never a transaction, a pending or dead
webhook, an event within the resume horizon or one whose webhook is pending. Several hubs
on one PostgreSQL ledger each run a sweeper; the ledger runs one sweep at a time and the
others find nothing, and every sweeper reads the floors the others moved.
"""

from __future__ import annotations

import logging

from gateway.config import RetentionConfig
from gateway.hub.periodic import Periodic
from gateway.ledger.base import Ledger, LedgerError, PruneResult, RetentionPolicy
from gateway.transactions.model import now_ms

log = logging.getLogger("paywire.retention")

# A sweep that finds full batches goes on at once, up to this many batches per tick: the
# backlog of a ledger that never had retention is worked off over a few ticks, each batch
# a short transaction between the hub's own commits.
BATCHES_PER_TICK_MAX = 100


def policy_of(cfg: RetentionConfig) -> RetentionPolicy:
    return RetentionPolicy(events_resume_horizon_ms=round(cfg.events_resume_horizon_s * 1000),
                           webhooks_delivered_keep_ms=round(cfg.webhooks_delivered_keep_s * 1000),
                           rows_max=cfg.sweep_rows_max)


class RetentionSweeper:
    """Sweeps every ``sweep_interval_s`` (the first time one interval after start)."""

    def __init__(self, ledger: Ledger, cfg: RetentionConfig, floors: dict[str, int]) -> None:
        self.ledger = ledger
        self.cfg = cfg
        self.policy = policy_of(cfg)
        # The hub's copy (``Hub.event_floor``): raised here, never lowered.
        self.floors = floors
        self._unexpected = 0  # sweeps that failed with an error no one expected
        self.periodic = Periodic("retention", cfg.sweep_interval_s, self.sweep, self._failed)

    def start(self) -> None:
        self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, LedgerError | OSError):
            log.warning("retention sweep failed (tried again in %g s): %s",
                        self.cfg.sweep_interval_s, exc)
            return
        # A full writer queue, a busy database, a driver error: retention must not stop for
        # good because one sweep failed (the tables would grow unseen). The traceback once,
        # so that a bug can be found; then one line each time.
        self._unexpected += 1
        log.warning("retention sweep failed (tried again in %g s): %s: %s",
                    self.cfg.sweep_interval_s, type(exc).__name__, exc,
                    exc_info=exc if self._unexpected == 1 else None)

    async def sweep(self, at_ms: int | None = None) -> PruneResult:
        """Delete what is past its keep time at ``at_ms`` (now by default), batch after
        batch while batches come back full; log one INFO line if anything went. Returns
        the totals."""
        webhooks = events = 0
        moved: dict[str, int] = {}
        for _ in range(BATCHES_PER_TICK_MAX):
            done = await self.ledger.prune(self.policy, now_ms() if at_ms is None else at_ms)
            webhooks += done.webhooks
            events += done.events
            moved.update(done.floors)
            self.raise_floors(done.floors)
            if max(done.webhooks, done.events) < self.policy.rows_max:
                break
        # Floors another hub (or ``paywire ledger prune``) moved.
        self.raise_floors(await self.ledger.event_floors())
        if webhooks or events:
            log.info("retention sweep: deleted %d delivered webhooks and %d events; resume "
                     "floors %s", webhooks, events,
                     " ".join(f"{m}={f}" for m, f in sorted(moved.items())) or "unchanged",
                     extra={"fields": {"webhooks_deleted": webhooks, "events_deleted": events,
                                       "floors": moved}})
        return PruneResult(webhooks, events, moved)

    def raise_floors(self, floors: dict[str, int]) -> None:
        for merchant, floor in floors.items():
            if floor > self.floors.get(merchant, 0):
                self.floors[merchant] = floor
