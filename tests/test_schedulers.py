"""The hub's schedulers: background work is cancelled *and waited for* at stop, so what a
cancelled piece does on its way out (release its order's lock in a shared ledger) is done
before the hub closes the ledger."""

from __future__ import annotations

import asyncio
from typing import Any

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
    await schedulers.cancel_background()
    assert sorted(map(str, released)) == sorted(map(str, [("M1", "o1"), "not an order"]))
    assert not schedulers.background
    # And a key is free again for later work.
    assert schedulers.spawn(("M1", "o1"), holds_a_lock(("M1", "o1"))) is not None
    await schedulers.cancel_background()
