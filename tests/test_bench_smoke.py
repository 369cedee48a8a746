"""Every benchmark runs for a second and writes a well-formed result (no speed asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_bench_smoke_writes_a_well_formed_result(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    scratch = tmp_path / "scratch"  # where the bench makes its working directory
    scratch.mkdir()
    # A pre-redesign result to compare CPU per charge against (only its durable run is read).
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"results": {"paywire": {
        "throughput_per_s": 1000.0, "cpu_us_per_request": {"hub": 600.0, "total": 1000.0}}}}))
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "smoke", "--out",
                           str(out), "--baseline", str(baseline)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(scratch.iterdir()) == []  # its databases and logs are removed at the end
    doc = json.loads(out.read_text())
    runs = doc["results"]
    for name in ("echo_plain", "echo_gathered", "alternative", "paywire",
                 "paywire_half_peak", "paywire_at_alt_peak", "paywire_sync_off",
                 "paywire_wide", "paywire_single"):
        run = runs[name]
        assert run["ok"] > 0, name
        assert run["duration_s"] > 0 and run["throughput_per_s"] > 0
        lat = run["latency_ms"]
        assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
        assert sum(int(n) for n in run["histogram"]["counts"].values()) == \
            run["histogram"]["total"]
    for name in ("alternative", "paywire", "paywire_sync_off"):
        assert len(runs[name + "_rounds"]) == 2, name  # the smoke runs two rounds
        assert runs[name] in runs[name + "_rounds"], name
        cpu = runs[name]["cpu_us_per_request"]
        assert cpu["total"] > 0 and cpu["load generator"] >= 0 and cpu["bank node"] > 0, name
    assert "CPU per request" in proc.stdout
    mem = runs["paywire_memory"]
    assert mem["ok"] > 0 and mem["warmup_s"] == 1.0 and mem["measured_s"] == 2.0
    assert mem["rss_at_start"] > 0 and mem["rss_at_end"] > 0
    assert mem["offered_per_s"] == 0.8 * runs["paywire"]["throughput_per_s"]  # of the peak
    assert all(t >= 0 and rss > 0 for t, rss in mem["rss_samples"])
    assert "memory_growth" in doc["ratios"] and "Memory run:" in proc.stdout
    for name in ("disk_before", "disk_after"):
        lat = runs[name]["latency_ms"]
        assert lat["count"] > 0 and 0 <= lat["p50"] <= lat["p99"] <= lat["max"], name
    assert "Disk, fsync" in proc.stdout
    assert set(doc["ratios"]) >= {"paywire_vs_alternative", "paywire_vs_echo_ceiling",
                                  "durable_vs_sync_off", "p99_ms_at_half_peak"}
    assert "| target | measured | met |" in proc.stdout
    # The wide run has its own connections; the single run one charge in flight.
    assert runs["paywire_wide"]["cpu_us_per_request"]["total"] > 0
    assert runs["paywire_single"]["cpu_us_per_request"]["total"] > 0
    assert doc["ratios"]["cpu_vs_baseline"] == round(
        runs["paywire"]["cpu_us_per_request"]["total"] / 1000.0, 3)
    assert "Pre-redesign code in the same hour" in proc.stdout
    assert "one charge in flight" in proc.stdout and "4 x 4 in flight" in proc.stdout
    assert "Interleaved rounds" in proc.stdout and doc["options"]["rounds"] == 2
