"""``paywire bench``: every baseline in one invocation, so every figure is a ratio.

    paywire bench all [--duration-s 10] [--connections 8] [--window 16] [--rounds 3] [--plot]
    paywire bench smoke            # a second or two of each, for the test suite

Runs, on this machine, with all processes on it and TLS on every link:
ceiling (TLS echo, plain and gathered), alternative (HTTPS + JSON, same business path),
Paywire (durable group commit) closed loop, open loop at half its peak and at the
alternative's peak, and Paywire with ``synchronous=OFF``. Optionally a memory run at 80%
of peak. Writes a JSON result and a Markdown table.

The three closed-loop runs that the throughput ratios compare (alternative, durable,
``synchronous=OFF``) run in ``rounds`` interleaved rounds, so a slow minute of the disk or of
the machine falls on all three alike: each ratio is the median of its per-round ratios, and
the run shown for each is its median round. All rounds are in the result file and the table.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter
from bench.disk import fsync_latency
from bench.loadgen import LoadResult, closed_loop, open_loop
from gateway import pki, secret_keys
from gateway.cliout import Progress
from gateway.config import BankNodeConfig, BankRoute, HubConfig, MerchantConfig, dump_toml
from gateway.demo import luhn_complete
from gateway.processes import NodeProcess, child_env, module_command

MERCHANT = "bench-merchant"
KEY = "bench-server-key"
CARDS = [luhn_complete(f"4811{i:06d}") for i in range(1, 201)]


@dataclass
class Options:
    duration_s: float = 10.0
    connections: int = 8
    window: int = 16
    warmup_s: float = 1.0
    memory_s: float = 0.0
    # Load before the memory measurement starts. The hub must reach its steady state first:
    # the replay-window nonce cache fills for ``timestamp_window_s`` (300 s by default) and
    # the transaction cache for ``cache_entries_max`` charges; growth while they fill is
    # by design, not a leak. None: the hub's timestamp window plus 30 s.
    memory_warmup_s: float | None = None
    plot: Path | None = None
    out: Path = Path("bench/results/latest.json")
    markdown: Path | None = None
    fsync_samples: int = 300
    rounds: int = 3  # interleaved rounds of the closed-loop runs that the ratios compare
    # Also reported (issue 12): the durable closed loop at many connections, where batches are
    # largest, and with one charge in flight, where latency is the figure and CPU per charge
    # shows what batching cannot amortise. 0 skips the wide run.
    wide_connections: int = 64
    single: bool = True
    # A result file of the pre-redesign code's ``bench all``, run in the same hour: the CPU
    # per durable charge target is a ratio against it.
    baseline: Path | None = None


class _progress:
    """A closed-loop run's counter: redrawn in place on a terminal; in a log (``make bench >
    bench.log``, CI) one line when the run ends instead of an endless line of ``\r``."""

    def __init__(self, label: str) -> None:
        self.bar = Progress(label)

    def __call__(self, done: int, total: int) -> None:
        self.bar.update(done)

    def __enter__(self) -> _progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.finish()


class Bench:
    def __init__(self, workdir: Path, opts: Options) -> None:
        self.workdir = workdir
        self.opts = opts
        self.certs = workdir / "certs"
        self.secrets = workdir / "paywire-secrets.toml"
        self.procs: list[Any] = []
        self.bank: NodeProcess | None = None
        self.seq = 0

    def start_bank(self) -> int:
        pki.init(self.certs, merchants=[MERCHANT], banks=["bca-1"])
        secret_keys.init(self.secrets)
        cfg = BankNodeConfig(node_id="bca-1", bank="bca", listen_port=0, certs_dir=self.certs,
                             store_path=self.workdir / "bca.db", secrets_file=self.secrets,
                             accounts={c: 10**15 for c in CARDS})
        self.bank = NodeProcess("bank", cfg, self.workdir, "bca-1").start()
        self.procs.append(self.bank)
        return self.bank.wait_ready()

    def hub_config(self, name: str, synchronous: str) -> HubConfig:
        assert self.bank is not None
        return HubConfig(listen_port=0, certs_dir=self.certs, secrets_file=self.secrets,
                         ledger_path=self.workdir / f"{name}.db", ledger_synchronous=synchronous,
                         merchants=[MerchantConfig(MERCHANT, KEY, connections_max=1024,
                                                   rate_per_s=1e9, rate_burst=10**9)],
                         banks=[BankRoute("bca", [f"bca-1@127.0.0.1:{self.bank.port}"],
                                          bins=["4811"])],
                         in_flight_max=1024)

    def spawn(self, module: str, args: list[str], name: str) -> int:
        port_file = self.workdir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([*module_command(module), *args, "--port-file",
                                 str(port_file)], stdout=log, stderr=subprocess.STDOUT,
                                env=child_env())
        log.close()
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text())
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.workdir / (name + '.log')}")
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start")

    def stop(self, proc: Any) -> None:
        if isinstance(proc, NodeProcess):
            proc.terminate()
        elif proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)

    def meter(self, **servers: int) -> CpuMeter:
        """CPU of ``servers`` (and their writer processes), the bank node, and this process
        (the load generator), from now on."""
        assert self.bank is not None and self.bank.proc is not None
        meter = CpuMeter({**servers, "bank node": self.bank.proc.pid,
                          "load generator": os.getpid()})
        meter.start()
        return meter

    def next_order(self) -> str:
        self.seq += 1
        return f"b{os.getpid()}-{self.seq}"

    def charge_args(self, seq: int) -> dict[str, Any]:
        return {"order_id": self.next_order(), "gross_amount": 10_000 + seq % 1000,
                "payment_type": "credit_card",
                "card": {"number": CARDS[seq % len(CARDS)], "exp_month": 12,
                         "exp_year": 2030, "cvv": "123"}}

    # --- the baselines ---------------------------------------------------------------------
    async def echo(self, gathered: bool) -> dict[str, Any]:
        from bench.echo import run_client
        from gateway import tls

        name = "echo-gathered" if gathered else "echo-plain"
        args = ["--certs", str(self.certs)] + (["--gathered"] if gathered else [])
        port = await asyncio.get_running_loop().run_in_executor(
            None, self.spawn, "bench.echo", args, name)
        proc = self.procs[-1]
        try:
            ctx = tls.node_client_context(self.certs, "merchant", MERCHANT)
            await run_client(port, ctx, self.opts.connections, self.opts.window,
                             min(self.opts.warmup_s, 1.0))
            result = await run_client(port, ctx, self.opts.connections, self.opts.window,
                                      self.opts.duration_s)
        finally:
            self.stop(proc)
        return {"mode": "closed", **result}

    async def alternative(self, rate_per_s: float | None = None) -> dict[str, Any]:
        from bench.alternative import HttpClient

        cfg = self.hub_config(f"alt-{self.seq}", "FULL")
        path = self.workdir / "alt.toml"
        path.write_text(dump_toml(cfg))
        loop = asyncio.get_running_loop()
        port = await loop.run_in_executor(None, self.spawn, "bench.alternative",
                                          ["--config", str(path)], "alternative")
        proc = self.procs[-1]
        workers = self.opts.connections * self.opts.window
        client = HttpClient(port, MERCHANT, KEY, self.certs, workers)
        try:
            async def op(seq: int) -> Any:
                return await client.call("charge", self.charge_args(seq))

            await closed_loop(op, workers=workers, requests=10**9,
                              duration_s=self.opts.warmup_s)
            meter = self.meter(server=proc.pid)
            if rate_per_s is None:
                with _progress("alternative") as shown:
                    result = await closed_loop(op, workers=workers, requests=10**9,
                                               duration_s=self.opts.duration_s,
                                               progress=shown)
            else:
                result = await open_loop(op, rate_per_s=rate_per_s, requests=10**9,
                                         duration_s=self.opts.duration_s)
            cpu = meter.per_request_us(result.ok)
        finally:
            await client.close()
            self.stop(proc)
        return {**result.to_dict(), "cpu_us_per_request": cpu}

    async def paywire(self, synchronous: str, rates: list[float | None],
                      memory_s: float = 0.0, memory_rate: float = 0.0, *,
                      connections: int | None = None, window: int | None = None
                      ) -> list[dict[str, Any]]:
        """One hub; for each entry of ``rates`` a run (None: closed loop at full speed).
        ``connections`` x ``window`` in flight (default: the options')."""
        from gateway.client import connect

        connections = connections or self.opts.connections
        window = window or self.opts.window

        cfg = self.hub_config(f"paywire-{synchronous}-{self.seq}", synchronous)
        hub = NodeProcess("hub", cfg, self.workdir, f"hub-{synchronous}")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, hub.start)
        self.procs.append(hub)
        await loop.run_in_executor(None, hub.wait_ready)
        clients = [await connect("127.0.0.1", hub.port, merchant_id=MERCHANT, server_key=KEY,
                                 certs_dir=self.certs, in_flight_max=window,
                                 reconnect=False).connect()
                   for _ in range(connections)]
        out: list[dict[str, Any]] = []
        try:
            async def op(seq: int) -> Any:
                return await clients[seq % len(clients)].request("charge",
                                                                 self.charge_args(seq))

            workers = connections * window
            await closed_loop(op, workers=workers, requests=10**9,
                              duration_s=self.opts.warmup_s)
            assert hub.proc is not None
            for rate in rates:
                meter = self.meter(hub=hub.proc.pid)
                if rate is None:
                    with _progress(f"paywire {synchronous}") as shown:
                        res = await closed_loop(op, workers=workers, requests=10**9,
                                                duration_s=self.opts.duration_s,
                                                progress=shown)
                else:
                    res = await open_loop(op, rate_per_s=rate, requests=10**9,
                                          duration_s=self.opts.duration_s,
                                          in_flight_max=workers * 8)
                out.append({**res.to_dict(), "cpu_us_per_request": meter.per_request_us(res.ok)})
            if memory_s:
                warmup_s = self.opts.memory_warmup_s
                if warmup_s is None:
                    warmup_s = cfg.timestamp_window_s + 30.0
                out.append(await self._memory(op, hub, memory_rate, warmup_s, memory_s))
        finally:
            for c in clients:
                await c.close()
            self.stop(hub)
        return out

    async def _memory(self, op: Any, hub: NodeProcess, rate: float, warmup_s: float,
                      duration_s: float) -> dict[str, Any]:
        """RSS of the hub sampled during one long open-loop run at ``rate``: ``warmup_s``
        to reach the steady state, then ``duration_s`` measured."""
        assert hub.proc is not None
        pid = hub.proc.pid
        samples: list[tuple[float, int]] = []
        interval_s = min(5.0, duration_s / 20)

        async def sample() -> None:
            start = time.monotonic()
            while True:
                status = Path(f"/proc/{pid}/status").read_text()
                rss = next(int(line.split()[1]) for line in status.splitlines()
                           if line.startswith("VmRSS:"))
                samples.append((round(time.monotonic() - start, 1), rss * 1024))
                await asyncio.sleep(interval_s)

        sampler = asyncio.ensure_future(sample())
        res: LoadResult = await open_loop(op, rate_per_s=rate, requests=10**9,
                                          duration_s=warmup_s + duration_s,
                                          in_flight_max=4096)
        sampler.cancel()
        measured = [(t - warmup_s, r) for t, r in samples if t >= warmup_s]
        early = [r for t, r in measured if duration_s * 0.1 <= t <= duration_s * 0.3]
        late = [r for t, r in measured if t >= duration_s * 0.8]
        growth = (max(late) / max(early) - 1) if early and late else 0.0
        return {"mode": "memory", **res.to_dict(), "rss_samples": samples,
                "warmup_s": warmup_s, "measured_s": duration_s,
                "rss_at_start": measured[0][1] if measured else None,
                "rss_at_end": measured[-1][1] if measured else None,
                "rss_growth": round(growth, 4)}


