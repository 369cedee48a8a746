"""Issue 11 item 9: the checks a real issuer makes — expired cards are declined, only the
deployment's currencies are accepted, and a bank refuses a currency its account is not in.
No money moves on any of these refusals."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator

import msgpack
import pytest

from gateway.client import Card, RequestError
from protocol.errors import ErrorCode
from protocol.operations import card_expired
from tests.deploy import RICH, Deployment, deployment

USD_CARD = RICH[7]  # the one bca account held in USD
_orders = itertools.count(1)


def order(prefix: str = "iss") -> str:
    return f"{prefix}-{next(_orders)}"


@pytest.mark.parametrize(("month", "year", "today", "expired"), [
    (11, 2026, dt.date(2026, 11, 1), False),   # expires this month: still valid ...
    (11, 2026, dt.date(2026, 11, 30), False),  # ... through its last day
    (11, 2026, dt.date(2026, 12, 1), True),    # the next month it is expired
    (12, 2026, dt.date(2026, 12, 31), False),
    (12, 2026, dt.date(2027, 1, 1), True),     # across a year boundary
    (1, 2027, dt.date(2026, 12, 31), False),
    (1, 2000, dt.date(2026, 11, 25), True),
    (12, 2030, dt.date(2026, 11, 25), False),
])
def test_a_card_is_valid_through_the_last_day_of_its_expiry_month(
        month: int, year: int, today: dt.date, expired: bool) -> None:
    assert card_expired(month, year, today) is expired


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("issuer"), bca_nodes=1,
                    hub_overrides={"currencies": ["IDR", "USD"]},
                    bank_overrides={"account_currencies": {USD_CARD: "USD"}}) as d:
        yield d


async def test_an_expired_card_is_declined_with_the_reason_and_moves_no_money(
        dep: Deployment) -> None:
    number = RICH[0]
    before = await dep.balance("bca", number)
    settlement = await dep.balance("bca", "settlement")
    async with dep.client() as c:
        tx = await c.charge(order(), 10_000, card=Card(number, 1, 2000, "123"))
        again = await c.status(tx.order_id)
    assert tx.transaction_status == "deny" and tx.status_code == "202"
    assert tx.decline_reason == "card expired (01/2000)"
    assert again.transaction_status == "deny" and again.decline_reason == tx.decline_reason
    assert await dep.balance("bca", number) == before
    assert await dep.balance("bca", "settlement") == settlement
    stored = dep.bank_sql("bca", "SELECT COUNT(*) FROM holds WHERE transaction_id = ?",
                          (tx.transaction_id,))
    assert stored == [(0,)]


async def test_a_card_expiring_this_month_is_accepted(dep: Deployment) -> None:
    number = RICH[1]
    before = await dep.balance("bca", number)
    today = dt.datetime.now(dt.UTC).date()
    async with dep.client() as c:
        tx = await c.charge(order(), 10_000, card=Card(number, today.month, today.year, "123"))
    assert tx.transaction_status == "capture", tx.decline_reason
    assert await dep.balance("bca", number) == (before[0] - 10_000, before[1])


@pytest.mark.parametrize("currency", ["XYZ", "EUR"])  # not ISO 4217; ISO but not configured
async def test_a_currency_the_hub_does_not_accept_is_invalid_field(
        dep: Deployment, currency: str) -> None:
    number = RICH[2]
    before = await dep.balance("bca", number)
    oid = order()
    async with dep.client() as c:
        with pytest.raises(RequestError) as err:
            await c.charge(oid, 10_000, card=Card(number, 12, 2030, "123"), currency=currency)
        assert err.value.code is ErrorCode.INVALID_FIELD
        assert err.value.field == "args.currency"
        assert currency in err.value.message
        # Nothing was recorded: the order id is still free for a corrected request.
        tx = await c.charge(oid, 10_000, card=Card(number, 12, 2030, "123"))
    assert tx.transaction_status == "capture" and not tx.replayed
    assert await dep.balance("bca", number) == (before[0] - 10_000, before[1])


async def test_the_issuer_refuses_a_currency_the_card_account_is_not_in(
        dep: Deployment) -> None:
    number = RICH[3]  # an IDR account
    before = await dep.balance("bca", number)
    settlement = await dep.balance("bca", "settlement")
    async with dep.client() as c:
        tx = await c.charge(order(), 10_000, card=Card(number, 12, 2030, "123"),
                            currency="USD")
        held = await c.charge(order(), 10_000, card=Card(number, 12, 2030, "123"),
                              currency="USD", capture=False)
    for t in (tx, held):
        assert t.transaction_status == "deny" and t.status_code == "202"
        assert t.decline_reason == "card account is in IDR, not USD"
    assert await dep.balance("bca", number) == before  # nothing debited, nothing held
    assert await dep.balance("bca", "settlement") == settlement
    rows = dep.bank_sql("bca", "SELECT result FROM ops WHERE op_id = ?",
                        (f"{tx.transaction_id}:authorize",))
    decline = msgpack.unpackb(rows[0][0])
    assert decline["code"] == ErrorCode.CURRENCY_NOT_SUPPORTED


async def test_an_account_held_in_usd_is_debited_in_usd_only(dep: Deployment) -> None:
    before = await dep.balance("bca", USD_CARD)
    async with dep.client() as c:
        usd = await c.charge(order(), 2_500, card=Card(USD_CARD, 12, 2030, "123"),
                             currency="USD")
        idr = await c.charge(order(), 2_500, card=Card(USD_CARD, 12, 2030, "123"))
    assert usd.transaction_status == "capture" and usd.currency == "USD"
    assert idr.transaction_status == "deny"
    assert idr.decline_reason == "card account is in USD, not IDR"
    assert await dep.balance("bca", USD_CARD) == (before[0] - 2_500, before[1])


async def test_a_virtual_account_in_another_currency_than_the_bank_fails(
        dep: Deployment) -> None:
    payer = await dep.balance("bca", "payer")
    async with dep.client() as c:
        tx = await c.charge(order(), 20_000, "bank_transfer", bank="bca", currency="USD")
    assert tx.transaction_status == "failure"
    assert tx.decline_reason == "bank accepts payments in IDR, not USD"
    assert tx.va_number is None
    assert await dep.balance("bca", "payer") == payer
