"""Lab 8's checks: the student's open-loop load generator (``labwork/lab08/loadgen.py``).

In the order a student fixes them:

- ``percentile`` against a reference (nearest rank, as the skeleton defines it) on many
  random samples, with its edge cases;
- ``open_loop`` with a ``send`` of the check's own that needs no network: one result per
  request in index order, intended times exactly ``start + i / rate``, failures recorded,
  and request 1 sent while request 0 is still waiting (an open loop does not wait);
- against the sandbox's hub: 200 real charges at 100/s, all answered, on schedule;
- a stall: the same generator through a chaos proxy (:class:`gateway.chaos.ChaosProxy`,
  started by the check, so the shared sandbox is untouched) that holds the hub's answers
  back for ``STALL_S`` while a quarter of the requests are sent. Measured from the intended
  times, those requests waited the stall and the p99 shows it; a closed loop (or latency
  from the actual send after a blocked loop) would show one slow request and hide the rest.

No check asserts how fast anything is: only counts, the schedule's arithmetic, and that a
stall the check itself caused is seen.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

from gateway.chaos import ChaosProxy
from gateway.labs.checks import LabContext, Result, Sandbox

TITLE = "Load and latency: an open-loop generator, percentiles and coordinated omission"
FILES = ("loadgen.py",)
NEEDS_SANDBOX = True

HANDOUT = "docs/labs/08-load-and-latency.md"
APPROVED_CARD = "4811111111111114"  # the sandbox's "approved" card, unless it says otherwise
AMOUNT_IDR = 10_000
SANDBOX_RATE_PER_S, SANDBOX_COUNT = 100.0, 200
STALL_RATE_PER_S, STALL_COUNT = 50.0, 100
STALL_FIRST, STALL_END = 25, 50  # requests 25..49 are sent during the stall: checked
# The stall ends when request 60 is sent, not 50: an answer to request 49 that reaches the
# proxy up to 0.2 s after it was sent (a loaded machine) is still held back.
STALL_HEAL = 60
STALL_S = 0.8  # how long the proxy holds each answer back during the stall
STALLED_SHARE_MIN = 0.8  # of the requests sent during the stall, this share must show it
SCHEDULE_SLACK_S = 1e-6  # float rounding in start + i / rate
RUN_S_MAX = 60.0  # one generator run (nominally 2 s), whatever the student's code does


def reference_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def _call(fn: Callable[[], Any]) -> tuple[Any, str | None]:
    try:
        return fn(), None
    except NotImplementedError as exc:
        return None, f"not written yet: {exc}"
    except Exception as exc:  # the student's code may raise anything
        return None, f"raised {type(exc).__name__}: {exc}"


def check_percentile(mod: ModuleType) -> Iterator[Result]:
    rng = random.Random(8)
    problems: list[str] = []
    fixed: list[tuple[list[float], float]] = [
        ([10.0, 20.0, 30.0, 40.0], q) for q in (0, 25, 50, 51, 75, 99, 100)]
    fixed += [([5.0], 0), ([5.0], 99.9), ([3.0, 1.0, 2.0], 50), ([1.0, 1.0, 1.0, 9.0], 75)]
    randoms = []
    for _ in range(400):
        n = rng.choice([1, 2, 3, 7, 10, 99, 100, 101, 999, 1000, rng.randrange(1, 3000)])
        kind = rng.random()
        values = ([float(rng.randrange(20)) for _ in range(n)] if kind < 0.3 else
                  [rng.expovariate(1 / 5.0) for _ in range(n)])
        q = rng.choice([0, 0.1, 1, 10, 50, 90, 99, 99.9, 99.99, 100, rng.uniform(0, 100)])
        randoms.append((values, q))
    for values, q in fixed + randoms:
        copy = list(values)
        got, error = _call(lambda v=copy, q=q: mod.percentile(v, q))  # type: ignore[misc]
        want = reference_percentile(values, q)
        if error is not None:
            problems.append(f"percentile(<{len(values)} values>, {q}) {error}")
            break
        if got != want:
            shown = values if len(values) <= 8 else f"<{len(values)} values>"
            problems.append(f"percentile({shown}, {q}): expected {want}, got {got!r}")
        elif copy != values:
            problems.append("percentile changed the list it was given: sort a copy")
        if len(problems) >= 5:
            break
    if not problems:
        for args, label in (([[], 50], "no values"), ([[1.0, 2.0], 101], "q = 101"),
                            ([[1.0, 2.0], -1], "q = -1")):
            got, error = _call(lambda a=args: mod.percentile(*a))  # type: ignore[misc]
            if error is None or "ValueError" not in error:
                problems.append(f"percentile with {label}: expected ValueError, "
                                f"got {error or repr(got)}")
    yield Result("percentile: nearest rank, as the skeleton defines it, on 411 samples",
                 not problems, "\n".join(problems) + "\nthe definition is in percentile's "
                 f"docstring; see {HANDOUT} (Background: percentiles)" if problems else "")


def _schedule_problems(samples: Any, count: int, rate: float) -> list[str]:
    """One Sample per request, in index order, intended exactly on the schedule."""
    if not isinstance(samples, list) or len(samples) != count:
        return [f"expected a list of {count} samples, got "
                f"{len(samples) if isinstance(samples, list) else repr(samples)[:80]}"]
    problems = []
    try:
        if [s.number for s in samples] != list(range(count)):
            problems.append("samples are not one per number 0..count-1 in order")
        start = samples[0].intended_s
        late = [s.number for s in samples
                if abs(s.intended_s - (start + s.number / rate)) > SCHEDULE_SLACK_S]
        if late:
            problems.append(f"intended_s of requests {late[:5]} is not start + i / rate "
                            f"(request {late[0]}: {samples[late[0]].intended_s - start:.6f} s "
                            f"after start, expected {late[0] / rate:.6f})")
        early = [s.number for s in samples if s.sent_s < s.intended_s - 1e-3]
        if early:
            problems.append(f"requests {early[:5]} were sent before their intended time")
        backwards = [s.number for s in samples if s.done_s < s.sent_s]
        if backwards:
            problems.append(f"requests {backwards[:5]} finished before they were sent")
    except (AttributeError, TypeError, IndexError) as exc:
        problems.append(f"the samples are not Sample objects ({type(exc).__name__}: {exc})")
    return problems


async def _run_student(mod: ModuleType, send: Callable[[int], Awaitable[bool]], rate: float,
                       count: int) -> tuple[Any, str | None]:
    try:
        return await asyncio.wait_for(mod.open_loop(send, rate, count), RUN_S_MAX), None
    except NotImplementedError as exc:
        return None, f"not written yet: {exc}"
    except TimeoutError:
        return None, f"did not return within {RUN_S_MAX:g} s"
    except Exception as exc:  # the student's code may raise anything
        return None, f"raised {type(exc).__name__}: {exc}"


async def check_open_loop_offline(mod: ModuleType) -> Result:
    name = "open_loop: on schedule, never waits for earlier answers, records failures"
    rate, count = 200.0, 40
    slow_s = 2.0

    async def send(i: int) -> bool:
        if i == 0:
            await asyncio.sleep(slow_s)  # the check's slow request (not synchronisation)
        if i == 5:
            raise RuntimeError("the check's failing request")
        return i != 6

    samples, error = await _run_student(mod, send, rate, count)
    if error is not None:
        return Result(name, False, f"open_loop(send, {rate:g}, {count}) {error}; see "
                      f"{HANDOUT} (Steps)")
    problems = _schedule_problems(samples, count, rate)
    if not problems:
        if samples[1].sent_s >= samples[0].done_s:
            problems.append(f"request 1 was sent only after request 0 was answered (request "
                            f"0 takes {slow_s:g} s): that is a closed loop; start each send "
                            f"in its own task")
        oks = [s.ok for s in samples]
        wanted = [i not in (5, 6) for i in range(count)]
        if oks != wanted:
            problems.append(f"ok should be False for request 5 (send raised) and 6 (send "
                            f"returned False) only; got False for "
                            f"{[i for i, ok in enumerate(oks) if not ok]}")
    return Result(name, not problems,
                  "\n".join(problems) + f"\nsee {HANDOUT} (Steps)" if problems else "")


@asynccontextmanager
async def charger(sandbox: Sandbox, hub: tuple[str, int],
                  before_send: Callable[[int], None] | None = None
                  ) -> AsyncIterator[Callable[[int], Awaitable[bool]]]:
    """A ``send`` charging the sandbox's approved card over one connection to ``hub``."""
    from gateway.client import Card, RequestError, connect

    env = sandbox.env
    number = APPROVED_CARD
    for card in sandbox.info.get("test_cards", []):
        if isinstance(card, dict) and card.get("name") == "approved":
            number = str(card.get("number", APPROVED_CARD))
    run = secrets.token_hex(4)
    async with connect(hub[0], hub[1], merchant_id=env["PAYWIRE_MERCHANT"],
                       server_key=env["PAYWIRE_SERVER_KEY"],
                       certs_dir=env["PAYWIRE_CERTS"]) as client:
        async def send(i: int) -> bool:
            if before_send is not None:
                before_send(i)
            try:
                tx = await client.charge(f"lab08-check-{run}-{i}", AMOUNT_IDR,
                                         card=Card(number, 12, 2030, "123"))
            except RequestError:
                return False
            return tx.transaction_status == "capture"

        yield send


