"""The hub's health and readiness endpoint (gateway/health.py): what a load balancer sees
while a hub starts, recovers, serves and drains."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from gateway import config as cfgmod
from gateway.client import Card, ConnectionLost
from gateway.health import HealthServer, HealthState, Phase, Reply
from protocol import banklink
from tests.deploy import RICH, Deployment
from tests.healthprobe import free_port, probe
from tests.waiting import wait_until


async def test_the_endpoint_answers_probes_and_refuses_the_rest() -> None:
    state = HealthState("hub-x", lambda: {"sessions": 3})
    server = HealthServer(state, "127.0.0.1", 0)
    server.add_route("/metrics", lambda: Reply(200, b"paywire_up 1\n", "text/plain"))
    await server.start()
    try:
        status, body = await probe(server.port, "/healthz")
        assert status == 200 and isinstance(body, dict)
        assert body["alive"] and body["node_id"] == "hub-x" and body["sessions"] == 3
        assert await probe(server.port, "/readyz") == (503, {
            "status": "starting", "node_id": "hub-x", "pid": body["pid"], "ready": False})
        state.phase = Phase.READY
        status, body = await probe(server.port, "/readyz?from=haproxy")
        assert status == 200 and isinstance(body, dict) and body["ready"]
        assert await probe(server.port, "/metrics") == (200, "paywire_up 1\n")
        assert (await probe(server.port, "/readyz", method="HEAD"))[0] == 200
        assert (await probe(server.port, "/nothing"))[0] == 404
        assert (await probe(server.port, "/readyz", method="POST"))[0] == 405
        assert (await probe(server.port, raw=b"\x16\x03\x01 not http\r\n\r\n"))[0] == 400
        huge = b"GET /readyz HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await probe(server.port, raw=huge))[0] == 431
        for phase in (Phase.DRAINING, Phase.STOPPED, Phase.RECOVERING):
            state.phase = phase
            status, body = await probe(server.port, "/readyz")
            assert status == 503 and isinstance(body, dict) and body["status"] == phase.value
    finally:
        await server.stop()


@pytest.mark.parametrize("value", ["7480", "127.0.0.1", "127.0.0.1:http", ":7480",
                                   "127.0.0.1:70000"])
def test_a_bad_health_listen_is_refused(value: str) -> None:
    with pytest.raises(cfgmod.ConfigError, match="health_listen"):
        cfgmod.HubConfig(health_listen=value)


async def test_not_ready_until_recovery_has_settled_the_unanswered_call(
        tmp_path: Path) -> None:
    health_port = free_port()
    # A long bank timeout keeps recovery's inquiry (to a black-holed bank) waiting, so the
    # "recovering" state lasts until the test lets the bank answer.
    dep = await Deployment(tmp_path, bca_nodes=1, hub_overrides={
        "health_listen": f"127.0.0.1:{health_port}", "bank_timeout_s": 10.0,
        "recovery_at_start_s": 300.0}).astart()
    try:
        status, body = await probe(health_port, "/readyz")
        assert status == 200 and isinstance(body, dict) and body["status"] == "ready"
        await dep.admin("bca", "admin.faults", {"blackhole": True})
        client = await dep.client(timeout_s=300.0, reconnect=False).connect()
        charge = asyncio.ensure_future(
            client.charge("rz-1", 12_000, card=Card(RICH[3], 12, 2030, "123")))
        await wait_until(lambda: dep.received("bca", banklink.AUTHORIZE),
                         "the bank to receive the authorization")
        assert dep.hub is not None
        dep.hub.kill()
        with pytest.raises(ConnectionLost):
            await charge
        await client.close()
        assert (await probe(health_port, "/readyz"))[0] == 0  # nothing listens: down

        restart = asyncio.ensure_future(dep.arestart_hub(ready_timeout_s=300.0))

        async def recovering() -> bool:
            status, body = await probe(health_port, "/readyz")
            return status == 503 and isinstance(body, dict) and body["status"] == "recovering"

        await wait_until(recovering, "/readyz to say 503 recovering")
        healthz = await probe(health_port, "/healthz")
        assert healthz[0] == 200  # alive all along: a restart is not a failure
        assert not restart.done()  # the hub has not finished starting: it is not serving
        await dep.admin("bca", "admin.faults", {"blackhole": False})

        async def ready() -> bool:
            return (await probe(health_port, "/readyz"))[0] == 200

        await wait_until(ready, "/readyz to say 200 once recovery has run", timeout_s=120)
        await asyncio.wait_for(restart, 120)
        async with dep.client() as c:
            settled = await c.status("rz-1")
        assert settled.transaction_status in ("capture", "failure")
    finally:
        dep.stop()


async def test_not_ready_from_the_start_of_a_shutdown_drain(tmp_path: Path) -> None:
    health_port = free_port()
    dep = await Deployment(tmp_path, bca_nodes=1, hub_overrides={
        "health_listen": f"127.0.0.1:{health_port}", "bank_timeout_s": 10.0,
        "recovery_at_start_s": 120.0, "shutdown_grace_s": 60.0}).astart()
    try:
        # The bank holds the authorization until the test has seen the drain.
        await dep.admin("bca", "admin.faults", {"blackhole": True})
        async with dep.client(timeout_s=120.0) as c:
            charge = asyncio.ensure_future(
                c.charge("drain-1", 8_000, card=Card(RICH[4], 12, 2030, "123")))
            await wait_until(lambda: dep.received("bca", banklink.AUTHORIZE),
                             "the charge to be in flight at the bank")
            assert (await probe(health_port, "/readyz"))[0] == 200
            assert dep.hub is not None and dep.hub.proc is not None
            dep.hub.proc.send_signal(signal.SIGTERM)

            async def draining() -> bool:
                status, body = await probe(health_port, "/readyz")
                return status == 503 and isinstance(body, dict) and body["status"] == "draining"

            await wait_until(draining, "/readyz to say 503 draining")
            assert dep.hub.alive and not charge.done()  # still finishing the charge
            await dep.admin("bca", "admin.faults", {"blackhole": False})
            tx = await asyncio.wait_for(charge, 120)
        assert tx.transaction_status == "capture"
        code = await asyncio.get_running_loop().run_in_executor(None, dep.hub.proc.wait, 60)
        assert code == 0
        assert (await probe(health_port, "/readyz"))[0] == 0  # gone with the hub
    finally:
        dep.stop()
