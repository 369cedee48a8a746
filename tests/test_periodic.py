"""The periodic duty behind the retention sweeper and the shared ledger's pollers: a round
that fails is reported and the next one runs; ``wake`` runs one now; ``stop`` ends it."""

from __future__ import annotations

import asyncio

from gateway.hub.periodic import Periodic
from tests.waiting import wait_until


async def test_a_failed_round_is_reported_and_the_next_one_runs() -> None:
    rounds: list[int] = []
    failures: list[Exception] = []

    async def tick() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("the database is busy")

    periodic = Periodic("test", 0.01, tick, failures.append)
    periodic.start()
    try:
        await wait_until(lambda: len(rounds) >= 3, "rounds after a failed one")
        assert periodic.running
        assert [str(e) for e in failures] == ["the database is busy"]
    finally:
        await periodic.stop()
    assert not periodic.running


async def test_wake_runs_a_round_before_the_interval_ends() -> None:
    ran = asyncio.Event()

    async def tick() -> None:
        ran.set()

    periodic = Periodic("test", 3600.0, tick, lambda exc: None)  # an hour: only wake runs it
    periodic.start()
    try:
        await asyncio.sleep(0)  # the task is waiting on its interval
        assert not ran.is_set()
        periodic.wake()
        await asyncio.wait_for(ran.wait(), 30.0)
    finally:
        await periodic.stop()
