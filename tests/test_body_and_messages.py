"""Msgpack bodies under limits, message schemas, and operation argument validation."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from protocol import body as bodycodec
from protocol import messages
from protocol.decoder import FrameDecoder
from protocol.errors import BodyError, ErrorCode
from protocol.frame import REQUEST_ID_NONZERO, FrameType
from protocol.operations import (
    Operation,
    luhn_valid,
    mask_card,
    parse_operation,
    validate_args,
)

CARD = {"number": "4811111111111114", "exp_month": 12, "exp_year": 2030, "cvv": "123"}


def charge_args(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "order_id": "order-1",
        "gross_amount": 10000,
        "payment_type": "credit_card",
        "card": dict(CARD),
    }
    args.update(over)
    return args


def body_error(raw: bytes) -> BodyError:
    with pytest.raises(BodyError) as info:
        bodycodec.unpack(raw)
    return info.value


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xc1", b"\x92\x01", b"\xdb\xff\xff\xff\xff", b"\x81\x01\x02", b"\x80\x01",
     b"\xa3abc", b"\x81\xa1a\xa2\xff\xfe"],
)
def test_malformed_msgpack_is_a_body_error(raw: bytes) -> None:
    assert body_error(raw).code is ErrorCode.MALFORMED_BODY


def test_limits_on_strings_collections_nesting_and_floats() -> None:
    assert body_error(msgpack.packb({"a": "x" * 5000})).code is ErrorCode.MALFORMED_BODY
    assert body_error(msgpack.packb({"a": list(range(300))})).code is ErrorCode.MALFORMED_BODY
    deep: Any = 1
    for _ in range(9):
        deep = [deep]
    err = body_error(msgpack.packb({"a": deep}))
    assert "nesting" in err.message
    very_deep = b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0"
    assert "nesting" in body_error(very_deep).message
    assert "float" in body_error(msgpack.packb({"a": 1.5})).message
    ok: Any = 1
    for _ in range(7):
        ok = [ok]
    assert bodycodec.unpack(msgpack.packb({"a": ok}))["a"] == ok


def test_canonical_sorts_keys_at_every_depth() -> None:
    a = bodycodec.canonical({"b": 1, "a": {"z": 1, "y": [{"d": 1, "c": 2}]}})
    b = bodycodec.canonical({"a": {"y": [{"c": 2, "d": 1}], "z": 1}, "b": 1})
    assert a == b


def test_charge_args_normalised_with_defaults() -> None:
    out = validate_args(Operation.CHARGE, charge_args())
    assert out["currency"] == "IDR" and out["capture"] is True


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"gross_amount": 0}, "args.gross_amount"),
        ({"gross_amount": -5}, "args.gross_amount"),
        ({"gross_amount": "100"}, "args.gross_amount"),
        ({"gross_amount": True}, "args.gross_amount"),
        ({"order_id": ""}, "args.order_id"),
        ({"order_id": "a" * 65}, "args.order_id"),
        ({"order_id": "bad id"}, "args.order_id"),
        ({"currency": "idr"}, "args.currency"),
        ({"payment_type": "cash"}, "args.payment_type"),
        ({"capture": 1}, "args.capture"),
        ({"card": {**CARD, "number": "4811111111111115"}}, "args.card.number"),
        ({"card": {**CARD, "exp_month": 13}}, "args.card.exp_month"),
        ({"card": {**CARD, "cvv": None}}, "args.card.cvv"),
        ({"card": "4811"}, "args.card"),
        ({"bank": "bca"}, "args.bank"),
        ({"captur": False}, "args.captur"),
        ({"customer": {"email": "nope"}}, "args.customer.email"),
    ],
)
def test_invalid_charge_names_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(BodyError) as info:
        validate_args(Operation.CHARGE, charge_args(**over))
    assert info.value.code is ErrorCode.INVALID_FIELD
    assert info.value.field == field


def test_payment_type_requires_its_details() -> None:
    args = charge_args(payment_type="bank_transfer")
    with pytest.raises(BodyError) as info:
        validate_args(Operation.CHARGE, args)
    assert info.value.field == "args.card"  # card given but not allowed
    del args["card"]
    with pytest.raises(BodyError) as info:
        validate_args(Operation.CHARGE, args)
    assert info.value.field == "args.bank"
    assert validate_args(Operation.CHARGE, {**args, "bank": "bca"})["bank"] == "bca"


def test_every_operation_has_a_schema_and_unknown_is_refused() -> None:
    for op in Operation:
        assert parse_operation(op.value) is op
        validate_args(op, {"order_id": "o1", "refund_key": "r1"} if op is Operation.REFUND
                      else charge_args() if op is Operation.CHARGE else {"order_id": "o1"})
    with pytest.raises(BodyError) as info:
        parse_operation("steal")
    assert info.value.code is ErrorCode.UNKNOWN_OPERATION


def test_luhn_and_mask() -> None:
    assert luhn_valid("4811111111111114")
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert mask_card("4811111111111114") == "481111******1114"


def full_bodies() -> dict[FrameType, dict[str, Any]]:
    return {
        FrameType.HELLO: {"versions": [1], "role": "merchant", "identity": "M1",
                          "body_bytes_max": 65536, "in_flight_max": 64,
                          "subscribe_events": True, "events_since": 5,
                          "resume_token": b"t" * 16, "client": "test"},
        FrameType.WELCOME: {"version": 1, "server": "hub", "session_id": "s1",
                            "body_bytes_max": 65536, "in_flight_max": 64,
                            "heartbeat_interval_ms": 5000, "resume_token": b"t" * 16,
                            "event_seq": 3, "server_time_ms": 1_700_000_000_000},
        FrameType.REQUEST: {"op": "status", "merchant_id": "M1", "timestamp_ms": 1,
                            "nonce": b"n" * 16, "signature": b"s" * 32,
                            "args": bodycodec.pack({"order_id": "o1"})},
        FrameType.EVENT: {"seq": 1, "type": "transaction.status", "merchant_id": "M1",
                          "data": {"order_id": "o1"}},
        FrameType.PING: {"time_ms": 5},
        FrameType.PONG: {"time_ms": 5},
        FrameType.GOAWAY: {"last_request_id": 10, "code": 901, "message": "draining"},
        FrameType.ERROR: {"code": 100, "name": "BAD_FRAME", "message": "x", "field": "f"},
    }


def test_every_message_round_trips_through_frame_and_schema() -> None:
    for ftype, body in full_bodies().items():
        rid = 3 if REQUEST_ID_NONZERO.get(ftype, True) else 0  # §2.5: some types carry 0
        raw = messages.encode_message(ftype, body, request_id=rid)
        (frame,) = FrameDecoder(65536).feed(raw)
        assert frame.type == ftype
        assert messages.decode_body(frame.type, frame.body) == body


@pytest.mark.parametrize(
    ("ftype", "mutate", "field"),
    [
        (FrameType.HELLO, {"versions": []}, "versions"),
        (FrameType.HELLO, {"role": "admin"}, "role"),
        (FrameType.HELLO, {"identity": 5}, "identity"),
        (FrameType.REQUEST, {"signature": b"short"}, "signature"),
        (FrameType.REQUEST, {"nonce": "text"}, "nonce"),
        (FrameType.REQUEST, {"args": "text"}, "args"),
        (FrameType.REQUEST, {"args": 5}, "args"),
        (FrameType.GOAWAY, {"last_request_id": -1}, "last_request_id"),
        (FrameType.WELCOME, {"heartbeat_interval_ms": 1}, "heartbeat_interval_ms"),
    ],
)
def test_message_schema_errors_name_the_field(
    ftype: FrameType, mutate: dict[str, Any], field: str
) -> None:
    body = {**full_bodies()[ftype], **mutate}
    with pytest.raises(BodyError) as info:
        messages.decode_body(ftype, bodycodec.pack(body))
    assert info.value.code is ErrorCode.INVALID_FIELD
    assert info.value.field == field


def test_version_negotiation() -> None:
    assert messages.negotiate_version([1, 2, 3], frozenset({1, 2})) == 2
    with pytest.raises(BodyError) as info:
        messages.negotiate_version([7], frozenset({1}))
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_request_encode_decode() -> None:
    raw = messages.encode_request(9, Operation.STATUS, "M1", 5, b"n" * 16, b"s" * 32,
                                  messages.encode_args({"order_id": "o1"}))
    (frame,) = FrameDecoder(65536).feed(raw)
    req = messages.decode_request(frame.request_id, frame.body)
    assert (req.request_id, req.op) == (9, "status")
    assert messages.decode_args(req.args_raw) == {"order_id": "o1"}


@pytest.mark.parametrize("args", [[], {}, {"order_id": "o1"}, [[]], {"k": [1]}])
def test_request_envelope_holds_scalars_only(args: Any) -> None:
    # args travel as their bytes (a bin); an array or map anywhere in the envelope is refused
    # as soon as its header is read, before anything it nests is built.
    body = {**full_bodies()[FrameType.REQUEST], "args": args}
    with pytest.raises(BodyError) as info:
        messages.decode_request(1, bodycodec.pack(body))
    assert info.value.code is ErrorCode.MALFORMED_BODY
    with pytest.raises(BodyError) as info:
        messages.decode_body(FrameType.REQUEST, bodycodec.pack({**body, "args": b"\x80",
                                                                "extra": [1]}))
    assert info.value.code is ErrorCode.MALFORMED_BODY


def test_map_keys_must_be_strings_at_every_depth() -> None:
    for body in ({b"k": 1}, {"a": {1: 2}}, {"a": [{"b": {b"c": 1}}]}, {"a": 1, b"b": 2}):
        with pytest.raises(BodyError) as info:
            bodycodec.unpack(bodycodec.pack(body))
        assert info.value.code is ErrorCode.MALFORMED_BODY
