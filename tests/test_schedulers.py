"""The hub's schedulers: background work is cancelled *and waited for* at stop, so what a
cancelled piece does on its way out (release its order's lock in a shared ledger) is done
before the hub closes the ledger."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.hub.schedulers import Schedulers


class _NoWork:
    unresolved: set[Any] = set()

    def due_expiries(self, now: int) -> list[Any]:
        return []

    def due_challenges(self, now: int) -> list[Any]:
        return []

    async def expire_due(self, key: Any) -> None: ...
    async def deny_unreviewed(self, key: Any) -> None: ...
    async def resolve_key(self, key: Any) -> None: ...

    def busy(self, key: Any) -> bool:
        return False


async def test_cancel_background_waits_for_the_cancelled_work_to_finish() -> None:
    schedulers = Schedulers(_NoWork(), 60.0, 60.0)
    released: list[Any] = []
    started: list[Any] = []

    async def holds_a_lock(key: Any) -> None:
        try:
            started.append(key)
            await asyncio.Event().wait()  # a bank call that never answers
        finally:
            for _ in range(3):  # the lock's release takes a few round trips of its own
                await asyncio.sleep(0)
            released.append(key)

    schedulers.spawn(("M1", "o1"), holds_a_lock(("M1", "o1")))
    schedulers.keep(holds_a_lock("not an order"))
    while len(started) < 2:  # both running (a task cancelled before it starts runs nothing)
        await asyncio.sleep(0)
    assert await schedulers.cancel_background(30.0) == set()
    assert sorted(map(str, released)) == sorted(map(str, [("M1", "o1"), "not an order"]))
    assert not schedulers.background
    # Nothing starts after it (a rescan or a bank's payment report arriving during the
    # stop): the coroutines are closed, never run.
    late = holds_a_lock(("M1", "o2"))
    assert schedulers.spawn(("M1", "o2"), late) is None
    assert late.cr_frame is None  # closed
    assert schedulers.keep(holds_a_lock("late")) is False
    assert not schedulers.background


async def test_cancel_background_abandons_work_that_ignores_its_cancellation() -> None:
    """A stop always ends: a task that swallows its cancellation is left behind at the
    bound, not awaited for ever."""
    schedulers = Schedulers(_NoWork(), 60.0, 60.0)
    release = asyncio.Event()
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # a bug: cancellation ignored

    schedulers.keep(stubborn())
    await started.wait()
    left = await schedulers.cancel_background(0.2)
    assert len(left) == 1 and not next(iter(left)).done()
    release.set()
    await asyncio.wait_for(asyncio.gather(*left), 30.0)


async def test_a_stop_step_that_ignores_cancellation_is_abandoned_at_its_bound(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The hub's stop steps (``gateway/hub/server.py`` ``_bounded``): at the bound the step is
    cancelled and left, not awaited (``asyncio.wait_for`` would wait for it for ever)."""
    from gateway.hub import server

    monkeypatch.setattr(server, "STOP_STEP_S", 0.2)
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    await asyncio.wait_for(server._bounded(stubborn(), "a stubborn step"), 30.0)
    assert "stopping a stubborn step took over 0.2 s: abandoned" in caplog.text
    release.set()


async def test_the_resolver_leaves_orders_whose_operation_is_still_running() -> None:
    """An intent is unresolved while its bank call is in flight: the operation that made it
    settles it; the resolver spawns work only for orders nobody is working on (under load it
    spawned one task per charge in flight on every tick)."""
    resolved: list[Any] = []

    class Work(_NoWork):
        unresolved = {("M1", "in-flight"), ("M1", "left-over")}

        def busy(self, key: Any) -> bool:
            return key == ("M1", "in-flight")

        async def resolve_key(self, key: Any) -> None:
            resolved.append(key)

    schedulers = Schedulers(Work(), 60.0, 60.0)
    schedulers.resolver_tick()
    assert len(schedulers.background) == 1
    await asyncio.gather(*schedulers.background)
    assert resolved == [("M1", "left-over")]
