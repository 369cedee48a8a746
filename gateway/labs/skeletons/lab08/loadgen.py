"""Lab 8: an open-loop load generator that does not lie about latency.

A **closed loop** sends a request, waits for the answer, sends the next: when the server
stalls for a second, the generator stalls with it, sends nothing during that second, and
records *one* slow request. The users who would have arrived during that second (a shop
does not stop getting customers because the hub is slow) are never measured: their delay is
silently omitted, and the percentiles look fine. That is **coordinated omission** (Gil
Tene's name for it): the generator coordinates with the system it measures.

An **open loop** decides the send times in advance, ``intended[i] = start + i / rate``,
sends request ``i`` at its time whatever happened to earlier ones, and measures latency
from the *intended* time. A stall then shows as what it is for users: every request
scheduled during it waits.

You write ``percentile`` and ``open_loop``; the rest is given. Run it against the sandbox:
``python loadgen.py --rate 100 --count 200`` (``--closed`` for the closed loop,
``--rates 50,100,200,400`` for latency against offered load).
"""

# The skeleton imports what your code will use: until you write it, unused.
# ruff: noqa: F401

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import NamedTuple

# Sends request number ``index``; True when it was answered as expected, False otherwise.
Send = Callable[[int], Awaitable[bool]]

IN_FLIGHT_MAX = 1_000  # requests outstanding at once; past it a request fails at once
REQUEST_TIMEOUT_S = 30.0  # a request not answered within this is a failure
APPROVED_CARD = "4811111111111114"  # the sandbox's "approved" test card (README's card)
AMOUNT_IDR = 10_000


