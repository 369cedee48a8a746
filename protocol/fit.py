"""The negotiated ``body_bytes_max`` binds what a node sends, too (docs/protocol.md §2.3).

A peer that negotiated a limit treats any larger frame as ``FRAME_TOO_LARGE`` and closes,
so a sender never puts one on the wire. ``fit_frame`` maps a frame that would not fit to
its documented stand-in, which always fits the smallest limit a HELLO may ask for (1 024):

* RESPONSE with a result → an error RESPONSE ``RESPONSE_TOO_LARGE`` for the same request
  id. The operation's effect stands; the client reads the result on a connection that
  negotiated a larger ``body_bytes_max``.
* RESPONSE with an error → the same error (same code) with its ``message`` and ``field``
  shortened: nothing ran that a "too large" answer could misreport.
* EVENT → an EVENT with the same ``seq`` and ``merchant_id``, ``type``
  ``transaction.status.truncated`` and ``data`` holding only ``transaction_id``,
  ``order_id`` and ``transaction_status`` (bounded: at most ~200 bytes).
* ERROR → the same ERROR with its ``message`` and ``field`` shortened.
* anything else (REQUEST, HELLO, …) is the sender's own mistake: ``FRAME_TOO_LARGE`` is
  raised locally and nothing is sent.
"""

from __future__ import annotations

from typing import Any

from protocol import body as bodycodec
from protocol import messages
from protocol.errors import ErrorCode, PaywireError
from protocol.frame import HEADER, HEADER_BYTES, Flags, FrameType

TRUNCATED_EVENT_TYPE = "transaction.status.truncated"
_EVENT_SUMMARY_FIELDS = ("transaction_id", "order_id", "transaction_status")
# Room left in an error body for everything but its message and field (code, name, keys),
# and the most of a field path kept: with the smallest limit a HELLO may ask (1 024), a
# shortened error body stays under 1 024 - 400 + 200 + ~60 bytes.
_ERROR_OVERHEAD_BYTES = 400
_ERROR_FIELD_BYTES_MAX = 200


def _shortened(body: dict[str, Any], body_bytes_max: int) -> PaywireError:
    """The error in ``body`` (our own, so trusted) with message and field cut to fit."""
    room = max(body_bytes_max - _ERROR_OVERHEAD_BYTES - _ERROR_FIELD_BYTES_MAX, 0)
    message = str(body.get("message", "")).encode()[:room].decode(errors="ignore")
    field = body.get("field")
    if field is not None:
        field = str(field).encode()[:_ERROR_FIELD_BYTES_MAX].decode(errors="ignore")
    return PaywireError(message, code=ErrorCode(body["code"]), field=field)


def fit_frame(data: bytes, body_bytes_max: int) -> bytes:
    """``data`` (one encoded frame) if its body fits ``body_bytes_max``, else its stand-in."""
    length, _version, ftype, flags, rid = HEADER.unpack_from(data)
    if length <= body_bytes_max:
        return data
    if ftype == FrameType.RESPONSE and flags & Flags.ERROR:
        return messages.encode_error_response(
            rid, _shortened(bodycodec.unpack_own(data[HEADER_BYTES:]), body_bytes_max))
    if ftype == FrameType.RESPONSE:
        return messages.encode_error_response(rid, PaywireError(
            f"the result ({length} bytes) exceeds the body_bytes_max this connection "
            f"negotiated ({body_bytes_max}); the operation's effect stands; read it with "
            "status on a connection with a larger body_bytes_max",
            code=ErrorCode.RESPONSE_TOO_LARGE))
    body: dict[str, Any] = bodycodec.unpack_own(data[HEADER_BYTES:])
    if ftype == FrameType.EVENT:
        tx = body.get("data") or {}
        return messages.encode_message(FrameType.EVENT, {
            "seq": body["seq"], "type": TRUNCATED_EVENT_TYPE,
            "merchant_id": body["merchant_id"],
            "data": {k: tx[k] for k in _EVENT_SUMMARY_FIELDS if k in tx}})
    if ftype == FrameType.ERROR:
        error = _shortened(body, body_bytes_max)
        return messages.encode_error_frame(error.code, error.message, error.field)
    raise PaywireError(f"a {FrameType(ftype).name} of {length} bytes exceeds the peer's "
                       f"body_bytes_max ({body_bytes_max})", code=ErrorCode.FRAME_TOO_LARGE)
