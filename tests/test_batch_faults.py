"""SIGKILL while batches are in flight: 64 charges at once, a slow bank, and the kill lands
when the ledger shows many intents waiting on the bank (issue 12, item 6).

``test_faults_kill.py`` kills the hub at random moments of a paced load, and a bank node
while its twin takes over. Here the load is a full window (4 connections x 16 in flight, no
pacing), so the hub holds whole batches of intents, bank calls and results when it dies;
the kill waits for that state (rows with an unresolved bank call in the ledger), not for a
time. A bank node of a bank with a single node is killed too: nothing can fail over, the
intents stay unresolved until the node is back, then settle.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.processes import NodeProcess
from tests.deploy import Deployment
from tests.loadgen import assert_settled_and_clean, charge_load
from tests.waiting import wait_until

CHARGES = 320
CLIENTS = 4
WINDOW = 16  # per connection: 64 charges in flight
BANK_LATENCY_MS = 150  # each bank call stays in flight long enough for the kill to hit it
UNRESOLVED_AT_KILL = 32  # intents on disk waiting on the bank when the kill is sent


def unresolved(dep: Deployment) -> int:
    return int(dep.ledger_sql("SELECT COUNT(*) FROM transactions WHERE unresolved = 1")[0][0])


def under_way(dep: Deployment, acks: list[dict[str, Any]]) -> bool:
    """The moment to kill: a window of charges already answered (they must survive), and
    many intents on disk whose bank calls are in flight."""
    return len(acks) >= CLIENTS * WINDOW and unresolved(dep) >= UNRESOLVED_AT_KILL


def assert_acks_stand(dep: Deployment, acks: list[dict[str, Any]]) -> None:
    """Nothing but the charge ever touched these orders: each must be in the ledger with
    exactly the status its client was told (the audit accepts any later status)."""
    rows = dict(((m, o), (t, s)) for m, o, t, s in dep.ledger_sql(
        "SELECT merchant_id, order_id, transaction_id, status FROM transactions"))
    for a in acks:
        assert rows.get((a["merchant_id"], a["order_id"])) == \
            (a["transaction_id"], a["transaction_status"]), a


async def _load(dep: Deployment, prefix: str, acks: list[dict[str, Any]]
                ) -> asyncio.Future[tuple[list[dict[str, Any]], list[str]]]:
    return asyncio.ensure_future(charge_load(dep, CHARGES, 12, prefix, clients=CLIENTS,
                                             acks=acks, in_flight_max=WINDOW))


async def all_answered_and_clean(dep: Deployment, load: asyncio.Future[Any], cut: int,
                                 at_kill: int) -> None:
    """After the restart: the kill cut bank calls in flight (``cut`` intents without a
    result), every charge is answered, the audit is clean and each ack stands."""
    acks, errors = await asyncio.wait_for(load, 180)
    assert cut > 0
    assert 0 < at_kill < CHARGES, at_kill
    assert not errors, errors[:3]
    assert len(acks) == CHARGES
    await assert_settled_and_clean(dep, acks)
    assert_acks_stand(dep, acks)


async def test_kill_the_hub_with_batches_in_flight(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path).astart()
    try:
        for node in range(2):
            await dep.admin("bca", "admin.faults", {"latency_ms": BANK_LATENCY_MS}, node=node)
        acks_live: list[dict[str, Any]] = []
        load = await _load(dep, "hub-batch", acks_live)
        await wait_until(lambda: under_way(dep, acks_live), "answered charges and "
                         f"{UNRESOLVED_AT_KILL} intents waiting on the bank")
        assert dep.hub is not None
        dep.hub.kill()
        at_kill = len(acks_live)
        # The hub is dead: what the ledger holds now is what recovery starts from. Intents
        # without a result prove the kill cut bank calls in flight.
        cut = unresolved(dep)
        await dep.arestart_hub()
        await all_answered_and_clean(dep, load, cut, at_kill)
    finally:
        dep.stop()


async def _restart_bank(dep: Deployment, bank: str, node: int) -> None:
    """Start a killed bank node again on its old port (the hub dials that address)."""
    old = dep.banks[bank][node]
    old.config.listen_port = old.port
    new = NodeProcess("bank", old.config, dep.workdir, old.name)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, new.start)
    await loop.run_in_executor(None, new.wait_ready)
    dep.banks[bank][node] = new


async def test_kill_the_only_bank_node_with_batches_in_flight(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        await dep.admin("bca", "admin.faults", {"latency_ms": BANK_LATENCY_MS})
        acks_live: list[dict[str, Any]] = []
        load = await _load(dep, "bank-batch", acks_live)
        await wait_until(lambda: under_way(dep, acks_live), "answered charges and "
                         f"{UNRESOLVED_AT_KILL} intents waiting on the bank")
        dep.banks["bca"][0].kill()
        at_kill = len(acks_live)
        # No other node of this bank: the calls in flight can be neither answered nor
        # settled until the node is back, so their intents stay unresolved meanwhile.
        cut = unresolved(dep)
        await _restart_bank(dep, "bca", 0)
        await all_answered_and_clean(dep, load, cut, at_kill)
    finally:
        dep.stop()
