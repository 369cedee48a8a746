"""The client logs (INFO, ``paywire.client``) each reconnect, failover, resend and
unknown-outcome resolution, with order and request ids and the reason, under real faults."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.chaos import ChaosProxy
from gateway.client import Card, RequestError, connect
from protocol.errors import ErrorCode
from tests.deploy import KEYS, RICH, Deployment
from tests.waiting import wait_until

LOGGER = "paywire.client"


def client_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def no_secrets(lines: list[str], *card_numbers: str) -> None:
    text = "\n".join(lines)
    for secret in (*card_numbers, KEYS["M1"], "cvv"):
        assert secret not in text


async def test_a_cut_connection_is_logged_as_reconnect_failover_and_resend(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    # No heartbeats: after the warm-up the only bytes the hub sends are the charge's answer.
    dep = await Deployment(tmp_path, bca_nodes=1,
                           hub_overrides={"heartbeat_interval_s": 600.0}).astart()
    proxy = await ChaosProxy("127.0.0.1", dep.port).start()
    via_proxy, direct = f"127.0.0.1:{proxy.port}", f"127.0.0.1:{dep.port}"
    try:
        # Two addresses: the proxy first, then the hub itself.
        client = await connect([("127.0.0.1", proxy.port), ("127.0.0.1", dep.port)],
                               merchant_id="M1", server_key=KEYS["M1"],
                               certs_dir=dep.certs).connect()
        with pytest.raises(RequestError) as info:  # one round trip through the proxy first
            await client.status("logs-1")
        assert info.value.code is ErrorCode.NOT_FOUND
        assert client_lines(caplog) == []  # nothing to report yet
        proxy.set("down", drop_after_bytes=0)  # the hub's next bytes cut the connection
        charge = asyncio.ensure_future(
            client.charge("logs-1", 21_000, card=Card(RICH[5], 12, 2030, "123")))
        await wait_until(lambda: proxy.cuts >= 1, "the hub's answer to be cut")
        tx = await asyncio.wait_for(charge, 120)
        await client.close()
        assert tx.transaction_status == "capture" and tx.replayed
    finally:
        await proxy.stop()
        dep.stop()
    lines = client_lines(caplog)
    assert any(line.startswith(f"reconnect: connection to {via_proxy} lost (") for line in lines)
    assert any(line.startswith(f"failover: from {via_proxy} to {direct} (") for line in lines)
    resend = [line for line in lines if line.startswith("resend: charge order_id=logs-1 ")]
    assert len(resend) == 1, lines
    assert "request_id=1 (was request_id=2, attempt 2 of 8)" in resend[0]
    assert "in flight when the connection was lost" in resend[0]
    assert any(line.startswith(f"reconnect: connected to {direct}") for line in lines)
    no_secrets(lines, RICH[5])


async def test_a_timeout_is_logged_until_status_resolves_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    # The bank answers late, but well within the hub's bank timeout: the charge succeeds
    # while the client has given up waiting for it.
    dep = await Deployment(tmp_path, bca_nodes=1, hub_overrides={
        "bank_timeout_s": 30.0, "recovery_at_start_s": 100.0}).astart()
    try:
        await dep.admin("bca", "admin.faults", {"latency_ms": 1500})
        async with dep.client(timeout_s=0.3, retry_attempts_max=400) as client:
            tx = await client.charge("logs-2", 17_000, card=Card(RICH[6], 12, 2030, "123"))
        assert tx.transaction_status == "capture"
    finally:
        dep.stop()
    lines = client_lines(caplog)
    assert any(line.startswith("timeout: charge order_id=logs-2 request_id=1 had no answer "
                               "within 0.3 s") for line in lines), lines
    assert "unknown outcome: charge order_id=logs-2 timed out; asking status" in lines
    assert "unknown outcome resolved: charge order_id=logs-2 is capture; the charge took " \
           "effect" in lines
    no_secrets(lines, RICH[6])


async def test_a_hub_that_is_down_is_logged_per_attempt(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        async with dep.client() as client:
            await client.charge("logs-3", 9_000, card=Card(RICH[7], 12, 2030, "123"))
            dep.hub.terminate()  # type: ignore[union-attr]
            restarted = asyncio.ensure_future(dep.arestart_hub())
            tx = await client.status("logs-3")  # waits through the reconnects
            await restarted
        assert tx.transaction_status == "capture"
    finally:
        dep.stop()
    lines = client_lines(caplog)
    address = f"127.0.0.1:{dep.port}"
    assert any(line.startswith(f"reconnect: connection to {address} lost") for line in lines)
    assert any(line.startswith(f"reconnect: connected to {address} after ") for line in lines)
    no_secrets(lines, RICH[7])
