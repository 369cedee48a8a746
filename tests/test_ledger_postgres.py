"""What the PostgreSQL ledger adds to the contract (``tests/test_ledger_contract.py`` runs
the shared tests on it): numbering in the database under concurrent writers, one round
trip and one commit per batch, synchronous commits, one hub per ledger, and death when its
connection is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from gateway import config as cfgmod
from gateway.ledger import LedgerError, Notification, ledger_tools, open_ledger
from gateway.ledger.postgres import PostgresLedger, PostgresLedgerTools
from gateway.ledger.sqlite import SqliteLedger
from gateway.storage.lockfile import LockHeld
from gateway.transactions.model import Transaction, now_ms
from protocol.errors import StorageClosed


def _tx(merchant: str, order: str, amount: int = 1000) -> Transaction:
    now = now_ms()
    return Transaction(transaction_id=f"tx-{merchant}-{order}", merchant_id=merchant,
                       order_id=order, gross_amount=amount, currency="IDR",
                       payment_type="credit_card", status="pending", fraud_status="accept",
                       request_hash=b"h", created_ms=now, updated_ms=now)


def _note(tx: Transaction) -> Notification:
    return Notification(tx.transaction_id.encode(), "https://m.example/hook",
                        b'{"event_id":"evt_' + tx.merchant_id.encode() + b"_", b'"}')


async def _sql(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query)
        return rows
    finally:
        await conn.close()


async def test_two_writers_number_one_merchants_events_without_gap_or_duplicate(
        pg_dsn: str) -> None:
    """Two ledgers (as two hubs would be) write events for one merchant at once: the
    database allocates the numbers, so together they count 1..N exactly once."""
    a = PostgresLedger(pg_dsn, exclusive=False)
    b = PostgresLedger(pg_dsn, exclusive=False)
    await a.start()
    await b.start()
    try:
        futs: list[asyncio.Future[int | None]] = []
        for round_ in range(20):  # many batches each, interleaved on the server
            for i in range(15):
                for name, ledger in (("a", a), ("b", b)):
                    tx = _tx("M1", f"{name}-{round_}-{i}")
                    futs.append(ledger.insert_new(tx, _note(tx)))  # type: ignore[arg-type]
            await asyncio.sleep(0)  # let each writer send what it has: many batches
        seqs = await asyncio.gather(*futs)
        assert a.commits > 1 and b.commits > 1
        assert sorted(s for s in seqs if isinstance(s, int)) == list(range(1, 601))
        assert await a.last_event_seqs() == {"M1": 600}
        assert [s for s, _ in await b.events_after("M1", 0, 1000)] == list(range(1, 601))
        # The webhook rows carry the same numbers in their event ids and bodies.
        rows = await _sql(pg_dsn, "SELECT event_id, body FROM webhooks")
        assert sorted(r["event_id"] for r in rows) == sorted(f"evt_M1_{s}"
                                                            for s in range(1, 601))
        assert all(r["body"] == b'{"event_id":"' + r["event_id"].encode() + b'"}'
                   for r in rows)
    finally:
        await a.close()
        await b.close()


async def test_the_same_order_from_two_writers_is_stored_once(pg_dsn: str) -> None:
    """Idempotency by the (merchant_id, order_id) key: the loser gets the winner's record."""
    a = PostgresLedger(pg_dsn, exclusive=False)
    b = PostgresLedger(pg_dsn, exclusive=False)
    await a.start()
    await b.start()
    try:
        for i in range(30):
            first, second = _tx("M1", f"o{i}", 1000), _tx("M1", f"o{i}", 2000)
            second.transaction_id += "-other"
            got = await asyncio.gather(a.insert_new(first, _note(first)),
                                       b.insert_new(second, _note(second)))
            winners = [g for g in got if isinstance(g, int)]
            losers = [g for g in got if isinstance(g, Transaction)]
            assert len(winners) == 1 and len(losers) == 1
            assert losers[0] == (first if got[0] == winners[0] else second)
        assert await a.last_event_seqs() == {"M1": 30}
    finally:
        await a.close()
        await b.close()


