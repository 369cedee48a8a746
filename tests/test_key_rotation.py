"""Key rotation and configuration reload (SIGHUP) on a real hub process, with real TLS.

A merchant's server key is rotated without downtime: the new key is added as
``server_key`` with the old one as ``previous_server_key`` (both accepted), the webhooks
are signed with the new key, and a second reload removes the old key; connections opened
before each reload keep working without a reconnect. A reload that fails keeps the running
configuration; SIGHUP never stops the hub; merchants are added and removed by reload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path

import pytest

from gateway import pki
from gateway.client import AuthenticationError, Card, Client, RateLimitError, connect
from gateway.client.webhooks import (
    SignatureVerificationError,
    VerificationFailure,
    construct_event,
)
from gateway.config import HubConfig, MerchantConfig, WebhookConfig, dump_toml
from protocol.errors import ErrorCode
from tests.deploy import KEYS, RICH, Deployment
from tests.receiver import Receiver
from tests.waiting import wait_until

OLD = KEYS["M1"]
NEW = "sk-M1-rotated"
FAST_HOOKS = WebhookConfig(time_scale=0.0002, poll_interval_s=0.02)


@pytest.fixture(autouse=True)
def _info_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYWIRE_LOG_LEVEL", "INFO")  # the reload's lines are INFO
    monkeypatch.setenv("PAYWIRE_LOG_FORMAT", "text")


def card(i: int) -> Card:
    return Card(RICH[i], 12, 2030, "123")


def client(dep: Deployment, merchant: str, key: str) -> Client:
    # No reconnect: a connection the reload dropped would fail the test instead of being
    # quietly replaced.
    return connect("127.0.0.1", dep.port, merchant_id=merchant, server_key=key,
                   certs_dir=dep.certs, reconnect=False, retry_attempts_max=1)


def log_text(dep: Deployment) -> str:
    assert dep.hub is not None
    return dep.hub.log_path.read_text(errors="replace")


def write_config(dep: Deployment, cfg: HubConfig) -> None:
    """Rewrite the hub's config file as an operator would (the listen port as started: 0)."""
    assert dep.hub is not None
    dep.hub.config_path.write_text(dump_toml(dataclasses.replace(cfg, listen_port=0)))


