"""The hub end to end on a PostgreSQL ledger (``[ledger] url``): charges, a ``kill -9`` with
a bank call in flight, a restart whose recovery finds and settles the unresolved intent,
and ``paywire audit`` reading the ledger through its URL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.client import Card, ConnectionLost
from gateway.config import LedgerConfig
from gateway.ledger import ledger_tools
from protocol import banklink
from tests.deploy import OPENING, RICH, Deployment, ack
from tests.waiting import wait_until


def _unresolved(dsn: str) -> list[str]:
    return sorted(s.order_id for s in ledger_tools(dsn).summaries() if s.unresolved)


async def test_a_hub_on_postgres_charges_restarts_recovers_and_audits_clean(
        tmp_path: Path, pg_dsn: str) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1,
                           hub_overrides={"ledger": LedgerConfig(url=pg_dsn)}).astart()
    acks = []
    try:
        async with dep.client() as c:
            for i in range(5):
                tx = await c.charge(f"pg-{i}", 10_000 + i, card=Card(RICH[i], 12, 2030, "123"))
                assert tx.transaction_status == "capture"
                acks.append(ack(tx))
        assert not (tmp_path / "ledger.db").exists()  # the SQLite default was not used
        assert len(ledger_tools(pg_dsn).summaries()) == 5

        # A bank call in flight when the hub dies: the intent is committed, unresolved.
        await dep.admin("bca", "admin.faults", {"blackhole": True})
        client = await dep.client(timeout_s=300.0, reconnect=False).connect()
        charge = asyncio.ensure_future(
            client.charge("pg-rec", 21_000, card=Card(RICH[9], 12, 2030, "123")))
        await wait_until(lambda: dep.received("bca", banklink.AUTHORIZE),
                         "the bank to receive the authorization")
        assert _unresolved(pg_dsn) == ["pg-rec"]
        assert dep.hub is not None
        dep.hub.kill()
        with pytest.raises(ConnectionLost):
            await charge
        await client.close()

        # Restarted (its old server session may still hold the ledger's lock for a moment:
        # the new hub waits for it): recovery finds the intent and settles it by inquiry.
        await dep.admin("bca", "admin.faults", {"blackhole": False})
        await dep.arestart_hub()
        assert "recovery: 1 transactions with unanswered bank calls" in \
            dep.hub.log_path.read_text()
        await wait_until(lambda: not _unresolved(pg_dsn), "the intent to be settled",
                         timeout_s=60.0)
        async with dep.client() as c:
            rec = await c.status("pg-rec")
            again = await c.charge("pg-0", 10_000, card=Card(RICH[0], 12, 2030, "123"))
        assert rec.transaction_status == "failure"  # the authorization never reached books
        assert again.replayed and again.transaction_id == acks[0]["transaction_id"]
        assert await dep.received("bca", banklink.AUTHORIZE) == 6  # never sent twice
        assert await dep.balance("bca", RICH[9]) == (OPENING, 0)

        acks_file = tmp_path / "acks.jsonl"
        acks_file.write_text("".join(json.dumps(a) + "\n" for a in acks))
        audit = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "audit", "--ledger", pg_dsn, "--bank",
             f"bca={tmp_path / 'bca.db'}", "--acks", str(acks_file)],
            capture_output=True, text=True, timeout=120)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        summary = json.loads(audit.stdout.splitlines()[-1])
        assert summary["clean"] and summary["transactions"] == 6
        assert summary["acks_checked"] == 5
    finally:
        dep.stop()
