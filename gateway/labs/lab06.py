"""Lab 6 checks: full-jitter backoff, and a client that moves to the surviving hub.

The end-to-end check builds its own small deployment in the scratch directory (one bank
node, hub A, and later hub B on the same ledger), because it kills a hub: the shared
sandbox must stay up for the other labs. Hub B can only start once A is dead: a SQLite
ledger has one writer at a time (``gateway/storage/lockfile.py``), which is exactly the
situation the student's client must ride through: for a while no hub answers at all.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from gateway import pki, secret_keys
from gateway.labs.checks import LabContext, Result

TITLE = "Failover and load balancing: two hubs, kill one, watch the client move"
FILES = ("failover.py",)
NEEDS_SANDBOX = False

MERCHANT, SERVER_KEY = "M1", "sk-lab6-M1"
OPENING = 1_000_000_000
AMOUNT = 10_000
SAMPLES = 400
STEP_S_MAX = 120.0  # one charge, a kill, a restart: generous on a loaded 2-core machine
BANK_LATENCY_MS = 1500  # keeps the fourth charge inside the bank while hub A is killed


def check(ctx: LabContext) -> Iterator[Result]:
    try:
        student = ctx.load_module("failover.py")
    except Exception as exc:  # the student's file may not even import
        yield Result("failover.py imports", False, _raised(exc))
        return
    yield from _check_backoff(student)
    yield _check_failover(student, ctx.scratch / "lab06")


def _raised(exc: BaseException) -> str:
    tail = "".join(traceback.format_exception(exc)[-2:]).strip()
    return f"your code raised {type(exc).__name__}: {exc}\n{tail}"


def _check_backoff(student: ModuleType) -> Iterator[Result]:
    base, cap = 0.05, 2.0
    try:
        samples = {a: [student.backoff_s(a, random.Random(a * 1000 + i)) for i in
                       range(SAMPLES)] for a in range(0, 14)}
    except Exception as exc:
        yield Result("backoff_s returns delays", False, _raised(exc))
        return
    bad = [(a, d) for a, ds in samples.items() for d in ds
           if not isinstance(d, float | int) or not 0.0 <= d <= min(cap, base * 2 ** a)]
    yield Result("backoff_s stays within [0, min(cap, base * 2**attempt)]", not bad,
                 "" if not bad else f"attempt {bad[0][0]} gave {bad[0][1]!r}, outside "
                 f"[0, {min(cap, base * 2 ** bad[0][0]):g}] (base {base} s, cap {cap} s): "
                 "see the handout's 'Backoff with jitter'")
    # Attempt 5: bound min(2.0, 1.6) = 1.6 s. 400 uniform draws all in one half has
    # probability 2 * 2**-400: a jittered function never fails this, a fixed one always does.
    five = samples[5]
    spread = min(five) < 0.8 < max(five)
    yield Result("backoff_s is jittered (uniform over the whole range)", spread,
                 "" if spread else f"400 delays for attempt 5 all fell in "
                 f"[{min(five):.3f}, {max(five):.3f}] s; full jitter draws uniformly from "
                 "[0, 1.6] s, so that many clients retrying together spread out")
    try:
        same = [student.backoff_s(7, random.Random(99)) for _ in range(3)]
        random.seed(12345)
        again = [student.backoff_s(7, random.Random(99)) for _ in range(3)]
    except Exception as exc:
        yield Result("backoff_s draws from the rng it is given", False, _raised(exc))
        return
    yield Result("backoff_s draws from the rng it is given", same == again,
                 "" if same == again else "the same seeded rng gave different delays: draw "
                 "with rng.uniform(...), not the module-level random functions")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _check_failover(student: ModuleType, workdir: Path) -> Result:
    name = "charges continue on hub B after hub A is killed, each charged once"
    try:
        return asyncio.run(asyncio.wait_for(_failover(student, workdir), 6 * STEP_S_MAX))
    except _Failed as failed:
        return Result(name, False, str(failed))
    except TimeoutError:
        return Result(name, False, "the scenario did not finish in time: does your charge() "
                      "loop stop after ATTEMPTS_MAX attempts, and sleep between them?")
    except Exception as exc:
        return Result(name, False, _raised(exc))


class _Failed(Exception):
    """The student's client did something the scenario shows to be wrong."""


