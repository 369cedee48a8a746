"""One background duty run every so often: the shape the retention sweeper, the shared
ledger's event poller and its rescanner have in common.

A periodic duty must never end because one round failed (a busy database, a full writer
queue): the tables would grow unseen, events would stop being pushed. So each round's
error goes to the owner's ``failed`` (which logs it its own way), and the next round runs
on time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Periodic:
    """Runs ``tick`` every ``interval_s`` (the first time one interval after ``start``, or at
    once after ``wake``) until ``stop``; one round at a time."""

    __slots__ = ("_failed", "_task", "_tick", "_wake", "interval_s", "name")

    def __init__(self, name: str, interval_s: float, tick: Callable[[], Awaitable[object]],
                 failed: Callable[[Exception], None]) -> None:
        self.name = name
        self.interval_s = interval_s
        self._tick = tick
        self._failed = failed
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """Run the next round now instead of at the end of the interval."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            try:
                await self._tick()
            except Exception as exc:
                self._failed(exc)
