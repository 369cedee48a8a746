"""Retention with two hub processes on one PostgreSQL ledger (issue 15, item 5): both hubs'
sweepers run at once, every 50 ms, while both deliver webhooks from the shared outbox; only
delivered rows go, each notification is delivered once, and a subscriber resuming across
events an operator pruned gets ``ResumeExpired`` from either hub."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.client import ResumeExpired
from gateway.config import RetentionConfig, WebhookConfig
from gateway.hub.retention import policy_of
from gateway.ledger import ledger_tools
from gateway.transactions.model import now_ms
from tests.deploy import KEYS
from tests.receiver import Receiver
from tests.test_multihub_postgres import card, two_hubs
from tests.waiting import wait_until

WAIT_S = 60.0


async def test_two_hubs_sweeping_at_once_keep_every_undelivered_row(
        tmp_path: Path, pg_dsn: str) -> None:
    rx = await Receiver(KEYS, tmp_path / "rx-tls").start()
    hooks = rx.trusted(WebhookConfig(time_scale=0.0002, poll_interval_s=0.02))
    # Delivered rows may go at once; small batches, often: the sweeps of the two hubs meet.
    retention = RetentionConfig(webhooks_delivered_keep_s=0.0, sweep_interval_s=0.05,
                                sweep_rows_max=3)
    tools = ledger_tools(pg_dsn)
    try:
        async with two_hubs(tmp_path, pg_dsn, webhook_urls={"M1": rx.url("M1")},
                            webhooks=hooks, retention=retention) as hubs, \
                hubs.a() as a, hubs.b() as b:
            for i in range(12):
                first, second = (a, b) if i % 2 else (b, a)
                await first.charge(f"rt-{i}", 40_000, card=card(5))
                await second.refund(f"rt-{i}", "r1", 10_000)
            assert await rx.wait_for(lambda: len(rx.delivered()) >= 24)
            # Every row was delivered, then swept by one hub or the other.
            await wait_until(lambda: tools.webhook_count() == 0,
                             "the hubs' sweepers to delete every delivered row",
                             timeout_s=WAIT_S)
            latest = 24  # one event per charge and per refund
            # An operator prunes every event (a horizon of 0), retrying while a hub's
            # sweep holds the ledger's retention lock.
            policy = policy_of(retention)._replace(events_resume_horizon_ms=0,
                                                   rows_max=1000)
            await wait_until(lambda: tools.prune(policy, now_ms()).floors == {"M1": latest},
                             "a prune of every event", timeout_s=WAIT_S)
            for client in (a, b):
                with pytest.raises(ResumeExpired):
                    stream = client.events(since=0)
                    await asyncio.wait_for(anext(stream), WAIT_S)
            # Resuming from the floor works on both hubs, with seqs after the latest.
            await a.charge("rt-after", 40_000, card=card(5))
            for client, fresh in ((a, hubs.a), (b, hubs.b)):
                # A hub announces (and checks events_since against) its poller's latest seq,
                # up to one poll behind the database (docs/postgres.md): wait until this hub
                # has seen the new event, as its next WELCOME says.
                async def caught_up(fresh: Any = fresh) -> bool:
                    async with fresh() as probe:
                        return int(probe.welcome["event_seq"]) >= latest + 1

                await wait_until(caught_up, "the hub to see the latest event", timeout_s=WAIT_S)
                stream = client.events(since=latest, reconnect=False)
                event = await asyncio.wait_for(anext(stream), WAIT_S)
                await stream.aclose()
                assert event.seq == latest + 1
                assert event.transaction.order_id == "rt-after"
    finally:
        await rx.stop()
    # Each notification delivered exactly once, in order per transaction, although the
    # outbox rows were deleted under the dispatchers of both hubs.
    ids = [d.event_id for d in rx.deliveries]
    assert len(ids) == len(set(ids)) >= 24
    for i in range(12):
        kinds = [d.body["transaction_status"] for d in rx.deliveries
                 if d.body["order_id"] == f"rt-{i}"]
        assert kinds == ["capture", "partial_refund"], (i, kinds)
