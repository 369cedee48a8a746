"""SIGKILL at random moments under load: nothing acknowledged is lost, nothing is doubled.

The number of rounds comes from PAYWIRE_SOAK_ROUNDS (10 in ``make test``, more in
``make soak``); every round prints its seed so a failure can be replayed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from pathlib import Path

from bench.cpu import children
from gateway.client import Card
from tests.deploy import RICH, Deployment
from tests.loadgen import assert_settled_and_clean, charge_load
from tests.waiting import wait_until

ROUNDS = int(os.environ.get("PAYWIRE_SOAK_ROUNDS", "10"))
CHARGES_PER_ROUND = int(os.environ.get("PAYWIRE_SOAK_CHARGES", "40"))
BASE_SEED = int(os.environ.get("PAYWIRE_SOAK_SEED", "1000"))
RESULTS = os.environ.get("PAYWIRE_SOAK_RESULTS")


async def test_kill_the_hub_at_random_moments(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path).astart()
    for node in range(2):  # a slow bank keeps charges in flight when the hub dies
        await dep.admin("bca", "admin.faults", {"latency_ms": 40}, node=node)
    all_acks = []
    kills = mid_load = 0
    try:
        for r in range(ROUNDS):
            seed = BASE_SEED + r
            rng = random.Random(seed)
            round_acks: list[dict[str, object]] = []
            connected: list[object] = []
            load = asyncio.ensure_future(charge_load(dep, CHARGES_PER_ROUND, seed, f"k{seed}",
                                                     acks=round_acks, spread_s=0.6,
                                                     on_clients=connected.extend))
            await wait_until(lambda c=connected: c, "the load's clients to connect")
            # Not synchronisation: the kill lands at a random moment of the load (seeded),
            # which is what this test is about.
            await asyncio.sleep(rng.uniform(0.05, 0.5))
            assert dep.hub is not None
            dep.hub.kill()
            kills += 1
            at_kill = len(round_acks)
            mid_load += at_kill < CHARGES_PER_ROUND
            print(f"kill round {r} seed={seed}: {at_kill}/{CHARGES_PER_ROUND} answered "
                  f"before the kill")
            await dep.arestart_hub()
            acks, errors = await asyncio.wait_for(load, 120)
            assert not errors, f"seed={seed}: {errors[:3]}"
            assert len(acks) == CHARGES_PER_ROUND, f"seed={seed}"
            all_acks += acks
        # The test means something only if kills hit work in flight.
        assert mid_load >= ROUNDS // 2, f"only {mid_load} of {ROUNDS} kills hit in-flight work"
        report = await assert_settled_and_clean(
            dep, all_acks, f"seeds {BASE_SEED}..{BASE_SEED + ROUNDS - 1}: ")
        if RESULTS:
            Path(RESULTS).write_text(json.dumps({
                "rounds": ROUNDS, "hub_kills": kills, "kills_mid_load": mid_load,
                "charges": len(all_acks),
                "seeds": [BASE_SEED, BASE_SEED + ROUNDS - 1], **report.summary()}))
    finally:
        dep.stop()


async def test_kill_a_bank_node_mid_load(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path).astart()  # bca has two nodes sharing its books
    try:
        await dep.admin("bca", "admin.faults", {"latency_ms": 20}, node=0)
        acks_live: list[dict[str, object]] = []
        load = asyncio.ensure_future(charge_load(dep, 80, 7, "bk", acks=acks_live,
                                                 spread_s=1.0))
        await wait_until(lambda: len(acks_live) >= 5, "the load to be under way")
        dep.banks["bca"][0].kill()
        at_kill = len(acks_live)
        acks, errors = await asyncio.wait_for(load, 120)
        assert 0 < at_kill < 80, at_kill  # the node died mid-load
        assert not errors and len(acks) == 80
        await assert_settled_and_clean(dep, acks)
        # The survivor did the rest: both nodes answered some of the load.
        served = dep.bank_sql("bca", "SELECT COUNT(*) FROM ops")[0][0]
        assert served >= 80
    finally:
        dep.stop()


def _writer_pids(parent: int) -> list[int]:
    """The storage writer processes whose parent is ``parent``."""
    found = []
    for pid in children(parent):
        try:
            if b"gateway.storage.writer_process" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def _exited(pid: int) -> bool:
    """The process exited (reaped, or a zombie waiting for its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True  # reaped, possibly between two reads
    return state == "Z"


async def _gone(pid: int, timeout_s: float = 60.0) -> bool:
    """Whether the process exits within ``timeout_s``."""
    try:
        await wait_until(lambda: _exited(pid), f"process {pid} to exit", timeout_s=timeout_s)
    except AssertionError:
        return False
    return True


async def test_killed_ledger_writer_stops_the_hub_and_loses_nothing(tmp_path: Path) -> None:
    """The ledger's writer process dies mid-load: the hub cannot make anything durable any
    more, so it exits with an error instead of answering; after a restart every charge is
    answered once and the books agree."""
    dep = await Deployment(tmp_path).astart()
    for node in range(2):
        await dep.admin("bca", "admin.faults", {"latency_ms": 20}, node=node)
    try:
        assert dep.hub is not None and dep.hub.proc is not None
        (writer,) = _writer_pids(dep.hub.proc.pid)
        acks_live: list[dict[str, object]] = []
        load = asyncio.ensure_future(charge_load(dep, 60, 11, "wk", acks=acks_live,
                                                 spread_s=1.0))
        await wait_until(lambda: len(acks_live) >= 5, "the load to be under way")
        os.kill(writer, signal.SIGKILL)
        at_kill = len(acks_live)
        code = await asyncio.get_running_loop().run_in_executor(None, dep.hub.proc.wait, 30)
        assert code == 1, f"hub exit code {code}"
        assert "storage writer" in dep.hub.tail()
        await dep.arestart_hub()
        acks, errors = await asyncio.wait_for(load, 120)
        assert 0 < at_kill < 60, at_kill
        assert not errors and len(acks) == 60
        await assert_settled_and_clean(dep, acks)
    finally:
        dep.stop()


async def test_a_killed_node_takes_its_writer_with_it(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        assert dep.hub is not None and dep.hub.proc is not None
        (hub_writer,) = _writer_pids(dep.hub.proc.pid)
        bank = dep.banks["bca"][0]
        assert bank.proc is not None
        (bank_writer,) = _writer_pids(bank.proc.pid)
        dep.hub.kill()
        bank.kill()
        assert await _gone(hub_writer), "the hub's writer outlived it"
        assert await _gone(bank_writer), "the bank node's writer outlived it"
    finally:
        dep.stop()


async def test_a_group_signal_leaves_the_writer_to_its_node(tmp_path: Path) -> None:
    """SIGTERM/SIGINT sent to the whole process group (Ctrl-C, a service manager) reach the
    writer too: it ignores them, the node keeps committing, then stops it cleanly."""
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        assert dep.hub is not None and dep.hub.proc is not None
        (writer,) = _writer_pids(dep.hub.proc.pid)
        os.kill(writer, signal.SIGTERM)
        os.kill(writer, signal.SIGINT)
        async with dep.client() as client:
            tx = await client.charge("sig-1", 10_000, card=Card(RICH[0], 12, 2030, "123"))
            assert tx.transaction_status == "capture"
        # The commit above needed the writer to run after the signals were queued, so they
        # were delivered (and ignored) before it: it is alive now, no waiting needed.
        assert not _exited(writer)
        code = await asyncio.get_running_loop().run_in_executor(None, dep.hub.terminate)
        assert code == 0
        assert await _gone(writer)
    finally:
        dep.stop()
