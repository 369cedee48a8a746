"""Retention end to end (issue 15, item 5): a hub sweeps its ledger, and subscribers resume.

The hub runs in the test's process on the bank-node processes of a real deployment (real
TLS sockets, the SQLite ledger's writer process), so the test can run its sweeper with a
clock of its choosing (``sweep(at_ms=...)``: "a week later" without waiting a week). A
subscriber resuming at or above the merchant's resume floor gets every event after its
``events_since``; one below it gets ``ResumeExpired``, whether the hub knew the floor at the
HELLO or found the events gone during the replay (an operator's ``prune`` beside the hub).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from gateway.client import Card, Client, ResumeExpired, connect
from gateway.hub.retention import policy_of
from gateway.hub.server import Hub
from gateway.ledger import SqliteLedgerTools
from gateway.transactions.model import now_ms
from protocol.errors import ErrorCode
from tests.deploy import KEYS, RICH, deployment
from tests.waiting import wait_until

WAIT_S = 60.0


async def _charges(c: Client, hub: Hub, orders: list[str]) -> int:
    """Charge each order; the merchant's latest event seq after them."""
    for i, order in enumerate(orders):
        await c.charge(order, 10_000 + i, card=Card(RICH[i % len(RICH)], 12, 2030, "123"))
    return hub.event_seq["M1"]


async def _tick_past(t: int) -> None:
    await wait_until(lambda: now_ms() > t, "the clock to pass a millisecond", poll_s=0.001)


async def _resume(c: Client, since: int, count: int) -> list[int]:
    """The seqs of the first ``count`` events after ``since``."""
    seqs: list[int] = []

    async def read() -> None:
        async for event in c.events(since):
            seqs.append(event.seq)
            if len(seqs) == count:
                return

    await asyncio.wait_for(read(), WAIT_S)
    return seqs


async def _refused(c: Client, since: int) -> ResumeExpired:
    with pytest.raises(ResumeExpired) as info:
        await asyncio.wait_for(_resume(c, since, 1), WAIT_S)
    err = info.value
    assert err.code is ErrorCode.RESUME_EXPIRED and err.field == "events_since"
    assert not err.retryable
    return err