def hub_address(sandbox: Sandbox) -> tuple[str, int]:
    host, _, port = sandbox.env["PAYWIRE_HUB"].rpartition(":")
    return host, int(port)


async def check_sandbox_run(mod: ModuleType, sandbox: Sandbox) -> Result:
    name = (f"against the sandbox: {SANDBOX_COUNT} charges at {SANDBOX_RATE_PER_S:g}/s, "
            f"all answered, on schedule")
    async with charger(sandbox, hub_address(sandbox)) as send:
        samples, error = await _run_student(mod, send, SANDBOX_RATE_PER_S, SANDBOX_COUNT)
    if error is not None:
        return Result(name, False, f"open_loop {error}; see {HANDOUT} (Steps)")
    problems = _schedule_problems(samples, SANDBOX_COUNT, SANDBOX_RATE_PER_S)
    if not problems:
        failed = [s.number for s in samples if not s.ok]
        if failed:
            problems.append(f"{len(failed)} requests were not answered as captured (first: "
                            f"{failed[:5]}); is the sandbox up (`paywire sandbox`)?")
    return Result(name, not problems,
                  "\n".join(problems) + f"\nsee {HANDOUT} (Steps)" if problems else "")


async def check_stall(mod: ModuleType, sandbox: Sandbox) -> Result:
    name = (f"a {STALL_S:g} s stall (chaos proxy) shows in the latencies of the requests "
            f"sent during it, and in your p99")
    proxy = await ChaosProxy(*hub_address(sandbox)).start()

    def fault(i: int) -> None:
        # Driven by the schedule itself: the stall starts when request STALL_FIRST is sent
        # and ends when request STALL_HEAL is.
        if i == STALL_FIRST:
            proxy.set("down", latency_ms=STALL_S * 1000)
        elif i == STALL_HEAL:
            proxy.heal()

    try:
        async with charger(sandbox, ("127.0.0.1", proxy.port), fault) as send:
            samples, error = await _run_student(mod, send, STALL_RATE_PER_S, STALL_COUNT)
    finally:
        proxy.heal()
        await proxy.stop()
    if error is not None:
        return Result(name, False, f"open_loop {error}; see {HANDOUT} (Steps)")
    problems = _schedule_problems(samples, STALL_COUNT, STALL_RATE_PER_S)
    if problems:
        return Result(name, False, "\n".join(problems))
    during = samples[STALL_FIRST:STALL_END]
    waited = [s for s in during if s.ok and s.latency_s >= STALL_S * 0.875]
    latencies = [s.latency_s for s in samples if s.ok]
    p99, error = _call(lambda: mod.percentile(latencies, 99))
    shown = ", ".join(f"{s.latency_s * 1000:.0f}" for s in during[:10])
    if len(waited) < STALLED_SHARE_MIN * len(during):
        problems.append(
            f"the proxy held every answer back {STALL_S * 1000:.0f} ms while requests "
            f"{STALL_FIRST}..{STALL_END - 1} were sent, but only {len(waited)} of them show "
            f"a latency of {STALL_S * 875:.0f} ms or more (latency_s of the first ten, ms: "
            f"{shown}). Measure from intended_s, and send on schedule: a loop that waits "
            f"for each answer hides the stall (coordinated omission)")
    if error is not None:
        problems.append(f"percentile(latencies, 99) {error}")
    elif not isinstance(p99, float | int) or p99 < STALL_S * 0.875:
        problems.append(f"your percentile(latencies, 99) is {p99!r} s: the stall should make "
                        f"it at least {STALL_S * 0.875:g} s")
    return Result(name, not problems, "\n".join(problems) +
                  f"\nsee {HANDOUT} (Background: coordinated omission)" if problems else "")


