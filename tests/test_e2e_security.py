"""Authentication at the hub: every refusal has its code and records nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.client import Client, RequestError, connect
from gateway.transactions.model import now_ms
from protocol import messages, signing
from protocol.errors import ErrorCode, RemoteError
from tests.deploy import KEYS, RICH, Deployment, deployment

ARGS = {"order_id": "sec-1", "gross_amount": 1_000, "payment_type": "credit_card",
        "card": {"number": RICH[0], "exp_month": 12, "exp_year": 2030, "cvv": "123"}}


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("sec"), bca_nodes=1) as d:
        yield d


async def raw_request(c: Client, op: str, args: dict[str, Any], *, merchant_id: str | None = None,
                      ts_ms: int | None = None, nonce: bytes | None = None,
                      key: bytes | None = None, flip_bit: bool = False) -> dict[str, Any]:
    conn = c.conn
    assert conn is not None
    rid, fut = conn.correlator.new(5.0)
    mid = merchant_id or c.merchant_id
    ts = now_ms() if ts_ms is None else ts_ms
    nonce = nonce or os.urandom(16)
    args_raw = messages.encode_args(args)
    sig = signing.sign_request(key or c.key, mid, rid, op, ts, nonce, args_raw)
    if flip_bit:
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    conn.send(messages.encode_request(rid, op, mid, ts, nonce, sig, args_raw))
    return await fut


async def refused(coro: Any) -> ErrorCode:
    with pytest.raises(RemoteError) as info:
        await coro
    return info.value.code


def nothing_recorded(dep: Deployment, order_id: str) -> bool:
    rows = dep.ledger_sql("SELECT COUNT(*) FROM transactions WHERE order_id = ?", (order_id,))
    effects = dep.bank_sql("bca", "SELECT COUNT(*) FROM effects WHERE account = ?", (RICH[0],))
    return bool(rows[0][0] == 0 and effects[0][0] == 0)


async def test_bad_signature(dep: Deployment) -> None:
    async with dep.client() as c:
        assert await refused(raw_request(c, "charge", ARGS, flip_bit=True)) \
            is ErrorCode.BAD_SIGNATURE
        assert await refused(raw_request(c, "charge", ARGS, key=b"wrong")) \
            is ErrorCode.BAD_SIGNATURE
    assert nothing_recorded(dep, "sec-1")


async def test_stale_and_future_timestamps(dep: Deployment) -> None:
    async with dep.client() as c:
        assert await refused(raw_request(c, "charge", ARGS, ts_ms=now_ms() - 301_000)) \
            is ErrorCode.STALE_TIMESTAMP
        assert await refused(raw_request(c, "charge", ARGS, ts_ms=now_ms() + 301_000)) \
            is ErrorCode.STALE_TIMESTAMP
    assert nothing_recorded(dep, "sec-1")


async def test_replayed_nonce(dep: Deployment) -> None:
    nonce = os.urandom(16)
    args = {**ARGS, "order_id": "sec-replay"}
    async with dep.client() as c:
        assert await refused(raw_request(c, "status", {"order_id": "x"}, nonce=nonce)) \
            is ErrorCode.NOT_FOUND
        assert await refused(raw_request(c, "charge", args, nonce=nonce)) is ErrorCode.REPLAYED
    assert nothing_recorded(dep, "sec-replay")


async def test_merchant_a_certificate_with_merchant_b_identity(dep: Deployment) -> None:
    # A request naming M2 (signed with M2's key) on M1's authenticated connection.
    async with dep.client("M1") as c:
        assert await refused(raw_request(c, "charge", ARGS, merchant_id="M2",
                                         key=KEYS["M2"].encode())) is ErrorCode.FORBIDDEN
    # A HELLO claiming M2 over a TLS session authenticated with M1's certificate.
    from gateway.client import client_ssl_context

    spoof = connect("127.0.0.1", dep.port, merchant_id="M2", server_key=KEYS["M2"],
                    ssl_context=client_ssl_context(dep.certs, "M1"))
    with pytest.raises(RemoteError) as info:
        await spoof.connect()
    assert info.value.code is ErrorCode.FORBIDDEN
    assert nothing_recorded(dep, "sec-1")


async def test_merchants_cannot_see_each_others_orders(dep: Deployment) -> None:
    async with dep.client("M1") as m1, dep.client("M2") as m2:
        await m1.charge("shared-order", 1_000, card=ARGS["card"])
        with pytest.raises(RequestError) as info:
            await m2.status("shared-order")
        assert info.value.code is ErrorCode.NOT_FOUND
