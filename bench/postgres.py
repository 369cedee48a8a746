"""``paywire bench postgres``: CPU per durable charge on PostgreSQL against SQLite, with one
and two hub processes on one PostgreSQL ledger, and PostgreSQL's commit rate (issue 14).

Each round runs, back to back in the same minutes, the durable closed loop (the run ``bench
durable`` measures: ``connections`` x ``window`` in flight) on a fresh ledger three ways:
one hub on SQLite, one hub on PostgreSQL, two hubs on one PostgreSQL ledger (the load
generator's connections split between them). CPU is counted for every process, the
database server's too: the postmaster and all its children (backends, WAL writer,
checkpointer), summed from ``/proc``. The machine has 2 cores, so the second hub shows what
a hub costs, not a speed-up.

Then PostgreSQL's commit rate on this machine: ``k`` connections each committing one-row
inserts with ``synchronous_commit = on`` as fast as they can (PostgreSQL's own group commit
merges concurrent commits into one WAL flush), and, from ``pg_stat_database`` and
``pg_stat_wal`` during each PostgreSQL run, the transactions and WAL flushes per charge.

The server: ``PAYWIRE_PG_DSN`` (an administrative DSN; the server's CPU is counted only if
its data directory is readable here) or a throwaway pgserver, stopped and deleted at the end.
Each run's database is dropped after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.loadgen import closed_loop
from bench.run import MERCHANT, Bench, Options
from gateway.config import LedgerConfig
from gateway.processes import NodeProcess

ENV_DSN = "PAYWIRE_PG_DSN"
ADMIN_TIMEOUT_S = 30.0
KINDS = ("sqlite", "postgres", "postgres x2")
COMMIT_CONNECTIONS = (1, 4, 16)


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.contextmanager
def server() -> Iterator[str]:
    """An administrative DSN: the environment's, or a throwaway pgserver's (deleted after)."""
    given = os.environ.get(ENV_DSN)
    if given:
        yield given
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        import pgserver
    pgdata = tempfile.mkdtemp(prefix="paywire-bench-pg-")
    srv = pgserver.get_server(pgdata, cleanup_mode="delete")  # type: ignore[attr-defined]
    try:
        yield str(srv.get_uri())
    finally:
        srv.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


async def _admin(dsn: str, sql: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=ADMIN_TIMEOUT_S)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def postmaster_pid(dsn: str) -> int | None:
    """The server's postmaster, from its data directory's ``postmaster.pid`` (None if the
    server is not on this machine or its directory is not readable)."""
    rows = await _admin(dsn, "SHOW data_directory")
    try:
        return int((Path(rows[0][0]) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


async def db_counters(dsn: str) -> dict[str, int]:
    """Committed transactions of this database and WAL flushes of the server so far."""
    rows = await _admin(dsn, "SELECT xact_commit FROM pg_stat_database "
                             "WHERE datname = current_database()")
    out = {"xact_commit": int(rows[0][0])}
    with contextlib.suppress(Exception):  # pg_stat_wal: PostgreSQL 14+
        wal = await _admin(dsn, "SELECT wal_sync, wal_write FROM pg_stat_wal")
        out["wal_sync"] = int(wal[0][0])
    return out


async def commit_rate(dsn: str, connections: int, duration_s: float) -> dict[str, Any]:
    """Commits/s of ``connections`` sessions each inserting one row per transaction."""
    import asyncpg

    conns = [await asyncpg.connect(dsn, timeout=ADMIN_TIMEOUT_S) for _ in range(connections)]
    try:
        await conns[0].execute("CREATE TABLE IF NOT EXISTS bench_commits (k int, v bytea)")
        for c in conns:
            await c.execute("SET synchronous_commit = on")
        before = await db_counters(dsn)
        stop = time.monotonic() + duration_s
        counts = [0] * connections

        async def loop(i: int) -> None:
            payload = b"x" * 200
            while time.monotonic() < stop:
                await conns[i].execute("INSERT INTO bench_commits VALUES ($1, $2)", i, payload)
                counts[i] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(loop(i) for i in range(connections)))
        elapsed = time.monotonic() - t0
    finally:
        for c in conns:
            await c.close()
    # Backends report their WAL statistics when they end (or at most once a second).
    after = await db_counters(dsn)
    commits = sum(counts)
    out: dict[str, Any] = {"connections": connections, "commits": commits,
                           "commits_per_s": round(commits / elapsed, 1)}
    if "wal_sync" in before:
        syncs = after["wal_sync"] - before["wal_sync"]
        out["wal_syncs_per_s"] = round(syncs / elapsed, 1)
        out["commits_per_wal_sync"] = round(commits / max(syncs, 1), 2)
    return out


class Runner:
    def __init__(self, bench: Bench, admin_dsn: str, pm_pid: int | None) -> None:
        self.bench = bench
        self.admin_dsn = admin_dsn
        self.pm_pid = pm_pid

    async def run(self, kind: str) -> dict[str, Any]:
        """One durable closed-loop run of ``kind`` (one of ``KINDS``) on a fresh ledger."""
        from gateway.client import connect

        b, opts = self.bench, self.bench.opts
        loop = asyncio.get_running_loop()
        dsn = None
        db_name = f"paywire_bench_{uuid.uuid4().hex[:12]}"
        before: dict[str, int] = {}
        after: dict[str, int] = {}
        if kind != "sqlite":
            await _admin(self.admin_dsn, f'CREATE DATABASE "{db_name}"')
            dsn = with_database(self.admin_dsn, db_name)
        hubs: list[NodeProcess] = []
        clients: list[Any] = []
        try:
            for i in range(2 if kind == "postgres x2" else 1):
                b.seq += 1
                cfg = b.hub_config(f"ledger-{b.seq}", "FULL")
                if dsn is not None:
                    cfg = dataclasses.replace(cfg, ledger=LedgerConfig(url=dsn))
                hub = NodeProcess("hub", cfg, b.workdir, f"hub-{b.seq}-{i}")
                await loop.run_in_executor(None, hub.start)
                hubs.append(hub)
                b.procs.append(hub)
                await loop.run_in_executor(None, hub.wait_ready)
            for i in range(opts.connections):
                hub = hubs[i % len(hubs)]
                clients.append(await connect("127.0.0.1", hub.port, merchant_id=MERCHANT,
                                             server_key="bench-server-key",
                                             certs_dir=b.certs, in_flight_max=opts.window,
                                             reconnect=False).connect())

            async def op(seq: int) -> Any:
                return await clients[seq % len(clients)].request("charge", b.charge_args(seq))

            workers = opts.connections * opts.window
            await closed_loop(op, workers=workers, requests=10**9, duration_s=opts.warmup_s)
            pids = {("hub" if i == 0 else f"hub {i + 1}"): h.proc.pid
                    for i, h in enumerate(hubs) if h.proc is not None}
            if dsn is not None and self.pm_pid is not None:
                pids["postgres"] = self.pm_pid
            meter = b.meter(**pids)
            if dsn is not None:
                before = await db_counters(dsn)
            res = await closed_loop(op, workers=workers, requests=10**9,
                                    duration_s=opts.duration_s)
            cpu = meter.per_request_us(res.ok)
            # Busy backends report their statistics at most once a second: both readings
            # are taken under load, so each lags by about the same second.
            if dsn is not None:
                after = await db_counters(dsn)
        finally:
            for c in clients:
                await c.close()
            for hub in hubs:
                b.stop(hub)
            if dsn is not None:
                await _admin(self.admin_dsn, f'DROP DATABASE IF EXISTS "{db_name}" '
                             "WITH (FORCE)")
        # The postmaster's children (backends, WAL writer, checkpointer) as one figure.
        if "postgres writer" in cpu:
            cpu["postgres"] = round(cpu["postgres"] + cpu.pop("postgres writer"), 1)
        out: dict[str, Any] = {"kind": kind, "hubs": len(hubs), **res.to_dict(),
                               "cpu_us_per_request": cpu,
                               "hub_cpu_us_per_request": round(sum(
                                   v for k, v in cpu.items() if k.startswith("hub")), 1)}
        if before and after:
            n = max(res.ok, 1)
            out["db_per_charge"] = {k: round((after[k] - before[k]) / n, 2) for k in before}
        return out


async def run_all(opts: Options, rounds: int, commit_s: float, workdir: Path,
                  admin_dsn: str) -> dict[str, Any]:
    bench = Bench(workdir, opts)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, bench.start_bank)
    pm = await postmaster_pid(admin_dsn)
    settings = {name: (await _admin(admin_dsn, f"SHOW {name}"))[0][0]
                for name in ("server_version", "fsync", "synchronous_commit",
                             "wal_sync_method", "commit_delay")}
    runner = Runner(bench, admin_dsn, pm)
    out: dict[str, Any] = {"rounds": [], "postgres_cpu_counted": pm is not None,
                           "postgres_settings": settings}
    try:
        for i in range(rounds):
            # Rotate the order so no kind always runs first in its round.
            order = KINDS[i % 3:] + KINDS[:i % 3]
            row: dict[str, Any] = {}
            for kind in order:
                row[kind] = await runner.run(kind)
                print(f"  round {i + 1}/{rounds}: {_line(row[kind])}", file=sys.stderr)
            out["rounds"].append(row)
        name = f"paywire_bench_{uuid.uuid4().hex[:12]}"
        await _admin(admin_dsn, f'CREATE DATABASE "{name}"')
        try:
            out["commit_rate"] = [await commit_rate(with_database(admin_dsn, name), k, commit_s)
                                  for k in COMMIT_CONNECTIONS]
        finally:
            await _admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        bench.stop_all()
    out["medians"] = medians(out["rounds"])
    return out


def _line(run: dict[str, Any]) -> str:
    cpu = run["cpu_us_per_request"]
    return (f"{run['kind']}: {run['throughput_per_s']:,.0f}/s, {cpu['total']} µs/charge "
            f"(hubs {run['hub_cpu_us_per_request']}, postgres {cpu.get('postgres', '-')})")


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind, the median over rounds of throughput and of each process's CPU per charge
    (each column its own median), and min-max of the total."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        runs = [r[kind] for r in rounds if kind in r]
        if not runs:
            continue
        names = list(dict.fromkeys(n for r in runs for n in r["cpu_us_per_request"]))
        out[kind] = {
            "throughput_per_s": statistics.median(r["throughput_per_s"] for r in runs),
            "throughput_range": [min(r["throughput_per_s"] for r in runs),
                                 max(r["throughput_per_s"] for r in runs)],
            "cpu_us_per_request": {n: statistics.median(r["cpu_us_per_request"].get(n, 0.0)
                                                        for r in runs) for n in names},
            "cpu_total_range": [min(r["cpu_us_per_request"]["total"] for r in runs),
                                max(r["cpu_us_per_request"]["total"] for r in runs)],
            "hub_cpu_us_per_request": statistics.median(r["hub_cpu_us_per_request"]
                                                        for r in runs),
        }
        if all("db_per_charge" in r for r in runs):
            keys = runs[0]["db_per_charge"].keys()
            out[kind]["db_per_charge"] = {k: statistics.median(r["db_per_charge"][k]
                                                               for r in runs) for k in keys}
    # Within-round ratios of total CPU per charge, then their median.
    for kind in ("postgres", "postgres x2"):
        ratios = [r[kind]["cpu_us_per_request"]["total"]
                  / max(r["sqlite"]["cpu_us_per_request"]["total"], 1e-9)
                  for r in rounds if kind in r and "sqlite" in r]
        if ratios:
            out[f"{kind} / sqlite cpu"] = {"median": round(statistics.median(ratios), 3),
                                           "range": [round(min(ratios), 3),
                                                     round(max(ratios), 3)]}
    return out


def markdown(result: dict[str, Any], command: str) -> str:
    names: list[str] = []
    for row in result["rounds"]:
        for run in row.values():
            names += [n for n in run["cpu_us_per_request"] if n != "total" and n not in names]
    lines = [f"Command: `{command}`", "",
             "| round | ledger | " + " | ".join(names) + " | total | charges/s |",
             "|---|---|" + "---|" * (len(names) + 2)]
    for i, row in enumerate(result["rounds"]):
        for kind in KINDS:
            if kind in row:
                cpu = row[kind]["cpu_us_per_request"]
                lines.append(f"| {i + 1} | {kind} | "
                             + " | ".join(str(cpu.get(n, "")) for n in names)
                             + f" | {cpu['total']} | {row[kind]['throughput_per_s']:,.0f} |")
    med = result["medians"]
    for kind in KINDS:
        if kind in med:
            cpu = med[kind]["cpu_us_per_request"]
            lines.append(f"| median | {kind} | "
                         + " | ".join(str(cpu.get(n, "")) for n in names)
                         + f" | {cpu['total']} | {med[kind]['throughput_per_s']:,.0f} |")
    for kind in ("postgres", "postgres x2"):
        key = f"{kind} / sqlite cpu"
        if key in med:
            lines.append(f"\n{key} (within rounds): median {med[key]['median']}, "
                         f"range {med[key]['range']}")
    for kind in ("postgres", "postgres x2"):
        if "db_per_charge" in med.get(kind, {}):
            lines.append(f"\n{kind}: per charge {med[kind]['db_per_charge']}")
    if result.get("commit_rate"):
        lines += ["", "| connections committing | commits/s | WAL flushes/s | commits per flush |",
                  "|---|---|---|---|"]
        for c in result["commit_rate"]:
            lines.append(f"| {c['connections']} | {c['commits_per_s']:,.0f} | "
                         f"{c.get('wal_syncs_per_s', '')} | {c.get('commits_per_wal_sync', '')} |")
    return "\n".join(lines) + "\n"


def main(rounds: int, duration_s: float, connections: int, window: int, commit_s: float,
         out: Path, command: str) -> int:
    import uvloop

    opts = Options(duration_s=duration_s, connections=connections, window=window,
                   warmup_s=min(1.0, duration_s))
    workdir = Path(tempfile.mkdtemp(prefix="paywire-bench-pg-run-"))
    try:
        with server() as admin_dsn:
            result = uvloop.run(run_all(opts, rounds, commit_s, workdir, admin_dsn))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["command"] = command
    result["options"] = {"duration_s": duration_s, "connections": connections,
                         "window": window, "rounds": rounds, "commit_s": commit_s}
    result["machine"] = {"cpus": os.cpu_count()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(result, command))
    print(f"results: {out}")
    return 0
