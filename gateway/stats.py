"""Plain-number histograms for the hot path, read by ``/metrics`` at scrape time.

Nothing here imports prometheus-client: the storage writer process and the bank node import
this module, and an observation must cost one ``bisect`` and three additions (DESIGN.md §8),
not a lock and a label lookup. ``gateway.metrics`` turns these into Prometheus histograms
when it is scraped. Everything runs on one event loop (or in the one thread that owns the
object), so nothing is locked.
"""

from __future__ import annotations

from bisect import bisect_left

# Durations in microseconds: 50 µs .. 10 s (an fsync'd SQLite commit is ~0.3-0.6 ms here,
# a bank call over loopback ~1 ms, one over a WAN tens of ms, a timed-out one seconds).
DURATION_BUCKETS_US = (50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000,
                       100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000)
# Writes per commit: the group commit's batches (1 .. its 4,000-write ceiling).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Histogram:
    """Counts per bucket (``counts[i]``: observations ``<= bounds[i]`` and above the bound
    before; the last slot is +Inf), their number and their sum, in the unit of ``bounds``."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[int, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0

    def observe(self, value: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self, scale: float = 1.0) -> list[tuple[str, float]]:
        """Prometheus' buckets: (upper bound as text, observations at or below it), the
        bounds divided by ``scale`` (1e6 turns µs into seconds), ending with +Inf."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((repr(bound / scale), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class CommitStats:
    """A group commit's figures: writes per commit (``batches``) and how long each commit
    took (``commit_us``: from its transaction's start to its commit returning, fsync
    included). Kept by the writer that commits (gateway/storage/groupcommit.py for SQLite
    ledgers and bank books, gateway/ledger/postgres.py)."""

    __slots__ = ("batches", "commit_us")

    def __init__(self) -> None:
        self.batches = Histogram(BATCH_BUCKETS)
        self.commit_us = Histogram(DURATION_BUCKETS_US)

    def committed(self, writes: int, elapsed_us: int) -> None:
        self.batches.observe(writes)
        self.commit_us.observe(elapsed_us)


# The hops of a charge's timeline (docs/protocol.md §5.2.1) timed in /metrics, in path order.
# ``client_sent`` is left out: it is the merchant's clock and the merchant's word (any
# ``sent_us`` it likes), not a measurement of this system.
TIMED_HOPS = ("received", "intent_committed", "bank_sent", "bank_node_received",
              "bank_node_committed", "bank_node_answered", "bank_answered", "committed",
              "answered")
CHARGES_AWAITING_MAX = 10_000  # charges committed and not yet answered, remembered at most


class HopStats:
    """Per-hop latency of answered charges: one histogram per step between consecutive
    hops the charge passed (a hop it did not pass is skipped: a charge the fraud screen
    denied steps from ``received`` to ``committed``). A step that comes out negative (the
    bank node's clock behind the hub's) is counted in ``skewed``, not observed.

    Only a charge answered by the hub that ran it is timed: ``awaiting`` marks it when its
    answer is built and ``answered`` times it when sent. A later operation on the charge
    (its ``answered`` hop missing after a restart) or a replay is never timed as the charge.
    """

    __slots__ = ("awaiting", "skewed", "steps")

    def __init__(self) -> None:
        self.steps: dict[tuple[str, str], Histogram] = {}
        self.skewed: dict[tuple[str, str], int] = {}
        self.awaiting: dict[tuple[str, str], dict[str, int]] = {}

    def await_answer(self, key: tuple[str, str], hops_us: dict[str, int]) -> None:
        awaiting = self.awaiting
        awaiting[key] = hops_us
        if len(awaiting) > CHARGES_AWAITING_MAX:  # answers that were never sent (peer gone)
            del awaiting[next(iter(awaiting))]

    def answered(self, key: tuple[str, str], at_us: int) -> None:
        """An answer on ``key``'s order was sent at ``at_us``: if it was the charge's, time
        its steps (about a dozen operations on plain numbers)."""
        hops = self.awaiting.pop(key, None)
        if hops is None:
            return
        previous: str | None = None
        previous_us = 0
        steps = self.steps
        for hop in TIMED_HOPS:
            at = hops.get(hop, at_us if hop == "answered" else None)
            if at is None:
                continue
            if previous is not None:
                step = (previous, hop)
                elapsed = at - previous_us
                if elapsed < 0:
                    self.skewed[step] = self.skewed.get(step, 0) + 1
                else:
                    histogram = steps.get(step)
                    if histogram is None:
                        histogram = steps[step] = Histogram(DURATION_BUCKETS_US)
                    histogram.observe(elapsed)
            previous, previous_us = hop, at
