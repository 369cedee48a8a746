"""The auditor must find what it is meant to find, or its clean reports prove nothing."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from gateway.audit import reachable
from gateway.client import Card
from tests.deploy import RICH, Deployment, ack


def test_reachable_statuses_follow_the_table() -> None:
    assert "refund" in reachable("capture") and "settlement" in reachable("pending")
    assert reachable("deny") == {"deny"}
    assert "capture" not in reachable("refund")


async def test_audit_detects_each_kind_of_fault(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        async with dep.client() as c:
            a = await c.charge("audit-a", 10_000, card=Card(RICH[0], 12, 2030, "123"))
            b = await c.charge("audit-b", 20_000, card=Card(RICH[1], 12, 2030, "123"),
                               capture=False)
        acks = [ack(a), ack(b)]
    finally:
        dep.stop()
    assert dep.audit(acks).clean
    bank, ledger = dep.workdir / "bca.db", dep.workdir / "ledger.db"

    def run_sql(path: Path, sql: str, params: tuple[object, ...] = ()) -> None:
        conn = sqlite3.connect(path)
        with conn:
            conn.execute(sql, params)
        conn.close()

    # A lost acknowledged transaction.
    lost = {**ack(a), "order_id": "never-recorded", "transaction_id": "t-x"}
    assert dep.audit([*acks, lost]).counts["lost"] == 1
    # An acknowledged capture that the ledger later shows as merely pending.
    rolled_back = {**ack(b), "transaction_status": "capture"}
    assert dep.audit([ack(a), rolled_back]).counts["lost"] == 1
    # A second debit for the same transaction (and the money it created).
    run_sql(bank, "INSERT INTO effects (transaction_id, op_id, account, delta, kind) "
                  "VALUES (?, 'dup', ?, -10000, 'capture')", (a.transaction_id, RICH[0]))
    run_sql(bank, "UPDATE accounts SET balance = balance - 10000 WHERE id = ?", (RICH[0],))
    report = dep.audit(acks)
    assert report.counts["duplicated"] == 1 and report.counts["money"] >= 1
    # Ledger and bank disagree; a transaction stuck unresolved.
    run_sql(ledger, "UPDATE transactions SET captured = 1 WHERE order_id = 'audit-a'")
    run_sql(ledger, "UPDATE transactions SET unresolved = 1 WHERE order_id = 'audit-b'")
    report = dep.audit(acks)
    assert report.counts["disagreement"] >= 1 and report.counts["stuck"] == 1
    acks_file = tmp_path / "acks.jsonl"
    acks_file.write_text("\n".join(json.dumps(x) for x in acks))
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "--ledger",
                           str(ledger), "--bank", f"bca={bank}", "--acks", str(acks_file)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "duplicated:" in proc.stdout
