"""Retention for operators (issue 15, item 5): the ``[retention]`` settings are checked at
load, and ``paywire ledger prune`` applies the sweeper's rules by hand (a real CLI process on
a real ledger file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config as cfgmod
from gateway.ledger import Notification, SqliteLedger
from gateway.transactions.model import Transaction, now_ms


@pytest.mark.parametrize(("text", "key"), [
    ("events_resume_horizon_s = 10.0", "events_resume_horizon_s"),
    ("webhooks_delivered_keep_s = -1.0", "webhooks_delivered_keep_s"),
    ("sweep_interval_s = 0.0", "sweep_interval_s"),
    ("sweep_rows_max = 0", "sweep_rows_max"),
    ("sweep_rows_max = 1000000", "sweep_rows_max"),
    ("keep_forever = true", "keep_forever"),
])
def test_bad_retention_settings_are_refused_with_the_key(tmp_path: Path, text: str,
                                                         key: str) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(f"[retention]\n{text}\n")
    with pytest.raises(cfgmod.ConfigError, match=key):
        cfgmod.load(cfgmod.HubConfig, path)


def test_retention_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    assert cfgmod.HubConfig().retention.enabled
    assert cfgmod.HubConfig().retention.events_resume_horizon_s == 7 * 86400
    path = tmp_path / "hub.toml"
    path.write_text("[retention]\nenabled = false\nevents_resume_horizon_s = 60\n")
    loaded = cfgmod.load(cfgmod.HubConfig, path).retention
    assert not loaded.enabled and loaded.events_resume_horizon_s == 60.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False)


async def _ledger_with_events(path: Path, count: int) -> None:
    ledger = SqliteLedger(path)
    await ledger.start()
    try:
        for i in range(count):
            now = now_ms()
            tx = Transaction(transaction_id=f"tx-{i}", merchant_id="M1", order_id=f"o-{i}",
                             gross_amount=1000, currency="IDR", payment_type="credit_card",
                             status="pending", fraud_status="accept", request_hash=b"h",
                             created_ms=now, updated_ms=now)
            await ledger.insert_new(tx, Notification(b"data", None, b"", b""))
    finally:
        await ledger.close()


async def _floors_and_latest(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    ledger = SqliteLedger(path)
    await ledger.start()
    try:
        return await ledger.event_floors(), await ledger.last_event_seqs()
    finally:
        await ledger.close()


async def test_ledger_prune_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    await _ledger_with_events(path, 5)
    # With the default horizon (7 days) nothing recorded just now goes.
    kept = _cli("ledger", "prune", "--ledger", str(path))
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.strip() == "deleted 0 delivered webhook(s) and 0 event(s)"

    everything = ("--events-resume-horizon-s", "0", "--webhooks-delivered-keep-s", "0")
    dry = _cli("ledger", "prune", "--ledger", str(path), "--dry-run", *everything)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == ("would delete 0 delivered webhook(s) and 5 event(s); "
                                  "resume floors M1=5")
    assert await _floors_and_latest(path) == ({}, {"M1": 5})

    done = _cli("ledger", "prune", "--ledger", str(path), *everything)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "deleted 0 delivered webhook(s) and 5 event(s); " \
                                  "resume floors M1=5"
    assert await _floors_and_latest(path) == ({"M1": 5}, {"M1": 5})

    bad = _cli("ledger", "prune", "--ledger", str(path), "--events-resume-horizon-s", "-1")
    assert bad.returncode == 2 and "--events-resume-horizon-s" in bad.stderr
    assert "Traceback" not in bad.stderr
    config = tmp_path / "hub.toml"
    config.write_text("[retention]\nevents_resume_horizon_s = 1.0\n")
    refused = _cli("ledger", "prune", "--ledger", str(path), "--config", str(config))
    assert refused.returncode == 7 and "events_resume_horizon_s" in refused.stderr
    assert "Traceback" not in refused.stderr
