"""The hub's Prometheus metrics, served as ``GET /metrics`` on the health port.

Cheap on the hot path (docs DESIGN.md §8): a request adds to plain Python ints and dicts
here (one dict increment, one ``bisect`` into the latency buckets); prometheus-client's
objects, with their locks, are never touched per request. At scrape time a custom
``Collector`` reads these figures and the hub's live state (sessions, in-flight requests)
and builds the metric families. Everything runs on the hub's one event loop, so the plain
counters need no lock either.

The other figures are kept where they happen, as plain numbers too, and read here at scrape
time: per-hop latencies of charges (``Runner.hops``, gateway/stats.py), bank sends per node
(``BankPool.sends``), the ledger's group commits (``stats`` of the ledger), webhook
deliveries (``WebhookDispatcher.results``). Two gauges are read when scraped: unresolved
intents (the hub's in-memory index of them) and the outbox backlog, a count over the
pending rows' index, run off the loop (SQLite's outbox reader thread, a PostgreSQL pool
connection) and bounded by ``BACKLOG_TIMEOUT_S``.

A bank node's figures (``BankMetrics``) are served the same way on its own health port.
docs/operations.md lists every metric.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.health import Reply, Route
from gateway.stats import CommitStats, Histogram, HopStats
from gateway.transactions.model import now_us

log = logging.getLogger("paywire.metrics")

# Upper bounds of the end-to-end latency buckets, in microseconds (0.25 ms .. 10 s): from a
# status answered from the cache to a bank call that waited out its retries.
LATENCY_BUCKETS_US = (250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
                      250_000, 500_000, 1_000_000, 2_500_000, 10_000_000)
OPERATION_UNKNOWN = "unknown"  # refused before its envelope was decoded (rate limit, bound)
BACKLOG_TIMEOUT_S = 5.0  # the outbox count at scrape time; past it the gauge is left out
US_PER_S = 1e6


class BankSends(Protocol):
    """What /metrics reads of a ``BankPool`` (gateway/hub/banklink.py)."""

    sends: dict[tuple[str, str, str], int]
    send_us: dict[str, Histogram]


class Deliveries(Protocol):
    """What /metrics reads of a ``WebhookDispatcher`` (gateway/webhooks/dispatcher.py)."""

    results: dict[str, int]
    dead_lettered: int


class HubMetrics:
    """The figures a hub keeps for ``/metrics``; ``live`` gives the gauges read at scrape
    time (open sessions, requests in flight)."""

    def __init__(self, live: Callable[[], dict[str, int]] | None = None) -> None:
        self.live = live
        # Read at scrape time: (bank, node, up, breaker open, failures in a row) per node.
        self.banks: Callable[[], list[tuple[str, str, bool, bool, int]]] | None = None
        # (operation, outcome) -> answered requests; outcome is the answer's status_code
        # ("200", "202" for a decline, ...) or, for an error response, the ErrorCode's name.
        self.requests: dict[tuple[str, str], int] = {}
        # operation -> [count per bucket (+ one for +Inf)], and the sum of latencies in µs.
        self.latency_buckets: dict[str, list[int]] = {}
        self.latency_sum_us: dict[str, int] = {}
        self.connections_opened = 0
        self.connections_closed = 0
        self.handshakes_refused: dict[str, int] = {}  # ErrorCode name -> count
        self.rate_limited = 0
        self.backpressure = 0  # requests refused at the connection's in-flight bound
        # Read at scrape time, set by the hub (``Hub.__init__``: ``attach``).
        self.hops: HopStats | None = None
        self.pools: Mapping[str, BankSends] = {}
        self.ledger_stats: CommitStats | None = None
        self.webhooks: Deliveries | None = None
        self.unresolved: Callable[[], int] | None = None
        self.backlog: Callable[[], Awaitable[int]] | None = None
        self.outbox_backlog: int | None = None  # counted by the last scrape (None: failed)

    def attach(self, *, hops: HopStats, pools: Mapping[str, BankSends],
               ledger_stats: CommitStats | None, webhooks: Deliveries,
               unresolved: Callable[[], int],
               backlog: Callable[[], Awaitable[int]] | None) -> None:
        """Give the scrape the hub's other figures (each kept where it happens)."""
        self.hops = hops
        self.pools = pools
        self.ledger_stats = ledger_stats
        self.webhooks = webhooks
        self.unresolved = unresolved
        self.backlog = backlog

    def answered(self, op: str, outcome: str, received_us: int | None) -> int | None:
        """One answer sent (hot path: two dict updates and a bisect); its latency in µs."""
        key = (op, outcome)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if received_us is None:
            return None
        elapsed = now_us() - received_us
        buckets = self.latency_buckets.get(op)
        if buckets is None:
            buckets = self.latency_buckets[op] = [0] * (len(LATENCY_BUCKETS_US) + 1)
            self.latency_sum_us[op] = 0
        buckets[bisect_left(LATENCY_BUCKETS_US, elapsed)] += 1
        self.latency_sum_us[op] += elapsed
        return elapsed

    def handshake_refused(self, code: str) -> None:
        self.handshakes_refused[code] = self.handshakes_refused.get(code, 0) + 1

    # --- scrape time ---------------------------------------------------------------------
    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_HubCollector(self))
        return registry

    async def refresh(self) -> None:
        """What is counted per scrape: the outbox backlog (off the loop, bounded)."""
        if self.backlog is None:
            return
        try:
            self.outbox_backlog = await asyncio.wait_for(self.backlog(), BACKLOG_TIMEOUT_S)
        except Exception as exc:  # LedgerError, TimeoutError: the gauge is left out
            log.warning("metrics: outbox backlog not counted: %s", exc)
            self.outbox_backlog = None

    def route(self) -> Route:
        """The ``/metrics`` route for ``HealthServer.add_route``."""
        registry = self.registry()

        async def scrape() -> Reply:
            await self.refresh()
            return Reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)

        return scrape


