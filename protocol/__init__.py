"""Paywire's wire protocol: pure, I/O-free. Frames, decoder, bodies, schemas, signatures.

Nothing here imports asyncio or sockets, so every byte-level behaviour is testable without a
network. ``docs/protocol.md`` is the normative description of what this package implements.
"""

from protocol.decoder import FrameDecoder
from protocol.errors import (
    BodyError,
    ErrorCode,
    FrameError,
    PaywireError,
    ProtocolViolation,
    RemoteError,
)
from protocol.frame import (
    HEADER_BYTES,
    PROTOCOL_VERSION,
    Flags,
    Frame,
    FrameType,
    encode_frame,
)

__all__ = [
    "HEADER_BYTES",
    "PROTOCOL_VERSION",
    "BodyError",
    "ErrorCode",
    "Flags",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameType",
    "PaywireError",
    "ProtocolViolation",
    "RemoteError",
    "encode_frame",
]
