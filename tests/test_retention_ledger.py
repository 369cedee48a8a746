"""Retention in the ledger (issue 15, item 5): the rules of ``Ledger.prune`` on both backends.

Rows are made "old" by moving the sweep's clock (``now_ms``), never by waiting: a sweep at
``t + horizon`` sees what was recorded before ``t`` as past the horizon. Every test runs on
SQLite (a file in the test's directory) and on PostgreSQL (a database of its own).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ledger import (
    Ledger,
    LedgerTools,
    Notification,
    PruneResult,
    RetentionPolicy,
    SqliteLedger,
    SqliteLedgerTools,
)
from gateway.ledger.base import event_id, swept_prefix
from gateway.transactions.model import Transaction, now_ms
from tests.waiting import wait_until

HOUR_MS = 3_600_000


@dataclass
class Backend:
    name: str
    place: Callable[[pytest.FixtureRequest, Path], Any]
    open: Callable[[Any], Ledger]
    tools: Callable[[Any], LedgerTools]


def _pg_ledger(dsn: str) -> Ledger:
    from gateway.ledger.postgres import PostgresLedger

    # Shared, as the hub opens it: several may be open on one database at once.
    return PostgresLedger(dsn, exclusive=False)


def _pg_tools(dsn: str) -> LedgerTools:
    from gateway.ledger.postgres import PostgresLedgerTools

    return PostgresLedgerTools(dsn)


BACKENDS = [
    Backend("sqlite", lambda request, tmp: tmp / "ledger.db", SqliteLedger, SqliteLedgerTools),
    Backend("postgres", lambda request, tmp: request.getfixturevalue("pg_dsn"), _pg_ledger,
            _pg_tools),
]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.param
    return chosen


@pytest.fixture
def place(backend: Backend, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return backend.place(request, tmp_path)


@pytest.fixture
async def ledger(backend: Backend, place: Any) -> AsyncIterator[Ledger]:
    opened = backend.open(place)
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()


def _tx(merchant: str, order: str) -> Transaction:
    now = now_ms()
    return Transaction(transaction_id=f"tx-{merchant}-{order}", merchant_id=merchant,
                       order_id=order, gross_amount=1000, currency="IDR",
                       payment_type="credit_card", status="pending", fraud_status="accept",
                       request_hash=b"h", created_ms=now, updated_ms=now)


def _note(tx: Transaction, webhook: bool) -> Notification:
    return Notification(f"data:{tx.transaction_id}".encode(),
                        "https://m.example/hook" if webhook else None,
                        b'{"event_id":"evt_' + tx.merchant_id.encode() + b"_", b'"}')


async def _record(ledger: Ledger, merchant: str, orders: list[str], webhook: bool = True
                  ) -> list[int]:
    """One new transaction per order, each with its event (and webhook): their seqs."""
    seqs = []
    for order in orders:
        tx = _tx(merchant, order)
        seq = await ledger.insert_new(tx, _note(tx, webhook))
        assert isinstance(seq, int)
        seqs.append(seq)
    return seqs


async def _tick_past(t: int) -> None:
    """Until the clock has left millisecond ``t``: what is recorded next is later than
    everything recorded up to ``t`` (a condition on the clock, not a sleep)."""
    await wait_until(lambda: now_ms() > t, "the clock to pass a millisecond", poll_s=0.001)


async def _webhook_ids(ledger: Ledger) -> dict[str, int]:
    """event id -> webhook id of every pending webhook (one transaction each here)."""
    due = await ledger.due_webhooks(now_ms() + 365 * 24 * HOUR_MS, 10_000)
    return {w.event_id: w.id for w in due}


async def _seqs(ledger: Ledger, merchant: str) -> list[int]:
    return [seq for seq, _ in await ledger.events_after(merchant, 0, 10_000)]


def _states(tools: LedgerTools) -> dict[str, str]:
    return {row.event_id: row.state for row in tools.webhooks(limit=10_000)}


POLICY = RetentionPolicy(events_resume_horizon_ms=HOUR_MS, webhooks_delivered_keep_ms=HOUR_MS,
                         rows_max=1000)


async def test_prune_keeps_what_a_merchant_or_subscriber_may_still_need(
        backend: Backend, place: Any, ledger: Ledger) -> None:
    """Delivered and old webhooks go; pending and dead ones stay however old; recently
    delivered ones stay. Events go oldest first, only past the horizon and only up to the
    first whose webhook is pending; the latest seq survives a sweep of everything."""
    tools = backend.tools(place)
    await _record(ledger, "m1", ["o1", "o2", "o3", "o4"])
    await _record(ledger, "m2", ["o1", "o2"], webhook=False)
    t_mid = now_ms()
    await _tick_past(t_mid)
    await _record(ledger, "m1", ["o5", "o6"])
    ids = await _webhook_ids(ledger)
    ev = {n: event_id("m1", n) for n in range(1, 7)}
    long_ago = t_mid - 10 * HOUR_MS
    now = t_mid + 1 + HOUR_MS  # events recorded up to t_mid are past the horizon
    await ledger.webhook_delivered(ids[ev[1]], 1, long_ago)
    await ledger.webhook_delivered(ids[ev[2]], 1, long_ago)
    await ledger.webhook_retry(ids[ev[3]], 1, long_ago, "HTTP 500")  # pending, retries left
    await ledger.webhook_dead(ids[ev[4]], 6, "HTTP 500")
    await ledger.webhook_delivered(ids[ev[5]], 1, now - 1000)  # delivered a second ago
    # ev[6]: pending, never tried.

    dry = await ledger.prune(POLICY, now, dry_run=True)
    assert dry == PruneResult(2, 4, {"m1": 2, "m2": 2})
    assert len(_states(tools)) == 6 and await _seqs(ledger, "m1") == [1, 2, 3, 4, 5, 6]

    assert await ledger.prune(POLICY, now) == PruneResult(2, 4, {"m1": 2, "m2": 2})
    assert _states(tools) == {ev[3]: "pending", ev[4]: "dead", ev[5]: "delivered",
                              ev[6]: "pending"}
    # m1's event 3 waits for its webhook; 4..6 are above it. m2 had no webhook: all gone.
    assert await _seqs(ledger, "m1") == [3, 4, 5, 6]
    assert await _seqs(ledger, "m2") == []
    assert await ledger.event_floors() == {"m1": 2, "m2": 2}
    assert await ledger.last_event_seqs() == {"m1": 6, "m2": 2}
    assert await ledger.prune(POLICY, now) == PruneResult(0, 0, {})  # idempotent

    # Event 3's webhook is delivered at last: it and the dead one's event (4) may go; 5 and
    # 6 are within the horizon still.
    await ledger.webhook_delivered(ids[ev[3]], 2, long_ago)
    assert await ledger.prune(POLICY, now) == PruneResult(1, 2, {"m1": 4})
    assert await _seqs(ledger, "m1") == [5, 6]
    # Far in the future: event 5 goes (its webhook delivered), 6 stays while its webhook is
    # pending, however old; the dead and the pending webhook rows stay too.
    later = now + 100 * HOUR_MS
    assert await ledger.prune(POLICY, later) == PruneResult(1, 1, {"m1": 5})
    assert await _seqs(ledger, "m1") == [6]
    assert _states(tools) == {ev[4]: "dead", ev[6]: "pending"}
    assert await ledger.last_event_seqs() == {"m1": 6, "m2": 2}

    # A seq is never given out twice, also after a restart with no event of m2 left.
    await ledger.close()
    reopened = backend.open(place)
    await reopened.start()
    try:
        assert await reopened.last_event_seqs() == {"m1": 6, "m2": 2}
        assert await reopened.event_floors() == {"m1": 5, "m2": 2}
        assert await _record(reopened, "m2", ["o3"]) == [3]
        assert await _seqs(reopened, "m2") == [3]
    finally:
        await reopened.close()
        await ledger.start()  # the fixture closes it again


async def test_a_sweep_is_a_bounded_batch_taken_oldest_first(ledger: Ledger) -> None:
    await _record(ledger, "m1", [f"o{i}" for i in range(10)], webhook=False)
    ids = await _record(ledger, "m2", ["a", "b", "c"])
    hooks = await _webhook_ids(ledger)
    for seq in ids:
        await ledger.webhook_delivered(hooks[event_id("m2", seq)], 1, 0)
    now = now_ms() + 2 * HOUR_MS
    small = POLICY._replace(rows_max=4)
    seen: list[PruneResult] = []
    while (result := await ledger.prune(small, now)) != PruneResult(0, 0, {}):
        assert result.webhooks <= 4 and result.events <= 4
        seen.append(result)
    # Each batch took the oldest: the floors only climb, and what is left is always every
    # seq above the floor.
    assert [r.floors for r in seen] == [{"m1": 4}, {"m1": 8}, {"m1": 10, "m2": 2}, {"m2": 3}]
    assert sum(r.webhooks for r in seen) == 3 and sum(r.events for r in seen) == 13
    assert await ledger.event_floors() == {"m1": 10, "m2": 3}
    assert await ledger.last_event_seqs() == {"m1": 10, "m2": 3}


async def test_mixed_rows_keep_every_invariant(backend: Backend, place: Any,
                                               ledger: Ledger) -> None:
    """A table of random rows (seeded): merchants, old and recent events, webhooks in every
    state, delivered long ago or just now; after sweeping to the end, every rule holds."""
    rng = random.Random(1515)
    tools = backend.tools(place)
    merchants = ["ma", "mb", "mc"]
    old: dict[str, list[int]] = {m: [] for m in merchants}
    for m in merchants:
        old[m] = await _record(ledger, m, [f"old{i}" for i in range(rng.randint(0, 12))],
                               webhook=rng.random() < 0.7)
    t_mid = now_ms()
    await _tick_past(t_mid)
    recent = {m: await _record(ledger, m, [f"new{i}" for i in range(rng.randint(0, 4))])
              for m in merchants}
    now = t_mid + 1 + POLICY.events_resume_horizon_ms
    hooks = await _webhook_ids(ledger)
    state: dict[str, str] = {}
    for eid, wid in hooks.items():
        fate = rng.choice(["pending", "retry", "dead", "delivered-old", "delivered-new"])
        if fate == "retry":
            await ledger.webhook_retry(wid, 1, 0, "HTTP 503")
        elif fate == "dead":
            await ledger.webhook_dead(wid, 6, "HTTP 503")
        elif fate == "delivered-old":
            await ledger.webhook_delivered(wid, 1, now - POLICY.webhooks_delivered_keep_ms - 1)
        elif fate == "delivered-new":
            await ledger.webhook_delivered(wid, 1, now - POLICY.webhooks_delivered_keep_ms)
        state[eid] = fate
    latest_before = await ledger.last_event_seqs()
    batch = POLICY._replace(rows_max=rng.randint(1, 5))
    while await ledger.prune(batch, now) != PruneResult(0, 0, {}):
        pass
    kept_hooks = _states(tools)
    for eid, fate in state.items():
        # Only webhooks delivered before the keep time go; every other row stays.
        assert (eid in kept_hooks) is (fate != "delivered-old"), (eid, fate)
    floors = await ledger.event_floors()
    assert await ledger.last_event_seqs() == latest_before
    for m in merchants:
        left = await _seqs(ledger, m)
        latest = latest_before.get(m, 0)
        floor = floors.get(m, 0)
        assert left == list(range(floor + 1, latest + 1)), m  # all above the floor
        # The floor stops at the first event that must stay: recent, or webhook pending.
        must_stay = [s for s in old[m] if state.get(event_id(m, s)) in ("pending", "retry")]
        must_stay += recent[m]
        assert floor == (min(must_stay) - 1 if must_stay else latest), m


async def test_concurrent_sweeps_of_several_hubs_delete_each_row_once(pg_dsn: str) -> None:
    """Several hubs sweeping one PostgreSQL ledger at once: one sweep at a time does the
    work, the others find none; a claimed (in delivery) row is never deleted."""
    ledgers = [_pg_ledger(pg_dsn) for _ in range(3)]
    for opened in ledgers:
        await opened.start()
    try:
        first = ledgers[0]
        await _record(first, "m1", [f"o{i}" for i in range(30)])
        hooks = await _webhook_ids(first)
        for seq in range(1, 30):  # all delivered but the last
            await first.webhook_delivered(hooks[event_id("m1", seq)], 1, 0)
        claimed = await first.claim_webhooks("hub-x", now_ms(), 60_000, 10)  # type: ignore[attr-defined]
        assert [w.event_id for w in claimed] == [event_id("m1", 30)]
        now = now_ms() + 2 * HOUR_MS
        policy = POLICY._replace(rows_max=7)
        totals = PruneResult(0, 0, {})
        while True:
            results = await asyncio.gather(*(lg.prune(policy, now) for lg in ledgers))
            if all(r == PruneResult(0, 0, {}) for r in results):
                break
            totals = PruneResult(totals.webhooks + sum(r.webhooks for r in results),
                                 totals.events + sum(r.events for r in results),
                                 {**totals.floors, **{m: f for r in results
                                                      for m, f in r.floors.items()}})
        assert (totals.webhooks, totals.events, totals.floors) == (29, 29, {"m1": 29})
        assert await _seqs(first, "m1") == [30]
        assert _states(_pg_tools(pg_dsn)) == {event_id("m1", 30): "pending"}
        for opened in ledgers:
            assert await opened.event_floors() == {"m1": 29}
    finally:
        for opened in ledgers:
            await opened.close()


@given(st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=30),
       st.integers(0, 20), st.one_of(st.none(), st.integers(1, 35)))
def test_swept_prefix_is_the_longest_run_that_may_go(
        events: list[tuple[int, bool]], before_ms: int, pending_min: int | None) -> None:
    rows = [(seq, created) for seq, (created, _) in enumerate(events, start=1)]
    last, count = swept_prefix(rows, before_ms, pending_min)
    may_go = [created < before_ms and (pending_min is None or seq < pending_min)
              for seq, created in rows]
    run = next((i for i, ok in enumerate(may_go) if not ok), len(rows))
    assert count == run
    assert last == (rows[run - 1][0] if run else None)


async def test_the_sweeper_outlives_a_sweep_that_fails(tmp_path: Path) -> None:
    """One failed sweep (here a writer queue that refused it, injected once over a real
    SQLite ledger) is logged and the next tick sweeps again: retention never stops for good
    while the hub runs."""
    from gateway.config import RetentionConfig
    from gateway.hub.retention import RetentionSweeper

    class FailsOnce(SqliteLedger):
        calls = 0

        async def prune(self, policy: RetentionPolicy, now_ms: int,
                        dry_run: bool = False) -> PruneResult:
            FailsOnce.calls += 1
            if FailsOnce.calls == 1:
                raise RuntimeError("QUEUE_FULL: the writer's queue is full")
            return await super().prune(policy, now_ms, dry_run)

    ledger = FailsOnce(tmp_path / "ledger.db")
    await ledger.start()
    sweeper = RetentionSweeper(ledger, RetentionConfig(sweep_interval_s=0.01), {})
    try:
        sweeper.start()
        await wait_until(lambda: FailsOnce.calls >= 3, "the sweeper to sweep after a failure")
        assert sweeper.periodic.running
    finally:
        await sweeper.stop()
        await ledger.close()
