"""The frame: a fixed 16-byte header followed by a msgpack body.

Header layout (network byte order, see ``docs/protocol.md``)::

    offset size field
    0      4    body_length   unsigned, bytes of body that follow the header
    4      1    version       framing version, 1
    5      1    frame_type    FrameType
    6      2    flags         Flags; undefined bits must be zero
    8      8    request_id    correlation id (0 where a type does not use it)
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

HEADER = struct.Struct(">IBBHQ")
HEADER_BYTES = HEADER.size
assert HEADER_BYTES == 16

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})

# Before WELCOME fixes the negotiated limit, bodies are capped low: a HELLO is small, and an
# unauthenticated peer must not make the hub buffer much.
HANDSHAKE_BODY_BYTES_MAX = 16 * 1024
# Default negotiated body limit; the hard ceiling either side may ask for.
BODY_BYTES_MAX_DEFAULT = 64 * 1024
BODY_BYTES_MAX_CEILING = 4 * 1024 * 1024


class FrameType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    REQUEST = 3
    RESPONSE = 4
    EVENT = 5
    PING = 6
    PONG = 7
    GOAWAY = 8
    ERROR = 9




class Flags(enum.IntFlag):
    NONE = 0
    # RESPONSE only: the body is an error body (code, name, message, field).
    ERROR = 0x0001
    # RESPONSE only: the result was stored earlier and is replayed (idempotent repeat).
    REPLAYED = 0x0002


FLAGS_DEFINED = int(Flags.ERROR | Flags.REPLAYED)
# Flags each frame type may carry; every other bit is reserved and must be zero.
FLAGS_ALLOWED: dict[int, int] = {int(t): 0 for t in FrameType}
FLAGS_ALLOWED[FrameType.RESPONSE] = FLAGS_DEFINED


# ``request_id`` by frame type (docs/protocol.md §2.5): True, it MUST be non-zero (it
# correlates a RESPONSE with its REQUEST); False, it MUST be 0; a type not listed (PING,
# PONG) may carry any value. Checked on the header, before any body byte is buffered.
REQUEST_ID_NONZERO: dict[int, bool] = {
    FrameType.REQUEST: True,
    FrameType.RESPONSE: True,
    FrameType.HELLO: False,
    FrameType.WELCOME: False,
    FrameType.EVENT: False,
    FrameType.GOAWAY: False,
    FrameType.ERROR: False,
}


class Frame(NamedTuple):
    """One decoded frame; ``body`` is still-encoded msgpack so a bad body fails one request."""

    type: int
    request_id: int
    body: bytes
    flags: int = 0
    version: int = PROTOCOL_VERSION


def encode_frame(
    frame_type: int,
    request_id: int,
    body: bytes,
    flags: int = 0,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """Serialize one frame. The caller packs the body (``protocol.body.pack``)."""
    return HEADER.pack(len(body), version, frame_type, flags, request_id) + body


def encode(frame: Frame) -> bytes:
    return encode_frame(frame.type, frame.request_id, frame.body, frame.flags, frame.version)
