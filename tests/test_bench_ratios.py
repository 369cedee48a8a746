"""The throughput ratios pair runs of the same round, so one slow minute cannot decide them."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from bench.run import ROUND_RUNS, Options, markdown, median_run, paired_ratio, ratios


def _run(tput: float, p99: float = 10.0) -> dict[str, Any]:
    return {"throughput_per_s": tput, "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": p99,
                                                     "p99.9": p99 * 2, "max": p99 * 3}}


def _rounds(alt: list[float], full: list[float], off: list[float]) -> dict[str, Any]:
    r: dict[str, Any] = {"alternative_rounds": [_run(t) for t in alt],
                         "paywire_rounds": [_run(t) for t in full],
                         "paywire_sync_off_rounds": [_run(t) for t in off]}
    for name in ROUND_RUNS:
        r[name] = median_run(r[name + "_rounds"])
    r["echo_plain"] = _run(10_000.0)
    r["paywire_half_peak"] = _run(1.0)
    r["paywire_at_alt_peak"] = _run(1.0)
    return r


def test_median_run_is_the_middle_one_and_the_lower_middle_of_an_even_count() -> None:
    assert median_run([_run(3), _run(1), _run(2)])["throughput_per_s"] == 2
    assert median_run([_run(4), _run(1), _run(3), _run(2)])["throughput_per_s"] == 2
    assert median_run([_run(5)])["throughput_per_s"] == 5


def test_a_slow_round_slows_both_sides_and_does_not_decide_the_ratio() -> None:
    # Round 2 is a slow-disk minute for the durable run and the OFF run after it; round 3 is a
    # fast one for OFF only. Within rounds durable is 0.9 of OFF twice; the medians of the
    # columns (1,800 against 1,500, from different minutes) would say 1.2.
    r = _rounds(alt=[1000, 500, 1000], full=[1800, 900, 1900], off=[2000, 1000, 1500])
    assert paired_ratio(r, "paywire", "paywire_sync_off") == 0.9
    assert paired_ratio(r, "paywire", "alternative") == 1.8
    got = ratios(r)
    assert got["durable_vs_sync_off"] == 0.9 and got["paywire_vs_alternative"] == 1.8
    assert got["paywire_vs_echo_ceiling"] == 0.18  # the median durable run over the ceiling


def test_paired_ratio_is_the_median_of_the_per_round_ratios() -> None:
    r = _rounds(alt=[1000, 1000, 1000], full=[1000, 3000, 2000], off=[1000, 1000, 1000])
    assert paired_ratio(r, "paywire", "paywire_sync_off") == 2.0
    # Even count: the mean of the two middle ratios.
    r = _rounds(alt=[1, 1], full=[1, 2], off=[1, 1])
    assert paired_ratio(r, "paywire", "paywire_sync_off") == 1.5


def test_without_rounds_the_ratio_is_of_the_two_runs() -> None:
    r = {"paywire": _run(900), "paywire_sync_off": _run(1000)}
    assert paired_ratio(r, "paywire", "paywire_sync_off") == 0.9


def test_markdown_lists_every_round() -> None:
    r = _rounds(alt=[1000, 500, 1000], full=[1800, 900, 1900], off=[2000, 1000, 1500])
    table = markdown(r, Options(rounds=3), "paywire bench all")
    assert "3 interleaved rounds" in table
    assert "| 2 | 500 | 900 | 1,000 | 1.80 | 0.90 |" in table
    assert "| durable ≥ 0.8 x synchronous=OFF | 0.9 | yes |" in table


def test_rounds_below_one_are_refused() -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "all", "--rounds", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--rounds must be at least 1" in proc.stderr


def test_cpu_per_charge_is_a_ratio_against_the_baseline_run() -> None:
    r = _rounds(alt=[1000], full=[2000], off=[2100])
    r["paywire"]["cpu_us_per_request"] = {"hub": 60.0, "total": 120.0}
    base = {"paywire": {"throughput_per_s": 900.0,
                        "cpu_us_per_request": {"hub": 200.0, "total": 300.0}}}
    assert ratios(r, base)["cpu_vs_baseline"] == 0.4
    assert "cpu_vs_baseline" not in ratios(r)  # no baseline: no figure, not a made-up one
    table = markdown(r, Options(rounds=1, baseline=None), "paywire bench all", base)
    assert "| CPU per durable charge ≤ 40% of the pre-redesign code's (same hour) | 0.4 | yes |" \
        in table
    assert "CPU per charge 300.0 µs (hub 200.0)" in table