async def run_all(opts: Options, workdir: Path) -> dict[str, Any]:
    bench = Bench(workdir, opts)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, bench.start_bank)
    results: dict[str, Any] = {}
    try:
        print("  ceiling: TLS echo, one write per response ...", file=sys.stderr)
        results["echo_plain"] = await bench.echo(gathered=False)
        print("  ceiling: TLS echo, gathered writes ...", file=sys.stderr)
        results["echo_gathered"] = await bench.echo(gathered=True)
        print("\n  disk: fsync latency ...", file=sys.stderr)
        results["disk_before"] = await loop.run_in_executor(None, fsync_latency, workdir,
                                                            opts.fsync_samples)
        for name in ROUND_RUNS:
            results[name + "_rounds"] = []
        for i in range(opts.rounds):
            tag = f"round {i + 1}/{opts.rounds}"
            print(f"\n  {tag}: alternative, HTTPS + JSON ...", file=sys.stderr)
            results["alternative_rounds"].append(await bench.alternative())
            print(f"\n  {tag}: paywire, durable ...", file=sys.stderr)
            results["paywire_rounds"].append((await bench.paywire("FULL", [None]))[0])
            print(f"\n  {tag}: paywire, synchronous=OFF ...", file=sys.stderr)
            results["paywire_sync_off_rounds"].append((await bench.paywire("OFF", [None]))[0])
        for name in ROUND_RUNS:
            results[name] = median_run(results[name + "_rounds"])
        peak_alt = results["alternative"]["throughput_per_s"]
        peak = results["paywire"]["throughput_per_s"]
        print("\n  paywire, durable, open loop at 1/2 peak and at the alternative's peak ...",
              file=sys.stderr)
        runs = await bench.paywire("FULL", [peak / 2, max(peak_alt, 1.0)],
                                   memory_s=opts.memory_s, memory_rate=peak * 0.8)
        results["paywire_half_peak"] = runs[0]
        results["paywire_at_alt_peak"] = runs[1]
        if opts.memory_s:
            results["paywire_memory"] = runs[2]
        results["disk_after"] = await loop.run_in_executor(None, fsync_latency, workdir,
                                                           opts.fsync_samples)
        if opts.wide_connections:
            print(f"\n  paywire, durable, {opts.wide_connections} x {opts.window} in flight ...",
                  file=sys.stderr)
            results["paywire_wide"] = (await bench.paywire(
                "FULL", [None], connections=opts.wide_connections))[0]
        if opts.single:
            print("\n  paywire, durable, one charge in flight ...", file=sys.stderr)
            results["paywire_single"] = (await bench.paywire(
                "FULL", [None], connections=1, window=1))[0]
        if opts.plot is not None:
            print("  paywire, latency against offered load ...", file=sys.stderr)
            rates = [peak * f for f in (0.2, 0.4, 0.6, 0.8, 1.0)]
            curve = await bench.paywire("FULL", list(rates))
            results["paywire_curve"] = curve
    finally:
        bench.stop_all()
    return results


