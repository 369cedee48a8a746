"""Graceful shutdown under load, and a retry storm after a hub dies."""

from __future__ import annotations

import asyncio
import signal
import socket
import statistics
from pathlib import Path

from gateway.client import Card
from protocol import banklink
from tests.deploy import RICH, Deployment, ack
from tests.loadgen import assert_settled_and_clean, charge_load
from tests.waiting import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_under_load_answers_up_to_goaway_and_clients_move_on(
        tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        await dep.admin("bca", "admin.faults", {"latency_ms": 150})  # keep work in flight
        assert dep.hub is not None and dep.hub_cfg is not None
        first = dep.hub
        port_b = free_port()
        addresses = [("127.0.0.1", dep.port), ("127.0.0.1", port_b)]
        clients_seen: list[object] = []
        acks: list[dict[str, object]] = []
        load = asyncio.ensure_future(charge_load(
            dep, 120, 11, "term", addresses=addresses, acks=acks, spread_s=1.5,
            on_clients=clients_seen.extend))
        await wait_until(lambda: len(acks) >= 10, "the load to be under way")
        assert first.proc is not None
        first.proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, first.proc.wait, 30)
        assert code == 0  # drained and exited cleanly
        dep.hub_cfg.listen_port = port_b  # the next hub takes over the same ledger
        await dep.arestart_hub()
        await dep.admin("bca", "admin.faults", {"latency_ms": 0})
        got, errors = await asyncio.wait_for(load, 120)
        assert not errors and len(got) == 120
        goaways = 0
        for client in clients_seen:
            for conn in client.history:  # type: ignore[attr-defined]
                if conn.goaway is None:
                    continue
                goaways += 1
                last = conn.goaway["last_request_id"]
                # Only requests past GOAWAY's last id were refused (and retried elsewhere).
                assert all(rid > last for rid in conn.shutting_down_rids), (last,
                                                                            conn.shutting_down_rids)
        assert goaways >= 1
        await assert_settled_and_clean(dep, got)
    finally:
        dep.stop()


async def test_retry_storm_reconnects_are_spread_by_jitter(tmp_path: Path) -> None:
    # The bank holds each authorization 3 s (within the hub's 5 s bank timeout): the window
    # in which every client has its charge in flight when the hub is killed.
    dep = await Deployment(tmp_path, bca_nodes=1, hub_overrides={"bank_timeout_s": 5.0},
                           merchant_overrides={"M1": {"connections_max": 400}}).astart()
    clients = []
    try:
        for _ in range(200):
            clients.append(await dep.client(backoff_min_s=1.0, backoff_max_s=4.0,
                                            reconnect_window_s=60, hub_wait_s=60).connect())
        await dep.admin("bca", "admin.faults", {"latency_ms": 3000})
        card = Card(RICH[0], 12, 2030, "123")
        charges = [asyncio.ensure_future(c.charge(f"storm-{i}", 1_000, card=card))
                   for i, c in enumerate(clients)]
        # Every client has a charge in flight: the bank has all 200 authorizations and has
        # answered none (checked after the kill).
        async def all_at_the_bank() -> bool:
            return await dep.received("bca", banklink.AUTHORIZE) == len(clients)

        await wait_until(all_at_the_bank, "every charge to reach the bank")
        loop = asyncio.get_running_loop()
        assert dep.hub is not None
        dep.hub.kill()
        killed_at = loop.time()
        assert await dep.applied("bca", banklink.AUTHORIZE) == 0
        await dep.arestart_hub()
        await dep.admin("bca", "admin.faults", {"latency_ms": 0})
        results = await asyncio.wait_for(asyncio.gather(*charges), 120)
        # Charges caught mid-flight are settled by recovery: completed, or (if the hub's
        # inquiry overtook the slow bank) reversed. Either way one outcome, nothing doubled.
        assert all(r.transaction_status in ("capture", "failure") for r in results)
        await assert_settled_and_clean(dep, [ack(r) for r in results])
        firsts = sorted(next(t for t in c.reconnect_attempts if t >= killed_at) - killed_at
                        for c in clients)
        # Full jitter over the first backoff step (1 s): spread, not one synchronised wave.
        assert statistics.pstdev(firsts) > 0.15, statistics.pstdev(firsts)
        window_s = 0.1
        busiest = max(sum(1 for t in firsts if start <= t < start + window_s)
                      for start in firsts)
        assert busiest < len(firsts) * 0.25, busiest
    finally:
        for c in clients:
            await c.close()
        dep.stop()
