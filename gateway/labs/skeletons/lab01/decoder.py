"""Lab 1: an incremental Paywire frame decoder — yours to write.

TCP delivers a byte stream, not messages: one ``recv`` may return half a header, or the end
of one frame and the start of the next three. Your decoder is fed whatever arrived, keeps
what does not yet make a whole frame, and hands back every complete frame — the same frames
whatever the split. It does no I/O (a "sans-I/O" design): the checks test it by feeding it
bytes, and ``hello.py`` feeds it what ``recv`` returns.

Read docs/protocol.md §2 (the header), §2.1 (the checks, in order), §2.4 (a stream that ends
inside a frame) and §2.5 (request_id by frame type). Do not import ``protocol.decoder`` or
``protocol.frame``: writing this from the spec is the lab. ``struct`` is your friend.

Rules your decoder must keep (``paywire lab check 1`` tests each):

- the same frames whatever the split: one byte at a time, everything at once, or anything
  in between;
- a bad header is refused with the spec's code, decided on the 16 header bytes alone,
  **before** any body byte is kept (a peer announcing a 4 GiB body costs you 16 bytes);
- nothing escapes as an exception: ``error`` holds the code, and after it every ``feed``
  returns ``[]`` (the stream position is lost; nothing after a bad header can be trusted);
- never buffer without bound: at most one header, one body limit and one ``feed``'s bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from protocol.errors import ErrorCode

HANDSHAKE_BODY_BYTES_MAX = 16 * 1024  # §2.1: the body limit until WELCOME

# Your constants here: the header's size and ``struct`` format (§2; integers are
# big-endian, so the format starts with ">"), the frame types (§2's table), the flags a
# RESPONSE may carry, and §2.5's request_id rule per frame type.


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
    """The header at the start of ``data`` (which holds at least 16 bytes).

    Example: ``00 00 00 f8 01 03 00 00 00 00 00 00 00 00 00 01`` is
    ``Header(body_length=248, version=1, frame_type=3, flags=0, request_id=1)``."""
    raise NotImplementedError(
        "parse_header: unpack the 16 header bytes of docs/protocol.md §2 (struct.unpack_from "
        "with a big-endian format) into a Header")


def header_error(header: Header, body_bytes_max: int) -> ErrorCode | None:
    """The error a receiver answers this header with, or ``None`` when it is acceptable.

    Make the checks of §2.1 in the spec's order (the first failing one decides: a header
    with a bad version *and* a huge length is UNSUPPORTED_VERSION), then §2.5's request_id
    rule (``ErrorCode.BAD_FRAME``). Use the names of ``protocol/errors.py``'s ErrorCode."""
    raise NotImplementedError(
        "header_error: return ErrorCode.UNSUPPORTED_VERSION / UNKNOWN_FRAME_TYPE / "
        "RESERVED_FLAGS / FRAME_TOO_LARGE (§2.1, in that order) or BAD_FRAME (§2.5), "
        "or None for a good header")


class Decoder:
    """Feed it bytes as they arrive; it returns the frames they complete.

    ``error`` is ``None`` until the stream breaks a rule; then it holds the ErrorCode and
    every later ``feed`` returns ``[]``.
    """

    def __init__(self, body_bytes_max: int = HANDSHAKE_BODY_BYTES_MAX) -> None:
        self.body_bytes_max = body_bytes_max
        self.error: ErrorCode | None = None
        self._buf = bytearray()  # bytes of the frame not complete yet

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a frame not complete yet (keep it true if you store them
        elsewhere than ``self._buf``)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data``; return every frame it completes, in stream order.

        Loop: while 16 header bytes are buffered, parse the header and check it (on a bad
        one: set ``error``, drop the buffer, return the frames completed before it); if the
        whole body is buffered too, cut the frame out, else wait for the next feed."""
        raise NotImplementedError(
            "Decoder.feed: append data to the buffer, then cut out every complete frame "
            "(see the docstring); a bad header sets self.error")

    def eof(self) -> None:
        """The peer closed its side. If part of a frame is buffered, the stream ended inside
        it: set ``error`` to TRUNCATED_FRAME (§2.4). At a frame boundary it is no error."""
        raise NotImplementedError(
            "Decoder.eof: set self.error = ErrorCode.TRUNCATED_FRAME if bytes are buffered")
