"""``paywire ledger backup`` and ``export``: a live ledger copied under load stays
consistent (audit clean, opens as a ledger); the export reads without the project."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from gateway.audit import audit
from gateway.client import Card
from gateway.ledger import ledger_tools
from tests.deploy import RICH, Deployment, ack


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=120)


async def test_backup_under_load_audits_clean_and_exports(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    copy = tmp_path / "copy.db"
    try:
        async with dep.client() as c:
            first = [await c.charge(f"pre-{i}", 10_000 + i,
                                    card=Card(RICH[i % 2], 12, 2030, "123"))
                     for i in range(5)]
            stop = asyncio.Event()
            during: list[object] = []

            async def load() -> None:
                i = 0
                while not stop.is_set():
                    during.append(await c.charge(f"load-{i}", 5_000 + i,
                                                 card=Card(RICH[i % 2], 12, 2030, "123")))
                    i += 1

            task = asyncio.create_task(load())
            # The hub takes charges while the backup runs (in another process).
            proc = await asyncio.to_thread(_cli, "ledger", "backup", "--ledger",
                                           str(dep.workdir / "ledger.db"), str(copy))
            stop.set()
            await task
        assert proc.returncode == 0, proc.stderr
        assert during, "no charge ran during the backup"
    finally:
        dep.stop()
    rows = ledger_tools(copy).summaries()
    ids = {r.transaction_id for r in rows}
    # Everything acknowledged before the backup began is in the copy.
    assert {a.transaction_id for a in first} <= ids
    report = audit(copy, dep.bank_paths(), [ack(a) for a in first])
    findings = [str(f) for f in report.findings]
    # Charges after the snapshot are on the bank's books but not in the copy: the only
    # acceptable differences are those, never a finding about a transaction in the copy.
    assert not [f for f in findings if any(t in f for t in ids)], findings
    # The copy opens as a ledger (and the CLI's audit reads it).
    opened = ledger_tools(copy).transaction(first[0].merchant_id, "pre-0")
    assert opened is not None and opened.transaction_id == first[0].transaction_id
    # A second backup to the same file is refused, one line, no traceback.
    again = _cli("ledger", "backup", "--ledger", str(dep.workdir / "ledger.db"), str(copy))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr

    # Export: the known transactions round-trip as JSON lines and as CSV.
    out = _cli("ledger", "export", "--ledger", str(copy))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    by_id = {x["transaction_id"]: x for x in lines}
    for i, a in enumerate(first):
        row = by_id[a.transaction_id]
        assert row["order_id"] == a.order_id and row["status"] == a.transaction_status
        assert row["gross_amount"] == 10_000 + i and row["bank"]
        assert row["masked_card"] and row["masked_card"] != RICH[i % 2]
    assert len(lines) == len(rows)
    out_csv = _cli("ledger", "export", "--ledger", str(copy), "--format", "csv")
    assert out_csv.returncode == 0, out_csv.stderr
    table = list(csv.DictReader(io.StringIO(out_csv.stdout)))
    assert {r["transaction_id"]: r["status"] for r in table} == {
        k: v["status"] for k, v in by_id.items()}
    for pan in RICH[:2]:  # never a full card number
        assert pan not in out.stdout and pan not in out_csv.stdout
