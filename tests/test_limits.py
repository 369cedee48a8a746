"""Limits with clear errors, and the client's handling of an unknown outcome."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from gateway.client import Card, OutcomeUnknown, RequestError
from protocol.errors import ErrorCode, RemoteError
from tests.deploy import OPENING, RICH, Deployment
from tests.rawclient import Raw
from tests.waiting import log_contains, wait_until


def card(i: int) -> Card:
    return Card(RICH[i % len(RICH)], 12, 2030, "123")


async def test_connections_per_merchant_are_bounded(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1, merchant_overrides={
        "M1": {"connections_max": 2}}).astart()
    try:
        a = await dep.client().connect()
        b = await dep.client().connect()
        with pytest.raises(RemoteError) as info:
            await dep.client(reconnect=False).connect()
        assert info.value.code is ErrorCode.TOO_MANY_CONNECTIONS
        await a.close()
        # A slot frees up once the hub has seen the close: until then the hub answers
        # TOO_MANY_CONNECTIONS, which the client retries with backoff (bounded by its
        # reconnect window), so this waits for exactly that.
        c = await dep.client().connect()
        await b.close()
        await c.close()
    finally:
        dep.stop()


async def test_stalled_tls_handshake_is_closed(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1,
                           hub_overrides={"tls_handshake_timeout_s": 0.5}).astart()
    try:
        sock = socket.create_connection(("127.0.0.1", dep.port))
        sock.settimeout(10)
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        assert sock.recv(100) == b""  # the hub gave up on us
        sock.close()
        raw = await Raw.open(dep)  # and still serves others
        await raw.hello()
        raw.close()
    finally:
        dep.stop()


async def test_client_timeout_is_resolved_by_status_never_by_charging_again(
        tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        await dep.admin("bca", "admin.faults", {"latency_ms": 1200})
        # No retries allowed: the timeout is reported as an unknown outcome, not an error
        # that would tempt the caller to charge again under a new order id.
        async with dep.client(timeout_s=0.5, retry_attempts_max=1) as c:
            with pytest.raises(OutcomeUnknown) as info:
                await c.charge("slow-1", 12_000, card=card(2))
            assert info.value.order_id == "slow-1"
            # The bank answers; the hub records it.
            await wait_until(lambda: dep.ledger_sql(
                "SELECT status, unresolved FROM transactions WHERE order_id = 'slow-1'")
                == [("capture", 0)], "the hub to record the bank's late answer")
            assert (await c.status("slow-1", timeout_s=60)).transaction_status == "capture"
        assert await dep.balance("bca", RICH[2]) == (OPENING - 12_000, 0)
        # With the default retries the client asks ``status`` until the answer is known
        # and returns it: the charge is resolved, and made once.
        async with dep.client(timeout_s=0.5) as c:
            tx = await c.charge("slow-2", 13_000, card=card(3))
        assert tx.transaction_status == "capture"
        assert await dep.balance("bca", RICH[3]) == (OPENING - 13_000, 0)
        assert dep.bank_sql("bca", "SELECT COUNT(*) FROM ops WHERE op_id LIKE ?",
                            (tx.transaction_id + ":authorize",))[0][0] == 1
        await dep.admin("bca", "admin.faults", {"latency_ms": 300})
        async with dep.client(timeout_s=0.5) as c:
            # The refund times out; the status call that follows shows it took effect, so
            # the client returns that instead of failing or refunding again.
            tx = await asyncio.wait_for(c.refund("slow-1", "r1", 2_000), 10)
        assert tx.refunded_amount == 2_000 and [r.refund_key for r in tx.refunds] == ["r1"]
        assert await dep.balance("bca", RICH[2]) == (OPENING - 10_000, 0)
    finally:
        dep.stop()


async def test_silent_bank_link_is_declared_dead_after_three_heartbeats(tmp_path: Path) -> None:
    from gateway.chaos import ChaosProxy
    from tests.test_faults_chaos import bank_proxied

    dep, (proxy,) = await bank_proxied(tmp_path, bank_timeout_s=0.5)
    tx = None
    try:
        assert isinstance(proxy, ChaosProxy)
        async with dep.client(retry_attempts_max=1) as c:
            await c.charge("hb-warm", 1_000, card=card(3))
            proxy.set("both", blackhole=True)
            # Silent for more than 3 heartbeat intervals of 1 s: the link is declared dead.
            assert dep.hub is not None
            await wait_until(log_contains(dep.hub.log_path, "link down to"),
                             "the hub to declare the silent bank link dead")
            with pytest.raises(RequestError) as info:
                await c.charge("hb-1", 1_000, card=card(4))
            # Nothing was sent: the hub knew the bank was unreachable, so the order id is
            # free to be used again once the bank is back.
            assert info.value.code is ErrorCode.BANK_UNAVAILABLE
            proxy.heal()
            proxy.reset_all()  # connections opened into the black hole are half-dead

            async def charged() -> Any:
                try:
                    return await c.charge("hb-1", 1_000, card=card(4))
                except RequestError as exc:
                    assert exc.code is ErrorCode.BANK_UNAVAILABLE
                    return None

            tx = await wait_until(charged, "the bank link to come back", poll_s=0.1)
            assert tx is not None and tx.transaction_status == "capture" and not tx.replayed
    finally:
        await proxy.stop()
        dep.stop()