class Sample(NamedTuple):
    """One request. Times are ``time.monotonic()`` seconds."""

    number: int  # the request's place in the schedule, 0-based
    intended_s: float  # when the schedule said to send it
    sent_s: float  # when ``send`` was actually called
    done_s: float  # when ``send`` returned (or failed)
    ok: bool

    @property
    def latency_s(self) -> float:
        """What a user scheduled at ``intended_s`` waited: the honest latency."""
        return self.done_s - self.intended_s

    @property
    def service_s(self) -> float:
        """From the actual send: what a closed loop (and most naive benchmarks) records."""
        return self.done_s - self.sent_s


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (``0 <= q <= 100``) by the **nearest-rank** definition.

    Sort the ``n`` values; the answer is the one at rank ``max(1, ceil(q / 100 * n))``
    (1-based), i.e. the smallest value such that at least ``q`` % of the values are less
    than or equal to it. No interpolation: the answer is always one of the values. ``q = 0``
    gives the minimum, ``q = 100`` the maximum. Raises ``ValueError`` for no values or a
    ``q`` outside ``[0, 100]``.
    """
    # Your code here: check the arguments, sort a copy, compute the rank, return the value.
    # Try it by hand first: for [10, 20, 30, 40], q=50 gives 20 and q=51 gives 30.
    raise NotImplementedError(
        "percentile(): nearest rank, ordered[max(1, ceil(q / 100 * n)) - 1] with the checks "
        "in the docstring (ValueError for no values or q outside [0, 100])")


async def open_loop(send: Send, rate_per_s: float, count: int, *,
                    in_flight_max: int = IN_FLIGHT_MAX) -> list[Sample]:
    """Send ``count`` requests at ``rate_per_s``, on a schedule fixed in advance.

    ``start`` is ``time.monotonic()`` when called; request ``i`` is intended at
    ``start + i / rate_per_s`` and started then (or as soon as possible after, if the loop
    is late), **without waiting for earlier requests**: each runs in its own task. Returns
    one :class:`Sample` per request, in index order, once all have finished. A request that
    raises or times out is ``ok=False``; so is one that would exceed ``in_flight_max``
    outstanding requests (a generator must be bounded too).
    """
    # Your code here. A plan:
    # - start = time.monotonic(); for i in range(count): intended = start + i / rate_per_s;
    #   sleep until then (asyncio.sleep of what is left; not at all if already late);
    # - start a task (asyncio.create_task) that records sent = time.monotonic(), awaits
    #   send(i) under asyncio.wait_for(..., REQUEST_TIMEOUT_S), and stores
    #   Sample(i, intended, sent, time.monotonic(), ok) -- ok False if it raised;
    # - keep at most in_flight_max tasks outstanding (asyncio.Semaphore; when full, record
    #   the request as failed at once rather than wait: waiting would close the loop);
    # - after the loop, await every task (asyncio.gather) and return the samples by index.
    # Do NOT await send(i) in the loop itself: that is the closed loop below.
    raise NotImplementedError(
        "open_loop(): schedule request i at start + i / rate, run each in its own task, "
        "measure from the intended time (see the plan above and the handout's Background)")


# --- given: the closed loop, the summary and the sandbox sender ------------------------------

async def closed_loop(send: Send, count: int) -> list[Sample]:
    """One request at a time, each sent when the previous one is answered: the intended
    time *is* the send time, so a stall delays the schedule instead of showing up."""
    samples = []
    for i in range(count):
        sent = time.monotonic()
        try:
            ok = bool(await asyncio.wait_for(send(i), REQUEST_TIMEOUT_S))
        except Exception:
            ok = False
        samples.append(Sample(i, sent, sent, time.monotonic(), ok))
    return samples


def summary(samples: Sequence[Sample]) -> dict[str, float]:
    """p50, p99 and p99.9 of the latencies in milliseconds (from the intended times), the
    rate achieved, and the number of failures."""
    latencies = [s.latency_s * 1000 for s in samples if s.ok]
    span = max(s.done_s for s in samples) - min(s.intended_s for s in samples)
    out = {"ok": float(len(latencies)), "failed": float(len(samples) - len(latencies)),
           "achieved_per_s": len(latencies) / span if span > 0 else 0.0}
    if latencies:
        out |= {"p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
                "p99.9_ms": percentile(latencies, 99.9), "max_ms": max(latencies)}
    return out


@asynccontextmanager
async def sandbox_sender(env: dict[str, str] | None = None, *,
                         hub: str | None = None) -> AsyncIterator[Send]:
    """A ``send`` that charges the sandbox's approved card, one new order per request, over
    one TLS connection to the hub (``$PAYWIRE_HUB``, or ``hub`` as HOST:PORT)."""
    from gateway.client import Card, RequestError, connect

    env = dict(os.environ if env is None else env)
    host, _, port = (hub or env["PAYWIRE_HUB"]).rpartition(":")
    run = secrets.token_hex(4)
    card = Card(env.get("PAYWIRE_CARD", APPROVED_CARD), 12, 2030, "123")
    async with connect(host, int(port), merchant_id=env["PAYWIRE_MERCHANT"],
                       server_key=env["PAYWIRE_SERVER_KEY"],
                       certs_dir=env["PAYWIRE_CERTS"]) as client:
        async def send(i: int) -> bool:
            try:
                tx = await client.charge(f"lab08-{run}-{i}", AMOUNT_IDR, card=card)
            except RequestError:
                return False
            return tx.transaction_status == "capture"

        yield send


async def run(rates: list[float], count: int, closed: bool, hub: str | None = None) -> None:
    print(f"{'offered/s':>10} {'achieved/s':>10} {'ok':>5} {'failed':>6} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8}")
    async with sandbox_sender(hub=hub) as send:
        for rate in rates:
            samples = await (closed_loop(send, count) if closed
                             else open_loop(send, rate, count))
            s = summary(samples)
            offered = "closed" if closed else f"{rate:g}"
            print(f"{offered:>10} {s['achieved_per_s']:>10.1f} {s['ok']:>5.0f} "
                  f"{s['failed']:>6.0f} {s.get('p50_ms', 0):>8.2f} {s.get('p99_ms', 0):>8.2f} "
                  f"{s.get('p99.9_ms', 0):>9.2f} {s.get('max_ms', 0):>8.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Lab 8's load generator (sandbox charges)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--rates", help="comma-separated rates, one run each (e.g. 50,100,200)")
    parser.add_argument("--count", type=int, default=200, help="requests per run")
    parser.add_argument("--closed", action="store_true",
                        help="closed loop: one at a time, each after the previous answer")
    parser.add_argument("--hub", help="HOST:PORT to send to instead of $PAYWIRE_HUB (a chaos "
                        "proxy in front of the hub, say)")
    ns = parser.parse_args()
    rates = [float(r) for r in ns.rates.split(",")] if ns.rates else [ns.rate]
    if ns.count < 1 or any(r <= 0 for r in rates):
        parser.error("--count and the rates must be positive")
    asyncio.run(run(rates, ns.count, ns.closed, ns.hub))


if __name__ == "__main__":
    main()
