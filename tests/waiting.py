"""Waiting on an observable condition with a bound: the only way tests synchronise.

A test never sleeps "so that X has happened" (on a loaded machine X may not have): it polls
the condition that shows X (a row, a counter, a log line, a connection state) until it holds
or a generous deadline passes, then fails with what it was waiting for. The bounds are
deadlines for a broken build, not expectations of speed: no test asserts how fast anything
was.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

WAIT_S_DEFAULT = 60.0  # long enough for a 2-core machine shared with a CPU hog
POLL_S = 0.02


async def wait_until(condition: Callable[[], T | Awaitable[T]], what: str, *,
                     timeout_s: float = WAIT_S_DEFAULT, poll_s: float = POLL_S) -> T:
    """Return the first truthy value of ``condition()`` (a function or a coroutine
    function), polling every ``poll_s``; raise ``AssertionError`` naming ``what`` when
    ``timeout_s`` passes first (the last value is in the message)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} "
                                 f"(last: {value!r})")
        await asyncio.sleep(poll_s)


def log_contains(path: Path, text: str) -> Callable[[], bool]:
    """A condition: ``text`` appears in the log file at ``path``."""
    def check() -> bool:
        try:
            return text in path.read_text(errors="replace")
        except FileNotFoundError:
            return False
    return check
