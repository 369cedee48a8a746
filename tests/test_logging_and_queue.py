"""Structured logs, the bank-call queue bound, and slow or starved links."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from gateway.chaos import ChaosProxy
from gateway.cli import JsonFormatter
from gateway.client import Card, RequestError, connect
from protocol.errors import ErrorCode
from tests.deploy import KEYS, OPENING, RICH, Deployment


def test_log_lines_are_json_even_with_quotes_and_exceptions() -> None:
    record = logging.LogRecord("paywire.x", logging.INFO, __file__, 1,
                               'peer said "no" \\ then %s', ("left",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == 'peer said "no" \\ then left' and line["level"] == "INFO"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exc"]


async def test_bank_call_queue_bound_refuses_before_anything_happens(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1,
                           hub_overrides={"bank_calls_queued_max": 2}).astart()
    try:
        await dep.admin("bca", "admin.faults", {"latency_ms": 500})
        async with dep.client(retry_attempts_max=1) as c:
            results = await asyncio.gather(
                *(c.charge(f"q-{i}", 1_000, card=Card(RICH[i], 12, 2030, "123"))
                  for i in range(6)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, RequestError)]
        done = [r for r in results if not isinstance(r, BaseException)]
        assert len(done) >= 2 and refused
        assert all(r.code is ErrorCode.QUEUE_FULL for r in refused)
        for i, r in enumerate(results):  # a refused charge moved no money and left no record
            if isinstance(r, RequestError):
                assert await dep.balance("bca", RICH[i]) == (OPENING, 0)
                assert dep.ledger_sql("SELECT COUNT(*) FROM transactions WHERE order_id=?",
                                      (f"q-{i}",))[0][0] == 0
    finally:
        dep.stop()


@pytest.mark.parametrize("faults", [{"latency_ms": 40, "jitter_ms": 30},
                                    {"bandwidth_bytes_per_s": 20_000}])
async def test_slow_and_starved_links_give_the_same_results(tmp_path: Path,
                                                            faults: dict[str, int]) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    proxy = await ChaosProxy("127.0.0.1", dep.port, seed=3).start()
    proxy.set("both", **faults)
    try:
        client = await connect("127.0.0.1", proxy.port, merchant_id="M1",
                               server_key=KEYS["M1"], certs_dir=dep.certs).connect()
        txs = await asyncio.gather(*(client.charge(f"slow-{i}", 2_000 + i,
                                                   card=Card(RICH[i], 12, 2030, "123"))
                                     for i in range(8)))
        again = await client.charge("slow-0", 2_000, card=Card(RICH[0], 12, 2030, "123"))
        await client.close()
        assert [t.transaction_status for t in txs] == ["capture"] * 8
        assert [t.gross_amount for t in txs] == [2_000 + i for i in range(8)]
        assert again.replayed and again.transaction_id == txs[0].transaction_id
    finally:
        await proxy.stop()
        dep.stop()
