"""``paywire bench postgres`` measures the durable closed loop on SQLite, on PostgreSQL with
one hub and with two hubs on one ledger, counts the database server's CPU, measures
PostgreSQL's commit rate, writes a well-formed result and removes what it made (no speed
asserted: a tiny duration, as in ``tests/test_bench_durable.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_postgres_measures_both_ledgers_and_both_hub_counts(tmp_path: Path) -> None:
    out = tmp_path / "postgres.json"
    # Where the run makes its working directory and server: a short path, as the server's
    # Unix socket lives in its data directory and such paths are limited to ~100 bytes.
    scratch = Path(tempfile.mkdtemp(prefix="pwb-", dir="/tmp"))
    try:
        _run_and_check(out, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_and_check(out: Path, scratch: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "postgres",
                           "--duration-s", "0.5", "--connections", "2", "--window", "2",
                           "--rounds", "1", "--commit-s", "0.3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The run's directory and the throwaway server's data directory are gone (pgserver may
    # leave its empty runtime directory for sockets).
    assert [p.name for p in scratch.iterdir() if p.name.startswith("paywire-")] == []
    doc = json.loads(out.read_text())
    (row,) = doc["rounds"]
    assert set(row) == {"sqlite", "postgres", "postgres x2"}
    for kind, run in row.items():
        cpu = run["cpu_us_per_request"]
        assert run["throughput_per_s"] > 0 and run["ok"] > 0, kind
        assert cpu["total"] > 0 and {"hub", "bank node", "load generator"} <= cpu.keys()
        assert run["hubs"] == (2 if kind == "postgres x2" else 1)
    assert "hub writer" in row["sqlite"]["cpu_us_per_request"]  # SQLite's writer process
    assert "postgres" not in row["sqlite"]["cpu_us_per_request"]
    if doc["postgres_cpu_counted"]:  # the server's processes are on this machine
        for kind in ("postgres", "postgres x2"):
            assert row[kind]["cpu_us_per_request"]["postgres"] > 0
            assert row[kind]["db_per_charge"]["xact_commit"] > 0
    assert row["postgres x2"]["cpu_us_per_request"]["hub 2"] > 0
    assert [c["connections"] for c in doc["commit_rate"]] == [1, 4, 16]
    assert all(c["commits_per_s"] > 0 for c in doc["commit_rate"])
    med = doc["medians"]
    assert med["postgres / sqlite cpu"]["median"] == round(
        row["postgres"]["cpu_us_per_request"]["total"]
        / row["sqlite"]["cpu_us_per_request"]["total"], 3)
    assert "| median | postgres x2 |" in proc.stdout
