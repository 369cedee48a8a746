"""Batching changes nothing observable (issue 12, item 6).

The same seeded mix of merchant operations runs twice, each time against a fresh deployment:
once with ONE request in flight at a time, once with 64 in flight over four connections.
Both runs must give the same answer to every operation, the same final transaction per
order, the same ledger rows and event log per order, the same balances at every bank, and a
clean audit. Whatever the hub batches (frames of one read, ledger-writer messages, bank-link
frames, gathered writes), only timing may differ.

Why the outcome is deterministic under 64 in flight:

* All operations on one order go over one connection, in a fixed order, and may be
  pipelined (sent before the previous one's answer): the hub applies operations on one
  order, reads included, in arrival order (docs/protocol.md §4.5), so each answer and the
  final state do not depend on how orders interleave.
* Orders never compete for money: the card accounts hold far more than the whole mix
  charges; the one poor card is only ever charged more than it holds (always declined).
* The fraud screen has amount thresholds only, no velocity rule: a velocity rule counts
  charges across orders, so which order trips it would depend on the interleaving. The
  review timeout and the pending expiry are far beyond the test's duration, so no
  scheduler acts on an order; the bank timeout is long enough that a loaded machine does not
  turn a slow answer into an inquiry and reversal.
* A virtual account or e-wallet is paid through the bank's admin link only after its charge
  was answered, and the next operations on that order wait until the hub shows it settled.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.client import Card, Client, RequestError, TransactionResult
from gateway.config import FraudConfig
from gateway.demo import luhn_complete
from tests.deploy import POOR, RICH, Deployment, ack, deployment
from tests.loadgen import assert_settled_and_clean
from tests.waiting import wait_until

SEED = 1212
ORDERS = 130
CLIENTS = 4
CHALLENGE_ABOVE = 5_000_000
DENY_ABOVE = 50_000_000
UNKNOWN_CARD = luhn_complete("4811800001")  # routed to bca, no account there: declined
FRAUD = FraudConfig(challenge_above={"IDR": CHALLENGE_ABOVE},
                    deny_above={"IDR": DENY_ABOVE}, country_mismatch="off")
HUB = {"fraud": FRAUD, "bank_timeout_s": 20.0, "recovery_at_start_s": 61.0}


@dataclass
class Op:
    """One merchant operation, or ``pay``: the customer pays at the bank (admin link), then
    the order waits until the hub shows it settled."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


Segment = list[Op]  # sent pipelined: each op without waiting for the previous answer


def _card(number: str) -> dict[str, Any]:
    return Card(number, 12, 2030, "123").to_wire()


