"""End to end through real processes: client library → hub → bank nodes, over mTLS."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.client import Card, RequestError
from protocol.errors import ErrorCode
from tests.deploy import BNI_CARDS, POOR, RICH, Deployment, deployment
from tests.waiting import wait_until

_orders = itertools.count(1)
_cards = itertools.cycle(RICH)


def order(prefix: str = "o") -> str:
    return f"{prefix}-{next(_orders)}"


def card(number: str | None = None) -> Card:
    return Card(number or next(_cards), 12, 2030, "123")


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("e2e")) as d:
        yield d


async def test_card_charge_debits_exactly_the_amount(dep: Deployment) -> None:
    number = next(_cards)
    before = await dep.balance("bca", number)
    settle_before = await dep.balance("bca", "settlement")
    async with dep.client() as c:
        tx = await c.charge(order(), 123_456, card=card(number))
    assert tx.transaction_status == "capture" and tx.status_code == "200"
    assert tx.captured_amount == 123_456 and tx.masked_card == number[:6] + "******" + number[-4:]
    assert await dep.balance("bca", number) == (before[0] - 123_456, before[1])
    assert await dep.balance("bca", "settlement") == (settle_before[0] + 123_456, 0)


async def test_insufficient_funds_is_deny(dep: Deployment) -> None:
    async with dep.client() as c:
        tx = await c.charge(order(), 50_000, card=card(POOR))
    assert tx.transaction_status == "deny" and tx.status_code == "202"
    assert tx.decline_reason == "insufficient funds"
    assert await dep.balance("bca", POOR) == (1_000, 0)


async def test_authorize_then_capture(dep: Deployment) -> None:
    number, oid = next(_cards), order()
    before = await dep.balance("bca", number)
    async with dep.client() as c:
        tx = await c.charge(oid, 70_000, card=card(number), capture=False)
        assert tx.transaction_status == "authorize"
        assert await dep.balance("bca", number) == (before[0], before[1] + 70_000)
        tx = await c.capture(oid)
        assert tx.transaction_status == "capture" and tx.captured_amount == 70_000
        again = await c.capture(oid)
        assert again.transaction_status == "capture" and again.replayed
    assert await dep.balance("bca", number) == (before[0] - 70_000, before[1])


async def test_cancel_releases_the_hold(dep: Deployment) -> None:
    number, oid = next(_cards), order()
    before = await dep.balance("bca", number)
    async with dep.client() as c:
        await c.charge(oid, 30_000, card=card(number), capture=False)
        tx = await c.cancel(oid)
        assert tx.transaction_status == "cancel"
        with pytest.raises(RequestError) as info:
            await c.capture(oid)
        assert info.value.code is ErrorCode.INVALID_TRANSITION
        assert (await c.status(oid)).transaction_status == "cancel"
    assert await dep.balance("bca", number) == before


async def test_refunds_partial_partial_then_exceeding(dep: Deployment) -> None:
    number, oid = next(_cards), order()
    before = await dep.balance("bca", number)
    async with dep.client() as c:
        await c.charge(oid, 100_000, card=card(number))
        tx = await c.refund(oid, "r1", 30_000)
        assert tx.transaction_status == "partial_refund" and tx.refunded_amount == 30_000
        tx = await c.refund(oid, "r2", 50_000)
        assert tx.refunded_amount == 80_000
        with pytest.raises(RequestError) as info:
            await c.refund(oid, "r3", 20_001)
        assert info.value.code is ErrorCode.REFUND_EXCEEDS_CAPTURED
        replay = await c.refund(oid, "r1", 30_000)
        assert replay.replayed and replay.refunded_amount == 80_000
        with pytest.raises(RequestError) as info:
            await c.refund(oid, "r1", 10_000)
        assert info.value.code is ErrorCode.DUPLICATE_ORDER
        tx = await c.refund(oid, "r4")  # the rest
        assert tx.transaction_status == "refund" and tx.refunded_amount == 100_000
        assert [r.refund_key for r in tx.refunds] == ["r1", "r2", "r4"]
    assert await dep.balance("bca", number) == before


async def _wait_status(dep: Deployment, oid: str, status: str, timeout_s: float = 60) -> str:
    async with dep.client() as c:
        async def reached() -> bool:
            return (await c.status(oid)).transaction_status == status

        with contextlib.suppress(AssertionError):
            await wait_until(reached, f"order {oid} to be {status}", timeout_s=timeout_s)
        return (await c.status(oid)).transaction_status


async def test_virtual_account_pending_then_settlement(dep: Deployment) -> None:
    oid = order("va")
    settle_before = await dep.balance("bni", "settlement")
    async with dep.client() as c:
        tx = await c.charge(oid, 250_000, "bank_transfer", bank="bni")
    assert tx.transaction_status == "pending" and tx.status_code == "201"
    assert tx.va_number is not None and tx.va_number.startswith("8808")
    paid = await dep.admin("bni", "admin.pay", {"number": tx.va_number})
    assert paid["paid"] is True
    assert await _wait_status(dep, oid, "settlement") == "settlement"
    assert await dep.balance("bni", "settlement") == (settle_before[0] + 250_000, 0)
    async with dep.client() as c:
        done = await c.status(oid)
    assert done.captured_amount == 250_000 and done.settlement_time is not None


async def test_ewallet_pending_then_settlement(dep: Deployment) -> None:
    oid = order("ew")
    async with dep.client() as c:
        tx = await c.charge(oid, 42_000, "ewallet", provider="gopay")
    assert tx.transaction_status == "pending" and tx.provider == "gopay"
    await dep.admin("wallet", "admin.pay", {"transaction_id": tx.transaction_id})
    assert await _wait_status(dep, oid, "settlement") == "settlement"


async def test_unpaid_virtual_account_expires(dep: Deployment) -> None:
    oid = order("va-exp")
    async with dep.client() as c:
        tx = await c.charge(oid, 10_000, "bank_transfer", bank="bca", expiry_s=1)
    assert tx.transaction_status == "pending"
    assert await _wait_status(dep, oid, "expire") == "expire"
    late = await dep.admin("bca", "admin.pay", {"transaction_id": tx.transaction_id})
    assert late["paid"] is False  # the bank closed it: a late customer cannot pay


async def test_same_charge_five_times_sequential_and_concurrent(dep: Deployment) -> None:
    for concurrent in (False, True):
        number, oid = next(_cards), order("idem")
        before = await dep.balance("bca", number)
        async with dep.client() as c:
            if concurrent:
                results = await asyncio.gather(*(c.charge(oid, 99_000, card=card(number))
                                                 for _ in range(5)))
            else:
                results = [await c.charge(oid, 99_000, card=card(number)) for _ in range(5)]
            assert sum(1 for r in results if not r.replayed) == 1
            first = next(r for r in results if not r.replayed)
            for r in results:
                assert {**r.__dict__, "replayed": False} == {**first.__dict__, "replayed": False}
            with pytest.raises(RequestError) as info:
                await c.charge(oid, 99_001, card=card(number))
            assert info.value.code is ErrorCode.DUPLICATE_ORDER
        assert await dep.balance("bca", number) == (before[0] - 99_000, before[1])
        rows = dep.bank_sql("bca", "SELECT COUNT(*) FROM effects WHERE transaction_id = ? AND "
                            "delta < 0", (first.transaction_id,))
        assert rows[0][0] == 1


async def test_routing_by_bin_and_unknown_bin(dep: Deployment) -> None:
    async with dep.client() as c:
        tx = await c.charge(order(), 1_000, card=card(BNI_CARDS[0]))
        assert tx.bank == "bni"
        with pytest.raises(RequestError) as info:
            await c.charge(order(), 1_000, card=card("4111111111111111"))
        assert info.value.code is ErrorCode.NO_ROUTE


async def test_invalid_input_gets_a_field_error_and_changes_nothing(dep: Deployment) -> None:
    oid = order()
    async with dep.client() as c:
        with pytest.raises(RequestError) as info:
            await c.charge(oid, 1_000, card=card("4811111111111115"))  # Luhn fails
        assert info.value.code is ErrorCode.INVALID_FIELD
        assert info.value.field == "args.card.number"
        with pytest.raises(RequestError) as info:
            await c.request("charge", {"order_id": oid, "gross_amount": -1,
                                       "payment_type": "credit_card"})
        assert info.value.field == "args.gross_amount"
        with pytest.raises(RequestError) as info:
            await c.status(oid)
        assert info.value.code is ErrorCode.NOT_FOUND
        with pytest.raises(RequestError) as info:
            await c.request("transfer_all", {"order_id": oid})
        assert info.value.code is ErrorCode.UNKNOWN_OPERATION


async def test_pipelined_responses_correlate(dep: Deployment) -> None:
    async with dep.client() as c:
        oids = [order("pipe") for _ in range(64)]
        amounts = [1_000 + i for i in range(64)]
        results = await asyncio.gather(*(c.charge(o, a, card=card())
                                         for o, a in zip(oids, amounts, strict=True)))
    assert [(r.order_id, r.gross_amount) for r in results] == list(zip(oids, amounts,
                                                                       strict=True))


def test_sync_client(dep: Deployment) -> None:
    from gateway.client import SyncClient
    from tests.deploy import KEYS

    with SyncClient("127.0.0.1", dep.port, merchant_id="M1", server_key=KEYS["M1"],
                    certs_dir=dep.certs) as c:
        oid = order("sync")
        assert c.charge(oid, 5_000, card=card()).transaction_status == "capture"
        assert c.status(oid).captured_amount == 5_000


def test_ledger_stores_no_card_numbers_or_cvv(dep: Deployment, tmp_path: Path) -> None:
    raw = (dep.workdir / "ledger.db").read_bytes()
    wal = dep.workdir / "ledger.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    for number in RICH[:5]:
        assert number.encode() not in raw
