"""What the ledger gives ``/metrics`` (gateway/metrics.py), on both backends: its group
commits' batch sizes and times (``stats``, gateway/stats.py), counted by the writer that
commits, and the outbox backlog (``outbox_backlog``): pending webhooks, dead ones excluded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger import Ledger
from gateway.stats import CommitStats
from gateway.transactions.model import now_ms
from tests.test_ledger_contract import IMPLEMENTATIONS, Implementation, _note, _tx

ORDERS = 6


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda i: i.name)
async def opened(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    impl: Implementation = request.param
    ledger = impl.open(impl.place(request, tmp_path))
    await ledger.start()
    try:
        yield ledger
    finally:
        await ledger.close()


def commits_of(ledger: Any) -> int:
    """The ledger's own count of its commits (the SQLite writer's, or PostgreSQL's)."""
    return int(ledger.writer.commits if hasattr(ledger, "writer") else ledger.commits)


async def test_commit_stats_count_every_write_and_commit(opened: Ledger) -> None:
    stats = getattr(opened, "stats", None)
    assert isinstance(stats, CommitStats)
    writes0, batches0, commits0 = stats.batches.sum, stats.batches.count, commits_of(opened)
    txs = [_tx("m1", f"o{i}") for i in range(ORDERS)]
    # Submitted together: group-committed in as few batches as the writer takes them.
    await asyncio.gather(*(opened.insert_new(tx) for tx in txs))
    for tx in txs:
        tx.status = "capture"
    await asyncio.gather(*(opened.save(tx, _note(tx)) for tx in txs))
    writes = stats.batches.sum - writes0
    batches = stats.batches.count - batches0
    assert writes == 2 * ORDERS
    assert batches == commits_of(opened) - commits0
    assert 2 <= batches <= 2 * ORDERS  # two awaited rounds: at least one commit each
    assert stats.commit_us.count - batches0 == batches  # one time per batch
    assert stats.commit_us.sum > 0
    assert sum(stats.batches.counts) == stats.batches.count


async def test_outbox_backlog_counts_pending_webhooks_only(opened: Ledger) -> None:
    backlog = opened.outbox_backlog  # type: ignore[attr-defined]
    assert await backlog() == 0
    txs = [_tx("m1", f"w{i}") for i in range(ORDERS)]
    await asyncio.gather(*(opened.insert_new(tx, _note(tx)) for tx in txs))
    assert await backlog() == ORDERS
    due = await opened.due_webhooks(now_ms(), 100)
    assert len(due) == ORDERS
    await opened.webhook_retry(due[0].id, 1, now_ms() + 60_000, "HTTP 503")
    assert await backlog() == ORDERS  # waiting for a retry: still undelivered
    await opened.webhook_delivered(due[1].id, 1, now_ms())
    await opened.webhook_dead(due[2].id, 9, "HTTP 410")
    assert await backlog() == ORDERS - 2  # delivered and dead-lettered rows are not backlog
    for w in due[3:]:
        await opened.webhook_delivered(w.id, 1, now_ms())
    await opened.webhook_delivered(due[0].id, 2, now_ms())
    assert await backlog() == 0
