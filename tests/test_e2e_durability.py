"""Durability across SIGKILL, and money conservation under concurrent pipelined load."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.client import Card
from tests.deploy import OPENING, RICH, deployment


async def test_answered_charge_survives_sigkill_of_the_hub(tmp_path: Path) -> None:
    with deployment(tmp_path, bca_nodes=1) as dep:
        async with dep.client() as c:
            tx = await c.charge("durable-1", 77_000, card=Card(RICH[0], 12, 2030, "123"))
            va = await c.charge("durable-va", 5_000, "bank_transfer", bank="bca")
        assert dep.hub is not None
        dep.hub.kill()
        dep.start_hub()
        async with dep.client() as c:
            again = await c.status("durable-1")
            assert (again.transaction_id, again.transaction_status, again.captured_amount) == \
                (tx.transaction_id, "capture", 77_000)
            assert (await c.status("durable-va")).va_number == va.va_number
            replay = await c.charge("durable-1", 77_000, card=Card(RICH[0], 12, 2030, "123"))
            assert replay.replayed and replay.transaction_id == tx.transaction_id
        assert await dep.balance("bca", RICH[0]) == (OPENING - 77_000, 0)


async def test_2000_pipelined_charges_conserve_money(tmp_path: Path) -> None:
    connections, per_connection = 20, 100
    with deployment(tmp_path) as dep:
        clients = [await dep.client().connect() for _ in range(connections)]
        try:
            async def run(ci: int) -> list[int]:
                c = clients[ci]
                results = await asyncio.gather(*(
                    c.charge(f"load-{ci}-{i}", 1_000 + (ci * per_connection + i) % 997,
                             card=Card(RICH[(ci + i) % len(RICH)], 12, 2030, "123"),
                             capture=(i % 5 != 0))
                    for i in range(per_connection)))
                return [r.gross_amount for r in results if r.transaction_status == "capture"]

            captured = [a for amounts in await asyncio.gather(*(run(ci) for ci in
                                                                range(connections)))
                        for a in amounts]
        finally:
            for c in clients:
                await c.close()
        rows = dep.ledger_sql("SELECT order_id, COUNT(*) FROM transactions "
                              "WHERE order_id LIKE 'load-%' GROUP BY order_id")
        assert len(rows) == connections * per_connection
        assert all(n == 1 for _, n in rows)
        ledger_captured = dep.ledger_sql("SELECT SUM(captured) FROM transactions "
                                         "WHERE order_id LIKE 'load-%'")[0][0]
        ledger_held = dep.ledger_sql("SELECT SUM(gross_amount) FROM transactions "
                                     "WHERE order_id LIKE 'load-%' AND status='authorize'")[0][0]
        assert ledger_captured == sum(captured)
        balances = dep.bank_sql("bca", "SELECT id, balance, held, opening FROM accounts")
        card_debits = sum(o - b for i, b, _, o in balances if i in RICH)
        card_held = sum(h for i, _, h, _ in balances if i in RICH)
        settlement = next(b - o for i, b, _, o in balances if i == "settlement")
        assert card_debits == settlement == ledger_captured
        assert card_held == ledger_held
        assert sum(b - o for _, b, _, o in balances) == 0  # no money created or destroyed
        effects = dep.bank_sql("bca", "SELECT transaction_id, COUNT(*) FROM effects "
                               "WHERE delta < 0 GROUP BY transaction_id HAVING COUNT(*) > 1")
        assert effects == []


async def test_evicted_transactions_are_read_back_from_the_ledger(tmp_path: Path) -> None:
    with deployment(tmp_path, bca_nodes=1, hub_overrides={"cache_entries_max": 5}) as dep:
        async with dep.client() as c:
            first = await c.charge("evict-0", 5_000, card=Card(RICH[0], 12, 2030, "123"))
            for i in range(1, 12):
                await c.charge(f"evict-{i}", 5_000, card=Card(RICH[i], 12, 2030, "123"))
            again = await c.status("evict-0")  # long out of the cache
            assert again.transaction_id == first.transaction_id
            replay = await c.charge("evict-0", 5_000, card=Card(RICH[0], 12, 2030, "123"))
            assert replay.replayed and replay.transaction_id == first.transaction_id
            refund = await c.refund("evict-1", "r1", 1_000)
            assert refund.refunded_amount == 1_000
        assert await dep.balance("bca", RICH[0]) == (OPENING - 5_000, 0)
