"""Two hub processes on one PostgreSQL ledger at once (issue 14, item 2): idempotency and
per-order order across hubs, nonces, events, webhook claims, a dead hub's intents taken
over, shared fraud windows. Every test runs real hub and bank processes on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.client import Card, Client, ConnectionLost, connect
from gateway.config import FraudConfig, LedgerConfig, VelocityRule, WebhookConfig
from gateway.ledger import ledger_tools
from gateway.processes import NodeProcess
from protocol import banklink
from protocol.errors import ErrorCode, RemoteError
from tests.deploy import KEYS, RICH, Deployment, ack
from tests.receiver import Receiver
from tests.test_e2e_security import raw_request
from tests.waiting import wait_until

ROUNDS = 30  # same-order races per run


class TwoHubs:
    """A deployment (banks, hub A) plus hub B on the same PostgreSQL ledger."""

    def __init__(self, dep: Deployment, hub_b: NodeProcess) -> None:
        self.dep = dep
        self.hub_b = hub_b

    def a(self, **options: Any) -> Client:
        return self.dep.client(**options)

    def b(self, merchant: str = "M1", **options: Any) -> Client:
        return connect("127.0.0.1", self.hub_b.port, merchant_id=merchant,
                       server_key=KEYS[merchant], certs_dir=self.dep.certs, **options)


@asynccontextmanager
async def two_hubs(tmp_path: Path, pg_dsn: str, *, webhook_urls: dict[str, str] | None = None,
                   **hub_overrides: Any) -> AsyncIterator[TwoHubs]:
    dep = Deployment(tmp_path, bca_nodes=1, webhook_urls=webhook_urls,
                     hub_overrides={"ledger": LedgerConfig(url=pg_dsn), **hub_overrides})
    hub_b: NodeProcess | None = None
    try:
        await dep.astart()
        assert dep.hub_cfg is not None
        cfg_b = dataclasses.replace(dep.hub_cfg, listen_port=0)
        hub_b = NodeProcess("hub", cfg_b, tmp_path, "hub-b").start()
        await asyncio.get_running_loop().run_in_executor(None, hub_b.wait_ready)
        yield TwoHubs(dep, hub_b)
    finally:
        if hub_b is not None:
            hub_b.terminate()
        dep.stop()


def card(i: int = 0) -> Card:
    return Card(RICH[i], 12, 2030, "123")


def audit_clean(tmp_path: Path, pg_dsn: str, acks: list[dict[str, Any]]) -> dict[str, Any]:
    acks_file = tmp_path / "acks.jsonl"
    acks_file.write_text("".join(json.dumps(a) + "\n" for a in acks))
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "--ledger", pg_dsn, "--bank",
         f"bca={tmp_path / 'bca.db'}", "--acks", str(acks_file)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    summary: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert summary["clean"], summary
    return summary


async def test_the_same_order_sent_to_both_hubs_at_once_is_one_transaction_and_one_debit(
        tmp_path: Path, pg_dsn: str) -> None:
    async with two_hubs(tmp_path, pg_dsn) as hubs:
        acks = []
        async with hubs.a() as a, hubs.b() as b:
            for i in range(ROUNDS):
                order = f"dup-{i}"
                ra, rb = await asyncio.gather(a.charge(order, 10_000 + i, card=card()),
                                              b.charge(order, 10_000 + i, card=card()))
                assert ra.transaction_id == rb.transaction_id, order
                assert ra.transaction_status == rb.transaction_status == "capture"
                # The loser answers as a replay of the winner's answer.
                assert sorted([ra.replayed, rb.replayed]) == [False, True], order
                acks.append(ack(ra))
                # One transaction, one debit, each round.
                assert len(ledger_tools(pg_dsn).summaries()) == i + 1
                assert await hubs.dep.received("bca", banklink.AUTHORIZE) == i + 1
        summary = audit_clean(tmp_path, pg_dsn, acks)
        assert summary["transactions"] == ROUNDS


async def test_a_capture_on_one_hub_and_a_refund_on_the_other_never_interleave(
        tmp_path: Path, pg_dsn: str) -> None:
    async with two_hubs(tmp_path, pg_dsn) as hubs:
        acks = []
        async with hubs.a() as a, hubs.b() as b:
            # A stale copy: hub B has seen the order authorized; hub A captures it; B's
            # refund must see the capture (not refuse from its cached "authorize").
            first = await a.charge("seq-0", 50_000, card=card(1), capture=False)
            assert (await b.status("seq-0")).transaction_status == "authorize"
            assert (await a.capture("seq-0")).transaction_status == "capture"
            refunded = await b.refund("seq-0", "r1", 20_000)
            assert refunded.transaction_status == "partial_refund"
            assert (await a.status("seq-0")).transaction_status == "partial_refund"
            acks.append(ack(first))
            # At once, many times: the refund runs before the capture (refused: nothing
            # captured) or after it (refunds it); never against a state the other changed.
            for i in range(10):
                order = f"race-{i}"
                acks.append(ack(await a.charge(order, 30_000, card=card(2), capture=False)))
                cap, ref = await asyncio.gather(a.capture(order), b.refund(order, "r1"),
                                                return_exceptions=True)
                assert not isinstance(cap, BaseException), cap
                assert cap.transaction_status in ("capture", "refund")
                if isinstance(ref, RemoteError):
                    assert ref.code is ErrorCode.INVALID_TRANSITION, ref
                    want = "capture"
                else:
                    assert not isinstance(ref, BaseException), ref
                    assert ref.transaction_status == "refund"
                    want = "refund"
                assert (await a.status(order)).transaction_status == want
                assert (await b.status(order)).transaction_status == want
        audit_clean(tmp_path, pg_dsn, acks)


async def test_a_nonce_replayed_to_the_other_hub_is_refused(tmp_path: Path,
                                                            pg_dsn: str) -> None:
    args = {"order_id": "nonce-1", "gross_amount": 1_000, "payment_type": "credit_card",
            "card": {"number": RICH[3], "exp_month": 12, "exp_year": 2030, "cvv": "123"}}
    async with two_hubs(tmp_path, pg_dsn) as hubs:
        nonce = os.urandom(16)
        async with hubs.a() as a, hubs.b() as b:
            done = await raw_request(a, "charge", args, nonce=nonce)
            assert done["transaction_status"] == "capture"
            with pytest.raises(RemoteError) as info:
                await raw_request(b, "charge", args, nonce=nonce)
            assert info.value.code is ErrorCode.REPLAYED
            # and the other way round, on a request that failed (its nonce is spent too)
            other = os.urandom(16)
            with pytest.raises(RemoteError) as info:
                await raw_request(b, "status", {"order_id": "none"}, nonce=other)
            assert info.value.code is ErrorCode.NOT_FOUND
            with pytest.raises(RemoteError) as info:
                await raw_request(a, "status", {"order_id": "none"}, nonce=other)
            assert info.value.code is ErrorCode.REPLAYED
            # a fresh nonce is served by either
            again = await raw_request(b, "status", {"order_id": "nonce-1"})
            assert again["transaction_status"] == "capture"
        assert await hubs.dep.received("bca", banklink.AUTHORIZE) == 1


async def test_events_written_by_one_hub_reach_a_subscriber_of_the_other_and_resume_on_both(
        tmp_path: Path, pg_dsn: str) -> None:
    async with two_hubs(tmp_path, pg_dsn) as hubs, hubs.a() as a, hubs.b() as b:
        stream = b.events(reconnect=False)  # subscribed on hub B from seq 0
        first = asyncio.ensure_future(anext(stream))
        orders = [f"ev-{i}" for i in range(6)]
        for i, order in enumerate(orders):  # written by both hubs, mostly A
            await (b if i == 3 else a).charge(order, 5_000 + i, card=card(4))
        got = [await asyncio.wait_for(first, 60.0)]
        while len(got) < len(orders):
            got.append(await asyncio.wait_for(anext(stream), 60.0))
        await stream.aclose()
        assert [e.seq for e in got] == [1, 2, 3, 4, 5, 6]
        assert [e.transaction.order_id for e in got] == orders
        # Resume by seq on either hub: the same events after it.
        for client in (a, b):
            resumed = client.events(since=3, reconnect=False)
            tail = [await asyncio.wait_for(anext(resumed), 60.0) for _ in range(3)]
            await resumed.aclose()
            assert [e.seq for e in tail] == [4, 5, 6]
            assert [e.transaction.order_id for e in tail] == orders[3:]


async def test_two_hubs_deliver_each_webhook_once_and_in_order_per_transaction(
        tmp_path: Path, pg_dsn: str) -> None:
    rx = await Receiver(KEYS, tmp_path / "rx-tls").start()
    hooks = rx.trusted(WebhookConfig(time_scale=0.0002, poll_interval_s=0.02))
    try:
        async with two_hubs(tmp_path, pg_dsn, webhook_urls={"M1": rx.url("M1")},
                            webhooks=hooks) as hubs:
            async with hubs.a() as a, hubs.b() as b:
                for i in range(12):
                    first, second = (a, b) if i % 2 else (b, a)
                    await first.charge(f"wh-{i}", 40_000, card=card(5))
                    await second.refund(f"wh-{i}", "r1", 10_000)
            assert await rx.wait_for(lambda: len(rx.delivered()) >= 24)
            events = ledger_tools(pg_dsn).webhooks(limit=1000)
            await wait_until(
                lambda: all(w.state == "delivered"
                            for w in ledger_tools(pg_dsn).webhooks(limit=1000)),
                "every outbox row to be recorded delivered", timeout_s=60.0)
    finally:
        await rx.stop()
    assert len(events) == 24
    # Each delivered once (every answer was 200: nothing was sent twice, by either hub).
    ids = [d.event_id for d in rx.deliveries]
    assert sorted(ids) == sorted(w.event_id for w in events)
    assert len(ids) == len(set(ids))
    # In order per transaction: the capture before the refund.
    for i in range(12):
        kinds = [d.body["transaction_status"] for d in rx.deliveries
                 if d.body["order_id"] == f"wh-{i}"]
        assert kinds == ["capture", "partial_refund"], (i, kinds)


async def test_a_dead_hubs_bank_call_is_settled_by_the_other_hub(tmp_path: Path,
                                                                 pg_dsn: str) -> None:
    async with two_hubs(tmp_path, pg_dsn) as hubs:
        dep = hubs.dep
        acks = []
        async with hubs.a() as a:
            acks.append(ack(await a.charge("kill-0", 10_000, card=card(6))))
        await dep.admin("bca", "admin.faults", {"blackhole": True})
        client = await hubs.a(timeout_s=300.0, reconnect=False).connect()
        charge = asyncio.ensure_future(client.charge("kill-1", 21_000, card=card(7)))
        await wait_until(lambda: dep.received("bca", banklink.AUTHORIZE),
                         "the bank to receive the second authorization")
        # (received counts both; the first was answered before the black hole)
        await wait_until(lambda: _unresolved(pg_dsn) == ["kill-1"], "the intent on disk")
        assert dep.hub is not None
        dep.hub.kill()  # kill -9 with the bank call in flight
        with pytest.raises(ConnectionLost):
            await charge
        await client.close()
        await dep.admin("bca", "admin.faults", {"blackhole": False})
        # Hub B (alive all along) takes the dead hub's intent over and settles it.
        await wait_until(lambda: not _unresolved(pg_dsn), "hub B to settle the intent",
                         timeout_s=60.0)
        async with hubs.b() as b:
            settled = await b.status("kill-1")
            again = await b.charge("kill-0", 10_000, card=card(6))
        assert settled.transaction_status == "failure"  # it never reached the books
        assert again.replayed and again.transaction_id == acks[0]["transaction_id"]
        assert await dep.received("bca", banklink.AUTHORIZE) == 2  # never sent twice
        summary = audit_clean(tmp_path, pg_dsn, acks)
        assert summary["transactions"] == 2


def _unresolved(dsn: str) -> list[str]:
    return sorted(s.order_id for s in ledger_tools(dsn).summaries() if s.unresolved)


async def test_velocity_windows_count_the_other_hubs_charges(
        tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYWIRE_LOG_LEVEL", "INFO")  # the hubs log what they counted
    fraud = FraudConfig(velocity=[VelocityRule("card", 600.0, 2, "deny")])
    async with two_hubs(tmp_path, pg_dsn, fraud=fraud) as hubs:
        async with hubs.a() as a:
            for i in range(2):
                assert (await a.charge(f"vel-{i}", 1_000, card=card(8))).transaction_status \
                    == "capture"
        log_b = hubs.hub_b.log_path
        await wait_until(lambda: "counted 2 charges other hubs took" in log_b.read_text(),
                         "hub B to count hub A's charges", timeout_s=60.0)
        async with hubs.b() as b:
            third = await b.charge("vel-2", 1_000, card=card(8))
            other_card = await b.charge("vel-3", 1_000, card=card(9))
        assert third.transaction_status == "deny"  # the third within the window, any hub
        assert other_card.transaction_status == "capture"


# --- the mechanisms, on two ledger instances (as two hubs hold them) ------------------------

async def _count(dsn: str, sql: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def test_order_locks_are_held_across_ledgers_and_lost_with_a_dead_session(
        pg_dsn: str) -> None:
    from gateway.ledger.postgres import PostgresLedger

    a, b = PostgresLedger(pg_dsn, exclusive=False), PostgresLedger(pg_dsn, exclusive=False)
    await a.start()
    await b.start()
    try:
        assert await a.lock_order("M1", "o1", 1.0)
        assert not await b.lock_order("M1", "o1", 0.2)  # held by the other "hub"
        assert await b.lock_order("M1", "o2", 1.0)  # other orders are free
        assert await b.lock_order("M2", "o1", 1.0)  # and other merchants' same order id
        waiting = asyncio.ensure_future(b.lock_order("M1", "o1", 30.0))
        await a.unlock_order("M1", "o1")
        assert await waiting  # taken as soon as it is released
        # A "hub" that dies loses its locks with its session: the other takes them over.
        assert await a.lock_order("M1", "o3", 1.0)
        assert not await b.lock_order("M1", "o3", 0.2)
        assert a._lock_conn is not None and a.died is not None
        pid = a._lock_conn.get_server_pid()
        await _count(pg_dsn, f"SELECT count(*) FROM pg_terminate_backend({pid})")
        await asyncio.wait_for(asyncio.shield(a.died), 30.0)  # and the hub stops
        assert await b.lock_order("M1", "o3", 30.0)
    finally:
        await a.close()
        await b.close()


async def test_an_unlock_after_close_is_not_the_ledger_dying(pg_dsn: str) -> None:
    """Work cancelled at a hub's stop releases its order's lock late; if the ledger has
    closed by then, that is the stop, not a lost database: ``died`` (the hub's exit code 1)
    stays unset. Seen once behind HAProxy: a drained hub exited 1."""
    from gateway.ledger.postgres import PostgresLedger
    from protocol.errors import StorageClosed

    a = PostgresLedger(pg_dsn, exclusive=False)
    await a.start()
    try:
        assert await a.lock_order("M1", "o1", 1.0)
    finally:
        await a.close()
    with pytest.raises(StorageClosed):
        await a.unlock_order("M1", "o1")
    assert a.died is not None and not a.died.done()


async def test_nonces_are_spent_across_ledgers_and_expired_ones_purged(pg_dsn: str) -> None:
    from gateway.ledger.postgres import NONCE_REPLAYED, PostgresLedger
    from gateway.transactions.model import now_ms

    a, b = PostgresLedger(pg_dsn, exclusive=False), PostgresLedger(pg_dsn, exclusive=False)
    b.nonce_purge_interval_s = 0.05
    await a.start()
    await b.start()
    try:
        live = now_ms() + 600_000
        assert await a.spend_nonce("M1", b"n1", live) is None
        assert await b.spend_nonce("M1", b"n1", live) == NONCE_REPLAYED
        assert await a.spend_nonce("M1", b"n1", live) == NONCE_REPLAYED
        assert await b.spend_nonce("M2", b"n1", live) is None  # each merchant its own
        # An expired nonce is free again (its timestamp is refused by the window anyway).
        assert await a.spend_nonce("M1", b"old", now_ms() - 1) is None
        assert await b.spend_nonce("M1", b"old", live) is None
        # Expired rows are purged: the table holds only live nonces.
        for i in range(20):
            await a.spend_nonce("M1", f"gone-{i}".encode(), now_ms() - 1)

        async def purged() -> bool:
            return await _count(pg_dsn, "SELECT count(*) FROM nonces") == 3

        await wait_until(purged, "expired nonces to be purged", timeout_s=30.0)
    finally:
        await a.close()
        await b.close()
