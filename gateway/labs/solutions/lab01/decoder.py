"""Lab 1: an incremental Paywire frame decoder (reference solution).

TCP delivers a byte stream, not messages: one ``recv`` may return half a header, or the end
of one frame and the start of the next three. The decoder is fed whatever arrived, keeps
what does not yet make a whole frame, and hands back every complete frame — the same frames
whatever the split. It does no I/O, so it can be tested by feeding it bytes (a "sans-I/O"
design, like the project's own ``protocol/decoder.py``).

Hostile input is refused with the spec's error code (docs/protocol.md §2.1, §2.5), decided
on the 16 header bytes alone, before any body byte is kept: a peer announcing a 4 GiB body
costs 16 bytes, not 4 GiB and not a wait for bytes that never come.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from protocol.errors import ErrorCode

# §2: body_length (4), version (1), frame_type (1), flags (2), request_id (8), big-endian.
HEADER = struct.Struct(">IBBHQ")
HEADER_BYTES = HEADER.size  # 16
VERSIONS = frozenset({1})
FRAME_TYPES = range(1, 10)  # HELLO .. ERROR
RESPONSE = 4
RESPONSE_FLAGS = 0x0001 | 0x0002  # ERROR, REPLAYED: the only flags any type may carry
# §2.5: True, the request_id MUST be non-zero; False, it MUST be 0; absent (PING, PONG): any.
REQUEST_ID_NONZERO = {1: False, 2: False, 3: True, 4: True, 5: False, 8: False, 9: False}
HANDSHAKE_BODY_BYTES_MAX = 16 * 1024  # §2.1: the limit until WELCOME


class Header(NamedTuple):
    """The 16-byte header's five fields (docs/protocol.md §2)."""

    body_length: int
    version: int
    frame_type: int
    flags: int
    request_id: int


@dataclass(frozen=True)
class Frame:
    """One complete frame: its header fields and its body bytes (still msgpack)."""

    frame_type: int
    flags: int
    request_id: int
    body: bytes
    version: int = 1


def parse_header(data: bytes | bytearray) -> Header:
    """The header at the start of ``data`` (which holds at least 16 bytes)."""
    return Header(*HEADER.unpack_from(data, 0))


def header_error(header: Header, body_bytes_max: int) -> ErrorCode | None:
    """The error a receiver answers this header with, or ``None`` when it is acceptable:
    the checks of §2.1 in the spec's order, then §2.5's request_id rule."""
    if header.version not in VERSIONS:
        return ErrorCode.UNSUPPORTED_VERSION
    if header.frame_type not in FRAME_TYPES:
        return ErrorCode.UNKNOWN_FRAME_TYPE
    allowed = RESPONSE_FLAGS if header.frame_type == RESPONSE else 0
    if header.flags & ~allowed:
        return ErrorCode.RESERVED_FLAGS
    if header.body_length > body_bytes_max:
        return ErrorCode.FRAME_TOO_LARGE
    nonzero = REQUEST_ID_NONZERO.get(header.frame_type)
    if nonzero is not None and (header.request_id != 0) != nonzero:
        return ErrorCode.BAD_FRAME
    return None


class Decoder:
    """Feed it bytes as they arrive; it returns the frames they complete.

    ``error`` is ``None`` until the stream breaks a rule; then it holds the code, the
    buffer is dropped and every later ``feed`` returns nothing: the stream position is lost,
    so nothing after the bad header can be trusted. Nothing escapes as an exception.
    """

    def __init__(self, body_bytes_max: int = HANDSHAKE_BODY_BYTES_MAX) -> None:
        self.body_bytes_max = body_bytes_max
        self.error: ErrorCode | None = None
        self._buf = bytearray()

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a frame not complete yet: at most one header plus one body limit,
        plus whatever one ``feed`` passed in."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data``; return every frame it completes, in stream order. Frames before
        a bad header are returned; the bad header sets ``error``."""
        if self.error is not None:
            return []
        self._buf += data
        frames: list[Frame] = []
        pos = 0
        while len(self._buf) - pos >= HEADER_BYTES:
            header = parse_header(self._buf[pos:pos + HEADER_BYTES])
            problem = header_error(header, self.body_bytes_max)
            if problem is not None:
                self.error = problem
                self._buf.clear()
                return frames
            end = pos + HEADER_BYTES + header.body_length
            if end > len(self._buf):
                break  # the body has not all arrived: wait for the next feed
            frames.append(Frame(header.frame_type, header.flags, header.request_id,
                                bytes(self._buf[pos + HEADER_BYTES:end]), header.version))
            pos = end
        del self._buf[:pos]
        return frames

    def eof(self) -> None:
        """The peer closed its side: a frame cut short is ``TRUNCATED_FRAME`` (§2.4)."""
        if self.error is None and self._buf:
            self.error = ErrorCode.TRUNCATED_FRAME
            self._buf.clear()
