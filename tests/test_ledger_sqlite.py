"""The SQLite ledger's batch writes: idempotent inserts across merchants, and query plans
that stay index lookups however large the ledger grows."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

from gateway.ledger.sqlite import SCHEMA, SqliteLedger, existing_sql
from gateway.storage.groupcommit import PAGE_CACHE_KIB, open_connection
from gateway.transactions.model import Transaction, now_ms, time_ordered_id


def _tx(merchant: str, order: str, amount: int = 1000) -> Transaction:
    now = now_ms()
    return Transaction(transaction_id=f"tx-{merchant}-{order}-{amount}", merchant_id=merchant,
                       order_id=order, gross_amount=amount, currency="IDR",
                       payment_type="credit_card", status="pending", fraud_status="accept",
                       request_hash=b"h", created_ms=now, updated_ms=now)


def test_existing_lookup_searches_the_index_not_the_table() -> None:
    """A scan here made every group commit cost O(ledger size) (found by the benchmark)."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    for keys in (1, 3, 400):
        plan = " | ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN " + existing_sql(keys), ["m", "o"] * keys))
        assert "SCAN transactions" not in plan and "SCAN t" not in plan.replace("SCAN k", "")
        assert "SEARCH t USING INDEX" in plan, plan


async def test_batch_insert_keeps_the_first_write_per_merchant_and_order(tmp_path: Path
                                                                         ) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.start()
    try:
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
    finally:
        await ledger.close()


def test_transaction_ids_are_uuid7_and_grow_with_time() -> None:
    ids = [time_ordered_id(1_795_000_000_000 + i // 10) for i in range(5000)]
    assert len(set(ids)) == len(ids)
    for i in ids[:50]:
        u = uuid.UUID(i)
        assert u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i
        assert u.int >> 80 == 1_795_000_000_000 + ids.index(i) // 10
    # Sorted by creation time (ties within one millisecond are random): B-tree inserts land
    # at the right edge of the index, not on a random page.
    stamps = [uuid.UUID(i).int >> 80 for i in sorted(ids)]
    assert stamps == sorted(stamps)
    assert time_ordered_id() > time_ordered_id(1_000)


def test_writer_connection_has_the_large_page_cache(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / "x.db")
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -PAGE_CACHE_KIB
    conn.close()