ROUND_RUNS = ("alternative", "paywire", "paywire_sync_off")


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median throughput (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: float(r["throughput_per_s"]))
    return ordered[(len(ordered) - 1) // 2]


def _tput_ratio(run: dict[str, Any], base: dict[str, Any]) -> float:
    return float(run["throughput_per_s"]) / max(float(base["throughput_per_s"]), 1e-9)


def round_ratios(r: dict[str, Any], name: str, base: str) -> list[float]:
    """Throughput of ``name`` over ``base`` within each round."""
    return [_tput_ratio(x, y) for x, y in zip(r[name + "_rounds"], r[base + "_rounds"],
                                                strict=True)]


def paired_ratio(r: dict[str, Any], name: str, base: str) -> float:
    """Throughput of ``name`` over ``base``: the median of the ratios within each round, so
    a slow minute, which slows both runs of its round, does not decide the figure. Without
    rounds, the ratio of the two runs."""
    a, b = r.get(name + "_rounds"), r.get(base + "_rounds")
    if a and b and len(a) == len(b):
        return statistics.median(round_ratios(r, name, base))
    return _tput_ratio(r[name], r[base])


def cpu_total_us(run: dict[str, Any]) -> float:
    return float(run.get("cpu_us_per_request", {}).get("total", 0.0))


def ratios(r: dict[str, Any], baseline: dict[str, Any] | None = None) -> dict[str, float]:
    """The targets' figures; ``baseline``: the ``results`` of the pre-redesign code's run."""
    def tput(name: str) -> float:
        return float(r[name]["throughput_per_s"]) if name in r else 0.0

    def p99(name: str) -> float:
        return float(r[name]["latency_ms"]["p99"]) if name in r else 0.0

    out = {
        "paywire_vs_alternative": paired_ratio(r, "paywire", "alternative"),
        "paywire_vs_echo_ceiling": tput("paywire") / max(tput("echo_plain"), 1e-9),
        "durable_vs_sync_off": paired_ratio(r, "paywire", "paywire_sync_off"),
        "p99_at_alt_peak_vs_alt_p99": p99("paywire_at_alt_peak") / max(p99("alternative"),
                                                                         1e-9),
        "p99_ms_at_half_peak": p99("paywire_half_peak"),
        "p99_9_ms_at_half_peak": float(r["paywire_half_peak"]["latency_ms"]["p99.9"])
        if "paywire_half_peak" in r else 0.0,
    }
    if "paywire_memory" in r:
        out["memory_growth"] = r["paywire_memory"]["rss_growth"]
    if baseline is not None and "paywire" in r and "paywire" in baseline:
        out["cpu_vs_baseline"] = cpu_total_us(r["paywire"]) / max(
            cpu_total_us(baseline["paywire"]), 1e-9)
    return {k: round(v, 3) for k, v in out.items()}


# The core redesign's targets (issue 12, DESIGN §8).
TARGETS = [("paywire_vs_echo_ceiling", ">=", 0.10, "throughput ≥ 10% of the TLS echo ceiling"),
           ("paywire_vs_alternative", ">=", 4.0, "throughput ≥ 4x HTTPS+JSON"),
           ("cpu_vs_baseline", "<=", 0.40,
            "CPU per durable charge ≤ 40% of the pre-redesign code's (same hour)"),
           ("p99_ms_at_half_peak", "<=", 5.0, "p99 ≤ 5 ms at half peak"),
           ("p99_9_ms_at_half_peak", "<=", 20.0, "p99.9 ≤ 20 ms at half peak"),
           ("durable_vs_sync_off", ">=", 0.8, "durable ≥ 0.8 x synchronous=OFF"),
           ("memory_growth", "<=", 0.10, "hub RSS growth < 10% over the memory run")]


def markdown(results: dict[str, Any], opts: Options, command: str,
             baseline: dict[str, Any] | None = None) -> str:
    rows = [("TLS echo ceiling, one write per response", "echo_plain"),
            ("TLS echo, gathered writes (absolute limit)", "echo_gathered"),
            ("HTTPS + JSON alternative (aiohttp)", "alternative"),
            ("Paywire, durable (synchronous=FULL)", "paywire"),
            ("Paywire, open loop at ½ peak", "paywire_half_peak"),
            ("Paywire, open loop at the alternative's peak", "paywire_at_alt_peak"),
            ("Paywire, synchronous=OFF", "paywire_sync_off"),
            (f"Paywire, durable, {opts.wide_connections} x {opts.window} in flight",
             "paywire_wide"),
            ("Paywire, durable, one charge in flight", "paywire_single")]
    lines = [f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}, all processes on this machine, TLS 1.3 on every "
             f"link; {opts.connections} connections x {opts.window} in flight, "
             f"{opts.duration_s:g} s per run, {opts.rounds} interleaved round"
             f"{'s' if opts.rounds != 1 else ''} of the closed-loop runs.", "",
             "| run | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for label, key in rows:
        if key not in results:
            continue
        r = results[key]
        lat = r["latency_ms"]
        offered = f" (offered {r['offered_per_s']:,.0f}/s)" if r.get("offered_per_s") else ""
        lines.append(f"| {label}{offered} | {r['throughput_per_s']:,.0f} | {lat['p50']} | "
                     f"{lat['p90']} | {lat['p99']} | {lat['p99.9']} | {lat['max']} | "
                     f"{sum(r.get('errors', {}).values())} |")
    if len(results.get("paywire_rounds", [])) > 1:
        lines += ["", "Interleaved rounds of the closed-loop runs, requests/s (the table shows the "
                  "median round of each; the throughput ratios are medians of the ratios within "
                  "each round):", "",
                  "| round | alternative | durable | synchronous=OFF | durable / alternative | "
                  "durable / OFF |", "|---|---|---|---|---|---|"]
        vs_alt = round_ratios(results, "paywire", "alternative")
        vs_off = round_ratios(results, "paywire", "paywire_sync_off")
        for i, runs in enumerate(zip(*(results[n + "_rounds"] for n in ROUND_RUNS),
                                     strict=True)):
            t = [float(x["throughput_per_s"]) for x in runs]
            lines.append(f"| {i + 1} | {t[0]:,.0f} | {t[1]:,.0f} | {t[2]:,.0f} | "
                         f"{vs_alt[i]:.2f} | {vs_off[i]:.2f} |")
    cpu_rows = [(label, results[key]["cpu_us_per_request"]) for label, key in rows
                if key in results and "cpu_us_per_request" in results[key]]
    if cpu_rows:
        names = list(dict.fromkeys(n for _, c in cpu_rows for n in c if n != "total"))
        lines += ["", "CPU per request, µs, by process (each server counted with its storage "
                  "writer process, shown apart):", "",
                  "| run | " + " | ".join(names) + " | total | 2 cores / total |",
                  "|---|" + "---|" * (len(names) + 2)]
        for label, c in cpu_rows:
            lines.append(f"| {label} | " + " | ".join(str(c.get(n, "")) for n in names)
                         + f" | {c['total']} | {2e6 / max(c['total'], 1e-9):,.0f}/s |")
    disks = [(label, results[key]["latency_ms"]) for label, key in
             (("before the Paywire runs", "disk_before"), ("after", "disk_after"))
             if key in results]
    if disks:
        lines += ["", "Disk, fsync of a 4 KiB append in the benchmark's directory (every charge "
                  "waits for three in series): " + "; ".join(
                      f"{label}: p50 {d['p50']} ms, p99 {d['p99']} ms, max {d['max']} ms"
                      for label, d in disks) + "."]
    mem = results.get("paywire_memory")
    if mem and mem.get("rss_at_start"):
        lines += ["", f"Memory run: open loop at {mem['offered_per_s']:,.0f}/s (80 % of peak), "
                  f"{mem['warmup_s']:g} s to reach the steady state, then {mem['measured_s']:g} s "
                  f"measured: {mem['throughput_per_s']:,.0f}/s achieved, "
                  f"{sum(mem.get('errors', {}).values())} errors, hub RSS "
                  f"{mem['rss_at_start'] / 2**20:.0f} MB → {mem['rss_at_end'] / 2**20:.0f} MB "
                  f"(growth {mem['rss_growth'] * 100:.1f} %, 10-30 % vs last 20 % of the "
                  f"measured part)."]
    if baseline is not None and "paywire" in baseline:
        lines += ["", f"Pre-redesign code in the same hour ({opts.baseline}): durable "
                  f"{float(baseline['paywire']['throughput_per_s']):,.0f}/s, CPU per charge "
                  f"{cpu_total_us(baseline['paywire']):.1f} µs ("
                  + ", ".join(f"{k} {v}" for k, v in
                              baseline["paywire"]["cpu_us_per_request"].items()
                              if k != "total") + ")."]
    rat = ratios(results, baseline)
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for key, op, bound, label in TARGETS:
        if key not in rat:
            lines.append(f"| {label} | not run | — |")
            continue
        ok = rat[key] >= bound if op == ">=" else rat[key] <= bound
        lines.append(f"| {label} | {rat[key]} | {'yes' if ok else '**no**'} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = results.get("paywire_curve", [])
    offered = [r["offered_per_s"] for r in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("p50", "p90", "p99", "p99.9"):
        ax.plot(offered, [r["latency_ms"][key] for r in curve], marker="o", label=key)
    ax.set_xlabel("offered load (charges/s)")
    ax.set_ylabel("latency (ms, from scheduled send)")
    ax.set_yscale("log")
    ax.set_title("Paywire: latency percentiles against offered load")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(opts: Options, command: str) -> int:
    import uvloop

    baseline = None
    if opts.baseline is not None:
        baseline = json.loads(opts.baseline.read_text())["results"]
    workdir = Path(tempfile.mkdtemp(prefix="paywire-bench-"))
    try:
        results = uvloop.run(run_all(opts, workdir))
    except BaseException:
        print(f"bench failed; its logs and databases are kept in {workdir}", file=sys.stderr)
        raise
    # The runs' ledgers and the bank's books: about 3 GB after a full `make bench`.
    shutil.rmtree(workdir, ignore_errors=True)
    doc = {"command": command, "options": {"duration_s": opts.duration_s,
                                           "connections": opts.connections,
                                           "window": opts.window, "memory_s": opts.memory_s,
                                           "rounds": opts.rounds},
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "results": results, "ratios": ratios(results, baseline)}
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(doc, indent=1))
    table = markdown(results, opts, command, baseline)
    if opts.markdown is not None:
        opts.markdown.write_text(table)
    if opts.plot is not None:
        plot(results, opts.plot)
    print(table)
    print(f"results: {opts.out}")
    return 0
