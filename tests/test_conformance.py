"""The hub against docs/protocol.md on real TLS sockets: what an independent client relies on.

Each test sends frames by hand (``tests.rawclient.Raw``), mostly pipelined in one write, and
asserts the answers the spec promises (issue 11, items 14-18).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from protocol import body as bodycodec
from protocol.errors import ErrorCode
from protocol.frame import Flags, Frame, FrameType
from tests.deploy import RICH, Deployment, deployment
from tests.rawclient import Raw
from tests.test_hostile_peers import signed


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("conformance"), bca_nodes=1) as d:
        yield d


def card_charge(order_id: str, amount: int = 10_000, capture: bool = True) -> dict[str, Any]:
    return {"order_id": order_id, "gross_amount": amount, "payment_type": "credit_card",
            "capture": capture,
            "card": {"number": RICH[2], "exp_month": 12, "exp_year": 2030, "cvv": "123"}}


def outcome(frame: Frame) -> Any:
    """A RESPONSE's transaction status, or its error code."""
    body = bodycodec.unpack(frame.body)
    if frame.flags & Flags.ERROR:
        return ErrorCode(body["code"])
    return body["transaction_status"]


async def answers(raw: Raw, count: int, timeout_s: float = 20.0) -> dict[int, Frame]:
    """The next ``count`` RESPONSEs by request id (responses may come in any order)."""
    got: dict[int, Frame] = {}
    while len(got) < count:
        frame = await raw.next_frame(timeout_s)
        if frame.type == FrameType.RESPONSE:
            got[frame.request_id] = frame
    return got


def order() -> str:
    return f"conf-{os.urandom(4).hex()}"


# --- item 14: per-order ordering includes reads ---------------------------------------------
async def test_status_pipelined_behind_capture_and_refund_reflects_them(dep: Deployment) -> None:
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(oid, capture=False)))
    assert outcome((await answers(raw, 1))[1]) == "authorize"
    raw.send(b"".join([
        signed("M1", 2, "capture", {"order_id": oid}),
        signed("M1", 3, "status", {"order_id": oid}),
        signed("M1", 4, "refund", {"order_id": oid, "refund_key": "r1", "amount": 1_000}),
        signed("M1", 5, "status", {"order_id": oid}),
    ]))
    got = await answers(raw, 4)
    assert [outcome(got[i]) for i in (2, 3, 4, 5)] == \
        ["capture", "capture", "partial_refund", "partial_refund"]
    assert bodycodec.unpack(got[5].body)["refunded_amount"] == 1_000
    raw.close()


async def test_status_pipelined_behind_its_charge_sees_the_charge(dep: Deployment) -> None:
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(oid)) +
             signed("M1", 2, "status", {"order_id": oid}))
    got = await answers(raw, 2)
    assert [outcome(got[1]), outcome(got[2])] == ["capture", "capture"]
    raw.close()


async def test_status_with_nothing_queued_is_answered_at_once(dep: Deployment) -> None:
    """The fast path stays: a status of an idle order needs no bank and no ledger."""
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(oid)))
    await answers(raw, 1)
    raw.send(signed("M1", 2, "status", {"order_id": oid}))
    assert outcome((await answers(raw, 1))[2]) == "capture"
    raw.close()