class _HubCollector(Collector):
    def __init__(self, m: HubMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        requests = CounterMetricFamily(
            "paywire_requests", "Requests answered, by operation and outcome code",
            labels=["operation", "outcome"])
        for (op, outcome), n in sorted(m.requests.items()):
            requests.add_metric([op, outcome], n)
        yield requests
        latency = HistogramMetricFamily(
            "paywire_request_latency_seconds",
            "Time from a request's frame read to its answer queued, by operation",
            labels=["operation"])
        for op, counts in sorted(m.latency_buckets.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound_us, n in zip(LATENCY_BUCKETS_US, counts, strict=False):
                cumulative += n
                buckets.append((repr(bound_us / 1e6), cumulative))
            cumulative += counts[-1]
            buckets.append(("+Inf", cumulative))
            latency.add_metric([op], buckets, m.latency_sum_us[op] / 1e6)
        yield latency
        yield CounterMetricFamily("paywire_connections_opened",
                                  "Merchant connections accepted", value=m.connections_opened)
        yield CounterMetricFamily("paywire_connections_closed",
                                  "Merchant connections closed", value=m.connections_closed)
        refused = CounterMetricFamily("paywire_handshakes_refused",
                                      "Merchant connections refused before or at the handshake",
                                      labels=["code"])
        for code, n in sorted(m.handshakes_refused.items()):
            refused.add_metric([code], n)
        yield refused
        yield CounterMetricFamily("paywire_rate_limited",
                                  "Requests refused by the merchant's rate limit",
                                  value=m.rate_limited)
        yield CounterMetricFamily("paywire_backpressure",
                                  "Requests refused at the connection's in-flight bound",
                                  value=m.backpressure)
        up = GaugeMetricFamily("paywire_bank_node_up",
                               "1 while the hub's link to the bank node is up and usable",
                               labels=["bank", "node"])
        breaker = GaugeMetricFamily("paywire_bank_breaker_open",
                                    "1 while the node's circuit breaker is open",
                                    labels=["bank", "node"])
        failures = GaugeMetricFamily("paywire_bank_breaker_failures",
                                     "Failed calls in a row to the node", labels=["bank", "node"])
        for bank, node, is_up, is_open, n in (m.banks() if m.banks else []):
            up.add_metric([bank, node], 1.0 if is_up else 0.0)
            breaker.add_metric([bank, node], 1.0 if is_open else 0.0)
            failures.add_metric([bank, node], n)
        yield up
        yield breaker
        yield failures
        for name, value in sorted((m.live() if m.live else {}).items()):
            yield GaugeMetricFamily(f"paywire_{name}", f"Current {name.replace('_', ' ')}",
                                    value=value)
        yield from self._hops()
        yield from self._bank_calls()
        if m.ledger_stats is not None:
            yield from commit_families("paywire_ledger", "the ledger's", m.ledger_stats)
        yield from self._webhooks()

    def _hops(self) -> Iterator[Metric]:
        hops = self.m.hops
        if hops is None:
            return
        yield histogram_family(
            "paywire_hop_seconds", "Answered charges: time between consecutive hops of the "
            "charge's timeline (docs/protocol.md 5.2.1), by the hops it went from and to",
            ["from", "to"], ((list(k), h) for k, h in sorted(hops.steps.items())), US_PER_S)
        skewed = CounterMetricFamily(
            "paywire_hop_skewed", "Steps between hops that came out negative (another "
            "process's clock behind the hub's), left out of paywire_hop_seconds",
            labels=["from", "to"])
        for (a, b), n in sorted(hops.skewed.items()):
            skewed.add_metric([a, b], n)
        yield skewed

    def _bank_calls(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "paywire_bank_calls", "Bank calls sent, one per node tried, by bank, node, "
            "operation and outcome (ok, or the error: TIMEOUT, LINK_LOST, BANK_UNAVAILABLE, "
            "...)", labels=["bank", "node", "op", "outcome"])
        latency: list[tuple[list[str], Histogram]] = []
        for bank, pool in sorted(self.m.pools.items()):
            for (node, op, outcome), n in sorted(pool.sends.items()):
                calls.add_metric([bank, node, op, outcome], n)
            latency.extend(([bank, node], h) for node, h in sorted(pool.send_us.items()))
        yield calls
        yield histogram_family(
            "paywire_bank_call_seconds", "Bank calls: time from a send to its answer (or "
            "its failure), by bank and node", ["bank", "node"], latency, US_PER_S)

    def _webhooks(self) -> Iterator[Metric]:
        m = self.m
        if m.webhooks is not None:
            deliveries = CounterMetricFamily(
                "paywire_webhook_deliveries", "Webhook delivery attempts by result: delivered "
                "(2xx), server (5xx), client (4xx, 3xx), network (no answer), refused (URL "
                "not allowed)", labels=["result"])
            for result, n in sorted(m.webhooks.results.items()):
                deliveries.add_metric([result], n)
            yield deliveries
            yield CounterMetricFamily("paywire_webhooks_dead_lettered",
                                      "Webhooks given up on (dead-lettered)",
                                      value=m.webhooks.dead_lettered)
        if m.outbox_backlog is not None:
            yield GaugeMetricFamily("paywire_outbox_backlog", "Webhooks not delivered yet "
                                    "(due or waiting for a retry; dead ones excluded)",
                                    value=m.outbox_backlog)
        if m.unresolved is not None:
            yield GaugeMetricFamily("paywire_unresolved_intents", "Transactions with a bank "
                                    "call whose answer is not recorded: in flight, or left "
                                    "for the resolver", value=m.unresolved())


def histogram_family(name: str, documentation: str, labels: list[str],
                     items: Iterable[tuple[list[str], Histogram]],
                     scale: float = 1.0) -> HistogramMetricFamily:
    """A Prometheus histogram family from plain ``Histogram`` objects, one per label set;
    ``scale`` divides the bounds and the sum (1e6: µs into seconds)."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, h in items:
        family.add_metric(values, h.cumulative(scale), h.sum / scale)
    return family


def commit_families(prefix: str, whose: str, stats: CommitStats) -> Iterator[Metric]:
    """A group commit's two histograms: writes per batch and commit time."""
    yield histogram_family(f"{prefix}_batch_writes",
                           f"Writes committed together by {whose} group commit, per batch",
                           [], [([], stats.batches)])
    yield histogram_family(f"{prefix}_commit_seconds",
                           f"Time {whose} group commit took per batch (apply, commit, "
                           "fsync)", [], [([], stats.commit_us)], US_PER_S)


class BankMetrics:
    """A bank node's figures for its ``/metrics`` (gateway/bank/node.py), kept as plain
    numbers on the node's loop like the hub's. ``live`` gives the gauges read at scrape time
    (open hub sessions); ``books`` is the books' group commit (gateway/stats.py)."""

    def __init__(self, books: CommitStats,
                 live: Callable[[], dict[str, int]] | None = None) -> None:
        self.books = books
        self.live = live
        # (op, outcome) -> operations; outcome "ok" (applied and answered), an error code's
        # name (BANK_UNAVAILABLE, INTERNAL, INVALID_FIELD, ...), or "dropped" (a lab fault
        # swallowed it). Operations refused before their op was known count as "unknown".
        self.operations: dict[tuple[str, str], int] = {}
        self.frames_received = 0
        self.connections_opened = 0
        self.connections_closed = 0

    def done(self, op: str, outcome: str) -> None:
        key = (op, outcome)
        self.operations[key] = self.operations.get(key, 0) + 1

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_BankCollector(self))
        return registry

    def route(self) -> Route:
        registry = self.registry()
        return lambda: Reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)


class _BankCollector(Collector):
    def __init__(self, m: BankMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        ops = CounterMetricFamily(
            "paywire_bank_operations", "bank.* operations received from hubs (each op of a "
            "batch counts), by operation and outcome", labels=["op", "outcome"])
        for (op, outcome), n in sorted(m.operations.items()):
            ops.add_metric([op, outcome], n)
        yield ops
        yield CounterMetricFamily("paywire_bank_frames_received",
                                  "REQUEST frames carrying bank operations (a batch counts "
                                  "once)", value=m.frames_received)
        yield CounterMetricFamily("paywire_bank_connections_opened",
                                  "Hub connections accepted", value=m.connections_opened)
        yield CounterMetricFamily("paywire_bank_connections_closed",
                                  "Hub connections closed", value=m.connections_closed)
        yield from commit_families("paywire_bank_books", "the books'", m.books)
        for name, value in sorted((m.live() if m.live else {}).items()):
            yield GaugeMetricFamily(f"paywire_bank_{name}",
                                    f"Current {name.replace('_', ' ')}", value=value)
