"""The client while no hub answers (issue 14): a request fails within its own timeout with
an error that says so, instead of blocking for the whole reconnect window; reconnecting goes
on in the background, and the client serves again as soon as a hub is back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.client import Card, ConnectionLost
from protocol import banklink
from tests.deploy import RICH, Deployment
from tests.waiting import wait_until

# Far longer than the bounds below: a request blocking for the window would fail the test.
WINDOW_S = 600.0


async def test_with_no_hub_a_request_fails_within_its_timeout_then_recovers(
        tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        client = await dep.client(timeout_s=2.0, reconnect_window_s=WINDOW_S).connect()
        tx = await client.charge("fo-1", 5_000, card=Card(RICH[1], 12, 2030, "123"))
        assert dep.hub is not None
        dep.hub.kill()
        for i in range(3):  # each request on its own, each told
            with pytest.raises(ConnectionLost) as info:
                await asyncio.wait_for(client.status("fo-1"), 60)
            message = str(info.value)
            assert "no hub reachable within 2 s" in message, message
            assert "safe" in message and info.value.order_id == "fo-1", message
            if i > 0:  # the first may have gone out on the dying connection
                assert "it was not sent" in message, message
        # The client kept trying in the background, spread by its jittered backoff.
        assert len(client.reconnect_attempts) >= 2

        await dep.arestart_hub()  # the same port: the client's address

        async def served() -> bool:
            try:
                return (await client.status("fo-1")).transaction_id == tx.transaction_id
            except ConnectionLost:
                return False  # the background attempt has not reached it yet

        assert await wait_until(served, "the same client to reach the restarted hub")
        await client.close()
    finally:
        dep.stop()


async def test_a_request_in_flight_when_the_last_hub_dies_says_it_may_have_arrived(
        tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        await dep.admin("bca", "admin.faults", {"blackhole": True})
        client = await dep.client(hub_wait_s=2.0, reconnect_window_s=WINDOW_S).connect()
        charge = asyncio.ensure_future(
            client.charge("fo-2", 7_000, card=Card(RICH[2], 12, 2030, "123"), timeout_s=300))
        await wait_until(lambda: dep.received("bca", banklink.AUTHORIZE),
                         "the charge to reach the bank")
        assert dep.hub is not None
        dep.hub.kill()
        with pytest.raises(ConnectionLost) as info:
            await asyncio.wait_for(charge, 60)
        message = str(info.value)
        assert "no hub reachable within 2 s" in message, message
        assert "may have reached the hub" in message, message
        assert info.value.order_id == "fo-2"
        await client.close()
    finally:
        dep.stop()
