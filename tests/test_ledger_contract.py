"""The ledger contract: what every ``Ledger`` (and its ``LedgerTools``) must do.

Parametrised over implementations: SQLite (a file in the test's directory) and PostgreSQL
(a fresh database of its own on the tests' server, ``tests/pgsupport.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger import (
    Ledger,
    LedgerError,
    LedgerTools,
    Notification,
    SqliteLedger,
    SqliteLedgerTools,
)
from gateway.transactions.model import Transaction, now_ms


@dataclass
class Implementation:
    name: str
    place: Callable[[pytest.FixtureRequest, Path], Any]  # where a test's ledger lives
    open: Callable[[Any], Ledger]  # a ledger at this place, not started
    tools: Callable[[Any], LedgerTools]


def _postgres_ledger(dsn: str) -> Ledger:
    from gateway.ledger.postgres import PostgresLedger

    return PostgresLedger(dsn)


def _postgres_tools(dsn: str) -> LedgerTools:
    from gateway.ledger.postgres import PostgresLedgerTools

    return PostgresLedgerTools(dsn)


IMPLEMENTATIONS = [
    Implementation("sqlite", lambda request, tmp: tmp / "ledger.db", SqliteLedger,
                   SqliteLedgerTools),
    Implementation("postgres", lambda request, tmp: request.getfixturevalue("pg_dsn"),
                   _postgres_ledger, _postgres_tools),
]


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda i: i.name)
def impl(request: pytest.FixtureRequest) -> Implementation:
    chosen: Implementation = request.param
    return chosen


@pytest.fixture
def place(impl: Implementation, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return impl.place(request, tmp_path)


@pytest.fixture
async def ledger(impl: Implementation, place: Any) -> AsyncIterator[Ledger]:
    opened = impl.open(place)
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def tools(impl: Implementation, place: Any) -> LedgerTools:
    return impl.tools(place)


def _tx(merchant: str, order: str, amount: int = 1000, status: str = "pending",
        created_ms: int | None = None, **kw: object) -> Transaction:
    now = now_ms() if created_ms is None else created_ms
    return Transaction(transaction_id=f"tx-{merchant}-{order}-{amount}", merchant_id=merchant,
                       order_id=order, gross_amount=amount, currency="IDR",
                       payment_type="credit_card", status=status, fraud_status="accept",
                       request_hash=b"h", created_ms=now, updated_ms=now, **kw)  # type: ignore[arg-type]


def _note(tx: Transaction, url: str | None = "https://m.example/hook") -> Notification:
    return Notification(f"data:{tx.transaction_id}:{tx.status}".encode(), url,
                        b'{"event_id":"evt_' + tx.merchant_id.encode() + b"_",
                        b'","status":"' + tx.status.encode() + b'"}')


async def test_insert_new_keeps_the_first_write_per_merchant_and_order(ledger: Ledger) -> None:
    first = await ledger.insert_new(_tx("m1", "o1", 1000))
    assert first is None  # stored: nothing was there before
    # One batch: a duplicate of m1/o1, the same order id for another merchant, and a
    # duplicate inside the batch itself.
    futs = [ledger.insert_new(_tx("m1", "o1", 2000)), ledger.insert_new(_tx("m2", "o1", 3000)),
            ledger.insert_new(_tx("m2", "o2", 4000)), ledger.insert_new(_tx("m2", "o2", 5000))]
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert isinstance(results[0], Transaction) and results[0].gross_amount == 1000
    assert results[1] is None and results[2] is None
    assert isinstance(results[3], Transaction) and results[3].gross_amount == 4000
    stored = {(t.merchant_id, t.order_id): t.gross_amount
              for t in await ledger.created_since(0)}
    assert stored == {("m1", "o1"): 1000, ("m2", "o1"): 3000, ("m2", "o2"): 4000}


async def test_an_existing_insert_writes_no_event_and_returns_the_stored_transaction(
        ledger: Ledger, tools: LedgerTools) -> None:
    tx = _tx("m1", "o1", 1000, masked_card="4811")
    assert await ledger.insert_new(tx, _note(tx)) == 1
    again = _tx("m1", "o1", 2000)
    stored = await ledger.insert_new(again, _note(again))
    assert stored == tx  # every field, as stored
    assert await ledger.last_event_seqs() == {"m1": 1}
    assert tools.webhook_count() == 1


async def test_save_writes_the_event_and_webhook_in_its_commit_numbered_per_merchant(
        ledger: Ledger, tools: LedgerTools) -> None:
    a, b = _tx("m1", "a"), _tx("m2", "b")
    seqs = await asyncio.gather(ledger.insert_new(a, _note(a)), ledger.insert_new(b, _note(b)))
    assert seqs == [1, 1]
    a.status = "settlement"
    futs = [ledger.save(a, _note(a)), ledger.save(b), ledger.save(b, _note(b, url=None)),
            ledger.save(a, _note(a))]
    assert await asyncio.gather(*futs) == [2, None, 2, 3]
    assert await ledger.last_event_seqs() == {"m1": 3, "m2": 2}
    events = await ledger.events_after("m1", 0, 100)
    assert [s for s, _ in events] == [1, 2, 3]
    assert events[1][1] == f"data:{a.transaction_id}:settlement".encode()
    assert await ledger.events_after("m1", 1, 1) == events[1:2]
    assert await ledger.events_after("m1", 3, 10) == []
    assert await ledger.events_after("nobody", 0, 10) == []
    # A webhook row per notification with a URL; its body is head + seq + tail.
    rows = tools.webhooks(None, 100)
    assert [(r.merchant_id, r.event_id, r.state, r.attempts) for r in reversed(rows)] == [
        ("m1", "evt_m1_1", "pending", 0), ("m2", "evt_m2_1", "pending", 0),
        ("m1", "evt_m1_2", "pending", 0), ("m1", "evt_m1_3", "pending", 0)]
    due = await ledger.due_webhooks(now_ms(), 100)
    assert due[0].body == b'{"event_id":"evt_m1_1","status":"pending"}'
    assert due[0].url == "https://m.example/hook" and due[0].transaction_id == a.transaction_id


async def test_a_late_outcome_never_undoes_a_recorded_delivery(
        ledger: Ledger, tools: LedgerTools) -> None:
    """Two hubs of a shared ledger may both attempt one notification (the first one's lease
    ran out): the later "retry" or "dead" of the slower one leaves the row delivered."""
    a, b = _tx("m1", "late-1"), _tx("m1", "late-2")
    await ledger.insert_new(a, _note(a))
    await ledger.insert_new(b, _note(b))
    by_event = {r.event_id: r for r in tools.webhooks(None, 10)}
    first, second = by_event["evt_m1_1"].id, by_event["evt_m1_2"].id
    for wid in (first, second):
        await ledger.webhook_delivered(wid, 2, now_ms())
    await ledger.webhook_retry(first, 1, now_ms() + 60_000, "HTTP 503")
    await ledger.webhook_dead(second, 3, "HTTP 404")
    states = {r.event_id: (r.state, r.attempts) for r in tools.webhooks(None, 10)}
    assert states == {"evt_m1_1": ("delivered", 2), "evt_m1_2": ("delivered", 2)}
    # On a pending row both still apply.
    c = _tx("m1", "late-3")
    await ledger.insert_new(c, _note(c))
    third = {r.event_id: r.id for r in tools.webhooks(None, 10)}["evt_m1_3"]
    await ledger.webhook_retry(third, 1, now_ms() + 60_000, "HTTP 503")
    await ledger.webhook_dead(third, 2, "HTTP 404")
    assert {r.event_id: (r.state, r.attempts) for r in tools.webhooks(None, 10)}[
        "evt_m1_3"] == ("dead", 2)


async def test_event_seqs_have_no_gaps_across_many_batches(ledger: Ledger) -> None:
    txs = [_tx(f"m{i % 3}", f"o{i}") for i in range(60)]
    got = await asyncio.gather(*(ledger.insert_new(t, _note(t, None)) for t in txs))
    for t in txs[::2]:
        t.status = "capture"
        await ledger.save(t, _note(t, None))
    assert all(isinstance(s, int) for s in got)
    for merchant, count in (await ledger.last_event_seqs()).items():
        assert [s for s, _ in await ledger.events_after(merchant, 0, 1000)] \
            == list(range(1, count + 1))
    assert sum((await ledger.last_event_seqs()).values()) == 60 + 30


async def test_delete_and_the_lookups(ledger: Ledger) -> None:
    old = _tx("m1", "old", created_ms=1_000)
    pending = _tx("m1", "va", expiry_ms=now_ms() + 60_000)
    held = _tx("m1", "card", status="authorize")
    stuck = _tx("m2", "stuck", status="authorize",
                pending_op={"op": "capture", "op_id": "x", "args": {}})
    gone = _tx("m2", "gone")
    for t in (old, pending, held, stuck, gone):
        await ledger.insert_new(t)
    await ledger.delete(gone)
    assert await ledger.get("m2", "gone") is None
    assert await ledger.get_by_id(gone.transaction_id) is None
    assert await ledger.get("m1", "card") == held
    assert await ledger.get_by_id(stuck.transaction_id) == stuck
    assert await ledger.get("m2", "card") is None  # keys are per merchant
    assert [t.order_id for t in await ledger.unresolved()] == ["stuck"]
    assert sorted(t.order_id for t in await ledger.pending()) == ["old", "va"]
    assert sorted(t.order_id for t in await ledger.challenged()) == ["card", "stuck"]
    assert sorted(t.order_id for t in await ledger.created_since(2_000)) \
        == ["card", "stuck", "va"]
    # A later save clears what changed: resolved, no longer pending.
    stuck.pending_op = None
    stuck.status = "capture"
    pending.status = "settlement"
    await ledger.save(stuck)
    await ledger.save(pending)
    assert await ledger.unresolved() == []
    assert [t.order_id for t in await ledger.pending()] == ["old"]
    assert await ledger.get("m2", "stuck") == stuck


async def test_writes_apply_in_submission_order(ledger: Ledger) -> None:
    tx = _tx("m1", "o1")
    futs: list[asyncio.Future[object]] = [ledger.insert_new(tx)]  # type: ignore[list-item]
    for amount in range(1, 6):
        tx.captured_amount = amount
        futs.append(ledger.save(tx))  # type: ignore[arg-type]  # each snapshotted at the call
    other = _tx("m1", "o2")
    futs.append(ledger.insert_new(other))  # type: ignore[arg-type]
    futs.append(ledger.delete(other))  # type: ignore[arg-type]
    read = asyncio.ensure_future(ledger.get("m1", "o1"))  # queued after the writes
    await asyncio.gather(*futs)
    seen = await read
    assert seen is not None and seen.captured_amount == 5
    stored = await ledger.get("m1", "o1")
    assert stored is not None and stored.captured_amount == 5
    assert await ledger.get("m1", "o2") is None
    assert ledger.queued == 0


async def test_the_outbox_delivers_in_order_per_transaction(ledger: Ledger,
                                                            tools: LedgerTools) -> None:
    a, b = _tx("m1", "a"), _tx("m1", "b")
    await ledger.insert_new(a, _note(a))                 # webhook 1 (a)
    await ledger.insert_new(b, _note(b))                 # webhook 2 (b)
    a.status = "capture"
    await ledger.save(a, _note(a))                       # webhook 3 (a)
    a.status = "refund"
    await ledger.save(a, _note(a))                       # webhook 4 (a)
    ids = {r.event_id: r.id for r in tools.webhooks()}
    w1, w2, w3, w4 = (ids[e] for e in ("evt_m1_1", "evt_m1_2", "evt_m1_3", "evt_m1_4"))
    now = now_ms()

    async def due() -> list[int]:
        return [w.id for w in await ledger.due_webhooks(now, 100)]

    assert await due() == [w1, w2]  # only the oldest pending row of each transaction
    assert [w.id for w in await ledger.due_webhooks(now, 1)] == [w1]
    # A failed attempt with retries left: still first for its transaction, due later.
    await ledger.webhook_retry(w1, 1, now + 60_000, "HTTP 503")
    assert await due() == [w2]
    assert [w.id for w in await ledger.due_webhooks(now + 60_000, 100)] == [w1, w2]
    row = {r.id: r for r in tools.webhooks()}[w1]
    assert (row.state, row.attempts, row.last_error) == ("pending", 1, "HTTP 503")
    # Delivered: the transaction's next notification becomes due.
    await ledger.webhook_delivered(w1, 2, now)
    assert await due() == [w2, w3]
    # Dead-lettered: the next one goes on; the dead one waits for an operator.
    await ledger.webhook_dead(w3, 9, "HTTP 410")
    assert await due() == [w2, w4]
    assert [(r.id, r.attempts, r.last_error) for r in tools.webhooks("dead")] \
        == [(w3, 9, "HTTP 410")]
    assert [r.id for r in tools.webhooks("delivered")] == [w1]
    assert [r.id for r in tools.webhooks()] == [w4, w3, w2, w1]  # newest first
    assert [r.id for r in tools.webhooks(None, 2)] == [w4, w3]
    # Redelivered (beside the running ledger): pending again, attempts reset, and first in
    # its transaction's order again.
    assert tools.redeliver([w3]) == 1
    assert await due() == [w2, w3]
    (again,) = [w for w in await ledger.due_webhooks(now, 100) if w.id == w3]
    assert again.attempts == 0 and again.event_id == "evt_m1_3"
    await ledger.webhook_dead(w3, 1, "x")
    await ledger.webhook_dead(w2, 1, "y")
    assert tools.redeliver([], all_dead=True) == 2
    assert tools.webhooks("dead") == []
    assert tools.redeliver([12345]) == 0
    assert tools.webhook_count() == 4


async def test_summaries_give_every_transactions_money_columns(ledger: Ledger,
                                                               tools: LedgerTools) -> None:
    a = _tx("m1", "a", 5000, status="partial_refund", captured_amount=5000,
            refunded_amount=1000, bank="bca")
    b = _tx("m2", "b", status="authorize", pending_op={"op": "capture"})
    await ledger.insert_new(a)
    await ledger.insert_new(b)
    got = sorted(tools.summaries())
    assert [(s.merchant_id, s.order_id, s.transaction_id, s.status, s.unresolved, s.captured,
             s.refunded, s.bank) for s in got] == [
        ("m1", "a", a.transaction_id, "partial_refund", False, 5000, 1000, "bca"),
        ("m2", "b", b.transaction_id, "authorize", True, 0, 0, None)]


async def test_everything_survives_close_and_reopen(impl: Implementation,
                                                    place: Any) -> None:
    first = impl.open(place)
    await first.start()
    assert first.died is not None and not first.died.done()
    txs = [_tx("m1", f"o{i}", status="pending" if i % 2 else "capture") for i in range(5)]
    for t in txs:
        await first.insert_new(t, _note(t))
    txs[0].status = "refund"
    last = first.save(txs[0], _note(txs[0]))  # not awaited: close commits what is queued
    await first.close()
    assert last.done() and last.result() == 6
    assert not first.died.done()  # a clean close is not a death
    second = impl.open(place)
    await second.start()
    try:
        assert sorted(await second.created_since(0), key=lambda t: t.order_id) == txs
        assert await second.last_event_seqs() == {"m1": 6}
        t = txs[1]
        t.status = "settlement"
        assert await second.save(t, _note(t)) == 7  # numbering continues without a gap
        assert len(await second.due_webhooks(now_ms(), 100)) == 5  # one per transaction
    finally:
        await second.close()
    assert impl.tools(place).webhook_count() == 7


async def test_a_bad_write_fails_alone_and_leaves_no_gap_in_the_events(ledger: Ledger) -> None:
    """Two orders cannot share a transaction id: that insert fails by itself; the writes
    around it, in the same batch, commit, and event numbers stay without gaps."""
    a, b = _tx("m1", "a"), _tx("m1", "b")
    clash = _tx("m1", "c")
    clash.transaction_id = a.transaction_id
    futs = [ledger.insert_new(a, _note(a, None)), ledger.insert_new(clash, _note(clash, None)),
            ledger.insert_new(b, _note(b, None))]
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert results[0] == 1 and isinstance(results[1], Exception) and results[2] == 2
    assert await ledger.get("m1", "c") is None
    assert [s for s, _ in await ledger.events_after("m1", 0, 10)] == [1, 2]
    b.status = "capture"
    assert await ledger.save(b, _note(b, None)) == 3


async def test_tools_export_transactions_and_back_up_on_every_backend(
        ledger: Ledger, tools: LedgerTools, impl: Implementation, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    txs = [_tx("m1", f"o{i}", 1000 + i) for i in range(3)]
    for tx in txs:
        await ledger.insert_new(tx)
    assert {t.transaction_id: t.gross_amount for t in await asyncio.to_thread(
        tools.transactions)} == {t.transaction_id: t.gross_amount for t in txs}
    dest = tmp_path / "backup.copy"
    dest.write_bytes(b"")
    with pytest.raises(LedgerError):  # never overwrites
        await asyncio.to_thread(tools.backup, dest)
    dest.unlink()
    if impl.name == "postgres":
        # pg_dump and pg_restore of the server's own version (pgserver ships them; the
        # machine's older pg_dump refuses a newer server), as `paywire ledger backup` finds
        # them: on PATH.
        from gateway.ledger.postgres import PostgresLedgerTools
        from tests.pgsupport import client_tools_env, database, restore

        env = client_tools_env()
        monkeypatch.setenv("PATH", env["PATH"])
        await asyncio.to_thread(tools.backup, dest)
        with database(request.getfixturevalue("pg_server")) as copy_dsn:
            await asyncio.to_thread(restore, dest, copy_dsn, env)
            copied = await asyncio.to_thread(PostgresLedgerTools(copy_dsn).transactions)
        assert {t.transaction_id: t.gross_amount for t in copied} == {
            t.transaction_id: t.gross_amount for t in txs}
        return
    await asyncio.to_thread(tools.backup, dest)
    assert {t.transaction_id for t in SqliteLedgerTools(dest).transactions()} == {
        t.transaction_id for t in txs}