async def sighup(dep: Deployment, line: str) -> None:
    """SIGHUP the hub and wait for one more log line containing ``line``."""
    assert dep.hub is not None and dep.hub.proc is not None
    before = log_text(dep).count(line)
    os.kill(dep.hub.proc.pid, signal.SIGHUP)
    await wait_until(lambda: log_text(dep).count(line) > before, f"{line!r} in the hub log")
    assert dep.hub.alive, dep.hub.tail()


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def running(pid: int) -> bool:
    """Alive and not a zombie (a dead child not reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "zombie" not in state.lower()


def with_merchants(dep: Deployment, *merchants: MerchantConfig) -> HubConfig:
    assert dep.hub_cfg is not None
    return dataclasses.replace(dep.hub_cfg, merchants=list(merchants))


def m1(**fields: object) -> MerchantConfig:
    return MerchantConfig(**{"id": "M1", "server_key": OLD, **fields})  # type: ignore[arg-type]


async def test_rotation_old_and_new_accepted_then_old_removed_by_reload(
        tmp_path: Path) -> None:
    rx = await Receiver({"M1": NEW}, tmp_path / "rx-tls").start()
    dep = await Deployment(tmp_path, bca_nodes=1, webhook_urls={"M1": rx.url("M1")},
                           hub_overrides={"webhooks": rx.trusted(FAST_HOOKS)}).astart()
    hooks = {"webhook_url": rx.url("M1")}
    try:
        async with client(dep, "M1", OLD) as on_old:
            assert (await on_old.charge("rot-0", 1_000, card=card(0))).transaction_status \
                == "capture"
            # Step 1 of the rotation: the new key is primary, the old one still accepted.
            write_config(dep, with_merchants(
                dep, m1(server_key=NEW, previous_server_key=OLD, **hooks),
                MerchantConfig("M2", KEYS["M2"])))
            await sighup(dep, "config reloaded")
            assert "server keys changed [M1]" in log_text(dep)
            async with client(dep, "M1", NEW) as on_new:
                # Both keys accepted: the old one on a connection opened before the reload.
                tx_old = await on_old.charge("rot-1", 1_100, card=card(1))
                tx_new = await on_new.charge("rot-2", 1_200, card=card(2))
                assert tx_old.transaction_status == tx_new.transaction_status == "capture"
                first_conn = on_new.conn

                # Step 3: the old key removed by a second reload.
                write_config(dep, with_merchants(dep, m1(server_key=NEW, **hooks),
                                                 MerchantConfig("M2", KEYS["M2"])))
                await sighup(dep, "config reloaded")
                with pytest.raises(AuthenticationError) as refused:
                    await on_old.charge("rot-3", 1_300, card=card(3))
                assert refused.value.code is ErrorCode.BAD_SIGNATURE
                # The new key's connection, opened before this reload, serves on: the same
                # connection, no reconnect (and reconnecting is off).
                again = await on_new.charge("rot-4", 1_400, card=card(4))
                assert again.transaction_status == "capture"
                assert on_new.conn is first_conn and len(on_new.history) == 1
                assert not first_conn.transport.is_closing()  # type: ignore[union-attr]
            assert await rx.wait_for(
                lambda: {"rot-1", "rot-2", "rot-4"} <= {d.body["order_id"]
                                                       for d in rx.delivered()})
    finally:
        dep.stop()
        await rx.stop()
    assert "config reload failed" not in log_text(dep)
    assert OLD not in log_text(dep) and NEW not in log_text(dep)  # no key is ever logged
    for d in rx.delivered():
        headers = {"X-Paywire-Signature": d.header, "X-Paywire-Event-Id": d.event_id}
        # What a merchant's receiver does during the rotation: both keys.
        note = construct_event(d.raw, headers, [NEW, OLD])
        assert note.order_id == d.body["order_id"]
        if d.body["order_id"] != "rot-0":
            # Committed after the switch: signed with the new key only.
            construct_event(d.raw, headers, NEW)
            with pytest.raises(SignatureVerificationError) as old_only:
                construct_event(d.raw, headers, OLD)
            assert old_only.value.reason is VerificationFailure.BAD_SIGNATURE


async def test_sighup_with_a_bad_config_keeps_the_running_one(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    assert dep.hub is not None and dep.hub_cfg is not None
    try:
        async with client(dep, "M1", OLD) as c:
            await c.charge("bad-0", 1_000, card=card(5))
            # SIGHUP with the file unchanged: the hub reloads, it does not stop.
            await sighup(dep, "config reloaded")
            assert "no change to merchants" in log_text(dep)
            # Not TOML at all.
            dep.hub.config_path.write_text("[[merchants]\nid = ")
            await sighup(dep, "config reload failed")
            # Valid TOML, invalid config: the same key twice.
            write_config(dep, with_merchants(dep, m1(previous_server_key="SAME-AS-PRIMARY")))
            dep.hub.config_path.write_text(
                dep.hub.config_path.read_text().replace("SAME-AS-PRIMARY", OLD))
            await sighup(dep, "config reload failed")
            failed = [line for line in log_text(dep).splitlines()
                      if "config reload failed" in line]
            assert len(failed) == 2 and all(" ERROR " in line for line in failed), failed
            assert "previous_server_key is the same as server_key" in failed[1]
            assert OLD not in log_text(dep)
            # The running configuration is whole: M1's key, M2 still a merchant, and the
            # connection opened before the reloads serves on.
            assert (await c.charge("bad-1", 1_100, card=card(6))).transaction_status \
                == "capture"
            assert len(c.history) == 1
        async with client(dep, "M2", KEYS["M2"]) as c2:
            await c2.charge("bad-2", 1_200, card=card(7))
        # A setting only a restart changes: named in a WARNING, the running value kept.
        moved = dataclasses.replace(dep.hub_cfg, ledger_path=tmp_path / "elsewhere.db",
                                    heartbeat_interval_s=7.0)
        write_config(dep, moved)
        await sighup(dep, "config reloaded")
        warning = next(line for line in log_text(dep).splitlines()
                       if "only take effect at a restart" in line)
        assert " WARNING " in warning
        assert "ledger_path, heartbeat_interval_s changed" in warning
        async with client(dep, "M1", OLD) as c:
            await c.charge("bad-3", 1_300, card=card(8))
        assert not (tmp_path / "elsewhere.db").exists()
        assert dep.hub.alive
        # A terminal's hangup signals the whole process group: the ledger's writer process
        # ignores SIGHUP too, and the hub goes on committing through it.
        assert dep.hub.proc is not None
        writers = children(dep.hub.proc.pid)
        assert writers, "the hub's ledger writer process"
        for pid in writers:
            os.kill(pid, signal.SIGHUP)
        async with client(dep, "M1", OLD) as c:
            await c.charge("bad-4", 1_400, card=card(12))
        assert all(running(pid) for pid in writers)
        assert dep.hub.alive
    finally:
        dep.stop()


async def test_reload_adds_and_removes_merchants(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    assert dep.hub is not None and dep.hub_cfg is not None
    pki.issue(dep.certs, "merchant", "M3")
    try:
        # Not configured yet: refused at the handshake.
        with pytest.raises(AuthenticationError) as unknown:
            await client(dep, "M3", "sk-M3").connect()
        assert unknown.value.code is ErrorCode.UNAUTHENTICATED
        async with client(dep, "M1", OLD) as c1, client(dep, "M2", KEYS["M2"]) as c2:
            await c2.charge("mer-0", 1_000, card=card(9))
            write_config(dep, with_merchants(dep, m1(), MerchantConfig("M3", "sk-M3")))
            await sighup(dep, "config reloaded")
            assert "merchants added [M3]; merchants removed [M2]" in log_text(dep)
            async with client(dep, "M3", "sk-M3") as c3:
                assert (await c3.charge("mer-1", 1_100, card=card(10))).merchant_id == "M3"
            # M2's connection from before the reload: GOAWAY, then closed by the hub.
            assert c2.conn is not None
            await wait_until(lambda: c2.conn is not None and c2.conn.goaway is not None,
                             "the removed merchant's connection to get GOAWAY")
            gone = c2.conn
            await wait_until(lambda: gone.transport is None or gone.transport.is_closing(),
                             "the removed merchant's connection to be closed")
            # ... and a new connection is refused at the handshake.
            with pytest.raises(AuthenticationError) as removed:
                await client(dep, "M2", KEYS["M2"]).connect()
            assert removed.value.code is ErrorCode.UNAUTHENTICATED
            # M1 is untouched, on the connection it had.
            await c1.charge("mer-2", 1_200, card=card(11))
            assert len(c1.history) == 1
            # Per-merchant limits change at once: a burst of one, refilled once an hour.
            write_config(dep, with_merchants(dep, m1(rate_per_s=1 / 3600, rate_burst=1),
                                             MerchantConfig("M3", "sk-M3")))
            await sighup(dep, "limits changed [M1]")
            await c1.charge("mer-3", 1_300, card=card(13))
            with pytest.raises(RateLimitError):
                await c1.charge("mer-4", 1_400, card=card(14))
            assert len(c1.history) == 1
    finally:
        dep.stop()


async def test_workers_forward_sighup_to_every_worker(tmp_path: Path, pg_dsn: str) -> None:
    from tests.test_workers import Workers, _workers_ready, pg_deployment

    with pg_deployment(tmp_path, pg_dsn) as dep:
        assert dep.hub is not None
        workers = Workers(dep.hub.config_path, 2, tmp_path)
        try:
            info = await _workers_ready(workers, 2)
            pids = [w["pid"] for w in info["workers"]]
            write_config(dep, with_merchants(dep, m1(server_key=NEW, previous_server_key=OLD),
                                             MerchantConfig("M2", KEYS["M2"])))
            os.kill(workers.proc.pid, signal.SIGHUP)

            def reloaded() -> int:
                return workers.log_path.read_text(errors="replace").count(
                    "config reloaded from")

            await wait_until(lambda: reloaded() >= 2, "both workers to reload", timeout_s=60)
            for n, key in enumerate((NEW, OLD) * 3):  # whichever worker the kernel picks
                async with connect("127.0.0.1", info["port"], merchant_id="M1",
                                   server_key=key, certs_dir=dep.certs) as c:
                    await c.charge(f"wk-{n}", 1_000, card=card(n))
            again = await _workers_ready(workers, 2)
            assert [w["pid"] for w in again["workers"]] == pids  # none restarted
            assert workers.proc.poll() is None
        finally:
            code = workers.stop()
        assert code == 0, workers.log_path.read_text()[-3000:]


async def test_a_removed_merchants_connection_answers_what_is_in_flight_then_refuses(
        tmp_path: Path) -> None:
    """docs/operations.md "Reloading configuration": a request in flight on a removed
    merchant's connection is answered; a request after the reload is refused (on that
    connection, or on the new one the reference client moves to after GOAWAY), with the
    authentication code, never served."""
    from protocol import banklink

    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        assert dep.hub_cfg is not None
        c2 = connect("127.0.0.1", dep.port, merchant_id="M2", server_key=KEYS["M2"],
                     certs_dir=dep.certs)
        async with c2:
            await c2.charge("rm-0", 1_000, card=card(0))
            await dep.admin("bca", "admin.faults", {"latency_ms": 1500})
            slow = asyncio.ensure_future(c2.charge("rm-1", 1_100, card=card(1)))
            async def at_the_bank() -> bool:  # rm-0's authorization, then rm-1's
                return await dep.received("bca", banklink.AUTHORIZE) >= 2

            await wait_until(at_the_bank, "the slow charge to reach the bank", poll_s=0.02)
            write_config(dep, with_merchants(dep, m1()))  # M2 removed
            await sighup(dep, "merchants removed [M2]")
            with pytest.raises(AuthenticationError) as refused:
                await c2.charge("rm-2", 1_200, card=card(2))
            assert refused.value.code is ErrorCode.UNAUTHENTICATED
            answered = await slow
            assert answered.transaction_status == "capture" and not answered.replayed
        await dep.admin("bca", "admin.faults", {"latency_ms": 0})
        # Nothing of rm-2 reached the ledger or the bank.
        assert dep.ledger_sql("SELECT order_id FROM transactions WHERE merchant_id = 'M2' "
                              "ORDER BY order_id") == [("rm-0",), ("rm-1",)]
    finally:
        dep.stop()
