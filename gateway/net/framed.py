"""``FramedProtocol``: the one asyncio adapter every node builds on.

It does only transport work: feed received bytes to the ``FrameDecoder``, check each frame
against the connection state table, hand it to ``frame_received``, and send frames. Sends
are gathered: everything queued during one loop iteration leaves in one ``transport.write``
(a loopback send costs ~7 µs, the biggest single cost on this machine, DESIGN §8).

Nothing a peer sends may escape ``data_received`` as an exception: uvloop would abort the
TLS connection without an ERROR frame and drop the answers already gathered for earlier
requests. Every failure a peer can cause is meant to be a coded error value where it
happens; ``_handle`` is the last line behind that rule: an unexpected exception while
handling one frame fails that request with ``INTERNAL`` (or, for any other frame, the
connection with an ERROR frame), and is logged briefly rather than once per frame with a
traceback.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from typing import Any

from protocol import messages
from protocol.connection import ConnectionState, Side, State
from protocol.decoder import FrameDecoder
from protocol.errors import BodyError, ErrorCode, FrameError, PaywireError, ProtocolViolation
from protocol.fit import fit_frame
from protocol.frame import HANDSHAKE_BODY_BYTES_MAX, HEADER_BYTES, Frame, FrameType

log = logging.getLogger("paywire.net")

WRITE_BUFFER_HIGH_BYTES = 256 * 1024
WRITE_BUFFER_LOW_BYTES = 64 * 1024
# Unexpected exceptions get a traceback in the log this many times per process, then one
# line per connection: enough to diagnose the bug, too few for a peer to flood the log.
UNEXPECTED_TRACEBACKS_MAX = 1
_unexpected_tracebacks = 0


def _type_name(frame_type: int) -> str:
    try:
        return FrameType(frame_type).name
    except ValueError:
        return str(frame_type)


class FramedProtocol(asyncio.Protocol):
    """Base class; subclasses implement ``frame_received`` and may override the hooks."""

    side: Side = Side.SERVER

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.state = ConnectionState(self.side)
        self.decoder = FrameDecoder(HANDSHAKE_BODY_BYTES_MAX)
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self.writing_paused = False
        self.reading_paused = False
        self.last_received_s = self.loop.time()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.peer: Any = None
        self.heartbeat: Heartbeat | None = None
        self.unexpected_errors = 0  # frames whose handling raised (see _handle)
        # The largest body the peer accepts from us: the handshake limit, then the
        # negotiated body_bytes_max, which binds both directions (docs/protocol.md §2.3).
        self.peer_body_bytes_max = HANDSHAKE_BODY_BYTES_MAX
        # Since when the decoder has held an incomplete frame without completing one (None:
        # at a frame boundary). The heartbeat ends a frame left incomplete too long with
        # TRUNCATED_FRAME (docs/protocol.md §2.4).
        self.partial_since_s: float | None = None

    # --- transport callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transport is not an asyncio.Transport subclass, but has its interface.
        self.transport = typing.cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self.transport.set_write_buffer_limits(WRITE_BUFFER_HIGH_BYTES, WRITE_BUFFER_LOW_BYTES)
        self.on_connected()

    def data_received(self, data: bytes) -> None:
        self.last_received_s = self.loop.time()
        try:
            frames = self.decoder.feed(data)
        except FrameError as exc:
            for frame in exc.frames_before:
                assert isinstance(frame, Frame)
                self._handle(frame)
            self.fail(exc.code, exc.message)
            return
        except Exception as exc:  # the decoder's own bug; still never a crash of the loop
            self._unexpected(exc, None)
            self.fail(ErrorCode.INTERNAL, "internal error while decoding frames")
            return
        if frames or self.partial_since_s is None:
            self.partial_since_s = self.last_received_s if self.decoder.buffered_bytes else None
        for frame in frames:
            if self.state.state is State.CLOSED:
                return
            self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        try:
            self._dispatch(frame)
        except Exception as exc:
            self._unexpected(exc, frame)
            if frame.type == FrameType.REQUEST and self.state.state is not State.CLOSED:
                # That request fails, as a bad body would; the connection and the answers
                # gathered for earlier requests are unaffected.
                self.respond_error(frame.request_id, PaywireError(
                    "internal error while handling this request", code=ErrorCode.INTERNAL))
            else:
                self.fail(ErrorCode.INTERNAL,
                          f"internal error while handling a {_type_name(frame.type)} frame")

    def _unexpected(self, exc: Exception, frame: Frame | None) -> None:
        """Log an exception that escaped a frame's handling: with a traceback the first
        ``UNEXPECTED_TRACEBACKS_MAX`` times in this process, then one line on the first of
        each connection, then nothing (``unexpected_errors`` still counts them)."""
        global _unexpected_tracebacks
        self.unexpected_errors += 1
        what = f"{_type_name(frame.type)} {frame.request_id}" if frame is not None else "bytes"
        if _unexpected_tracebacks < UNEXPECTED_TRACEBACKS_MAX:
            _unexpected_tracebacks += 1
            log.error("unexpected error handling %s from %s (further ones: one line per "
                      "connection)", what, self.peer, exc_info=exc)
        elif self.unexpected_errors == 1:
            log.error("unexpected error handling %s from %s: %s", what, self.peer,
                      type(exc).__name__)

    def _dispatch(self, frame: Frame) -> None:
        try:
            self.state.on_receive(frame.type)
        except ProtocolViolation as exc:
            self.fail(exc.code, exc.message)
            return
        if frame.type == FrameType.ERROR:
            self.on_peer_error(frame)
            self.abort_soon()
            return
        if frame.type == FrameType.PING:
            self.send(messages.encode_message(FrameType.PONG, {}, frame.request_id))
            return
        if frame.type == FrameType.PONG:
            return
        self.frame_received(frame)

    def eof_received(self) -> bool | None:
        """The peer ended its sending side (TLS close_notify). TLS 1.3 still lets us write,
        and uvloop calls this before it starts its own shutdown, so an ERROR written *now*
        (not gathered for later) reaches a peer that is still reading (§2.4)."""
        try:
            self.decoder.eof()
        except FrameError as exc:
            log.info("peer %s closed mid-frame: %s", self.peer, exc.message)
            self.fail(ErrorCode.TRUNCATED_FRAME, exc.message)
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.state.close()
        self._out.clear()
        self._out_bytes = 0
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_disconnected(exc)

    def pause_writing(self) -> None:
        # The peer is not reading what we send: stop reading its requests too, so a slow
        # reader cannot make us buffer without bound.
        self.writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._update_reading()

    # --- sending -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue one encoded frame. A frame whose body exceeds the peer's negotiated limit
        leaves as its documented stand-in (``protocol.fit``); a REQUEST or handshake frame
        that does not fit raises ``PaywireError(FRAME_TOO_LARGE)`` to the caller."""
        if self.transport is None or self.state.state is State.CLOSED:
            return
        if len(data) - HEADER_BYTES > self.peer_body_bytes_max:
            data = fit_frame(data, self.peer_body_bytes_max)
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes >= WRITE_BUFFER_HIGH_BYTES:
            # Do not let gathered output grow past what the transport would accept before
            # pushing back: hand it over now, so pause_writing (and with it pause_reading)
            # engages within one read's worth of work.
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._out_bytes = 0
        if not self._out or self.transport is None or self.transport.is_closing():
            self._out.clear()
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self.transport.write(data)

    def accept_welcome(self, frame: Frame) -> dict[str, Any] | None:
        """Client side: apply a WELCOME (negotiated body limit, heartbeat) and return it, or
        fail the connection and return ``None`` if it is malformed."""
        try:
            welcome = messages.decode_body(FrameType.WELCOME, frame.body)
        except BodyError as exc:
            self.fail(ErrorCode.MALFORMED_BODY, exc.message)
            return None
        self.decoder.body_bytes_max = welcome["body_bytes_max"]
        self.peer_body_bytes_max = welcome["body_bytes_max"]
        self.heartbeat = Heartbeat(self, welcome["heartbeat_interval_ms"] / 1000)
        self.heartbeat.start()
        return welcome

    def respond(self, request_id: int, result: dict[str, Any], replayed: bool = False) -> None:
        self.send(messages.encode_response(request_id, result, replayed=replayed))

    def respond_error(self, request_id: int, exc: PaywireError) -> None:
        """An error RESPONSE: fails that request only; the connection stays open."""
        self.send(messages.encode_error_response(request_id, exc))

    def flush_now(self) -> None:
        self._flush()

    def fail(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        """Send a connection-level ERROR frame and close (framing errors poison the stream)."""
        if self.transport is None or self.state.state is State.CLOSED:
            return
        log.info("closing %s: %s %s", self.peer, code.name, message)
        self._out.append(fit_frame(messages.encode_error_frame(code, message, field),
                                   self.peer_body_bytes_max))
        self._flush()
        self.state.close()
        self.transport.close()

    def abort_soon(self) -> None:
        if self.transport is not None:
            self.state.close()
            self.transport.close()

    # --- flow control --------------------------------------------------------------------
    def wants_reading(self) -> bool:
        """Subclasses add their own reasons to stop reading (the in-flight bound)."""
        return not self.writing_paused

    def _update_reading(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        want = self.wants_reading()
        if want and self.reading_paused:
            self.reading_paused = False
            now_s = self.loop.time()
            # What the peer sent meanwhile (PONGs, the rest of a frame) waits in the socket:
            # we paused, not the peer, so its silence and partial-frame clocks restart here.
            self.last_received_s = now_s
            if self.partial_since_s is not None:
                self.partial_since_s = now_s
            self.transport.resume_reading()
        elif not want and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    # --- hooks ---------------------------------------------------------------------------
    def on_connected(self) -> None:
        """Called once the transport exists (after the TLS handshake)."""

    def frame_received(self, frame: Frame) -> None:
        """A frame the state table allows, other than PING/PONG/ERROR."""

    def on_peer_error(self, frame: Frame) -> None:
        try:
            body = messages.decode_body(FrameType.ERROR, frame.body)
        except Exception:
            body = {}
        log.info("peer %s sent ERROR %s: %s", self.peer, body.get("name"), body.get("message"))

    def on_disconnected(self, exc: Exception | None) -> None:
        """Called once when the connection is gone."""


class Heartbeat:
    """PING an idle peer every interval; declare it dead after ``misses_max`` silent ones.

    One timer per connection, re-armed each interval: no task, no per-frame cost.
    """

    def __init__(self, conn: FramedProtocol, interval_s: float, misses_max: int = 3) -> None:
        self.conn = conn
        self.interval_s = interval_s
        self.misses_max = misses_max
        self._handle: asyncio.TimerHandle | None = None
        self._ping_id = 0

    def start(self) -> None:
        self._handle = self.conn.loop.call_later(self.interval_s, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        conn = self.conn
        if conn.state.state is State.CLOSED:
            return
        now_s = conn.loop.time()
        silent_s = now_s - conn.last_received_s
        dead_s = self.interval_s * self.misses_max
        if conn.partial_since_s is not None and not conn.reading_paused and \
                now_s - conn.partial_since_s >= dead_s:
            # Stalled (or trickling) inside a frame: say so rather than "idle".
            conn.fail(ErrorCode.TRUNCATED_FRAME,
                      f"frame incomplete for {now_s - conn.partial_since_s:.1f} s "
                      f"({conn.decoder.buffered_bytes} bytes buffered)")
            return
        if silent_s >= dead_s and not (conn.reading_paused and not conn.writing_paused):
            # Reads paused by our own bound (in flight) leave the peer's PONGs unread: that
            # silence is ours. Paused because the peer does not read what we send, it is not,
            # and the same three intervals bound how long such a peer holds the connection.
            conn.fail(ErrorCode.IDLE_TIMEOUT, f"peer silent for {silent_s:.1f} s")
            return
        if silent_s >= self.interval_s * 0.9:
            self._ping_id += 1
            conn.send(messages.encode_message(FrameType.PING, {}, self._ping_id))
        self._handle = conn.loop.call_later(self.interval_s, self._tick)