async def test_a_batch_is_one_call_and_one_commit(pg_dsn: str) -> None:
    ledger = PostgresLedger(pg_dsn)
    await ledger.start()
    try:
        before = (await _sql(pg_dsn, "SELECT xact_commit FROM pg_stat_database "
                                     "WHERE datname = current_database()"))[0][0]
        txs = [_tx(f"M{i % 3}", f"o{i}") for i in range(300)]
        futs = [ledger.insert_new(t, _note(t)) for t in txs]  # one loop iteration
        futs.append(ledger.webhook_dead(1, 1, "x"))
        await asyncio.gather(*futs)
        assert ledger.commits == 1
        # The server counted it too (plus the reads of this test; stats lag a little, so
        # only the upper bound is checked: not one commit per write).
        after = (await _sql(pg_dsn, "SELECT xact_commit FROM pg_stat_database "
                                    "WHERE datname = current_database()"))[0][0]
        assert after - before < 20
    finally:
        await ledger.close()


async def test_commits_are_synchronous_whatever_the_servers_default(pg_dsn: str) -> None:
    await _sql(pg_dsn, "SELECT 1")
    conn = await asyncpg.connect(pg_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    finally:
        await conn.close()
    assert (await _sql(pg_dsn, "SHOW synchronous_commit"))[0][0] == "off"
    ledger = PostgresLedger(pg_dsn)
    await ledger.start()
    try:
        assert ledger._conn is not None
        assert await ledger._conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await ledger.close()


async def test_records_are_the_same_bytes_as_in_sqlite(pg_dsn: str, tmp_path: Path) -> None:
    tx = _tx("M1", "o1")
    tx.refunds = [{"refund_key": "r", "amount": 5, "time_ms": 3, "reason": None}]
    pg, lite = PostgresLedger(pg_dsn), SqliteLedger(tmp_path / "l.db")
    for ledger in (pg, lite):
        await ledger.start()
        await ledger.insert_new(tx)
        await ledger.close()
    stored = await _sql(pg_dsn, "SELECT record FROM transactions")
    assert stored[0][0] == tx.to_record()
    assert ledger_tools(pg_dsn).transaction("M1", "o1") == tx
    assert ledger_tools(tmp_path / "l.db").transaction("M1", "o1") == tx


async def test_one_hub_per_ledger(pg_dsn: str) -> None:
    """An exclusive ledger (``exclusive=True``; the hub opens it shared, for several hubs:
    tests/test_multihub_postgres.py) refuses a second writer, as a SQLite file does."""
    first = PostgresLedger(pg_dsn)
    await first.start()
    try:
        second = PostgresLedger(pg_dsn, lock_wait_s=0.2)
        with pytest.raises(LockHeld, match="paywire-hub"):
            await second.start()
    finally:
        await first.close()
    third = PostgresLedger(pg_dsn, lock_wait_s=5.0)
    await third.start()  # the lock went with the first hub's session
    await third.close()


async def test_a_lost_connection_kills_the_ledger(pg_dsn: str) -> None:
    ledger = PostgresLedger(pg_dsn)
    await ledger.start()
    try:
        assert ledger.died is not None and not ledger.died.done()
        await ledger.insert_new(_tx("M1", "before"))
        assert ledger._conn is not None
        pid = ledger._conn.get_server_pid()
        await _sql(pg_dsn, f"SELECT pg_terminate_backend({pid})")
        await asyncio.wait_for(asyncio.shield(ledger.died), 30.0)
        with pytest.raises(StorageClosed):
            ledger.insert_new(_tx("M1", "after"))
    finally:
        await ledger.close()
    assert [r[0] for r in await _sql(pg_dsn, "SELECT order_id FROM transactions")] \
        == ["before"]


async def test_an_unreachable_server_is_a_one_line_error(pg_dsn: str) -> None:
    bad = pg_dsn.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        await PostgresLedger(bad, connect_timeout_s=5.0).start()
    with pytest.raises(LedgerError, match="cannot reach"):
        PostgresLedgerTools(bad).webhook_count()


def test_the_ledger_url_setting(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('[ledger]\nurl = "postgresql://paywire@db.example:5432/paywire"\n'
                    'commit_timeout_s = 5.0\n')
    cfg = cfgmod.load(cfgmod.HubConfig, path)
    assert cfg.ledger.url == "postgresql://paywire@db.example:5432/paywire"
    assert cfg.ledger.commit_timeout_s == 5.0
    assert isinstance(open_ledger(cfg.ledger_path, cfg.ledger.url), PostgresLedger)
    assert isinstance(open_ledger(cfg.ledger_path, cfgmod.HubConfig().ledger.url),
                      SqliteLedger)  # the embedded default
    assert "[ledger]" in cfgmod.dump_toml(cfg)  # what child processes are given
    path.write_text('[ledger]\nurl = "mysql://x/y"\n')
    with pytest.raises(cfgmod.ConfigError, match="postgresql://"):
        cfgmod.load(cfgmod.HubConfig, path)


async def test_webhook_claims_give_each_row_to_one_hub_in_order_per_transaction(
        pg_dsn: str) -> None:
    """The outbox is claimable by several hubs (not wired to the dispatcher yet): a claimed
    row is no other hub's until its lease ends or an attempt's outcome is recorded; a
    transaction's next row waits for the one before it; a row locked by a claim in progress
    is skipped, not waited for."""
    a = PostgresLedger(pg_dsn, exclusive=False)
    b = PostgresLedger(pg_dsn, exclusive=False)
    await a.start()
    await b.start()
    try:
        txs = [_tx("M1", f"o{i}") for i in range(3)]
        for t in txs:
            await a.insert_new(t, _note(t))
        for t in txs:
            t.status = "capture"
            await a.save(t, _note(t))
        now = now_ms()
        first = await a.claim_webhooks("hub-a", now, 60_000, 10)
        assert [w.event_id for w in first] == ["evt_M1_1", "evt_M1_2", "evt_M1_3"]
        assert await b.claim_webhooks("hub-b", now, 60_000, 10) == []  # all leased to a
        await a.webhook_delivered(first[0].id, 1, now)
        # o0's second notification is now the oldest pending of its transaction.
        assert [w.event_id for w in await b.claim_webhooks("hub-b", now, 120_000, 10)] \
            == ["evt_M1_4"]
        await a.webhook_retry(first[1].id, 1, now, "HTTP 503")  # outcome known: lease ends
        assert [w.id for w in await b.claim_webhooks("hub-b", now, 120_000, 10)] \
            == [first[1].id]
        # Hub a died holding o2's row: when its lease has run out, b takes it over.
        assert await b.claim_webhooks("hub-b", now + 59_000, 60_000, 10) == []
        assert [w.id for w in await b.claim_webhooks("hub-b", now + 60_000, 60_000, 10)] \
            == [first[2].id]
        # A claim in progress elsewhere (its row locked) is skipped, not waited for.
        await a.webhook_dead(first[2].id, 1, "gone")
        assert tools_redeliver(pg_dsn, first[2].id) == 1
        conn = await asyncpg.connect(pg_dsn)
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM webhooks WHERE id = $1 FOR UPDATE",
                                   first[2].id)
                got = await asyncio.wait_for(b.claim_webhooks("hub-b", now, 1000, 10), 30.0)
                assert got == []
        finally:
            await conn.close()
        assert [w.id for w in await b.claim_webhooks("hub-b", now, 1000, 10)] == [first[2].id]
    finally:
        await a.close()
        await b.close()


def tools_redeliver(dsn: str, wid: int) -> int:
    return PostgresLedgerTools(dsn).redeliver([wid])
