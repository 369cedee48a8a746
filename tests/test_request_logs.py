"""The hub's INFO logs: one structured line per request with its ids and outcome, lines for
connections and refused handshakes, and never a key or a card number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.client import Card
from tests.deploy import KEYS, POOR, RICH, Deployment
from tests.waiting import wait_until


def lines(path: Path) -> list[dict[str, object]]:
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


async def test_one_line_per_request_and_no_secrets(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYWIRE_LOG_LEVEL", "INFO")  # the nodes the deployment starts
    monkeypatch.setenv("PAYWIRE_LOG_FORMAT", "json")
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    hub_log = tmp_path / "hub.log"
    try:
        async with dep.client(retry_attempts_max=1) as c:
            await c.charge("log-1", 10_000, card=Card(RICH[0], 12, 2030, "123"))
            await c.charge("log-2", 50_000, card=Card(POOR, 12, 2030, "123"))
            await c.status("log-1")

        def requests() -> list[dict[str, object]]:
            return [e for e in lines(hub_log) if e.get("operation") is not None]

        await wait_until(lambda: len(requests()) >= 3, "three request lines in the hub log",
                         timeout_s=60)
        await wait_until(lambda: any("connection closed" in str(e.get("msg"))
                                     for e in lines(hub_log)), "the connection-closed line",
                         timeout_s=60)
    finally:
        dep.stop()
    got = requests()
    assert [(e["operation"], e["order_id"], e["outcome"]) for e in got] == [
        ("charge", "log-1", "200"), ("charge", "log-2", "202"), ("status", "log-1", "200")]
    for e in got:
        assert e["merchant"] == "M1" and isinstance(e["request_id"], int)
        assert isinstance(e["latency_us"], int) and e["latency_us"] >= 0
    assert any("connection opened" in str(e.get("msg")) for e in lines(hub_log))
    text = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    for secret in (RICH[0], POOR, *KEYS.values()):
        assert secret not in text


async def test_level_and_format_from_the_config(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYWIRE_LOG_LEVEL", raising=False)
    monkeypatch.delenv("PAYWIRE_LOG_FORMAT", raising=False)
    dep = await Deployment(tmp_path, bca_nodes=1, hub_overrides={
        "log_level": "INFO", "log_format": "text"}).astart()
    hub_log = tmp_path / "hub.log"
    try:
        async with dep.client(retry_attempts_max=1) as c:
            await c.charge("cfg-1", 10_000, card=Card(RICH[1], 12, 2030, "123"))

        def request_line() -> str | None:
            for raw in hub_log.read_text(errors="replace").splitlines():
                if " INFO paywire.session request " in raw:
                    return raw
            return None

        await wait_until(lambda: request_line() is not None,
                         "a text request line in the hub log", timeout_s=60)
    finally:
        dep.stop()
    line = request_line()
    assert line is not None and "merchant=M1 operation=charge order_id=cfg-1 outcome=200" in line
    assert not line.lstrip().startswith("{")  # text, not JSON
    assert RICH[1] not in hub_log.read_text(errors="replace")
