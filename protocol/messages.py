"""Bodies of the connection-level frames and the request envelope, with their validation.

A REQUEST body is an envelope (operation, merchant, timestamp, nonce, signature) around the
operation's ``args``, which travel as the exact msgpack bytes the signature covers (a
``bin``). The envelope is checked here before authentication, cheaply (``unpack_flat``: it
holds scalars only); ``args`` are unpacked by ``decode_args`` only after the signature has
verified, and checked by ``protocol.operations``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import body as bodycodec
from protocol.errors import BodyError, ErrorCode, PaywireError
from protocol.frame import (
    BODY_BYTES_MAX_CEILING,
    Flags,
    FrameType,
    encode_frame,
)
from protocol.operations import ID_PATTERN, MERCHANT_ID, NONCE, SIGNATURE, Operation
from protocol.schema import Bin, Bool, Int, ListOf, Map, Opt, Spec, Str

ROLE_MERCHANT = "merchant"
ROLE_HUB = "hub"

IN_FLIGHT_MAX_CEILING = 4096

HELLO = Map(
    {
        "versions": ListOf(Int(1, 255), max_items=8, min_items=1),
        "role": Str(choices=(ROLE_MERCHANT, ROLE_HUB)),
        "identity": Str(1, 64, ID_PATTERN),
        "body_bytes_max": Opt(Int(1024, BODY_BYTES_MAX_CEILING)),
        "in_flight_max": Opt(Int(1, IN_FLIGHT_MAX_CEILING)),
        "subscribe_events": Opt(Bool(), False),
        "events_since": Opt(Int(0, 2**63 - 1)),
        "resume_token": Opt(Bin(0, 64)),
        "client": Opt(Str(0, 64)),
    }
)

WELCOME = Map(
    {
        "version": Int(1, 255),
        "server": Str(0, 64),
        "session_id": Str(1, 64),
        "body_bytes_max": Int(1024, BODY_BYTES_MAX_CEILING),
        "in_flight_max": Int(1, IN_FLIGHT_MAX_CEILING),
        "heartbeat_interval_ms": Int(100, 3_600_000),
        "resume_token": Bin(0, 64),
        "event_seq": Int(0, 2**63 - 1),
        "server_time_ms": Int(0, 2**63 - 1),
    }
)

REQUEST = Map(
    {
        "op": Str(1, 32),
        "merchant_id": MERCHANT_ID,
        "timestamp_ms": Int(0, 2**63 - 1),
        "nonce": NONCE,
        "signature": SIGNATURE,
        # The operation's arguments: the exact bytes of a msgpack map, signed as they are.
        "args": Bin(1, BODY_BYTES_MAX_CEILING),
        # The sender's wall clock (µs since the epoch) as it built the frame: for the hop
        # timeline only (``paywire trace``), not signed, never trusted for anything else.
        "sent_us": Opt(Int(0, 2**63 - 1)),
    }
)

ERROR = Map(
    {
        "code": Int(0, 999),
        "name": Str(0, 64),
        "message": Str(0, 1024),
        "field": Opt(Str(0, 255)),
    }
)

EVENT = Map(
    {
        "seq": Int(1, 2**63 - 1),
        "type": Str(1, 64),
        "merchant_id": MERCHANT_ID,
        "data": Map({}, allow_extra=True),
    }
)

PING = Map({"time_ms": Opt(Int(0, 2**63 - 1))})

GOAWAY = Map(
    {
        "last_request_id": Int(0, 2**64 - 1),
        "code": Int(0, 999),
        "message": Str(0, 1024),
    }
)

BODY_SPECS: dict[FrameType, Spec] = {
    FrameType.HELLO: HELLO,
    FrameType.WELCOME: WELCOME,
    FrameType.REQUEST: REQUEST,
    FrameType.EVENT: EVENT,
    FrameType.PING: PING,
    FrameType.PONG: PING,
    FrameType.GOAWAY: GOAWAY,
    FrameType.ERROR: ERROR,
}


def decode_body(frame_type: FrameType | int, raw: bytes) -> dict[str, Any]:
    """Unpack and validate a body for its frame type (RESPONSE bodies are op-specific)."""
    if frame_type == FrameType.REQUEST:
        # The envelope is flat and its ``args`` a bin as long as the frame: see decode_request.
        flat: dict[str, Any] = REQUEST.check(bodycodec.unpack_flat(raw, len(raw)), "")
        return flat
    obj = bodycodec.unpack(raw)
    spec = BODY_SPECS.get(FrameType(frame_type))
    if spec is None:
        return obj
    checked: dict[str, Any] = spec.check(obj, "")
    return checked


@dataclass(frozen=True, slots=True)
class Request:
    """A REQUEST envelope after validation. ``args_raw`` is the exact msgpack the signature
    covers; it is unpacked (``decode_args``) only once the signature has verified."""

    request_id: int
    op: str
    merchant_id: str
    timestamp_ms: int
    nonce: bytes
    signature: bytes
    args_raw: bytes
    sent_us: int | None = None  # display only (docs/protocol.md §4.1)


def decode_request(request_id: int, raw: bytes) -> Request:
    """Unpack and check a REQUEST envelope without unpacking its ``args``.

    The work is bounded by the envelope's few scalar fields and one copy of the bytes (the
    frame's length was bounded by the decoder), so an unauthenticated peer cannot make it
    cost more than reading what it sent. Raise ``BodyError`` on any defect.
    """
    obj = bodycodec.unpack_flat(raw, bin_bytes_max=len(raw))
    body: dict[str, Any] = REQUEST.check(obj, "")
    return Request(
        request_id,
        body["op"],
        body["merchant_id"],
        body["timestamp_ms"],
        body["nonce"],
        body["signature"],
        body["args"],
        body.get("sent_us"),
    )


# ``args`` travel as their own msgpack bytes (signed exactly as sent) but count as depth 2,
# the depth they would have inside the envelope (docs/protocol.md §2.6).
ARGS_DEPTH = 2


def decode_args(args_raw: bytes) -> dict[str, Any]:
    """Unpack an authenticated request's ``args`` under the body limits (``MALFORMED_BODY``
    on any defect; the schema of the operation is checked afterwards)."""
    try:
        return bodycodec.unpack(args_raw, depth=ARGS_DEPTH, unique_keys=True)
    except BodyError as exc:
        raise BodyError(f"args: {exc.message}", code=exc.code, field="args") from None


def encode_args(args: dict[str, Any]) -> bytes:
    """The bytes a sender puts in ``args`` and signs: any valid msgpack map will do (the
    receiver never re-encodes it); this is plain msgpack in insertion order."""
    return bodycodec.pack(args)


def encode_request(
    request_id: int,
    op: Operation | str,
    merchant_id: str,
    timestamp_ms: int,
    nonce: bytes,
    signature: bytes,
    args_raw: bytes,
    sent_us: int | None = None,
) -> bytes:
    envelope = {
        "op": str(op),
        "merchant_id": merchant_id,
        "timestamp_ms": timestamp_ms,
        "nonce": nonce,
        "signature": signature,
        "args": args_raw,
    }
    if sent_us is not None:
        envelope["sent_us"] = sent_us
    body = bodycodec.pack(envelope)
    return encode_frame(FrameType.REQUEST, request_id, body)


def encode_response(request_id: int, result: dict[str, Any], *, replayed: bool = False) -> bytes:
    flags = Flags.REPLAYED if replayed else 0
    return encode_frame(FrameType.RESPONSE, request_id, bodycodec.pack(result), flags)


def encode_error_response(request_id: int, error: PaywireError) -> bytes:
    """An error RESPONSE: fails one request, the connection stays open."""
    return encode_frame(FrameType.RESPONSE, request_id, bodycodec.pack(error.to_body()),
                        Flags.ERROR)


def encode_error_frame(code: ErrorCode, message: str, field: str | None = None) -> bytes:
    """A connection-level ERROR frame; the sender closes the connection after it."""
    body = {"code": int(code), "name": code.name, "message": message}
    if field is not None:
        body["field"] = field
    return encode_frame(FrameType.ERROR, 0, bodycodec.pack(body))


def encode_message(frame_type: FrameType, body: dict[str, Any], request_id: int = 0) -> bytes:
    return encode_frame(frame_type, request_id, bodycodec.pack(body))


def negotiate_version(offered: list[int], supported: frozenset[int]) -> int:
    """The highest version both sides speak; UNSUPPORTED_VERSION when there is none."""
    common = set(offered) & supported
    if not common:
        raise BodyError(
            f"no common protocol version: offered {sorted(offered)}, "
            f"supported {sorted(supported)}",
            code=ErrorCode.UNSUPPORTED_VERSION,
            field="versions",
        )
    return max(common)
