"""The hub's timers: expiry of unpaid payments, denial of challenges nobody reviewed, and the
resolver that settles bank calls whose answer never came; plus the background work they (and
start-up recovery) spawn, at most one piece per order at a time.

Each tick only reads an index the cache keeps (``TxCache``) and spawns the work; the work
itself takes the order's lock like any request, so it never races a merchant's operation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from gateway.hub.txcache import Key
from gateway.transactions.model import now_ms

log = logging.getLogger("paywire.hub")


class ScheduledWork(Protocol):
    """What the schedulers need of the transaction service."""

    @property
    def unresolved(self) -> set[Key]: ...
    def due_expiries(self, now: int) -> list[Key]: ...
    def due_challenges(self, now: int) -> list[Key]: ...
    async def expire_due(self, key: Key) -> None: ...
    async def deny_unreviewed(self, key: Key) -> None: ...
    async def resolve_key(self, key: Key) -> None: ...
    def busy(self, key: Key) -> bool: ...


class Schedulers:
    def __init__(self, work: ScheduledWork, expiry_check_interval_s: float,
                 recovery_interval_s: float) -> None:
        self.work = work
        self.expiry_check_interval_s = expiry_check_interval_s
        self.recovery_interval_s = recovery_interval_s
        self.stopping = False  # the timers tick no more (draining)
        self.closed = False  # nothing more starts in the background (``cancel_background``)
        self._timers: list[asyncio.TimerHandle] = []
        self._busy: set[Key] = set()
        self.background: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self._arm(self.expiry_check_interval_s, self.expiry_tick)
        self._arm(self.recovery_interval_s, self.resolver_tick)
        self._arm(self.expiry_check_interval_s, self.challenge_tick)

    def stop_timers(self) -> None:
        self.stopping = True
        for t in self._timers:
            t.cancel()

    async def cancel_background(self, timeout_s: float) -> set[asyncio.Task[Any]]:
        """Cancel the background work and wait, at most ``timeout_s``, until it has ended: a
        cancelled piece still releases its order's lock (on a shared ledger, a call to the
        database), which must be done before the ledger closes. Nothing new starts from
        here on (``spawn``, ``keep``); returns what is still running at the bound
        (abandoned: a task that ignores its cancellation must not hold the stop)."""
        self.closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.background:
            tasks = set(self.background)
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            if pending:
                return pending
        return set()

    def _arm(self, interval_s: float, fn: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            if self.stopping:
                return
            fn()
            self._timers.append(loop.call_later(interval_s, tick))

        self._timers.append(loop.call_later(interval_s, tick))

    def spawn(self, key: Key, coro: Coroutine[Any, Any, None]) -> asyncio.Task[Any] | None:
        """Run ``coro`` in the background unless work on ``key`` is already running, or the
        background work was cancelled for the stop (whichever hub runs next does it:
        recovery, or a rescan on a shared ledger)."""
        if key in self._busy or self.closed:
            coro.close()
            return None
        self._busy.add(key)
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._busy.discard(key)
            self.background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.info("background work on %s: %r", key, t.exception())

        task.add_done_callback(done)
        return task

    def keep(self, coro: Coroutine[Any, Any, None]) -> bool:
        """Run ``coro`` in the background, not tied to an order (cancelled at shutdown);
        ``False`` (and ``coro`` not run) once background work was cancelled for the stop."""
        if self.closed:
            coro.close()
            return False
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return True

    def resolve(self, key: Key) -> asyncio.Task[Any] | None:
        return self.spawn(key, self.work.resolve_key(key))

    def expiry_tick(self) -> None:
        for key in self.work.due_expiries(now_ms()):
            self.spawn(key, self.work.expire_due(key))

    def challenge_tick(self) -> None:
        for key in self.work.due_challenges(now_ms()):
            self.spawn(key, self.work.deny_unreviewed(key))

    def resolver_tick(self) -> None:
        """Settle the unresolved orders nobody is working on. An order whose operation is
        still running here (its bank call in flight: an intent is unresolved until its
        result) is that operation's to settle: a task for it would only wait for its lock
        and find it done, one task per charge in flight on every tick under load."""
        work = self.work
        for key in list(work.unresolved):
            if not work.busy(key):
                self.resolve(key)