async def online(mod: ModuleType, sandbox: Sandbox) -> list[Result]:
    results = [await check_open_loop_offline(mod)]
    if not results[0].passed:
        return results  # the sandbox runs would fail the same way, slower
    results.append(await check_sandbox_run(mod, sandbox))
    results.append(await check_stall(mod, sandbox))
    return results


def check(ctx: LabContext) -> Iterator[Result]:
    try:
        mod = ctx.load_module("loadgen.py")
    except Exception as exc:  # a syntax error or a failing import in the student's file
        yield Result("loadgen.py imports", False,
                     f"importing {ctx.work / 'loadgen.py'} raised {type(exc).__name__}: {exc}")
        return
    yield from check_percentile(mod)
    assert ctx.sandbox is not None  # NEEDS_SANDBOX: the frame checked
    yield from asyncio.run(online(mod, ctx.sandbox))


# --- python -m gateway.labs.lab08: the same stall, open loop against closed loop -------------

SENT_SLACK_S = 0.001
STALL_WINDOW_S = 0.5  # how long the proxy stalls, from when request STALL_FIRST is sent


async def compare(mod: ModuleType, sandbox: Sandbox) -> None:
    """The student's ``open_loop`` and the skeleton's ``closed_loop``, each through its own
    chaos proxy that holds the hub's answers back ``STALL_S`` for ``STALL_WINDOW_S`` from the
    moment request ``STALL_FIRST`` is sent, summarised with the student's ``percentile``."""
    loop = asyncio.get_running_loop()
    print(f"each run goes through a chaos proxy that holds the hub's answers back "
          f"{STALL_S * 1000:.0f} ms for {STALL_WINDOW_S:g} s, from when request {STALL_FIRST} "
          f"is sent", flush=True)
    for label in ("open", "closed"):
        proxy = await ChaosProxy(*hub_address(sandbox)).start()
        window: list[float] = []  # start and end of the stall, time.monotonic()

        def heal(proxy: ChaosProxy = proxy, window: list[float] = window) -> None:
            proxy.heal()
            window.append(loop.time())

        def fault(i: int, proxy: ChaosProxy = proxy, window: list[float] = window) -> None:
            if i == STALL_FIRST:
                proxy.set("down", latency_ms=STALL_S * 1000)
                window.append(loop.time())
                # Scheduled from the stall's start: a stall of known length, not a sync point.
                loop.call_later(STALL_WINDOW_S, heal)

        try:
            async with charger(sandbox, ("127.0.0.1", proxy.port), fault) as send:
                samples = await (mod.open_loop(send, STALL_RATE_PER_S, STALL_COUNT)
                                 if label == "open" else mod.closed_loop(send, STALL_COUNT))
        finally:
            proxy.heal()
            await proxy.stop()
        latencies = [s.latency_s * 1000 for s in samples if s.ok]
        # Request STALL_FIRST records its sent_s just before its send starts the stall.
        sent_during = sum(1 for s in samples if len(window) == 2
                          and window[0] - SENT_SLACK_S <= s.sent_s < window[1])
        p = {q: mod.percentile(latencies, q) for q in (50, 99, 99.9)}
        what = (f"open loop, {STALL_RATE_PER_S:g}/s" if label == "open"
                else "closed loop, one at a time")
        print(f"{what:>27}: {len(latencies)} answered, {sent_during:>2} sent during the stall; "
              f"p50 {p[50]:.1f} ms  p99 {p[99]:.1f} ms  p99.9 {p[99.9]:.1f} ms  "
              f"max {max(latencies):.1f} ms", flush=True)


def main() -> int:
    import argparse
    import os
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m gateway.labs.lab08",
        description="the same stall measured by your open loop and by a closed loop")
    parser.add_argument("--dir", default=os.environ.get("PAYWIRE_LABWORK", "labwork"))
    parser.add_argument("--sandbox", default=os.environ.get("PAYWIRE_SANDBOX", "sandbox"))
    ns = parser.parse_args()
    sandbox = Sandbox.load(Path(ns.sandbox))
    if sandbox is None:
        print(f"no running sandbox in {ns.sandbox}: start `paywire sandbox` first")
        return 1
    try:
        mod = LabContext(8, Path(ns.dir) / "lab08").load_module("loadgen.py")
        asyncio.run(compare(mod, sandbox))
    except Exception as exc:  # the student's code: say what, not a traceback
        print(f"your load generator failed: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