async def _failover(student: ModuleType, workdir: Path) -> Result:
    from gateway.audit import audit
    from gateway.cli import bank_admin_call
    from gateway.client import Card, Client, connect
    from gateway.config import BankNodeConfig, BankRoute, HubConfig, MerchantConfig
    from gateway.demo import luhn_complete
    from gateway.processes import NodeProcess

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    certs, secrets = workdir / "certs", workdir / "paywire-secrets.toml"
    pki.init(certs, merchants=[MERCHANT], banks=["bca-1"])
    secret_keys.init(secrets)
    card_number = luhn_complete("4811000001")
    card = Card(card_number, 12, 2030, "123")
    bank_cfg = BankNodeConfig(node_id="bca-1", bank="bca", listen_port=0, certs_dir=certs,
                              store_path=workdir / "bca.db", secrets_file=secrets,
                              accounts={card_number: OPENING})
    loop = asyncio.get_running_loop()
    bank = NodeProcess("bank", bank_cfg, workdir, "bca-1").start()
    hubs: list[NodeProcess] = [bank]
    link_key = secret_keys.load_link_key(secrets)
    charger: Any = None
    try:
        bank_port = await loop.run_in_executor(None, bank.wait_ready)
        bank_address = f"127.0.0.1:{bank_port}"

        async def admin(op: str, args: dict[str, Any]) -> dict[str, Any]:
            return await bank_admin_call(bank_address, certs, "hub", link_key, op, args)

        def hub_config(port: int) -> HubConfig:
            return HubConfig(listen_port=port, certs_dir=certs,
                             ledger_path=workdir / "ledger.db", secrets_file=secrets,
                             merchants=[MerchantConfig(MERCHANT, SERVER_KEY)],
                             banks=[BankRoute("bca", [f"bca-1@{bank_address}"],
                                              bins=["4811"])],
                             bank_timeout_s=5.0, recovery_interval_s=0.3)

        hub_a = NodeProcess("hub", hub_config(0), workdir, "hub-a").start()
        hubs.append(hub_a)
        a = ("127.0.0.1", await loop.run_in_executor(None, hub_a.wait_ready))
        b = ("127.0.0.1", _free_port())

        async def open_client(address: tuple[str, int]) -> Client:
            return await connect(address[0], address[1], merchant_id=MERCHANT,
                                 server_key=SERVER_KEY, certs_dir=certs, reconnect=False,
                                 timeout_s=30.0, connect_timeout_s=5.0).connect()

        charger = student.FailoverCharger([a, b], open_client, random.Random(6))
        results = {}
        for i in range(1, 4):
            order = f"lab6-{i}"
            results[order] = await asyncio.wait_for(charger.charge(order, AMOUNT, card),
                                                    STEP_S_MAX)
        if charger.moves:
            raise _Failed(f"your client moved ({charger.moves}) while hub A was healthy")

        # Charge 4 reaches the bank, which holds it; hub A dies with it in flight.
        stats = await admin("admin.stats", {})
        received_before = sum(stats["received"].values())
        applied_before = sum(stats["applied"].values())
        await admin("admin.faults", {"latency_ms": BANK_LATENCY_MS})
        fourth = asyncio.ensure_future(charger.charge("lab6-4", AMOUNT, card))
        deadline = loop.time() + STEP_S_MAX
        while sum((await admin("admin.stats", {}))["received"].values()) <= received_before:
            if fourth.done() or loop.time() > deadline:
                raise _Failed("the fourth charge never reached the bank: "
                              f"{fourth.exception() if fourth.done() else 'timed out'!r}")
            await asyncio.sleep(0.02)  # polling the bank's counter, bounded by deadline
        hub_a.kill()
        # Let the bank finish the held charge (it answers a dead hub), so hub B's recovery
        # finds it applied and completes it: one debit, no reversal. (Started earlier, hub B
        # could ask while the bank still holds it and reverse it instead: also correct, and
        # the handout's question 4 is about the difference.)
        while sum((await admin("admin.stats", {}))["applied"].values()) <= applied_before:
            if loop.time() > deadline:
                raise _Failed("the bank never applied the fourth charge")
            await asyncio.sleep(0.02)  # polling the bank's counter, bounded by deadline
        await admin("admin.faults", {"latency_ms": 0})
        hub_b = NodeProcess("hub", hub_config(b[1]), workdir, "hub-b").start()
        hubs.append(hub_b)
        await loop.run_in_executor(None, hub_b.wait_ready)
        try:
            results["lab6-4"] = await asyncio.wait_for(fourth, STEP_S_MAX)
        except Exception as exc:
            raise _Failed("the charge in flight when hub A died did not complete on hub B: "
                          + _raised(exc)) from exc
        for i in range(5, 7):
            order = f"lab6-{i}"
            results[order] = await asyncio.wait_for(charger.charge(order, AMOUNT, card),
                                                    STEP_S_MAX)
        await charger.close()

        if not charger.moves or charger.moves[0] != (a, b):
            raise _Failed(f"expected the first move to be from hub A {a} to hub B {b}; "
                          f"your moves: {charger.moves}")
        if charger.addresses[charger.current] != b:
            raise _Failed(f"after the failover your client is on "
                          f"{charger.addresses[charger.current]}, not on hub B {b}")
        balance = (await admin("admin.balances", {}))["balances"][card_number][0]
        debited = OPENING - balance
        if debited != AMOUNT * 6:
            raise _Failed(f"the card was debited {debited}, not {AMOUNT * 6} (6 charges of "
                          f"{AMOUNT}): a retry with a new order id charges twice; "
                          f"statuses {[r.transaction_status for r in results.values()]}")
        statuses = {o: r.transaction_status for o, r in results.items()}
        if any(s != "capture" for s in statuses.values()):
            raise _Failed(f"every charge should end captured; got {statuses}")
        await loop.run_in_executor(None, hub_b.terminate)
        report = audit(workdir / "ledger.db", {"bca": workdir / "bca.db"})
        if not report.clean:
            raise _Failed(f"paywire audit is not clean: {report.findings[:5]}")
        return Result("charges continue on hub B after hub A is killed, each charged once",
                      True, f"moves: {charger.moves}; charge 4 replayed="
                            f"{results['lab6-4'].replayed}")
    finally:
        if charger is not None:
            try:
                await charger.close()
            except Exception:  # the student's close may fail on a dead client
                pass
        for proc in reversed(hubs):
            await loop.run_in_executor(None, proc.terminate)
