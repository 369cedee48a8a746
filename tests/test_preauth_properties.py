"""Property: whatever body a peer sends, decode + verify (+ the args checks after them) raise
nothing but the protocol's own error type (issue 11, item 1), for REQUESTs to the hub and on
the bank link alike (they share this code)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.net.signed import Correlator
from gateway.transactions.model import now_ms
from protocol import banklink, messages, signing
from protocol.errors import BodyError, ErrorCode, PaywireError
from protocol.frame import Frame, FrameType
from protocol.operations import parse_operation, validate_args

KEY = b"sk-property"

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
           | st.text(max_size=12) | st.binary(max_size=12))
keys = st.text(max_size=6) | st.binary(max_size=6) | st.integers(-3, 3) | st.booleans()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=24)
ops = st.sampled_from(["charge", "status", "refund", "capture", banklink.AUTHORIZE,
                       banklink.PAYMENT, "admin.balances", "nope", ""])


def receive(raw: bytes, *, link: bool = False) -> None:
    """What the hub (or a bank node, ``link``) does with a REQUEST body, up to the service."""
    req = messages.decode_request(7, raw)
    if not signing.verify_request(KEY, req.signature, req.merchant_id, req.request_id, req.op,
                                  req.timestamp_ms, req.nonce, req.args_raw):
        return
    args = messages.decode_args(req.args_raw)
    if link:
        banklink.validate(req.op, args)
    else:
        validate_args(parse_operation(req.op), args)


def outcome(raw: bytes) -> None:
    for link in (False, True):
        try:
            receive(raw, link=link)
        except PaywireError:
            pass


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=values)
def test_any_msgpack_body(body: Any) -> None:
    outcome(pack(body))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=ops, args=values, overrides=st.dictionaries(
    st.sampled_from(["op", "merchant_id", "timestamp_ms", "nonce", "signature", "args", "x",
                     b"op"]), values, max_size=3))
def test_envelopes_near_valid_with_any_args(op: str, args: Any, overrides: dict[Any, Any]) -> None:
    # Correctly signed, so the args are unpacked and checked: mixed keys, floats, deep nesting.
    args_raw = pack(args)
    ts, nonce = now_ms(), b"n" * 16
    sig = signing.sign_request(KEY, "M1", 7, op, ts, nonce, args_raw)
    body: dict[Any, Any] = {"op": op, "merchant_id": "M1", "timestamp_ms": ts, "nonce": nonce,
                            "signature": sig, "args": args_raw}
    outcome(pack(body))
    outcome(pack({**body, **overrides}))
    outcome(pack({**body, "args": args}))  # args as a value instead of its bytes


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_any_bytes(data: bytes) -> None:
    outcome(data)
    # ...and any bytes as correctly signed args.
    ts, nonce = now_ms(), b"n" * 16
    sig = signing.sign_request(KEY, "M1", 7, "charge", ts, nonce, data)
    outcome(pack({"op": "charge", "merchant_id": "M1", "timestamp_ms": ts, "nonce": nonce,
                  "signature": sig, "args": data}))


async def test_the_client_turns_a_hostile_response_into_that_requests_error() -> None:
    """What a hub sends goes through the same body rules on the client: a RESPONSE with a
    non-string key fails its request with a coded error, it raises nothing."""
    correlator = Correlator(asyncio.get_running_loop())
    rid, answer = correlator.new(None)
    assert correlator.resolve(Frame(FrameType.RESPONSE, rid,
                                    pack({"transaction_status": "capture", b"k": 1})))
    with pytest.raises(BodyError) as info:
        await answer
    assert info.value.code is ErrorCode.MALFORMED_BODY
