"""The hub's ``/metrics`` beyond requests (gateway/metrics.py): per-hop charge latency, bank
calls by bank, node, operation and outcome, the ledger's group commits, webhook deliveries,
the outbox backlog and unresolved intents. Scraped from real processes (hub, bank nodes with
their own health ports, an HTTPS webhook receiver) around known traffic: each figure must
move exactly as the traffic did, and agree with the bank node's own count of what it got."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from gateway.client import Card, RequestError
from gateway.config import FraudConfig, WebhookConfig
from gateway.health import HealthServer, HealthState, Reply
from gateway.stats import TIMED_HOPS
from protocol import banklink
from tests.deploy import KEYS, POOR, RICH, Deployment
from tests.healthprobe import free_port, probe
from tests.receiver import Receiver
from tests.test_metrics import moved, scrape, value
from tests.waiting import wait_until

CHARGES_OK = 3
DECLINED = 2
CHARGES = CHARGES_OK + DECLINED
# Long delivery timeout: a delivery held at the receiver must not turn into a "network" one.
HOOKS = WebhookConfig(time_scale=0.0002, poll_interval_s=0.02, timeout_s=120.0)


def family(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
           ) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def test_hops_bank_calls_ledger_and_outbox_follow_known_traffic(tmp_path: Path) -> None:
    rx = await Receiver(KEYS, tmp_path / "rx-tls").start()
    gate = asyncio.Event()

    async def first_attempt_503(merchant: str, body: dict[str, Any], attempt: int) -> int:
        # Held until the test has seen the backlog, then refused once (a retry), then taken.
        if attempt == 1:
            await gate.wait()
            return 503
        return 200

    rx.behaviour["M1"] = first_attempt_503
    health_port = free_port()
    dep = Deployment(tmp_path, bca_nodes=1, webhook_urls={"M1": rx.url("M1")},
                     bank_overrides={"health_listen": "127.0.0.1:0"},
                     hub_overrides={"health_listen": f"127.0.0.1:{health_port}",
                                    "webhooks": rx.trusted(HOOKS)})
    try:
        await dep.astart()
        bank_port = int(dep.banks["bca"][0].ready_info["health_port"])
        before = await scrape(health_port)
        bank_before = await scrape(bank_port)
        assert value(before, "paywire_outbox_backlog") == 0
        assert value(before, "paywire_unresolved_intents") == 0
        async with dep.client(timeout_s=60.0, retry_attempts_max=1) as c:
            for i in range(CHARGES_OK):
                tx = await c.charge(f"h-ok-{i}", 10_000, card=Card(RICH[i], 12, 2030, "123"))
                assert tx.status_code == "200", tx
            for i in range(DECLINED):
                tx = await c.charge(f"h-no-{i}", 50_000, card=Card(POOR, 12, 2030, "123"))
                assert tx.status_code == "202", tx

            # Every charge's notification is committed with its result, before its answer:
            # all are in the outbox now, none delivered (the receiver holds the first).
            held = await scrape(health_port)
            assert value(held, "paywire_outbox_backlog") == CHARGES
            assert value(held, "paywire_unresolved_intents") == 0

            # Per-hop latency: every answered charge passed every hop, one observation per
            # step between consecutive hops (a step against another clock may be skewed).
            for a, b in itertools.pairwise(TIMED_HOPS):
                seen = moved(before, held, "paywire_hop_seconds_count", **{"from": a, "to": b})
                skewed = moved(before, held, "paywire_hop_skewed_total", **{"from": a, "to": b})
                assert seen + skewed == CHARGES, (a, b, seen, skewed)
            steps = {dict(k)["from"] + ">" + dict(k)["to"]
                     for k in family(held, "paywire_hop_seconds_count")}
            assert steps == {f"{a}>{b}" for a, b in itertools.pairwise(TIMED_HOPS)}, steps
            assert moved(before, held, "paywire_hop_seconds_sum",
                         **{"from": "received", "to": "intent_committed"}) > 0

            # Bank calls: one bank.authorize per charge, answered, at the only bca node; a
            # decline is an answer too. The node counted exactly the operations it got.
            bank_held = await scrape(bank_port)
            assert moved(before, held, "paywire_bank_calls_total", bank="bca", node="bca-1",
                         op=banklink.AUTHORIZE, outcome="ok") == CHARGES
            assert moved(before, held, "paywire_bank_call_seconds_count", bank="bca",
                         node="bca-1") == CHARGES
            assert moved(bank_before, bank_held, "paywire_bank_operations_total",
                         op=banklink.AUTHORIZE, outcome="ok") == CHARGES

            # The ledger: an intent and a result per charge, each in some group commit;
            # one batch-size observation per commit.
            written = moved(before, held, "paywire_ledger_batch_writes_sum")
            batches = moved(before, held, "paywire_ledger_batch_writes_count")
            assert written == 2 * CHARGES, written
            assert 1 <= batches <= 2 * CHARGES
            assert moved(before, held, "paywire_ledger_commit_seconds_count") == batches
            assert moved(before, held, "paywire_ledger_batch_writes_bucket",
                         le="+Inf") == batches

            # Release the receiver: each notification is refused once (503), then delivered.
            gate.set()
            assert await rx.wait_for(lambda: len(rx.delivered("M1")) >= CHARGES)

            async def backlog_drained() -> bool:
                return value(await scrape(health_port), "paywire_outbox_backlog") == 0

            await wait_until(backlog_drained, "the outbox backlog to return to 0")
            after = await scrape(health_port)
            assert moved(before, after, "paywire_webhook_deliveries_total",
                         result="server") == CHARGES
            assert moved(before, after, "paywire_webhook_deliveries_total",
                         result="delivered") == CHARGES
            assert moved(before, after, "paywire_webhooks_dead_lettered_total") == 0
            # The outbox bookkeeping (retry, delivered) went through the ledger's writer too.
            assert moved(held, after, "paywire_ledger_batch_writes_sum") == 2 * CHARGES

            # A failing bank: every send is refused by the node; the hub counts each one
            # under the node's error, the node counts the same sends, and no intent is left.
            await dep.admin("bca", "admin.faults", {"failure_rate_pct": 100})
            try:
                await c.charge("h-fault", 10_000, card=Card(RICH[9], 12, 2030, "123"))
                raise AssertionError("the charge should have failed with the bank down")
            except RequestError:
                pass
            await dep.admin("bca", "admin.faults", {"failure_rate_pct": 0})
        end = await scrape(health_port)
        bank_end = await scrape(bank_port)
        refused = moved(after, end, "paywire_bank_calls_total", bank="bca", node="bca-1",
                        op=banklink.AUTHORIZE, outcome="BANK_UNAVAILABLE")
        assert refused >= 1
        assert moved(bank_held, bank_end, "paywire_bank_operations_total",
                     op=banklink.AUTHORIZE, outcome="BANK_UNAVAILABLE") == refused
        assert value(end, "paywire_unresolved_intents") == 0
        # No answered charge in the fault: no hop was timed for it.
        assert moved(after, end, "paywire_hop_seconds_count",
                     **{"from": "received", "to": "intent_committed"}) == 0
    finally:
        dep.stop()
        await rx.stop()


async def test_unresolved_intents_and_timed_out_bank_calls(tmp_path: Path) -> None:
    health_port = free_port()
    dep = Deployment(tmp_path, bca_nodes=1, bank_overrides={"health_listen": "127.0.0.1:0"},
                     hub_overrides={"health_listen": f"127.0.0.1:{health_port}"})
    try:
        await dep.astart()
        bank_port = int(dep.banks["bca"][0].ready_info["health_port"])
        before = await scrape(health_port)
        bank_before = await scrape(bank_port)
        async with dep.client(timeout_s=120.0, retry_attempts_max=1) as c:
            # The bank swallows the call: the charge's intent is durable and unanswered.
            await dep.admin("bca", "admin.faults", {"blackhole": True})
            held = asyncio.ensure_future(
                c.charge("u-1", 10_000, card=Card(RICH[3], 12, 2030, "123")))

            async def at_the_bank() -> bool:
                return await dep.received("bca", banklink.AUTHORIZE) >= 1

            await wait_until(at_the_bank, "the charge's bank call to reach the node")
            during = await scrape(health_port)
            assert value(during, "paywire_unresolved_intents") == 1
            assert not held.done()
            # The bank answers again: the call's next attempt (or the settlement) ends it.
            await dep.admin("bca", "admin.faults", {"blackhole": False})
            tx = await asyncio.wait_for(held, 120.0)
            assert tx.status_code == "200", tx
        after = await scrape(health_port)
        bank_after = await scrape(bank_port)
        assert value(after, "paywire_unresolved_intents") == 0
        dropped = moved(bank_before, bank_after, "paywire_bank_operations_total",
                        op=banklink.AUTHORIZE, outcome="dropped")
        # Each send the node swallowed timed out at the hub, counted under TIMEOUT.
        assert dropped >= 1
        assert moved(before, after, "paywire_bank_calls_total", bank="bca", node="bca-1",
                     op=banklink.AUTHORIZE, outcome="TIMEOUT") == dropped
        # One answered charge: its hops timed once.
        assert moved(before, after, "paywire_hop_seconds_count",
                     **{"from": "received", "to": "intent_committed"}) == 1
    finally:
        dep.stop()


async def test_a_denied_charge_steps_from_received_to_committed(tmp_path: Path) -> None:
    """The fraud screen's denial never reaches a bank: its timeline has no intent and no bank
    hops, and /metrics times the steps it did pass, and calls no bank."""
    health_port = free_port()
    dep = Deployment(tmp_path, bca_nodes=1, hub_overrides={
        "health_listen": f"127.0.0.1:{health_port}",
        "fraud": FraudConfig(deny_above={"IDR": 50_000_000})})
    try:
        await dep.astart()
        before = await scrape(health_port)
        async with dep.client(timeout_s=60.0, retry_attempts_max=1) as c:
            tx = await c.charge("d-1", 60_000_000, card=Card(RICH[4], 12, 2030, "123"))
            assert tx.transaction_status == "deny", tx
        after = await scrape(health_port)
        for a, b in (("received", "committed"), ("committed", "answered")):
            assert moved(before, after, "paywire_hop_seconds_count",
                         **{"from": a, "to": b}) == 1, (a, b)
        assert moved(before, after, "paywire_hop_seconds_count",
                     **{"from": "received", "to": "intent_committed"}) == 0
        calls = sum(v for labels, v in family(after, "paywire_bank_calls_total").items())
        assert calls == sum(v for labels, v in family(before, "paywire_bank_calls_total").items())
    finally:
        dep.stop()


async def test_an_awaitable_route_is_awaited_and_head_has_no_body() -> None:
    """/metrics counts the outbox off the loop first: the health server awaits such a route."""
    state = HealthState("x")
    server = HealthServer(state, "127.0.0.1", 0)

    async def later() -> Reply:
        await asyncio.sleep(0)  # a real suspension: the answer comes from another step
        return Reply(200, b"paywire_up 1\n", "text/plain")

    server.add_route("/metrics", later)
    await server.start()
    try:
        assert await probe(server.port, "/metrics") == (200, "paywire_up 1\n")
        assert await probe(server.port, "/metrics", method="HEAD") == (200, "")
    finally:
        await server.stop()
