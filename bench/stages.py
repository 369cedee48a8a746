"""Where the hub's CPU per charge goes, stage by stage (``python -m bench.stages``).

Runs a bank node and a hub (the hub under ``cProfile``) and the bench's durable closed loop
against them, then splits the hub's profile into the stages of a charge's path by module:
framing, decode and validation, authentication, the charge's plan (fraud screen, routing,
record), the ledger's client side, the bank link, orchestration (flows, runner, cache,
notifications), the adapter and session, and the event loop's own time (uvloop's C code:
sockets, TLS, timers). A library or builtin function (msgpack, hmac, ...) counts for the
module that called it.

cProfile slows Python code down (each call costs more), so the shares are what to read;
the µs column scales them to the hub's CPU per charge measured in a second run of the same
load without the profiler.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.loadgen import closed_loop
from bench.run import KEY, MERCHANT, Bench, Options
from gateway.config import dump_toml
from gateway.processes import NodeProcess, child_env, open_private

# (stage, path fragments of the modules it holds), first match wins.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("framing: frame decoder, connection table", ("protocol/decoder.py",
                                                   "protocol/connection.py",
                                                   "protocol/frame.py", "protocol/fit.py")),
    ("bodies: decode, validate, encode (msgpack, schemas)",
     ("protocol/body.py", "protocol/messages.py", "protocol/schema.py",
      "protocol/operations.py")),
    ("authenticate: HMAC, timestamp, nonce", ("protocol/signing.py", "gateway/hub/auth.py")),
    ("plan: fraud screen, routing, record", ("gateway/fraud/", "gateway/hub/routing.py",
                                             "gateway/hub/service.py")),
    ("decide and record: lifecycle, decisions, result maps",
     ("protocol/lifecycle.py", "gateway/transactions/")),
    ("ledger client: records and messages to the writer",
     ("gateway/ledger/", "gateway/storage/", "gateway/webhooks/")),
    ("bank link: sign, batch, match answers", ("gateway/hub/banklink.py",
                                               "gateway/net/signed.py",
                                               "protocol/banklink.py")),
    ("orchestration: flows, runner, cache, notifications",
     ("gateway/hub/flows.py", "gateway/hub/runner.py", "gateway/hub/txcache.py",
      "gateway/hub/notifications.py", "gateway/hub/schedulers.py")),
    ("adapter, session, pipeline: reads, admission, gathered writes",
     ("gateway/net/framed.py", "gateway/hub/session.py", "gateway/hub/pipeline.py")),
]
LOOP = "event loop: sockets, TLS, timers (uvloop, C)"
OTHER = "other Python"
STARTUP = "start-up (imports)"


def _stage_of(filename: str) -> str | None:
    path = filename.replace(os.sep, "/")
    for stage, parts in STAGES:
        if any(p in path for p in parts):
            return stage
    return None


def stages(profile: Path) -> dict[str, float]:
    """Seconds of the profile by stage. A function outside the project counts for the
    stages of its callers, in proportion to the time spent in it from each."""
    stats: dict[Any, Any] = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    out: dict[str, float] = defaultdict(float)
    for func, (_cc, _nc, tottime, _ct, callers) in stats.items():
        filename, _line, name = func
        if filename.startswith("<frozen") or name == "<module>":
            out[STARTUP] += tottime  # imports: once per process, not per charge
            continue
        stage = _stage_of(filename)
        if stage is not None:
            out[stage] += tottime
            continue
        if filename.endswith("asyncio/runners.py") and name == "run":
            out[LOOP] += tottime  # uvloop's run_forever: its C code is charged here
            continue
        edges = {c: e[2] for c, e in callers.items()}  # caller -> time in func from it
        total = sum(edges.values())
        if not edges or total <= 0:
            out[OTHER] += tottime
            continue
        for caller, t in edges.items():
            where = (STARTUP if caller[0].startswith("<frozen") or caller[2] == "<module>"
                     else _stage_of(caller[0]) or OTHER)
            out[where] += tottime * t / total
    return dict(out)


async def _load(profile: Path | None, duration_s: float, connections: int, window: int
                ) -> tuple[int, float]:
    """One hub (profiled when ``profile``) under the closed loop: (charges, hub µs each)."""
    from gateway.client import connect

    workdir = Path(tempfile.mkdtemp(prefix="paywire-stages-"))
    bench = Bench(workdir, Options(duration_s=duration_s))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, bench.start_bank)
    cfg = bench.hub_config("stages", "FULL")
    hub = NodeProcess("hub", cfg, workdir, "hub")
    with os.fdopen(open_private(hub.config_path, os.O_WRONLY | os.O_TRUNC), "w") as f:
        f.write(dump_toml(cfg))
    log = open(workdir / "hub.log", "ab")  # noqa: SIM115 - the child owns it
    python = [sys.executable, "-P"]
    if profile is not None:
        python += ["-m", "cProfile", "-o", str(profile)]
    hub.proc = subprocess.Popen(
        [*python, "-m", "gateway.cli", "hub", "--config", str(hub.config_path),
         "--ready-file", str(hub.ready_path)], stdout=log, stderr=subprocess.STDOUT,
        env={**child_env(), "PYTHONUNBUFFERED": "1"})
    log.close()
    bench.procs.append(hub)
    try:
        await loop.run_in_executor(None, hub.wait_ready)
        clients = [await connect("127.0.0.1", hub.port, merchant_id=MERCHANT, server_key=KEY,
                                 certs_dir=bench.certs, in_flight_max=window,
                                 reconnect=False).connect() for _ in range(connections)]

        async def op(seq: int) -> Any:
            return await clients[seq % len(clients)].request("charge", bench.charge_args(seq))

        await closed_loop(op, workers=connections * window, requests=10**9,
                          duration_s=1.0)
        meter = bench.meter(hub=hub.proc.pid)
        result = await closed_loop(op, workers=connections * window, requests=10**9,
                                   duration_s=duration_s)
        hub_us = meter.per_request_us(result.ok)["hub"]
        for c in clients:
            await c.close()
    finally:
        bench.stop_all()  # SIGTERM: the profiled hub exits cleanly and writes its profile
    return result.ok, float(hub_us)


def main(argv: list[str] | None = None) -> int:
    import uvloop

    ap = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--profile", default="bench/results/hub.prof")
    ns = ap.parse_args(argv)
    profile = Path(ns.profile)
    profile.parent.mkdir(parents=True, exist_ok=True)
    _, hub_us = uvloop.run(_load(None, ns.duration_s, ns.connections, ns.window))
    charges, _ = uvloop.run(_load(profile, ns.duration_s, ns.connections, ns.window))
    seconds = stages(profile)
    seconds.pop(STARTUP, None)
    total = sum(seconds.values())
    print(f"Hub CPU per durable charge without the profiler: {hub_us:.1f} µs "
          f"({ns.connections} x {ns.window} in flight, {ns.duration_s:g} s); "
          f"profiled run: {charges:,} charges.\n")
    print("| stage | share | µs per charge |")
    print("|---|---|---|")
    for stage, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"| {stage} | {s / total * 100:.1f} % | {hub_us * s / total:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
