"""What is particular to the SQLite ledger: query plans that stay index lookups however
large the ledger grows, the writer's page cache, time-ordered ids. What every ledger must do
(idempotent inserts across merchants included) is in ``test_ledger_contract.py``."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from gateway.ledger.sqlite import SCHEMA, existing_sql
from gateway.storage.groupcommit import PAGE_CACHE_KIB, open_connection
from gateway.transactions.model import time_ordered_id


def test_existing_lookup_searches_the_index_not_the_table() -> None:
    """A scan here made every group commit cost O(ledger size) (found by the benchmark)."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    for keys in (1, 3, 400):
        plan = " | ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN " + existing_sql(keys), ["m", "o"] * keys))
        assert "SCAN transactions" not in plan and "SCAN t" not in plan.replace("SCAN k", "")
        assert "SEARCH t USING INDEX" in plan, plan


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
