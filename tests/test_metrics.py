"""The hub's ``/metrics`` (gateway/metrics.py), scraped from a real hub process while known
traffic runs: the counters must move exactly as the traffic did."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.client import Card, RequestError
from tests.deploy import POOR, RICH, Deployment
from tests.healthprobe import free_port, probe

CHARGES_OK = 4  # N charges, of which K declined: N = CHARGES_OK + DECLINED
DECLINED = 2
REFUNDS = 2
STATUSES = 3


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = await probe(port, "/metrics")
    assert status == 200 and isinstance(body, str), (status, body)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: dict[tuple[str, tuple[tuple[str, str], ...]], float],
          after: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_metrics_follow_known_traffic(tmp_path: Path) -> None:
    health_port = free_port()
    dep = await Deployment(tmp_path, bca_nodes=1, hub_overrides={
        "health_listen": f"127.0.0.1:{health_port}"}).astart()
    try:
        before = await scrape(health_port)
        # No client retries: each request the hub answers is one the test sent.
        async with dep.client(timeout_s=60.0, retry_attempts_max=1) as c:
            during = await scrape(health_port)
            assert value(during, "paywire_sessions") >= 1  # our connection is open
            nodes_up = {labels: v for (name, labels), v in during.items()
                        if name == "paywire_bank_node_up"}
            assert len(nodes_up) == 3 and set(nodes_up.values()) == {1.0}, nodes_up
            for i in range(CHARGES_OK):
                tx = await c.charge(f"m-ok-{i}", 10_000, card=Card(RICH[i], 12, 2030, "123"))
                assert tx.status_code == "200", tx
            for i in range(DECLINED):
                tx = await c.charge(f"m-no-{i}", 50_000, card=Card(POOR, 12, 2030, "123"))
                assert tx.status_code == "202", tx
            for i in range(REFUNDS):
                await c.refund(f"m-ok-{i}", f"rf-{i}")
            for _ in range(STATUSES):
                await c.status("m-ok-0")
            # A bank fault: every call fails at the (only) node; the charge gets an error.
            await dep.admin("bca", "admin.faults", {"failure_rate_pct": 100})
            try:
                await c.charge("m-fault", 10_000, card=Card(RICH[9], 12, 2030, "123"))
                raise AssertionError("the charge should have failed with the bank down")
            except RequestError as exc:
                fault_code = exc.code.name
            await dep.admin("bca", "admin.faults", {"failure_rate_pct": 0})
        after = await scrape(health_port)

        assert moved(before, after, "paywire_requests_total", operation="charge",
                     outcome="200") == CHARGES_OK
        assert moved(before, after, "paywire_requests_total", operation="charge",
                     outcome="202") == DECLINED
        assert moved(before, after, "paywire_requests_total", operation="charge",
                     outcome=fault_code) == 1
        refunds = sum(v for (name, labels), v in after.items()
                      if name == "paywire_requests_total" and ("operation", "refund") in labels)
        assert refunds == REFUNDS
        assert moved(before, after, "paywire_requests_total", operation="status",
                     outcome="200") == STATUSES
        # The latency histogram counted every charge answered, each in one bucket.
        charges = CHARGES_OK + DECLINED + 1
        assert moved(before, after, "paywire_request_latency_seconds_count",
                     operation="charge") == charges
        assert moved(before, after, "paywire_request_latency_seconds_bucket",
                     operation="charge", le="+Inf") == charges
        assert moved(before, after, "paywire_request_latency_seconds_sum",
                     operation="charge") > 0
        assert moved(before, after, "paywire_connections_opened_total") == 1
        assert value(after, "paywire_requests_in_flight") == 0
    finally:
        dep.stop()
