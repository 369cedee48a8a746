"""A bank node's health port (``health_listen``, gateway/bank/node.py): /readyz is 200 only
once its books are open and its listener accepts, and /metrics counts what the node got:
operations by op and outcome, frames, group commits of its books, hub connections."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway import pki, secret_keys
from gateway.bank.node import BankNode
from gateway.client import Card, RequestError
from gateway.config import BankNodeConfig
from protocol import banklink
from tests.deploy import RICH, Deployment
from tests.healthprobe import free_port, probe
from tests.test_metrics import moved, scrape, value
from tests.waiting import wait_until

CHARGES = 4


async def test_bank_node_is_ready_only_once_its_books_are_open(tmp_path: Path) -> None:
    pki.init(tmp_path / "certs", merchants=[], banks=["bca-1"])
    secrets = secret_keys.init(tmp_path / "secrets.toml")
    port = free_port()
    node = BankNode(BankNodeConfig(node_id="bca-1", bank="bca", listen_port=0,
                                   certs_dir=tmp_path / "certs", store_path=tmp_path / "bca.db",
                                   secrets_file=secrets, accounts={RICH[0]: 1_000},
                                   health_listen=f"127.0.0.1:{port}"))
    # Start-up held just before the books open, to look at the node in between.
    gate = asyncio.Event()
    open_books = node.store.start

    async def held_start() -> None:
        await gate.wait()
        await open_books()

    node.store.start = held_start  # type: ignore[method-assign]
    starting = asyncio.get_running_loop().create_task(node.start())
    try:
        async def answering() -> tuple[int, object] | None:
            status, body = await probe(port, "/readyz")
            return (status, body) if status else None

        status, body = await wait_until(answering, "the bank node's health port to answer")
        assert status == 503 and isinstance(body, dict), (status, body)
        assert body["status"] == "starting" and body["node_id"] == "bca-1"
        assert node.store.writer.died is None  # the books' writer has not started
        assert (await probe(port, "/healthz"))[0] == 200  # alive, not ready
        assert (await probe(port, "/metrics"))[0] == 200
        gate.set()
        await asyncio.wait_for(starting, 60.0)
        status, body = await probe(port, "/readyz")
        assert status == 200 and isinstance(body, dict) and body["ready"] is True
        died = node.store.writer.died
        assert died is not None and not died.done()  # the books are open
        assert (await probe(port, "/nope"))[0] == 404
    finally:
        gate.set()
        if not starting.done():
            await asyncio.wait([starting], timeout=60.0)
        await node.stop()
    # Stopped: the port is closed with it.
    assert (await probe(port, "/readyz"))[0] == 0


async def test_bank_node_metrics_count_what_it_got(tmp_path: Path) -> None:
    # No periodic notification pushes (each reads the books' outbox): the node's commits in
    # the test are the traffic's.
    dep = Deployment(tmp_path, bca_nodes=1,
                     bank_overrides={"health_listen": "127.0.0.1:0",
                                     "notify_retry_interval_s": 3600.0})
    try:
        await dep.astart()
        port = int(dep.banks["bca"][0].ready_info["health_port"])
        status, body = await probe(port, "/readyz")
        assert status == 200 and isinstance(body, dict) and body["node_id"] == "bca-1"
        before = await scrape(port)
        stats_before = await dep.stats("bca")
        assert value(before, "paywire_bank_sessions") == 1  # the hub's link
        assert value(before, "paywire_bank_connections_opened_total") >= 1
        async with dep.client(timeout_s=60.0, retry_attempts_max=1) as c:
            for i in range(CHARGES):
                tx = await c.charge(f"b-{i}", 10_000, card=Card(RICH[i], 12, 2030, "123"))
                assert tx.status_code == "200", tx
        # A simulated failure for one call: counted under its code, not as applied.
        await dep.admin("bca", "admin.faults", {"failure_rate_pct": 100})
        async with dep.client(timeout_s=60.0, retry_attempts_max=1) as c:
            try:
                await c.charge("b-fault", 10_000, card=Card(RICH[9], 12, 2030, "123"))
                raise AssertionError("the charge should have failed")
            except RequestError:
                pass
        await dep.admin("bca", "admin.faults", {"failure_rate_pct": 0})
        after = await scrape(port)
        stats_after = await dep.stats("bca")

        assert moved(before, after, "paywire_bank_operations_total", op=banklink.AUTHORIZE,
                     outcome="ok") == CHARGES
        failed = moved(before, after, "paywire_bank_operations_total", op=banklink.AUTHORIZE,
                       outcome="BANK_UNAVAILABLE")
        received = (stats_after["received"][banklink.AUTHORIZE]
                    - stats_before["received"].get(banklink.AUTHORIZE, 0))
        assert failed >= 1 and CHARGES + failed == received  # every op it got, counted once
        frames = moved(before, after, "paywire_bank_frames_received_total")
        assert frames == stats_after["frames_received"] - stats_before["frames_received"]
        # One batch-size observation per commit of the books, as the node's own count says.
        commits = stats_after["sql_transactions"] - stats_before["sql_transactions"]
        assert commits >= 1
        assert moved(before, after, "paywire_bank_books_batch_writes_count") == commits
        assert moved(before, after, "paywire_bank_books_commit_seconds_count") == commits
        assert moved(before, after, "paywire_bank_books_batch_writes_sum") >= CHARGES
        # Connections: the hub's link, and one per admin call before (each closed after it).
        assert value(after, "paywire_bank_connections_opened_total") >= 1 + 3

        async def only_the_hub_left() -> bool:
            now = await scrape(port)
            return (value(now, "paywire_bank_connections_opened_total")
                    - value(now, "paywire_bank_connections_closed_total") == 1
                    and value(now, "paywire_bank_sessions") == 1)

        await wait_until(only_the_hub_left, "the admin connections to be counted closed")
    finally:
        dep.stop()
