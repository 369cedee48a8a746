"""``python -m bench.preauth`` runs against a hub it starts itself (with its own secrets
file: there is no built-in key) and reports every case (no speed asserted)."""

from __future__ import annotations

import subprocess
import sys


def test_preauth_bench_runs_every_case() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.preauth", "--duration-s", "0.3",
                           "--connections", "1", "--window", "4"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ordinary charge" in proc.stdout, proc.stdout[-2000:]
