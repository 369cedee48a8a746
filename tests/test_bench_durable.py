"""``paywire bench durable`` runs the durable closed loop in two checkouts in pairs and writes
each pair's CPU ratio (no speed asserted; the other checkout here is this one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import durable

ROOT = Path(__file__).resolve().parent.parent


def test_bench_durable_writes_pairs_and_their_ratio(tmp_path: Path) -> None:
    out = tmp_path / "durable.json"
    scratch = tmp_path / "scratch"  # where each run makes its working directory
    scratch.mkdir()
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "durable",
                           "--duration-s", "0.5", "--connections", "2", "--window", "2",
                           "--rounds", "1", "--against", str(ROOT), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(scratch.iterdir()) == []  # each run removes its databases and logs
    doc = json.loads(out.read_text())
    (pair,) = doc["pairs"]
    for side in ("against", "here"):
        cpu = pair[side]["cpu_us_per_request"]
        assert pair[side]["throughput_per_s"] > 0
        assert cpu["total"] > 0 and {"hub", "hub writer", "bank node"} <= cpu.keys()
    assert pair["cpu_ratio"] == round(pair["here"]["cpu_us_per_request"]["total"]
                                      / pair["against"]["cpu_us_per_request"]["total"], 3)
    assert doc["cpu_ratio_median"] == pair["cpu_ratio"]
    assert "| 1 | here |" in proc.stdout and "Median ratio" in proc.stdout


def test_a_failed_run_names_its_checkout(tmp_path: Path) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    try:
        durable.run_once(tmp_path, 0.1, 1, 1)  # no bench package there
    except RuntimeError as exc:
        assert str(tmp_path) in str(exc)
    else:
        raise AssertionError("a checkout without the bench ran")
