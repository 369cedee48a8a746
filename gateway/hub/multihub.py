"""What a hub does only when other hubs share its ledger (PostgreSQL, ``Ledger.shared``).

A hub alone knows every change to its ledger because it made it; with company it must learn
the others' from the database:

* ``EventPoller``: pushed EVENT frames come from the ledger's event log, in seq order,
  whichever hub committed the change (the hub's own commits only wake the poller early);
* ``Rescanner``: now and then, the unresolved intents, pending payments and held challenges
  of every hub are indexed here too, so this hub settles a dead hub's intents (one hub at a
  time: the order's lock across hubs, which a dead hub has lost with its database session)
  and expires or denies what a dead hub left; and the charges other hubs took are counted in
  this hub's fraud velocity windows.

Everything here polls with a bound (``interval_s``) and logs a failed read and tries again:
the database is the truth and a missed poll loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from gateway.fraud import FraudEngine
from gateway.hub.notifications import EventFanout, event_frame
from gateway.hub.periodic import Periodic
from gateway.ledger.base import Ledger
from gateway.transactions.model import Transaction, now_ms
from protocol import body as bodycodec

log = logging.getLogger("paywire.hub")

EVENT_POLL_INTERVAL_S = 0.1  # the latency bound of an event committed by another hub
EVENT_BATCH_MAX = 500  # events read per merchant per query
# Charges are looked for this far behind the last poll: a charge is written a little after
# its created_ms (the creating hub's clock, then its commit), and counted once (by id).
FRAUD_LOOKBACK_MS = 10_000


# A failed round of the poll loops is logged and retried (gateway/hub/periodic.py); it
# never stops the hub.
def _poll_failed(exc: Exception) -> None:
    log.warning("event poll failed (tried again): %r", exc)


def _rescan_failed(exc: Exception) -> None:
    log.warning("rescan of the shared ledger failed (tried again): %r", exc)


class EventPoller:
    """Pushes the ledger's events to this hub's subscribers, in seq order, within
    ``interval_s`` of their commit by any hub; keeps ``fanout.event_seq`` (what WELCOME
    announces and a resuming subscriber catches up to) at the ledger's latest."""

    def __init__(self, ledger: Ledger, fanout: EventFanout,
                 interval_s: float = EVENT_POLL_INTERVAL_S) -> None:
        self.ledger = ledger
        self.fanout = fanout
        self.periodic = Periodic("event-poller", interval_s, self.poll, _poll_failed)

    def start(self) -> None:
        self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    def wake(self) -> None:
        self.periodic.wake()

    async def poll(self) -> None:
        """One round: every merchant whose latest seq moved is caught up."""
        fanout = self.fanout
        for merchant, latest in (await self.ledger.last_event_seqs()).items():
            sent = fanout.event_seq.get(merchant, 0)
            while sent < latest:
                if not fanout.subscribers.get(merchant):
                    fanout.event_seq[merchant] = latest  # nobody to push to
                    break
                rows = await self.ledger.events_after(merchant, sent, EVENT_BATCH_MAX)
                if not rows:
                    break
                for seq, data in rows:
                    # Stored by a hub of this ledger: read without the peer limits.
                    frame = event_frame(merchant, seq, bodycodec.unpack_own(data))
                    fanout.push(merchant, seq, frame)
                sent = fanout.event_seq.get(merchant, 0)


class Recounted(Protocol):
    """What the rescanner needs of the transaction service."""

    def publish(self, tx: Transaction) -> None: ...


class Rescanner:
    """Indexes other hubs' open work here, and counts their charges in the fraud windows."""

    def __init__(self, ledger: Ledger, service: Recounted, fraud: FraudEngine,
                 counted: dict[str, int], interval_s: float,
                 on_unresolved: Callable[[], None]) -> None:
        self.ledger = ledger
        self.service = service
        self.fraud = fraud
        # Transaction ids already in this hub's fraud windows (its own, added when screened,
        # and those counted from the ledger) with their created_ms: counted once each.
        self.counted = counted
        self.on_unresolved = on_unresolved
        self._since_ms = now_ms()
        self.periodic = Periodic("rescanner", interval_s, self.scan, _rescan_failed)

    def start(self) -> None:
        self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    async def scan(self) -> None:
        found: list[Any] = await self.ledger.unresolved()
        found += await self.ledger.pending()
        found += await self.ledger.challenged()
        for tx in found:
            # An index entry only: any work on it takes the order's lock across hubs and
            # reads the ledger again, so a stale copy here changes nothing.
            self.service.publish(tx)
        self.on_unresolved()
        await self.count_charges()

    async def count_charges(self) -> None:
        """Count the charges other hubs took since the last poll in the velocity windows."""
        window_ms = int(self.fraud.window_s_max * 1000)
        if window_ms <= 0:
            return
        start = now_ms()
        counted = self.counted
        new = 0
        for tx in await self.ledger.created_since(self._since_ms - FRAUD_LOOKBACK_MS):
            if tx.transaction_id in counted:
                continue
            counted[tx.transaction_id] = tx.created_ms
            customer = tx.customer or {}
            self.fraud.record(tx.merchant_id, tx.card_fingerprint, customer.get("email"),
                              customer.get("ip"), tx.created_ms / 1000)
            new += 1
        if new:
            log.info("fraud windows: counted %d charges other hubs took", new)
        self._since_ms = start
        horizon = start - window_ms - FRAUD_LOOKBACK_MS
        for txid in [t for t, at in counted.items() if at < horizon]:
            del counted[txid]
