"""``FramedProtocol``: the one asyncio adapter; it *holds* a sans-I/O connection.

Composition, as in websockets' asyncio layer: the adapter owns a ``protocol.connection``
object (every state, limit, handshake and deadline rule lives there) and a ``FrameHandler``
(the hub's merchant session, a bank node's session, the hub's bank link, the client), and
only moves bytes and timers between them and the transport:

* ``data_received`` feeds the connection and hands each event to the handler;
* everything queued during one loop iteration leaves in one ``transport.write`` (a
  ``call_soon`` flush: a loopback send costs ~7 µs, the biggest single cost on this machine,
  DESIGN §8);
* one timer per connection, armed at ``conn.next_deadline_s()``, runs ``conn.tick``;
* reads pause while the peer does not read what we send (write buffer high/low water) or
  while the handler says so (the hub's in-flight bound).

Nothing a peer sends may escape ``data_received`` as an exception: uvloop would abort the
TLS connection without an ERROR frame and drop the answers already gathered for earlier
requests. Every failure a peer can cause is a coded error value where it happens (the
connection turns them into ERROR frames); ``_guard`` is the last line behind that rule: an
unexpected exception while the handler handles one frame fails that request with
``INTERNAL`` (or, for any other frame, the connection with an ERROR frame), and is logged
briefly rather than once per frame with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from typing import Any

from gateway.net import trace
from protocol.connection import (
    ClientConnection,
    Connection,
    ConnectionFailed,
    ErrorReceived,
    Event,
    GoawayReceived,
    HelloReceived,
    ServerConnection,
    State,
    WelcomeReceived,
)
from protocol.errors import ErrorCode, PaywireError
from protocol.frame import Frame, FrameType

log = logging.getLogger("paywire.net")

WRITE_BUFFER_HIGH_BYTES = 256 * 1024
WRITE_BUFFER_LOW_BYTES = 64 * 1024
# Unexpected exceptions get a traceback in the log this many times per process, then one
# line per connection: enough to diagnose the bug, too few for a peer to flood the log.
UNEXPECTED_TRACEBACKS_MAX = 1
# After we close a connection (an error, a drop), how long the TLS close (our close_notify,
# the peer's) may take before the TCP connection is dropped. asyncio's and uvloop's own
# bound is 30 s; a peer declared dead (IDLE_TIMEOUT, a stalled frame) or a black hole never
# answers it, and until the close ends the link is neither up nor reconnecting (§2.4).
CLOSE_GRACE_S = 2.0
_unexpected_tracebacks = 0

# The frame type an event came from, to name it in the log and in an INTERNAL error.
_EVENT_FRAME: dict[type, FrameType] = {
    HelloReceived: FrameType.HELLO, WelcomeReceived: FrameType.WELCOME,
    GoawayReceived: FrameType.GOAWAY, ErrorReceived: FrameType.ERROR,
}


def _type_name(frame_type: int) -> str:
    try:
        return FrameType(frame_type).name
    except ValueError:
        return str(frame_type)


class FrameHandler:
    """What an adapter drives: override the hooks you need. It holds its adapter in ``net``
    and forwards the sending calls to it, so handler code reads ``self.respond(...)``.

    Hooks are called on the event loop, one frame at a time, in stream order; what a hook
    sends is judged by the connection's send table.
    """

    net: FramedProtocol

    # --- hooks ---------------------------------------------------------------------------
    def on_connected(self) -> None:
        """The transport exists (after the TLS handshake); nothing was read yet."""

    def frame_received(self, frame: Frame) -> None:
        """A REQUEST, a RESPONSE to one of our requests, or an EVENT."""

    def on_hello(self, event: HelloReceived) -> None:
        """Server side: answer with ``net.send_welcome`` or refuse with ``fail``."""

    def on_welcome(self, event: WelcomeReceived) -> None:
        """Client side: the handshake completed."""

    def on_goaway(self, event: GoawayReceived) -> None:
        """Client side: the server is draining."""

    def on_peer_error(self, body: dict[str, Any]) -> None:
        """The peer sent ERROR; the connection closes without sending anything."""
        log.info("peer %s sent ERROR %s: %s", self.peer, body.get("name"), body.get("message"))

    def on_disconnected(self, exc: Exception | None) -> None:
        """Called once when the connection is gone."""

    def wants_reading(self) -> bool:
        """Handlers add their own reasons to stop reading (the hub's in-flight bound)."""
        return True

    def on_writing_paused(self, paused: bool) -> None:
        """The transport's write buffer crossed its high (or low) water mark."""

    def protocol_factory(self) -> FramedProtocol:
        """For ``create_server`` / ``create_connection``: this handler's adapter."""
        return self.net

    # --- forwarded to the adapter --------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.net.send(data)

    def respond(self, request_id: int, result: dict[str, Any], replayed: bool = False) -> None:
        self.net.respond(request_id, result, replayed)

    def respond_error(self, request_id: int, exc: PaywireError) -> None:
        self.net.respond_error(request_id, exc)

    def fail(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        self.net.fail(code, message, field)

    def flush_now(self) -> None:
        self.net.flush_now()

    def abort_soon(self) -> None:
        self.net.abort_soon()

    def _update_reading(self) -> None:
        self.net.update_reading()

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.net.transport

    @property
    def peer(self) -> Any:
        return self.net.peer

    @property
    def closed(self) -> asyncio.Future[None]:
        return self.net.closed

    @property
    def writing_paused(self) -> bool:
        return self.net.writing_paused


class FramedProtocol(asyncio.Protocol):
    """The asyncio adapter: ``handler`` gets the events of ``conn``; bytes go to the
    transport. Create it from the handler (``self.net = FramedProtocol(self, conn)``) and
    give ``lambda: Handler(...).net`` to ``create_server`` / ``create_connection``.

    ``trace_frames``: log every frame of this connection (``gateway/net/trace.py``);
    ``None`` follows the process-wide setting (``PAYWIRE_TRACE``, ``--trace``)."""

    def __init__(self, handler: FrameHandler, conn: Connection,
                 trace_frames: bool | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self._flush_scheduled = False
        self.writing_paused = False
        self.reading_paused = False
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.peer: Any = None
        self.unexpected_errors = 0  # frames whose handling raised (see _guard)
        self._timer: asyncio.TimerHandle | None = None
        self._abort_handle: asyncio.TimerHandle | None = None  # bounds our close
        self._trace_wanted = trace.enabled() if trace_frames is None else trace_frames
        # Set in connection_made when tracing is on; the hot paths test only this.
        self.tracer: trace.FrameTracer | None = None

    # --- transport callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transport is not an asyncio.Transport subclass, but has its interface.
        self.transport = typing.cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        if self._trace_wanted:
            self.tracer = trace.FrameTracer(self.peer)
        self.transport.set_write_buffer_limits(WRITE_BUFFER_HIGH_BYTES, WRITE_BUFFER_LOW_BYTES)
        self.conn.start(self.loop.time())
        self.handler.on_connected()
        self._after_input()
        self._arm_timer()  # the server's handshake deadline

    def data_received(self, data: bytes) -> None:
        if self.tracer is not None:
            self.tracer.received(data)
        conn = self.conn
        try:
            conn.receive_data(data, self.loop.time())
        except Exception as exc:  # the connection's own bug; still never a crash of the loop
            self._unexpected(exc, None)
            self.fail(ErrorCode.INTERNAL, "internal error while decoding frames")
            return
        handler = self.handler
        while True:
            try:
                event = conn.next_event()
            except Exception as exc:
                self._unexpected(exc, None)
                self.fail(ErrorCode.INTERNAL, "internal error while decoding frames")
                return
            if event is None:
                break
            if type(event) is Frame:
                try:
                    handler.frame_received(event)
                except Exception as exc:
                    self._guard(exc, event)
            else:
                self._event(event)
        if conn.bytes_to_send and not self._flush_scheduled:  # PONG, SHUTTING_DOWN
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _event(self, event: Event) -> None:
        if isinstance(event, ConnectionFailed):
            self._failed(event)
            return
        handler = self.handler
        try:
            if isinstance(event, HelloReceived):
                handler.on_hello(event)
            elif isinstance(event, WelcomeReceived):
                self._arm_timer()  # the client's heartbeat starts
                handler.on_welcome(event)
            elif isinstance(event, GoawayReceived):
                handler.on_goaway(event)
            elif isinstance(event, ErrorReceived):
                try:
                    handler.on_peer_error(event.body)
                finally:
                    self.abort_soon()
        except Exception as exc:
            self._guard(exc, event)

    def _after_input(self) -> None:
        """Frames the connection queued itself (PONG, SHUTTING_DOWN) leave with the rest.

        The timer is not re-armed here: reading never moves the deadline earlier (the
        heartbeat's checks run at fixed ticks and read the times the connection kept), so
        the one timer is re-armed only where the deadline changes: the transport is up,
        WELCOME is sent or received, a tick ran, the connection closed."""
        if self.conn.bytes_to_send and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _guard(self, exc: Exception, event: Event) -> None:
        self._unexpected(exc, event)
        if isinstance(event, Frame) and event.type == FrameType.REQUEST and \
                self.conn.state is not State.CLOSED:
            # That request fails, as a bad body would; the connection and the answers
            # gathered for earlier requests are unaffected.
            self.respond_error(event.request_id, PaywireError(
                "internal error while handling this request", code=ErrorCode.INTERNAL))
        else:
            ftype = event.type if isinstance(event, Frame) else _EVENT_FRAME.get(type(event))
            name = _type_name(ftype) if ftype is not None else type(event).__name__
            self.fail(ErrorCode.INTERNAL, f"internal error while handling a {name} frame")

    def _unexpected(self, exc: Exception, event: Event | None) -> None:
        """Log an exception that escaped a frame's handling: with a traceback the first
        ``UNEXPECTED_TRACEBACKS_MAX`` times in this process, then one line on the first of
        each connection, then nothing (``unexpected_errors`` still counts them)."""
        global _unexpected_tracebacks
        self.unexpected_errors += 1
        if isinstance(event, Frame):
            what = f"{_type_name(event.type)} {event.request_id}"
        else:
            what = type(event).__name__ if event is not None else "bytes"
        if _unexpected_tracebacks < UNEXPECTED_TRACEBACKS_MAX:
            _unexpected_tracebacks += 1
            log.error("unexpected error handling %s from %s (further ones: one line per "
                      "connection)", what, self.peer, exc_info=exc)
        elif self.unexpected_errors == 1:
            log.error("unexpected error handling %s from %s: %s", what, self.peer,
                      type(exc).__name__)

    def eof_received(self) -> bool | None:
        """The peer ended its sending side (TLS close_notify). TLS 1.3 still lets us write,
        and uvloop calls this before it starts its own shutdown, so an ERROR written *now*
        (not gathered for later) reaches a peer that is still reading (§2.4)."""
        failed = self.conn.receive_eof()
        if failed is not None:
            log.info("peer %s closed mid-frame: %s", self.peer, failed.message)
            self._failed(failed)
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        self.conn.close()
        if not self.closed.done():
            self.closed.set_result(None)
        self.handler.on_disconnected(exc)

    def pause_writing(self) -> None:
        # The peer is not reading what we send: stop reading its requests too, so a slow
        # reader cannot make us buffer without bound.
        self.writing_paused = True
        self.conn.writing_paused = True
        self.handler.on_writing_paused(True)
        self.update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.conn.writing_paused = False
        self.handler.on_writing_paused(False)
        self.update_reading()

    # --- timer ---------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        self._cancel_timer()
        at = self.conn.next_deadline_s()
        if at is not None:
            self._timer = self.loop.call_at(at, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        failed = self.conn.tick(self.loop.time())
        if failed is not None:
            self._failed(failed)
            return
        self._after_input()
        self._arm_timer()

    # --- sending -------------------------------------------------------------------------
    def _queued(self) -> None:
        if self.conn.bytes_to_send >= WRITE_BUFFER_HIGH_BYTES:
            # Do not let gathered output grow past what the transport would accept before
            # pushing back: hand it over now, so pause_writing (and with it pause_reading)
            # engages within one read's worth of work.
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _sendable(self) -> bool:
        return self.transport is not None and self.conn.state is not State.CLOSED

    def send(self, data: bytes) -> None:
        """Queue one encoded REQUEST, RESPONSE, EVENT, PING or PONG (dropped once the
        connection is closed). A frame whose body exceeds the peer's negotiated limit leaves
        as its documented stand-in (``protocol.fit``); a REQUEST that does not fit raises
        ``PaywireError(FRAME_TOO_LARGE)`` to the caller."""
        if not self._sendable():
            return
        self.conn.send_frame(data)
        self._queued()

    def respond(self, request_id: int, result: dict[str, Any], replayed: bool = False) -> None:
        conn = self.conn
        if self.transport is None or conn.state is State.CLOSED:
            return
        conn.send_response(request_id, result, replayed)
        # ``_queued`` written out: once per request (hot path).
        if conn.bytes_to_send >= WRITE_BUFFER_HIGH_BYTES:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def respond_error(self, request_id: int, exc: PaywireError) -> None:
        """An error RESPONSE: fails that request only; the connection stays open."""
        if not self._sendable():
            return
        self.conn.send_error_response(request_id, exc)
        self._queued()

    def send_hello(self, fields: dict[str, Any] | None = None) -> None:
        """Client side: our HELLO (``protocol.connection.ClientConnection.send_hello``)."""
        if not self._sendable():
            return
        conn = self.conn
        assert isinstance(conn, ClientConnection)
        conn.send_hello(fields)
        self._queued()

    def send_welcome(self, **fields: Any) -> None:
        """Server side: answer the HELLO (``ServerConnection.send_welcome``); the heartbeat
        starts."""
        if not self._sendable():
            return
        conn = self.conn
        assert isinstance(conn, ServerConnection)
        conn.send_welcome(now_s=self.loop.time(), **fields)
        self._queued()
        self._arm_timer()

    def send_goaway(self, **fields: Any) -> None:
        """Server side: announce the last request id we process and drain."""
        if not self._sendable():
            return
        conn = self.conn
        assert isinstance(conn, ServerConnection)
        conn.send_goaway(**fields)
        self._queued()

    def _flush(self) -> None:
        self._flush_scheduled = False
        conn = self.conn
        if not conn.bytes_to_send:
            return
        data = conn.data_to_send()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.tracer is not None:
            self.tracer.sent(data)
        transport.write(data)

    def flush_now(self) -> None:
        self._flush()

    def fail(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        """Send a connection-level ERROR frame and close (framing errors poison the stream)."""
        if not self._sendable():
            return
        log.info("closing %s: %s %s", self.peer, code.name, message)
        self.conn.send_error(code, message, field)
        self._close_after_error()

    def _failed(self, failed: ConnectionFailed) -> None:
        """The connection failed itself (its ERROR is queued): write it now and close."""
        log.info("closing %s: %s %s", self.peer, failed.code.name, failed.message)
        self._close_after_error()

    def _close_after_error(self) -> None:
        self._cancel_timer()
        self._flush()
        self._close_transport()

    def abort_soon(self) -> None:
        """Close without sending what is still gathered (after the peer's ERROR; to drop a
        connection on our side)."""
        if self.transport is not None:
            self._cancel_timer()
            self.conn.close()
            self._close_transport()

    def _close_transport(self) -> None:
        """Start the TLS close, and drop the connection if it has not ended within
        ``CLOSE_GRACE_S`` (what is written by then, the ERROR frame included, has gone)."""
        transport = self.transport
        if transport is None:
            return
        transport.close()
        if self._abort_handle is None and not self.closed.done():
            self._abort_handle = self.loop.call_later(CLOSE_GRACE_S, self._abort_if_open)

    def _abort_if_open(self) -> None:
        self._abort_handle = None
        if self.transport is not None and not self.closed.done():
            log.info("dropping %s: its close did not end within %g s", self.peer,
                     CLOSE_GRACE_S)
            self.transport.abort()

    # --- flow control --------------------------------------------------------------------
    def update_reading(self) -> None:
        """Pause or resume reading the socket as the write buffer and the handler want."""
        if self.transport is None or self.transport.is_closing():
            return
        want = not self.writing_paused and self.handler.wants_reading()
        if want and self.reading_paused:
            self.reading_paused = False
            self.conn.set_reading_paused(False, self.loop.time())
            self.transport.resume_reading()
        elif not want and not self.reading_paused:
            self.reading_paused = True
            self.conn.set_reading_paused(True, self.loop.time())
            self.transport.pause_reading()
