"""Closed-loop and open-loop load over any async operation, with honest latency.

Closed loop: ``connections x window`` workers each send, wait, send again; throughput is
what the system sustains. Open loop: requests are *scheduled* at a fixed rate and latency is
measured from the scheduled send time, not the actual one, so when the server stalls the
delay shows up as latency instead of silently lowering the offered rate (coordinated
omission). Both are bounded in count and time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.histogram import Histogram

Operation = Callable[[int], Awaitable[Any]]  # called with a sequence number
Progress = Callable[[int, int], None]


@dataclass
class LoadResult:
    mode: str
    histogram: Histogram = field(default_factory=Histogram)
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0
    offered_per_s: float | None = None
    per_second: list[int] = field(default_factory=list)
    send_lag_us: Histogram = field(default_factory=Histogram)

    @property
    def throughput_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "ok": self.ok, "errors": dict(self.errors),
                "duration_s": round(self.duration_s, 3),
                "throughput_per_s": round(self.throughput_per_s, 1),
                "offered_per_s": self.offered_per_s, "latency_ms": self.histogram.summary_ms(),
                "per_second": self.per_second, "histogram": self.histogram.to_dict()}


def _error_name(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return getattr(code, "name", None) or type(exc).__name__


async def closed_loop(op: Operation, *, workers: int, requests: int, duration_s: float,
                      progress: Progress | None = None) -> LoadResult:
    """``workers`` concurrent loops until ``requests`` are done or ``duration_s`` passes."""
    result = LoadResult("closed")
    counter = iter(range(requests))
    start = time.perf_counter()
    deadline = start + duration_s
    buckets: Counter[int] = Counter()

    async def worker() -> None:
        for seq in counter:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            try:
                await op(seq)
            except Exception as exc:
                result.errors[_error_name(exc)] += 1
                continue
            t1 = time.perf_counter()
            result.histogram.record((t1 - t0) * 1e6)
            result.ok += 1
            buckets[int(t1 - start)] += 1
            if progress is not None and result.ok % 500 == 0:
                progress(result.ok, requests)

    await asyncio.gather(*(worker() for _ in range(workers)))
    result.duration_s = time.perf_counter() - start
    result.per_second = [buckets[i] for i in range(int(result.duration_s) + 1)]
    return result


async def open_loop(op: Operation, *, rate_per_s: float, requests: int, duration_s: float,
                    in_flight_max: int = 100_000, progress: Progress | None = None,
                    clock: Callable[[], float] = time.perf_counter) -> LoadResult:
    """Send request ``i`` at ``start + i / rate`` whatever happened to earlier ones; latency
    is counted from that scheduled time."""
    result = LoadResult("open", offered_per_s=rate_per_s)
    count = min(requests, int(rate_per_s * duration_s))
    start = clock()
    tasks: set[asyncio.Task[None]] = set()
    buckets: Counter[int] = Counter()

    async def one(seq: int, scheduled: float) -> None:
        try:
            await op(seq)
        except Exception as exc:
            result.errors[_error_name(exc)] += 1
            return
        done = clock()
        result.histogram.record((done - scheduled) * 1e6)
        result.ok += 1
        buckets[int(done - start)] += 1
        if progress is not None and result.ok % 500 == 0:
            progress(result.ok, count)

    for seq in range(count):
        scheduled = start + seq / rate_per_s
        wait = scheduled - clock()
        if wait > 0:
            await asyncio.sleep(wait)
        result.send_lag_us.record(max(0.0, clock() - scheduled) * 1e6)
        if len(tasks) >= in_flight_max:
            result.errors["CLIENT_OVERLOAD"] += 1  # bounded: never queue without limit
            continue
        task = asyncio.ensure_future(one(seq, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    result.duration_s = clock() - start
    result.per_second = [buckets[i] for i in range(int(result.duration_s) + 1)]
    return result
