"""Start-up recovery with a bank that does not answer: the hub starts, serves, never charges
twice, and settles the transaction once the bank is back (issue 11, item 11)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway import config as cfgmod
from gateway.client import Card, ConnectionLost, RequestError
from protocol import banklink
from protocol.errors import ErrorCode
from tests.deploy import OPENING, RICH, Deployment
from tests.loadgen import wait_resolved
from tests.rawclient import Raw
from tests.waiting import wait_until

DEFAULTS = cfgmod.HubConfig()


def test_the_recovery_bound_must_outlast_one_inquiry(tmp_path: Path) -> None:
    # The defaults keep the relation: 20 s > 5 s x 3 attempts.
    assert DEFAULTS.recovery_at_start_s > \
        DEFAULTS.bank_timeout_s * DEFAULTS.bank_retry_attempts_max
    with pytest.raises(cfgmod.ConfigError, match="recovery_at_start_s"):
        cfgmod.HubConfig(bank_timeout_s=10.0)  # 20 s < 10 s x 3
    path = tmp_path / "hub.toml"
    path.write_text("recovery_at_start_s = 15.0\n")  # not more than 5 s x 3
    with pytest.raises(cfgmod.ConfigError, match="bank_retry_attempts_max"):
        cfgmod.load(cfgmod.HubConfig, path)
    path.write_text("recovery_at_start_s = 40.0\nbank_timeout_s = 10.0\n")
    assert cfgmod.load(cfgmod.HubConfig, path).recovery_at_start_s == 40.0


async def test_black_holed_bank_at_start_up_the_hub_serves_then_settles(
        tmp_path: Path) -> None:
    # The DEFAULT bank timeouts: one inquiry to the silent bank takes 5 s x 3 = 15 s, longer
    # than the 10 s start-up bound the hub used to have (it then exited, and crash-looped).
    dep = await Deployment(tmp_path, bca_nodes=1, hub_overrides={
        "bank_timeout_s": DEFAULTS.bank_timeout_s,
        "bank_retry_attempts_max": DEFAULTS.bank_retry_attempts_max}).astart()
    card = Card(RICH[5], 12, 2030, "123")
    try:
        # The bank swallows every request; its link stays up (heartbeats are answered).
        await dep.admin("bca", "admin.faults", {"blackhole": True})
        client = await dep.client(timeout_s=300.0, reconnect=False).connect()
        charge = asyncio.ensure_future(client.charge("rec-1", 21_000, card=card))
        await wait_until(lambda: dep.received("bca", banklink.AUTHORIZE),
                         "the bank to receive the authorization")
        # The intent was committed before the call: the ledger has a bank call sent and no
        # answer recorded. The hub dies now.
        assert dep.ledger_sql("SELECT unresolved FROM transactions "
                              "WHERE order_id = 'rec-1'") == [(1,)]
        assert dep.hub is not None
        dep.hub.kill()
        with pytest.raises(ConnectionLost):
            await charge
        await client.close()

        # Restart with the bank still silent: recovery cannot settle it, start-up goes on.
        await dep.arestart_hub(ready_timeout_s=300.0)
        raw = await Raw.open(dep)
        welcome = await raw.hello()
        assert welcome["in_flight_max"] > 0
        raw.close()
        async with dep.client(timeout_s=300.0, retry_attempts_max=1) as c:
            with pytest.raises(RequestError) as info:
                await c.status("rec-1")
            assert info.value.code is ErrorCode.OUTCOME_UNKNOWN
            # The merchant retries the charge: the hub asks the bank what happened (an
            # inquiry), it does not send the authorization again.
            with pytest.raises(RequestError) as info:
                await c.charge("rec-1", 21_000, card=card)
            assert info.value.code is ErrorCode.OUTCOME_UNKNOWN
        stats = await dep.stats("bca")
        assert stats["received"][banklink.AUTHORIZE] == 1
        assert stats["received"][banklink.INQUIRY] >= 1

        # The bank is back: the resolver settles it (the authorization never reached the
        # books, so the inquiry finds nothing and the hub reverses: failure, no money moved).
        await dep.admin("bca", "admin.faults", {"blackhole": False})
        assert await wait_resolved(dep, timeout_s=300.0) == 0
        async with dep.client() as c:
            tx = await c.status("rec-1")
            again = await c.charge("rec-1", 21_000, card=card)
        assert tx.transaction_status == "failure"
        assert again.replayed and again.transaction_status == "failure"
        assert await dep.received("bca", banklink.AUTHORIZE) == 1
        assert await dep.balance("bca", RICH[5]) == (OPENING, 0)
        report = dep.audit([])
        assert report.clean, report.findings
    finally:
        dep.stop()
