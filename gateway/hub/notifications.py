"""Telling the world about committed status changes: the outbox rows written with a change,
and the listeners told after its commit (EVENT frames to subscribed sessions, webhook wake-up).

The notification body (the transaction result the merchant sees) is built here, by the hub,
and handed to the ledger to store in the same commit as the change (transactional outbox,
DESIGN §4.5); the ledger never needs a merchant's key or URL to build one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from gateway.config import MerchantConfig
from gateway.ledger.base import Notification
from gateway.transactions.model import Transaction
from gateway.webhooks.payload import notification_body_parts
from protocol import body as bodycodec
from protocol import messages
from protocol.errors import ErrorCode
from protocol.frame import FrameType

log = logging.getLogger("paywire.service")

# Called after a committed status change with the transaction and its event sequence number.
ChangeListener = Callable[[Transaction, int], None]


class Notifier:
    """Builds a change's outbox rows and tells the change listeners after its commit."""

    def __init__(self, merchants: dict[str, MerchantConfig]) -> None:
        self.merchants = merchants
        self.listeners: list[ChangeListener] = []

    def notification(self, tx: Transaction, shown: dict[str, Any] | None = None
                     ) -> Notification:
        """The outbox rows of a status change (event data and webhook body), stored with it:
        built here because the ledger stores bytes and only the hub holds the merchants'
        server keys. ``shown``: ``tx.to_result(with_hops=False)`` when the caller has built
        it already for this very state (a charge's answer), so it is built once."""
        merchant = self.merchants.get(tx.merchant_id)
        result = tx.to_result(with_hops=False) if shown is None else shown
        # A charge's own ``notification_url`` overrides the merchant's for all of its
        # transaction's notifications (checked against the webhook rules when charged).
        # None for a merchant a configuration reload removed: without its key no
        # notification could be signed, so none is queued (its events are still stored).
        url = (tx.notification_url or merchant.webhook_url) if merchant else None
        # Signed with the primary key (``server_key``) only, also during a rotation: a
        # receiver verifies with the new key, and with the old one too for rows queued
        # before the switch (docs/operations.md "Rotating a merchant's server key").
        head, tail = (notification_body_parts(result, merchant.server_key)
                      if merchant and url else (b"", b""))
        return Notification(bodycodec.pack(result), url, head, tail)

    def changed(self, tx: Transaction, seq: int) -> None:
        """Tell every listener of a committed change with event sequence ``seq``."""
        for listener in self.listeners:
            # The change is committed: a listener's failure must not become the answer of
            # the request that made it (the money has moved) nor keep the other listeners
            # from hearing of it. Events and webhooks are in the outbox anyway, and a
            # subscriber resumes with events_since.
            try:
                listener(tx, seq)
            except Exception:
                log.exception("change listener failed for %s (seq %d); the change stands",
                              tx.transaction_id, seq)


class Subscriber(Protocol):
    """A merchant session that asked for pushed events."""

    merchant_id: str | None
    peer: Any

    def push_event(self, seq: int, frame: bytes) -> None: ...

    def fail(self, code: ErrorCode, message: str, field: str | None = None) -> None: ...


class Wakeable(Protocol):
    def wake(self) -> None: ...


def event_frame(merchant_id: str, seq: int, data: dict[str, Any]) -> bytes:
    """The EVENT frame announcing one change (``docs/protocol.md`` §6)."""
    return messages.encode_message(FrameType.EVENT, {
        "seq": seq, "type": "transaction.status", "merchant_id": merchant_id, "data": data})


class EventFanout:
    """The hub's change listener: pushes EVENT frames to the merchant's subscribed sessions
    and wakes the webhook dispatcher; keeps the latest event sequence per merchant (what
    WELCOME announces and a resuming subscriber catches up to)."""

    def __init__(self, webhooks: Wakeable, has_webhook: set[str]) -> None:
        self.webhooks = webhooks
        self.has_webhook = has_webhook
        self.event_seq: dict[str, int] = {}
        self.subscribers: dict[str, set[Subscriber]] = {}
        # Set when other hubs share the ledger (``gateway.hub.multihub.EventPoller``): every
        # event, this hub's too, is then pushed from the ledger's log in seq order, and a
        # commit here only wakes the poller (pushing it here could overtake an earlier seq
        # another hub committed, which the subscriber would then never get).
        self.poller: Wakeable | None = None

    def subscribe(self, session: Subscriber) -> None:
        assert session.merchant_id is not None
        self.subscribers.setdefault(session.merchant_id, set()).add(session)

    def unsubscribe(self, session: Subscriber) -> None:
        if session.merchant_id is not None:
            self.subscribers.get(session.merchant_id, set()).discard(session)

    def __call__(self, tx: Transaction, seq: int) -> None:
        """A committed status change (its event and webhook rows are already on disk)."""
        merchant = tx.merchant_id
        if merchant in self.has_webhook or tx.notification_url:
            self.webhooks.wake()
        if self.poller is not None:
            self.poller.wake()
            return
        subscribers = self.subscribers.get(merchant)
        if subscribers:
            self.push(merchant, seq, event_frame(merchant, seq, tx.to_result(with_hops=False)))
        else:
            self.event_seq[merchant] = max(seq, self.event_seq.get(merchant, 0))

    def push(self, merchant: str, seq: int, frame: bytes) -> None:
        """Push event ``seq`` to the merchant's subscribers; it is the latest now."""
        self.event_seq[merchant] = max(seq, self.event_seq.get(merchant, 0))
        subscribers = self.subscribers.get(merchant)
        if subscribers:
            for session in list(subscribers):
                try:
                    session.push_event(seq, frame)
                except Exception:
                    # One subscriber's fault is its own: drop it (it resumes from its last
                    # seq, losing nothing) and tell the others.
                    log.exception("pushing event %d to %s failed", seq, session.peer)
                    session.fail(ErrorCode.INTERNAL, "event could not be sent; resume with "
                                 "events_since")
