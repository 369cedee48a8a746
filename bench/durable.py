"""``paywire bench durable``: CPU per durable charge only, against another checkout, in pairs.

The issue-12 target is a ratio: CPU per durable charge (all processes, 8 connections x 16
in flight, closed loop) of this code over the pre-redesign code's, measured in the same
minutes. ``bench all`` takes 15 minutes for that one figure; this runs only the durable
closed loop, alternately in the other checkout (``--against DIR``, with its own ``.venv``)
and in this one, ``pairs`` times, and reports each pair's ratio and their median. The machine
is shared and its speed drifts by tens of percent within an hour, so only a ratio within a
pair means anything.

The run in each checkout is that checkout's own ``bench.run.Bench.paywire("FULL", [None])``
(the same run ``bench all`` reports as "Paywire, durable"), started as a child process of
that checkout's interpreter, so each side is measured with its own load generator and
client library, exactly as its ``bench all`` would.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

# Run with cwd = the checkout, by its own interpreter. Uses only what every checkout since
# the second session has: Bench(workdir, Options(...)), start_bank(), paywire(sync, rates).
_DRIVER = """
import asyncio, json, os, shutil, sys, tempfile
from pathlib import Path
sys.path.insert(0, os.getcwd())
from bench.run import Bench, Options
opts = Options(duration_s=float(sys.argv[1]), connections=int(sys.argv[2]),
               window=int(sys.argv[3]))
async def main():
    wd = Path(tempfile.mkdtemp(prefix="paywire-durable-"))
    b = Bench(wd, opts)
    try:
        await asyncio.get_running_loop().run_in_executor(None, b.start_bank)
        r = (await b.paywire("FULL", [None]))[0]
    finally:
        b.stop_all()
        shutil.rmtree(wd, ignore_errors=True)
    print(json.dumps({"throughput_per_s": r["throughput_per_s"], "errors": r.get("errors", {}),
                      "cpu_us_per_request": r["cpu_us_per_request"]}))
import uvloop
uvloop.run(main())
"""

RUN_TIMEOUT_S = 600.0  # one run: start-up, warm-up and the measured seconds, on a busy machine


def run_once(checkout: Path, duration_s: float, connections: int, window: int
             ) -> dict[str, Any]:
    """One durable closed-loop run of ``checkout``'s code: throughput and CPU per charge."""
    python = checkout / ".venv" / "bin" / "python"
    proc = subprocess.run([str(python), "-c", _DRIVER, str(duration_s), str(connections),
                           str(window)], cwd=checkout, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"durable run in {checkout} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_pairs(here: Path, against: Path | None, pairs: int, duration_s: float,
              connections: int, window: int) -> dict[str, Any]:
    """``pairs`` runs of ``against`` then ``here``, back to back; each pair's CPU ratio."""
    rows: list[dict[str, Any]] = []
    for i in range(pairs):
        row: dict[str, Any] = {}
        if against is not None:
            row["against"] = run_once(against, duration_s, connections, window)
        row["here"] = run_once(here, duration_s, connections, window)
        if against is not None:
            row["cpu_ratio"] = round(_total(row["here"]) / max(_total(row["against"]), 1e-9), 3)
        rows.append(row)
        print(f"  pair {i + 1}/{pairs}: " + _line(row), file=sys.stderr)
    ratios = [r["cpu_ratio"] for r in rows if "cpu_ratio" in r]
    return {"pairs": rows, "cpu_ratio_median": statistics.median(ratios) if ratios else None}


def _total(run: dict[str, Any]) -> float:
    return float(run["cpu_us_per_request"]["total"])


def _line(row: dict[str, Any]) -> str:
    parts = [f"{name} {_total(run):.1f} µs/charge at {run['throughput_per_s']:,.0f}/s"
             for name, run in (("against", row.get("against")), ("here", row["here"]))
             if run is not None]
    if "cpu_ratio" in row:
        parts.append(f"ratio {row['cpu_ratio']}")
    return "; ".join(parts)


def markdown(result: dict[str, Any], command: str) -> str:
    """The pairs as a table: CPU µs per durable charge by process, and each pair's ratio."""
    names: list[str] = []
    for row in result["pairs"]:
        for side in ("against", "here"):
            if side in row:
                names += [n for n in row[side]["cpu_us_per_request"]
                          if n != "total" and n not in names]
    lines = [f"Command: `{command}`", "",
             "| pair | code | " + " | ".join(names) + " | total | charges/s | ratio |",
             "|---|---|" + "---|" * (len(names) + 3)]
    for i, row in enumerate(result["pairs"]):
        for side in ("against", "here"):
            if side not in row:
                continue
            cpu = row[side]["cpu_us_per_request"]
            ratio = f"**{row['cpu_ratio']}**" if side == "here" and "cpu_ratio" in row else ""
            lines.append(f"| {i + 1} | {side} | "
                         + " | ".join(str(cpu.get(n, "")) for n in names)
                         + f" | {cpu['total']} | {row[side]['throughput_per_s']:,.0f} | "
                           f"{ratio} |")
    if result["cpu_ratio_median"] is not None:
        lines += ["", f"Median ratio of CPU per durable charge: {result['cpu_ratio_median']}"]
    return "\n".join(lines) + "\n"


def main(against: str | None, pairs: int, duration_s: float, connections: int, window: int,
         out: Path, command: str) -> int:
    here = Path.cwd()
    result = run_pairs(here, Path(against).resolve() if against else None, pairs,
                       duration_s, connections, window)
    result["command"] = command
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(result, command))
    print(f"results: {out}")
    return 0