def plan_order(rng: random.Random, oid: str) -> list[Segment]:
    """The segments of one order's script, drawn from ``rng``."""
    kind = rng.choices(["capture", "authorize", "poor", "unknown", "va", "ewallet",
                        "challenge", "fraud_deny", "replay"],
                       weights=[20, 20, 6, 5, 14, 8, 12, 4, 6])[0]
    amount = rng.randrange(1, 500) * 1_000
    card = _card(rng.choice(RICH))

    def charge(**extra: Any) -> Op:
        return Op("charge", {"order_id": oid, "gross_amount": amount,
                             "payment_type": "credit_card", "card": card, "capture": True,
                             **extra})

    def op(name: str, **args: Any) -> Op:
        return Op(name, {"order_id": oid, **args})

    if kind == "capture":
        seg = [charge(), op("status")]
        if rng.random() < 0.6:
            part = rng.randrange(1, amount // 1_000) * 1_000 if amount > 1_000 else amount
            seg += [op("refund", refund_key="r1", amount=part), op("status")]
            if rng.random() < 0.5:
                seg += [op("refund", refund_key="r2")]  # the rest
            if rng.random() < 0.3:
                seg += [op("refund", refund_key="r3", amount=amount + 1)]  # exceeds
        return [seg]
    if kind == "authorize":
        seg = [charge(capture=False), op("status")]
        then = rng.choice(["capture", "partial", "cancel", "keep"])
        if then == "capture":
            seg += [op("capture"), op("refund", refund_key="r1", amount=amount)]
        elif then == "partial":
            seg += [op("capture", gross_amount=max(1_000, amount // 2)), op("capture")]
        elif then == "cancel":
            seg += [op("cancel"), op("capture"), op("cancel")]  # refused, then replayed
        return [[*seg, op("status")]]
    if kind == "poor":  # insufficient funds, whatever the order of the other charges
        return [[Op("charge", {**charge().args, "card": _card(POOR), "gross_amount":
                               50_000 + amount, "capture": rng.random() < 0.5}),
                 op("status"), op("capture")]]
    if kind == "unknown":
        return [[Op("charge", {**charge().args, "card": _card(UNKNOWN_CARD)}), op("status")]]
    if kind in ("va", "ewallet"):
        if kind == "va":
            first = Op("charge", {"order_id": oid, "gross_amount": amount,
                                  "payment_type": "bank_transfer",
                                  "bank": rng.choice(["bca", "bni"])})
        else:
            first = Op("charge", {"order_id": oid, "gross_amount": amount,
                                  "payment_type": "ewallet", "provider": "gopay"})
        then = rng.choice(["pay", "pay_refund", "cancel", "expire", "keep"])
        if then.startswith("pay"):
            after = [op("status")]
            if then == "pay_refund":
                after += [op("refund", refund_key="r1", amount=max(1_000, amount // 4)),
                          op("cancel"), op("status")]
            return [[first, op("status")], [Op("pay", {"order_id": oid})], after]
        if then == "cancel":
            return [[first, op("cancel"), op("status"), op("refund", refund_key="r1")]]
        if then == "expire":
            return [[first, op("expire"), op("expire"), op("status")]]
        return [[first, op("status")]]
    if kind == "challenge":  # held for review, then approved or denied
        big = CHALLENGE_ABOVE + amount
        seg = [charge(gross_amount=big), op("status"), op("capture")]
        if rng.random() < 0.5:
            seg += [op("approve"), op("refund", refund_key="r1", amount=amount)]
        else:
            seg += [op("deny"), op("approve")]
        return [[*seg, op("status")]]
    if kind == "fraud_deny":  # denied by the screen: never reaches a bank
        return [[charge(gross_amount=DENY_ABOVE + amount), op("status")]]
    # replay: the same charge twice (the second is the stored first result), then a conflict
    return [[charge(), charge(), Op("charge", {**charge().args, "gross_amount": amount + 1}),
             op("status")]]


def plan(seed: int, orders: int) -> dict[str, list[Segment]]:
    rng = random.Random(seed)
    return {f"mix-{i}": plan_order(rng, f"mix-{i}") for i in range(orders)}


def business(tx: TransactionResult) -> dict[str, Any]:
    """What a transaction says about money and state, without ids and times."""
    return {"status": tx.transaction_status, "fraud_status": tx.fraud_status,
            "status_code": tx.status_code, "gross_amount": tx.gross_amount,
            "captured": tx.captured_amount, "refunded": tx.refunded_amount,
            "refunds": [(r.refund_key, r.amount, r.reason) for r in tx.refunds],
            "payment_type": tx.payment_type, "bank": tx.bank, "provider": tx.provider,
            "masked_card": tx.masked_card, "fraud_reasons": list(tx.fraud_reasons),
            "decline_reason": tx.decline_reason, "settled": tx.settlement_time is not None,
            "va": tx.va_number is not None, "replayed": tx.replayed}


@dataclass
class Run:
    answers: dict[str, list[Any]]
    final: dict[str, dict[str, Any]]
    in_flight_max_seen: int
    acks: list[dict[str, Any]]


async def run_mix(dep: Deployment, script: dict[str, list[Segment]], in_flight: int) -> Run:
    """Run every order's script concurrently with at most ``in_flight`` requests in flight
    (over ``CLIENTS`` connections; an order always uses the same one)."""
    clients = [await dep.client(timeout_s=120.0, reconnect=False).connect()
               for _ in range(CLIENTS)]
    slots = asyncio.Semaphore(in_flight)
    in_flight_now = seen_max = 0
    answers: dict[str, list[Any]] = {oid: [] for oid in script}
    txids: dict[str, tuple[str, str]] = {}

    async def call(client: Client, op: Op) -> Any:
        """One request; its slot was taken by the caller, in send order."""
        nonlocal in_flight_now, seen_max
        in_flight_now += 1
        seen_max = max(seen_max, in_flight_now)
        try:
            result = TransactionResult.from_wire(await client.request(op.name, op.args))
            if op.name == "charge":
                txids.setdefault(op.args["order_id"], (result.bank or "",
                                                       result.transaction_id))
            return business(result)
        except RequestError as exc:
            return ("error", exc.code.name, exc.field)
        finally:
            in_flight_now -= 1
            slots.release()

    async def read(client: Client, oid: str) -> TransactionResult:
        """A status read outside the script (waiting for a payment, the final state)."""
        nonlocal in_flight_now, seen_max
        await slots.acquire()
        in_flight_now += 1
        seen_max = max(seen_max, in_flight_now)
        try:
            return TransactionResult.from_wire(await client.request("status",
                                                                    {"order_id": oid}))
        finally:
            in_flight_now -= 1
            slots.release()

    async def order(i: int, oid: str) -> None:
        client = clients[i % CLIENTS]
        for segment in script[oid]:
            if segment[0].name == "pay":
                bank, txid = txids[oid]
                paid = await dep.admin(bank, "admin.pay", {"transaction_id": txid})
                assert paid["paid"] is True, (oid, paid)

                async def settled(oid: str = oid) -> bool:
                    return (await read(client, oid)).transaction_status == "settlement"

                await wait_until(settled, f"{oid} to be settled")
                continue
            tasks = []
            for op in segment:
                # The slot is taken before the task exists, so tasks (and with them the
                # sends, done in each task's first step) follow the script's order.
                await slots.acquire()
                tasks.append(asyncio.ensure_future(call(client, op)))
            answers[oid] += await asyncio.gather(*tasks)

    try:
        await asyncio.gather(*(order(i, oid) for i, oid in enumerate(script)))
        finals = {oid: await read(clients[i % CLIENTS], oid) for i, oid in enumerate(script)}
    finally:
        for c in clients:
            await c.close()
    return Run(answers, {oid: business(tx) for oid, tx in finals.items()}, seen_max,
               [ack(tx) for tx in finals.values()])


def ledger_view(dep: Deployment) -> dict[str, Any]:
    """The ledger's rows and event log per order, on their business columns."""
    rows = dep.ledger_sql("SELECT order_id, status, gross_amount, captured, refunded, bank, "
                          "unresolved FROM transactions WHERE merchant_id = 'M1'")
    events = dep.ledger_sql("SELECT t.order_id, e.status FROM events e JOIN transactions t "
                            "ON t.transaction_id = e.transaction_id "
                            "WHERE e.merchant_id = 'M1' ORDER BY e.seq")
    per_order: dict[str, list[str]] = {}
    for oid, status in events:
        per_order.setdefault(oid, []).append(status)
    return {"rows": {r[0]: r[1:] for r in rows}, "events": per_order}


async def bank_books(dep: Deployment) -> dict[str, Any]:
    return {bank: (await dep.admin(bank, "admin.balances"))["balances"] for bank in dep.banks}


async def one_run(workdir: Path, script: dict[str, list[Segment]], in_flight: int
                  ) -> tuple[Run, dict[str, Any], dict[str, Any], tuple[int, int]]:
    with deployment(workdir, hub_overrides=HUB) as dep:
        run = await run_mix(dep, script, in_flight)
        await assert_settled_and_clean(dep, run.acks, f"{in_flight} in flight: ")
        frames = ops = 0  # bank-link frames and the operations they carried, all nodes
        for bank, nodes in dep.banks.items():
            for i in range(len(nodes)):
                stats: dict[str, Any] = await dep.stats(bank, i)
                frames += int(stats["frames_received"])
                ops += sum(stats["received"].values())
        return run, ledger_view(dep), await bank_books(dep), (frames, ops)


async def test_batching_changes_nothing_observable(tmp_path: Path) -> None:
    script = plan(SEED, ORDERS)
    ops = sum(len(seg) for segs in script.values() for seg in segs)
    assert 300 <= ops <= 700, ops  # the mix's size: bounded, and large enough to interleave
    serial, serial_ledger, serial_books, serial_link = await one_run(tmp_path / "one",
                                                                      script, 1)
    batched, batched_ledger, batched_books, batched_link = await one_run(tmp_path / "many",
                                                                         script, 64)
    assert serial.in_flight_max_seen == 1
    assert batched.in_flight_max_seen == 64  # the run really had 64 requests in flight
    # ... and batches really formed on the bank link: fewer frames than operations (one
    # request in flight sends every operation alone).
    assert serial_link[0] == serial_link[1], serial_link
    assert batched_link[0] < batched_link[1], batched_link
    # The mix exercised what it is meant to (guards against a plan that drifts to trivia).
    statuses = {f["status"] for f in serial.final.values()}
    assert {"capture", "authorize", "deny", "cancel", "settlement", "expire", "pending",
            "refund", "partial_refund"} <= statuses, statuses
    assert any(f["fraud_status"] == "challenge" for a in serial.answers.values()
               for f in a if isinstance(f, dict))
    for oid in script:
        assert batched.answers[oid] == serial.answers[oid], oid
        assert batched.final[oid] == serial.final[oid], oid
    assert batched_ledger == serial_ledger
    assert batched_books == serial_books
