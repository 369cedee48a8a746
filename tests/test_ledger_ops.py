"""``paywire ledger backup`` and ``export``: a live ledger copied under load stays
consistent (audit clean, opens as a ledger); the export reads without the project."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.audit import audit
from gateway.client import Card
from gateway.ledger import ledger_tools
from tests.deploy import RICH, Deployment, ack
from tests.waiting import wait_until


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)


async def _backup_under_load(dep: Deployment, source: str, copy: str | Path,
                             env: dict[str, str] | None = None) -> tuple[list[Any], Any]:
    """Charges before, and a load during, ``paywire ledger backup --ledger source copy``
    (in another process); returns the charges acknowledged before the backup began and the
    backup command's result."""
    async with dep.client() as c:
        first = [await c.charge(f"pre-{i}", 10_000 + i, card=Card(RICH[i % 2], 12, 2030, "123"))
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
        try:
            proc = await asyncio.to_thread(_cli, "ledger", "backup", "--ledger", source,
                                           str(copy), env=env)
        finally:
            stop.set()
            await task
    assert proc.returncode == 0, proc.stderr
    assert during, "no charge ran during the backup"
    return first, proc


async def _check_copy_then_restore(dep: Deployment, copy_ledger: str | Path,
                                   restored_ledger: str | Path, first: list[Any],
                                   restore: Callable[[], None]) -> set[str]:
    """The copy holds everything acknowledged before the backup and audits clean but for
    the one charge whose bank call was in flight at the snapshot; ``restore`` (hub stopped)
    puts it in place as ``restored_ledger``, the hub restarts and its recovery settles that
    call: then the audit is clean for every transaction in the ledger. Returns the copy's
    transaction ids."""
    ids = {r.transaction_id for r in ledger_tools(copy_ledger).summaries()}
    assert {a.transaction_id for a in first} <= ids
    acks = [ack(a) for a in first]
    findings = [str(f) for f in audit(copy_ledger, dep.bank_paths(), acks).findings]
    # Charges after the snapshot are on the bank's books but not in the copy. About a
    # transaction in the copy, the one acceptable finding is the charge whose bank call was
    # in flight at the snapshot (the load sends one at a time): its intent is there, its
    # result not yet.
    about_copy = [f for f in findings if any(t in f for t in ids)]
    assert len(about_copy) <= 1, about_copy
    assert all(f.startswith("stuck: M1/load-") and "unresolved bank call" in f
               for f in about_copy), about_copy

    # Restore as docs/operations.md says: hub stopped, the copy in place, hub started; its
    # recovery asks the bank about any unresolved call.
    assert dep.hub is not None
    dep.hub.terminate()
    restore()
    await dep.arestart_hub()

    def restored_clean() -> bool:
        found = [str(f) for f in audit(restored_ledger, dep.bank_paths(), acks).findings]
        return not [f for f in found if any(t in f for t in ids)]

    await wait_until(restored_clean, "the restored ledger to audit clean", timeout_s=60)
    return ids


async def test_backup_under_load_audits_clean_and_exports(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    copy = tmp_path / "copy.db"
    ledger = dep.workdir / "ledger.db"
    restored = tmp_path / "restored.db"
    try:
        first, _ = await _backup_under_load(dep, str(ledger), copy)
        shutil.copyfile(copy, restored)  # the copy itself stays as it was, for the export

        def restore() -> None:
            for extra in (Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
                extra.unlink(missing_ok=True)
            shutil.copyfile(restored, ledger)

        await _check_copy_then_restore(dep, copy, ledger, first, restore)
    finally:
        dep.stop()
    rows = ledger_tools(copy).summaries()
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


async def test_postgres_backup_under_load_restores_and_audits_clean(
        tmp_path: Path, pg_dsn: str, pg_server: str) -> None:
    """The same on PostgreSQL: ``paywire ledger backup`` runs ``pg_dump`` (found on PATH:
    here the server's own version, which pgserver ships) while the hub writes; the dump
    restored with ``pg_restore`` into an empty database is the copy (docs/operations.md)."""
    from gateway.config import LedgerConfig
    from tests.pgsupport import client_tools_env, database, restore

    env = client_tools_env()
    dep = await Deployment(tmp_path, bca_nodes=1,
                           hub_overrides={"ledger": LedgerConfig(url=pg_dsn)}).astart()
    dump = tmp_path / "ledger.dump"
    try:
        first, _ = await _backup_under_load(dep, pg_dsn, dump, env=env)
        with database(pg_server) as copy_dsn:
            restore(dump, copy_dsn, env)

            def point_the_hub_at_the_copy() -> None:
                assert dep.hub_cfg is not None
                dep.hub_cfg.ledger = LedgerConfig(url=copy_dsn)

            try:
                ids = await _check_copy_then_restore(dep, copy_dsn, copy_dsn, first,
                                                     point_the_hub_at_the_copy)
                assert ids
            finally:
                dep.stop()  # before the copy's database is dropped
        # The dump refuses to be overwritten, as a file backup does.
        again = _cli("ledger", "backup", "--ledger", pg_dsn, str(dump), env=env)
        assert again.returncode == 1 and "already exists" in again.stderr
    finally:
        dep.stop()
