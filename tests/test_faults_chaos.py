"""Network faults injected by the chaos proxy, between client and hub or hub and bank."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.chaos import ChaosProxy
from gateway.client import Card, RequestError, connect
from protocol import banklink
from protocol.errors import ErrorCode
from tests.deploy import KEYS, OPENING, RICH, Deployment, ack
from tests.loadgen import wait_resolved
from tests.rawclient import Raw
from tests.waiting import wait_until


def card(i: int) -> Card:
    return Card(RICH[i % len(RICH)], 12, 2030, "123")


def via(dep: Deployment, proxy: ChaosProxy, **options: Any) -> Any:
    return connect("127.0.0.1", proxy.port, merchant_id="M1", server_key=KEYS["M1"],
                   certs_dir=dep.certs, **options)


async def bank_proxied(tmp_path: Path, **hub: Any) -> tuple[Deployment, list[ChaosProxy]]:
    """A deployment whose hub reaches bank ``bca`` only through a chaos proxy."""
    loop = asyncio.get_running_loop()
    proxies: list[ChaosProxy] = []

    def wrap(bank: str, port: int) -> int:
        if bank != "bca":
            return port
        proxy = asyncio.run_coroutine_threadsafe(ChaosProxy("127.0.0.1", port).start(),
                                                 loop).result()
        proxies.append(proxy)
        return proxy.port

    dep = Deployment(tmp_path, bca_nodes=1, bank_address=wrap,
                     hub_overrides={"bank_retry_attempts_max": 1, **hub})
    await dep.astart()
    return dep, proxies


async def test_response_dropped_after_the_bank_debited(tmp_path: Path) -> None:
    # No heartbeats during the test: the only bytes the hub sends the client after the
    # warm-up below are the charge's answer.
    dep = await Deployment(tmp_path, bca_nodes=1,
                           hub_overrides={"heartbeat_interval_s": 600.0}).astart()
    proxy = await ChaosProxy("127.0.0.1", dep.port).start()
    try:
        client = await via(dep, proxy).connect()
        # One round trip first: whatever the hub's TLS stack sends after the handshake
        # (TLS 1.3 session tickets) has then passed the proxy and cannot trip the cut.
        with pytest.raises(RequestError) as info:
            await client.status("drop-1")
        assert info.value.code is ErrorCode.NOT_FOUND
        proxy.set("down", drop_after_bytes=0)  # the hub's next bytes cut the connection
        charge = asyncio.ensure_future(client.charge("drop-1", 33_000, card=card(0)))
        await wait_until(lambda: proxy.cuts >= 1, "the hub's answer to be cut")
        # The hub answers after its commit, so the bank had debited before the cut.
        assert (await dep.balance("bca", RICH[0]))[0] == OPENING - 33_000
        assert await dep.received("bca", banklink.AUTHORIZE) == 1
        proxy.heal()
        tx = await asyncio.wait_for(charge, 120)
        await client.close()
        assert tx.transaction_status == "capture" and tx.replayed  # the retry got the record
        assert await dep.balance("bca", RICH[0]) == (OPENING - 33_000, 0)  # one debit
        assert await dep.received("bca", banklink.AUTHORIZE) == 1
        assert dep.audit([ack(tx)]).clean
    finally:
        await proxy.stop()
        dep.stop()


async def test_black_holed_bank_link_then_healed(tmp_path: Path) -> None:
    dep, (proxy,) = await bank_proxied(tmp_path, bank_timeout_s=0.5, recovery_interval_s=0.2)
    try:
        async with dep.client(timeout_s=5.0, retry_attempts_max=30) as c:
            await c.charge("bh-warmup", 1_000, card=card(1))
            proxy.set("both", blackhole=True)
            charge = asyncio.ensure_future(c.charge("bh-1", 44_000, card=card(2)))
            # The hub gave up on the bank more than once: three of its writes went into the
            # hole (the authorization, then after its timeout the inquiry, then after that
            # one's timeout a resolver's inquiry).
            await wait_until(lambda: proxy.swallowed["up"] >= 3,
                             "the hub to give up on the silent bank twice")
            assert not charge.done()
            proxy.heal()
            proxy.reset_all()  # the black hole ate TLS records: the link must start over
            tx = await asyncio.wait_for(charge, 120)
        assert tx.transaction_status in ("capture", "failure")
        assert await wait_resolved(dep) == 0
        debits = dep.bank_sql("bca", "SELECT COUNT(*) FROM effects WHERE transaction_id=? "
                              "AND delta < 0 AND account != 'settlement'",
                              (tx.transaction_id,))[0][0]
        assert debits == (1 if tx.transaction_status == "capture" else 0)
        report = dep.audit([ack(tx)])
        assert report.clean, report.findings
    finally:
        await proxy.stop()
        dep.stop()


async def test_late_bank_success_after_the_hub_timeout(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1, hub_overrides={
        "bank_timeout_s": 0.5, "bank_retry_attempts_max": 1,
        "recovery_interval_s": 0.2}).astart()
    try:
        await dep.admin("bca", "admin.faults", {"latency_ms": 1500})
        async with dep.client(timeout_s=5.0, retry_attempts_max=30) as c:
            charge = asyncio.ensure_future(c.charge("late-1", 55_000, card=card(3)))
            # The hub timed out and asked (an inquiry reached the bank) ...
            await wait_until(lambda: dep.received("bca", banklink.INQUIRY),
                             "the hub's inquiry after its timeout")
            # ... and the authorization succeeded at the bank, late.
            await wait_until(lambda: dep.applied("bca", banklink.AUTHORIZE),
                             "the late authorization to be applied")
            assert (await dep.balance("bca", RICH[3]))[0] == OPENING - 55_000
            await dep.admin("bca", "admin.faults", {"latency_ms": 0})
            tx = await asyncio.wait_for(charge, 120)
        # Reconciled by inquiry: the late success is the outcome, applied once.
        assert tx.transaction_status == "capture"
        assert await dep.balance("bca", RICH[3]) == (OPENING - 55_000, 0)
        assert dep.audit([ack(tx)]).clean
    finally:
        dep.stop()


async def test_one_to_three_byte_slices_give_identical_results(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    proxy = await ChaosProxy("127.0.0.1", dep.port, seed=5).start()
    proxy.set("both", slice_bytes_max=3)

    async def scenario(client: Any, tag: str) -> list[tuple[Any, ...]]:
        out = []
        for i in range(6):
            oid = f"{tag}-{i}"
            tx = await client.charge(oid, 10_000 + i, card=card(4 + i), capture=i % 2 == 0)
            if i % 2:
                tx = await client.capture(oid)
            tx = await client.refund(oid, "r1", 1_000)
            again = await client.charge(oid, 10_000 + i, card=card(4 + i), capture=i % 2 == 0)
            out.append((tx.transaction_status, tx.captured_amount, tx.refunded_amount,
                        tx.masked_card, again.replayed))
        return out

    try:
        async with dep.client() as direct:
            expected = await scenario(direct, "direct")
        sliced_client = await via(dep, proxy).connect()
        sliced = await scenario(sliced_client, "sliced")
        await sliced_client.close()
        assert sliced == expected
    finally:
        await proxy.stop()
        dep.stop()


def read_bytes(pid: int) -> int:
    """Bytes the process has read through system calls (sockets included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def test_slow_reading_client_keeps_hub_memory_bounded(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        async with dep.client() as c:
            await c.charge("cached", 1_000, card=card(0))  # status of it answers from memory
        assert dep.hub is not None and dep.hub.proc is not None
        pid = dep.hub.proc.pid
        before = rss_bytes(pid)
        read_before = read_bytes(pid)
        raw = await Raw.open(dep)
        await raw.hello()
        from tests.test_hostile_peers import signed

        request = signed("M1", 1, "status", {"order_id": "cached"})
        # ~60 MB of requests whose ~80 MB of answers are never read ...
        raw.send(request * 200_000)
        sent = 200_000
        others_ok = 0
        async with dep.client() as other:
            for _ in range(20):
                # ... while another client's payments go through.
                tx = await other.charge(f"other-{os.urandom(3).hex()}", 1_000, card=card(1))
                others_ok += tx.transaction_status == "capture"
                # Pacing, not synchronisation: the other client's charges are spread over
                # a few seconds of the flood, the window in which it must be served.
                await asyncio.sleep(0.2)
        grown = rss_bytes(pid) - before
        read = read_bytes(pid) - read_before
        print(f"hub RSS grew by {grown / 1e6:.1f} MB; it read {read / 1e6:.1f} MB")
        raw.writer.transport.abort()
        # The hub stopped reading this peer (its requests wait in the peer's buffers) instead
        # of reading ~60 MB of requests and queueing answers nobody collects.
        assert read < 20_000_000, f"the hub read {read / 1e6:.0f} MB"
        assert sent == 200_000 and others_ok == 20
        # The hub stopped reading instead of buffering: what it holds stays small.
        assert grown < 32 * 1024 * 1024, f"hub grew by {grown / 1e6:.0f} MB"
    finally:
        dep.stop()
