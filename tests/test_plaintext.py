"""Plaintext lab mode: a charge without TLS on loopback, refused anywhere else, TLS unchanged."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from gateway import config as cfgmod
from gateway.client import Card, PlaintextRefused, RequestError, connect
from gateway.processes import child_env, module_command
from protocol import messages
from protocol.errors import ConnectionLost, ErrorCode
from protocol.frame import FrameType
from tests.deploy import KEYS, OPENING, RICH, Deployment
from tests.rawclient import Raw
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


async def plaintext_port(dep: Deployment) -> int:
    """The port the hub bound for ``plaintext_listen = "127.0.0.1:0"``: from its WARNING."""
    assert dep.hub is not None
    log = dep.hub.log_path

    def found() -> int:
        m = re.search(r"PLAINTEXT LAB MODE: .* TLS on 127\.0\.0\.1:(\d+);", log.read_text())
        return int(m.group(1)) if m else 0

    return await wait_until(found, "the hub's plaintext WARNING")


@pytest.fixture
async def dep(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Deployment(tmp_path, bca_nodes=1, hub_overrides={"plaintext_listen": "127.0.0.1:0"})
    await d.astart()
    try:
        yield d
    finally:
        d.stop()


def plain(port: int, key: str = KEYS["M1"], **options: object):  # type: ignore[no-untyped-def]
    return connect("127.0.0.1", port, merchant_id="M1", server_key=key, plaintext=True,
                   **options)


async def test_a_plaintext_charge_on_loopback(dep: Deployment) -> None:
    port = await plaintext_port(dep)
    assert port != dep.port
    async with plain(port) as client:
        tx = await client.charge("plain-1", 25_000, card=Card(RICH[0], 12, 2030, "123"))
    assert tx.transaction_status == "capture"
    assert tx.masked_card == RICH[0][:6] + "******" + RICH[0][-4:]
    assert await dep.balance("bca", RICH[0]) == (OPENING - 25_000, 0)

    # The bytes really are in clear: a raw TCP socket speaks frames with no TLS at all.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = Raw(reader, writer)
    try:
        raw.send(messages.encode_message(FrameType.HELLO, {
            "versions": [1], "role": "merchant", "identity": "M1"}))
        welcome = await raw.next_frame()
        assert welcome.type == FrameType.WELCOME
        body = messages.decode_body(FrameType.WELCOME, welcome.body)
        assert body["server"].startswith("paywire-hub/")
    finally:
        raw.close()


async def test_the_hello_claim_gets_nothing_without_the_key(dep: Deployment) -> None:
    port = await plaintext_port(dep)
    async with plain(port, key="not-the-key", retry_attempts_max=1) as client:
        with pytest.raises(RequestError) as info:
            await client.charge("plain-2", 10_000, card=Card(RICH[1], 12, 2030, "123"))
    assert info.value.code is ErrorCode.BAD_SIGNATURE
    assert await dep.balance("bca", RICH[1]) == (OPENING, 0)
    # A HELLO claiming M1 whose requests say M2 (signed with M2's own key) is FORBIDDEN.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = Raw(reader, writer)
    try:
        await raw.hello("M1")
        from gateway.net.signed import build_request

        raw.send(build_request(KEYS["M2"].encode(), "M2", 1, "status", {"order_id": "x"}))
        answer = await raw.next_frame()
        assert messages.decode_body(FrameType.ERROR, answer.body)["code"] == \
            int(ErrorCode.FORBIDDEN)
    finally:
        raw.close()
    # Pushed events are refused: they would go to whoever claims the merchant.
    with pytest.raises(RequestError) as refused:
        await plain(port, hello={"subscribe_events": True}, reconnect=False).connect()
    assert refused.value.code is ErrorCode.FORBIDDEN


async def test_the_tls_listener_is_unchanged(dep: Deployment) -> None:
    port = await plaintext_port(dep)
    async with dep.client() as client:
        tx = await client.charge("tls-1", 12_000, card=Card(RICH[2], 12, 2030, "123"))
    assert tx.transaction_status == "capture"
    # A plaintext client at the TLS port gets no service (the hub expects a TLS handshake),
    # and a TLS client at the plaintext port none either. (The client keeps trying for
    # ``connect_timeout_s``: a short one ends the test sooner, whichever way it fails.)
    with pytest.raises((ConnectionLost, TimeoutError, OSError)) as plain_at_tls:
        await plain(dep.port, reconnect=False, connect_timeout_s=3.0).connect()
    assert "closed during handshake" in str(plain_at_tls.value)
    with pytest.raises((ConnectionLost, TimeoutError, OSError)) as tls_at_plain:
        await connect("127.0.0.1", port, merchant_id="M1", server_key=KEYS["M1"],
                      certs_dir=dep.certs, reconnect=False, connect_timeout_s=3.0).connect()
    assert "SSL" in str(tls_at_plain.value)


@pytest.mark.parametrize("listen", ["0.0.0.0:7401", "192.0.2.1:7401", "localhost:7401",
                                    "[::]:7401", "10.0.0.1:0"])
def test_a_non_loopback_listen_address_is_refused(listen: str) -> None:
    with pytest.raises(cfgmod.ConfigError, match="PLAINTEXT_NOT_LOOPBACK"):
        cfgmod.HubConfig(plaintext_listen=listen)


def test_loopback_listen_addresses_are_accepted() -> None:
    for listen in ("127.0.0.1:7401", "127.0.0.2:0", "[::1]:7401"):
        assert cfgmod.HubConfig(plaintext_listen=listen).plaintext_listen == listen


def test_the_hub_cli_refuses_a_non_loopback_plaintext_listener(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("")
    run = subprocess.run([*module_command("gateway.cli"), "hub", "--config", str(config),
                          "--plaintext-listen", "0.0.0.0:7401"], capture_output=True,
                         cwd=ROOT, env=child_env(), timeout=120, check=False)
    assert run.returncode == 2
    assert b"PLAINTEXT_NOT_LOOPBACK" in run.stderr and b"Traceback" not in run.stderr


@pytest.mark.parametrize("host", ["192.0.2.1", "localhost", "0.0.0.0", "example.com"])
def test_a_non_loopback_client_target_is_refused(host: str) -> None:
    with pytest.raises(PlaintextRefused) as info:
        connect(host, 7401, merchant_id="M1", server_key="k", plaintext=True)
    assert info.value.code == "PLAINTEXT_NOT_LOOPBACK"
    # Every address of a failover list counts.
    with pytest.raises(PlaintextRefused):
        connect([("127.0.0.1", 7401), (host, 7401)], merchant_id="M1", server_key="k",
                plaintext=True)


def test_the_client_cli_refuses_a_non_loopback_target() -> None:
    run = subprocess.run([*module_command("gateway.cli"), "status", "o-1", "--plaintext",
                          "--hub", "192.0.2.1:7401", "--server-key", "k"],
                         capture_output=True, cwd=ROOT, env=child_env(), timeout=120,
                         check=False)
    assert run.returncode == 2
    assert b"PLAINTEXT_NOT_LOOPBACK" in run.stderr and b"Traceback" not in run.stderr
