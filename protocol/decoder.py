"""Incremental frame decoder: bytes in, complete frames out, no I/O.

The length field is checked the moment a header is complete, before any body byte is
buffered, so a hostile length of 0xFFFFFFFF costs nothing. The buffer never holds more than
one body limit plus one header plus whatever one ``feed`` call passed in.
"""

from __future__ import annotations

from typing import NoReturn

from protocol.errors import ErrorCode, FrameError
from protocol.frame import (
    FLAGS_ALLOWED,
    HEADER,
    HEADER_BYTES,
    REQUEST_ID_NONZERO,
    SUPPORTED_VERSIONS,
    Frame,
)


class FrameDecoder:
    """Feed it bytes as they arrive; it returns the frames they complete.

    After an error the decoder is poisoned: every later call raises the same error,
    because the stream position is lost and nothing after it can be trusted.
    """

    __slots__ = ("_buf", "_error", "body_bytes_max", "versions")

    def __init__(
        self,
        body_bytes_max: int,
        versions: frozenset[int] = SUPPORTED_VERSIONS,
    ) -> None:
        self._buf = bytearray()
        self._error: FrameError | None = None
        self.body_bytes_max = body_bytes_max
        self.versions = versions

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes, stop_after: frozenset[int] = frozenset()) -> list[Frame]:
        """Consume ``data``; return every frame completed by it, in stream order, up to and
        including the first whose type is in ``stop_after`` (the rest stays buffered for
        the next ``feed``, which may be ``feed(b"")``: e.g. after a WELCOME has raised
        the body limit the frames behind it are judged by).

        Raises ``FrameError`` (with ``frames_before``) on the first invalid header.
        """
        if self._error is not None:
            raise self._error
        if self._buf:
            self._buf += data
            view: bytes | bytearray = self._buf
        else:
            # Fast path: parse straight out of the caller's bytes, copying only bodies.
            view = data
        frames: list[Frame] = []
        pos = 0
        end_all = len(view)
        unpack_from = HEADER.unpack_from
        body_max = self.body_bytes_max
        while end_all - pos >= HEADER_BYTES:
            length, version, ftype, flags, request_id = unpack_from(view, pos)
            if version not in self.versions:
                self._fail(f"unsupported framing version {version}",
                           ErrorCode.UNSUPPORTED_VERSION, frames)
            allowed = FLAGS_ALLOWED.get(ftype)
            if allowed is None:
                self._fail(f"unknown frame type {ftype}", ErrorCode.UNKNOWN_FRAME_TYPE, frames)
            if flags & ~allowed:
                self._fail(f"reserved flag bits set: 0x{flags:04x}",
                           ErrorCode.RESERVED_FLAGS, frames)
            if length > body_max:
                self._fail(f"body of {length} bytes exceeds the limit of {body_max}",
                           ErrorCode.FRAME_TOO_LARGE, frames)
            nonzero = REQUEST_ID_NONZERO.get(ftype)
            if nonzero is not None and (request_id != 0) is not nonzero:
                self._fail(f"request_id {request_id} is not allowed on frame type {ftype}",
                           ErrorCode.BAD_FRAME, frames)
            body_end = pos + HEADER_BYTES + length
            if body_end > end_all:
                break
            frames.append(
                Frame(ftype, request_id, bytes(view[pos + HEADER_BYTES:body_end]), flags, version)
            )
            pos = body_end
            if stop_after and ftype in stop_after:
                break
        if view is self._buf:
            del self._buf[:pos]
        elif pos < end_all:
            self._buf += view[pos:]
        return frames

    def eof(self) -> None:
        """The peer closed its side. Raises ``FrameError`` if a frame was cut short."""
        if self._error is not None:
            raise self._error
        if self._buf:
            have = len(self._buf)
            what = "header" if have < HEADER_BYTES else "body"
            self._fail(f"stream ended inside a frame {what} ({have} bytes buffered)",
                       ErrorCode.TRUNCATED_FRAME, [])

    def _fail(self, message: str, code: ErrorCode, frames: list[Frame]) -> NoReturn:
        self._buf.clear()
        self._error = FrameError(message, code=code, frames_before=list(frames))
        raise self._error
