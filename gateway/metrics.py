"""The hub's Prometheus metrics, served as ``GET /metrics`` on the health port.

Cheap on the hot path (docs DESIGN.md §8): a request adds to plain Python ints and dicts
here (one dict increment, one ``bisect`` into the latency buckets); prometheus-client's
objects, with their locks, are never touched per request. At scrape time a custom
``Collector`` reads these figures and the hub's live state (sessions, in-flight requests)
and builds the metric families. Everything runs on the hub's one event loop, so the plain
counters need no lock either.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.health import Reply
from gateway.transactions.model import now_us

# Upper bounds of the end-to-end latency buckets, in microseconds (0.25 ms .. 10 s): from a
# status answered from the cache to a bank call that waited out its retries.
LATENCY_BUCKETS_US = (250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
                      250_000, 500_000, 1_000_000, 2_500_000, 10_000_000)
OPERATION_UNKNOWN = "unknown"  # refused before its envelope was decoded (rate limit, bound)


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

    def route(self) -> Callable[[], Reply]:
        """The ``/metrics`` route for ``HealthServer.add_route``."""
        registry = self.registry()
        return lambda: Reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)


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