async def test_resume_within_the_horizon_and_beyond_it(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    with deployment(tmp_path, bca_nodes=1) as dep:
        assert dep.hub is not None and dep.hub_cfg is not None
        await loop.run_in_executor(None, dep.hub.terminate)
        cfg = dataclasses.replace(dep.hub_cfg, listen_port=0)
        horizon_ms = round(cfg.retention.events_resume_horizon_s * 1000)
        hub = Hub(cfg)
        await hub.start()
        try:
            assert hub.retention is not None  # on by default
            async with connect("127.0.0.1", hub.port, merchant_id="M1",
                               server_key=KEYS["M1"], certs_dir=dep.certs) as c:
                first = await _charges(c, hub, ["r-1", "r-2", "r-3"])
                t1 = now_ms()
                await _tick_past(t1)
                second = await _charges(c, hub, ["r-4", "r-5", "r-6"])
                assert 0 < first < second

                # A week later (the default horizon) for the first three charges only.
                caplog.set_level(logging.INFO, logger="paywire.retention")
                swept = await hub.retention.sweep(at_ms=t1 + 1 + horizon_ms)
                assert (swept.events, swept.floors) == (first, {"M1": first})
                lines = [r for r in caplog.records if r.name == "paywire.retention"]
                assert len(lines) == 1 and lines[0].levelno == logging.INFO
                assert f"{first} events" in lines[0].getMessage()
                assert hub.event_floor == {"M1": first}
                assert hub.event_seq["M1"] == second  # the latest seq is untouched

                # From the floor: everything after it, in order. From below it: refused.
                assert await _resume(c, first, second - first) == \
                    list(range(first + 1, second + 1))
                refused = hub.pipeline.metrics.handshakes_refused
                err = await _refused(c, first - 1)
                assert f"resume floor {first}" in err.message
                await _refused(c, 0)
                assert refused.get("RESUME_EXPIRED") == 2  # both at the HELLO

                # An operator prunes beside the running hub, later still: the hub's copy of
                # the floor is stale, the HELLO passes, and the replay finds the gap.
                t2 = now_ms()
                await _tick_past(t2)
                third = await _charges(c, hub, ["r-7", "r-8"])
                pruned = await loop.run_in_executor(
                    None, SqliteLedgerTools(cfg.ledger_path).prune,
                    policy_of(cfg.retention), t2 + 1 + horizon_ms, False)
                assert pruned.floors == {"M1": second}
                assert hub.event_floor == {"M1": first}
                await _refused(c, first)
                assert refused.get("RESUME_EXPIRED") == 2  # after WELCOME, in the replay
                assert hub.event_floor == {"M1": second}  # learnt from the replay
                await _refused(c, first)
                assert refused.get("RESUME_EXPIRED") == 3  # now at the HELLO
                assert await _resume(c, second, third - second) == \
                    list(range(second + 1, third + 1))

                # Seqs go on from the latest, never from what is left.
                after = await _charges(c, hub, ["r-9"])
                assert after > third
                assert await _resume(c, third, after - third) == \
                    list(range(third + 1, after + 1))
        finally:
            await hub.stop()


async def test_events_deleted_during_a_replay_end_it_after_the_valid_ones(
        tmp_path: Path) -> None:
    """Spec 6.2: the floor passes ``events_since`` = S after the WELCOME, while the replay is
    between two reads: the subscriber gets the valid events S+1 … K already read, then
    ``RESUME_EXPIRED`` where K+1 is gone — never an event after the gap."""
    loop = asyncio.get_running_loop()
    with deployment(tmp_path, bca_nodes=1) as dep:
        assert dep.hub is not None and dep.hub_cfg is not None
        await loop.run_in_executor(None, dep.hub.terminate)
        # Two events per read, so the replay reads the ledger more than once.
        cfg = dataclasses.replace(dep.hub_cfg, listen_port=0, event_replay_batch_max=2)
        horizon_ms = round(cfg.retention.events_resume_horizon_s * 1000)
        hub = Hub(cfg)
        await hub.start()
        try:
            async with connect("127.0.0.1", hub.port, merchant_id="M1",
                               server_key=KEYS["M1"], certs_dir=dep.certs) as c:
                since = await _charges(c, hub, ["g-1", "g-2"])
                mid = await _charges(c, hub, [f"g-{i}" for i in range(3, 7)])
                t = now_ms()
                await _tick_past(t)
                latest = await _charges(c, hub, ["g-7", "g-8"])
                assert since + 2 < mid < latest

                # The replay's second read waits until an operator has pruned, beside the
                # hub, every event recorded before ``t`` (up to ``mid``).
                reads = 0
                pruned = asyncio.Event()
                events_after = hub.ledger.events_after

                async def held_second_read(merchant_id: str, after: int,
                                           limit: int) -> list[tuple[int, bytes]]:
                    nonlocal reads
                    reads += 1
                    if reads == 2:
                        await pruned.wait()
                    return await events_after(merchant_id, after, limit)

                hub.ledger.events_after = held_second_read  # type: ignore[method-assign]
                seqs: list[int] = []

                async def subscribe() -> None:
                    async for event in c.events(since):
                        seqs.append(event.seq)

                replay = asyncio.ensure_future(asyncio.wait_for(subscribe(), WAIT_S))
                await wait_until(lambda: reads == 2, "the replay's second read")
                now_gone = await loop.run_in_executor(
                    None, SqliteLedgerTools(cfg.ledger_path).prune,
                    policy_of(cfg.retention), t + 1 + horizon_ms, False)
                assert now_gone.floors == {"M1": mid}
                pruned.set()
                with pytest.raises(ResumeExpired) as info:
                    await replay
                assert info.value.field == "events_since"
                # Read before the prune, then nothing: not ``mid`` + 1, which is still stored.
                assert seqs == [since + 1, since + 2]
                assert hub.event_floor["M1"] == mid  # learnt from the replay
        finally:
            await hub.stop()
