"""The connection, sans I/O: bytes in, events out, bytes to send (docs/protocol.md §3).

One object per connection owns everything that changes the connection's state: framing
(``FrameDecoder``), the lifecycle table for **both** received and sent frames (h11's rule:
nothing changes state behind the table's back), HELLO/WELCOME for each side with the
negotiated limits applied here, heartbeat / idle / incomplete-frame / handshake deadlines,
GOAWAY and draining, request-id correlation, and PING answered with PONG. It reads no clock
and touches no socket: the adapter (``gateway.net.framed``) passes the time in, feeds the
bytes it read and writes the bytes it is given.

    conn.receive_data(data, now_s)       # feed what one read returned
    while (event := conn.next_event()) is not None:
        ...                              # a Frame (REQUEST/RESPONSE/EVENT) or a *Received
    conn.tick(now_s)                     # at conn.next_deadline_s(): heartbeat and timeouts
    transport.write(conn.data_to_send())

Events are pulled one at a time (h11's ``next_event``) rather than returned as one list per
read, because what the application does with a frame decides how the next one is judged:
the WELCOME answering a HELLO, a request answered at once (its id is free again), a refused
HELLO (nothing after it is processed), and the answers to earlier frames that must precede
a fatal ERROR on the wire. The hot path allocates nothing per frame beyond the decoder's
``Frame``: a REQUEST, RESPONSE or EVENT *is* its own event.

Nothing a peer sends raises out of ``receive_data``/``next_event``/``receive_eof``/``tick``:
an error the peer caused queues an ERROR frame, moves to ``CLOSED`` and returns a
``ConnectionFailed`` event. Our own mistakes (sending a frame the table forbids) raise
``ProtocolViolation`` naming the state and the frame, to the caller that made them.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

from protocol import handshake, messages
from protocol.decoder import FrameDecoder
from protocol.errors import ErrorCode, FrameError, PaywireError, ProtocolViolation
from protocol.fit import fit_frame
from protocol.frame import (
    HANDSHAKE_BODY_BYTES_MAX,
    HEADER_BYTES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Frame,
    FrameType,
    encode_frame,
)


class State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class Side(enum.Enum):
    SERVER = "server"  # accepts connections: the hub for merchants, a bank node for hubs
    CLIENT = "client"


_F = FrameType
_S = State

# (side, state, frame type received) -> next state. Missing means not allowed.
TRANSITIONS: dict[tuple[Side, State, FrameType], State] = {
    (Side.SERVER, _S.HANDSHAKE, _F.HELLO): _S.OPEN,
    (Side.SERVER, _S.OPEN, _F.REQUEST): _S.OPEN,
    (Side.SERVER, _S.OPEN, _F.RESPONSE): _S.OPEN,  # answers to server-initiated requests
    (Side.SERVER, _S.OPEN, _F.PING): _S.OPEN,
    (Side.SERVER, _S.OPEN, _F.PONG): _S.OPEN,
    (Side.SERVER, _S.OPEN, _F.GOAWAY): _S.DRAINING,
    (Side.SERVER, _S.OPEN, _F.ERROR): _S.CLOSED,
    (Side.SERVER, _S.HANDSHAKE, _F.ERROR): _S.CLOSED,
    # Requests already on the wire when we sent GOAWAY: answered (SHUTTING_DOWN past the
    # announced last id), not treated as a violation.
    (Side.SERVER, _S.DRAINING, _F.REQUEST): _S.DRAINING,
    (Side.SERVER, _S.DRAINING, _F.RESPONSE): _S.DRAINING,
    (Side.SERVER, _S.DRAINING, _F.PING): _S.DRAINING,
    (Side.SERVER, _S.DRAINING, _F.PONG): _S.DRAINING,
    (Side.SERVER, _S.DRAINING, _F.ERROR): _S.CLOSED,
    # The client's GOAWAY may cross ours (the first one only: a second is UNEXPECTED_FRAME).
    (Side.SERVER, _S.DRAINING, _F.GOAWAY): _S.DRAINING,
    (Side.CLIENT, _S.HANDSHAKE, _F.WELCOME): _S.OPEN,
    (Side.CLIENT, _S.HANDSHAKE, _F.ERROR): _S.CLOSED,
    (Side.CLIENT, _S.OPEN, _F.RESPONSE): _S.OPEN,
    (Side.CLIENT, _S.OPEN, _F.REQUEST): _S.OPEN,  # e.g. a bank node reporting a payment
    (Side.CLIENT, _S.OPEN, _F.EVENT): _S.OPEN,
    (Side.CLIENT, _S.OPEN, _F.PING): _S.OPEN,
    (Side.CLIENT, _S.OPEN, _F.PONG): _S.OPEN,
    (Side.CLIENT, _S.OPEN, _F.GOAWAY): _S.DRAINING,
    (Side.CLIENT, _S.OPEN, _F.ERROR): _S.CLOSED,
    (Side.CLIENT, _S.DRAINING, _F.RESPONSE): _S.DRAINING,
    (Side.CLIENT, _S.DRAINING, _F.EVENT): _S.DRAINING,
    (Side.CLIENT, _S.DRAINING, _F.PING): _S.DRAINING,
    (Side.CLIENT, _S.DRAINING, _F.PONG): _S.DRAINING,
    (Side.CLIENT, _S.DRAINING, _F.GOAWAY): _S.DRAINING,
    (Side.CLIENT, _S.DRAINING, _F.ERROR): _S.CLOSED,
}
RECEIVE_TRANSITIONS = TRANSITIONS
_HANDSHAKE_FRAMES = frozenset({int(FrameType.HELLO), int(FrameType.WELCOME)})
_NO_STOP: frozenset[int] = frozenset()

# (side, state, frame type sent) -> next state. Missing means our own code may not send it:
# ``ProtocolViolation`` to the caller, nothing queued. Mirrors what the peer's receive table
# accepts, so a frame we send is never the peer's UNEXPECTED_FRAME.
SEND_TRANSITIONS: dict[tuple[Side, State, FrameType], State] = {
    (Side.SERVER, _S.HANDSHAKE, _F.ERROR): _S.CLOSED,  # a refused certificate or HELLO
    # WELCOME answers the HELLO that moved us to OPEN (at most once: ``send_welcome``).
    (Side.SERVER, _S.OPEN, _F.WELCOME): _S.OPEN,
    (Side.SERVER, _S.OPEN, _F.RESPONSE): _S.OPEN,
    (Side.SERVER, _S.OPEN, _F.REQUEST): _S.OPEN,  # a bank node reporting a payment
    (Side.SERVER, _S.OPEN, _F.EVENT): _S.OPEN,
    (Side.SERVER, _S.OPEN, _F.PING): _S.OPEN,
    (Side.SERVER, _S.OPEN, _F.PONG): _S.OPEN,
    (Side.SERVER, _S.OPEN, _F.GOAWAY): _S.DRAINING,
    (Side.SERVER, _S.OPEN, _F.ERROR): _S.CLOSED,
    # Draining: in-flight work is answered and its events pushed; no new work is started.
    # Our own GOAWAY may follow the client's (the client may send one first, §8.1).
    (Side.SERVER, _S.DRAINING, _F.RESPONSE): _S.DRAINING,
    (Side.SERVER, _S.DRAINING, _F.EVENT): _S.DRAINING,
    (Side.SERVER, _S.DRAINING, _F.PING): _S.DRAINING,
    (Side.SERVER, _S.DRAINING, _F.PONG): _S.DRAINING,
    (Side.SERVER, _S.DRAINING, _F.GOAWAY): _S.DRAINING,
    (Side.SERVER, _S.DRAINING, _F.ERROR): _S.CLOSED,
    # The client's HELLO leaves it in HANDSHAKE until WELCOME (at most once: ``send_hello``).
    (Side.CLIENT, _S.HANDSHAKE, _F.HELLO): _S.HANDSHAKE,
    (Side.CLIENT, _S.HANDSHAKE, _F.ERROR): _S.CLOSED,
    (Side.CLIENT, _S.OPEN, _F.REQUEST): _S.OPEN,
    (Side.CLIENT, _S.OPEN, _F.RESPONSE): _S.OPEN,  # the hub acknowledging a bank's payment
    (Side.CLIENT, _S.OPEN, _F.PING): _S.OPEN,
    (Side.CLIENT, _S.OPEN, _F.PONG): _S.OPEN,
    (Side.CLIENT, _S.OPEN, _F.GOAWAY): _S.DRAINING,
    (Side.CLIENT, _S.OPEN, _F.ERROR): _S.CLOSED,
    # The server's GOAWAY: requests may still go out (those past its last id are answered
    # SHUTTING_DOWN, §8); a second GOAWAY of ours would be the server's UNEXPECTED_FRAME.
    (Side.CLIENT, _S.DRAINING, _F.REQUEST): _S.DRAINING,
    (Side.CLIENT, _S.DRAINING, _F.RESPONSE): _S.DRAINING,
    (Side.CLIENT, _S.DRAINING, _F.PING): _S.DRAINING,
    (Side.CLIENT, _S.DRAINING, _F.PONG): _S.DRAINING,
    (Side.CLIENT, _S.DRAINING, _F.ERROR): _S.CLOSED,
}


def _by_state(table: dict[tuple[Side, State, FrameType], State],
              side: Side) -> dict[State, dict[int, State]]:
    """One side's table as ``state -> {frame type: next state}``: two dict lookups per
    frame on the hot path, no tuple built."""
    out: dict[State, dict[int, State]] = {s: {} for s in State}
    for (s_side, state, ftype), nxt in table.items():
        if s_side is side:
            out[state][int(ftype)] = nxt
    return out


_RECEIVE_BY_SIDE = {side: _by_state(TRANSITIONS, side) for side in Side}
_SEND_BY_SIDE = {side: _by_state(SEND_TRANSITIONS, side) for side in Side}


def _type_name(frame_type: int) -> str:
    try:
        return FrameType(frame_type).name
    except ValueError:
        return str(frame_type)


# A peer silent (or stalled inside a frame) for this many heartbeat intervals is dead
# (docs/protocol.md §2.4, §3).
HEARTBEAT_MISSES_MAX = 3
# A PING goes out when nothing was received for most of an interval: the check runs once
# per interval, so waiting for a full one could leave the peer silent for nearly two.
PING_AFTER_SILENT_INTERVALS = 0.9
# Event-loop timers may fire up to one clock tick (1 ms on uvloop) before their deadline; a
# tick that early still counts, so it does not re-arm for the same instant.
DEADLINE_EARLY_S = 0.001

_RID = struct.Struct(">Q")
_PONG_BODY = b"\x80"  # §8.1: the empty map, whatever the PING carried
_PING_BODY = b"\x80"
_NO_FRAMES: list[Frame] = []


# --- events --------------------------------------------------------------------------------
# A received REQUEST, a RESPONSE to one of our requests and an EVENT are delivered as the
# decoder's ``Frame`` itself. Everything else is one of these.

@dataclass(frozen=True, slots=True)
class HelloReceived:
    """Server side: a HELLO passed ``protocol.handshake.accept_hello``; its negotiated limits
    are in force for what we receive. Answer with ``send_welcome`` or refuse with
    ``send_error`` (node-specific checks: merchant table, connection limit, …)."""

    hello: handshake.Hello


@dataclass(frozen=True, slots=True)
class WelcomeReceived:
    """Client side: a valid WELCOME; its limits and heartbeat are in force."""

    welcome: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GoawayReceived:
    """Client side: the server is draining; requests past ``last_request_id`` will be
    answered SHUTTING_DOWN (0 if the GOAWAY's body was malformed: assume none is covered)."""

    last_request_id: int


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """The peer sent ERROR and closed: we are ``CLOSED`` and drop what was queued (§7.1).
    ``body`` is the validated ERROR body, or an INTERNAL stand-in if it was malformed."""

    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """We failed the connection (a framing error, a forbidden frame, a duplicate request id,
    a refused HELLO, a timeout): an ERROR frame is queued and we are ``CLOSED``. The adapter
    writes ``data_to_send()`` now and closes."""

    code: ErrorCode
    message: str


Event = Frame | HelloReceived | WelcomeReceived | GoawayReceived | ErrorReceived | \
    ConnectionFailed


class Connection:
    """What both sides share; use ``ServerConnection`` or ``ClientConnection``."""

    side: Side = Side.SERVER

    def __init__(self, *, heartbeat_interval_s: float | None = None) -> None:
        self.state = State.HANDSHAKE
        # Until WELCOME fixes the negotiated limit, bodies are capped low both ways (§2.3).
        self.decoder = FrameDecoder(HANDSHAKE_BODY_BYTES_MAX)
        self.peer_body_bytes_max = HANDSHAKE_BODY_BYTES_MAX
        # The requests the peer may have outstanding on this connection (server: what we
        # announced; client: what the server announced). 0 until the handshake sets it.
        self.in_flight_max = 0
        self._recv = _RECEIVE_BY_SIDE[self.side]
        self._send = _SEND_BY_SIDE[self.side]
        self._frames: list[Frame] = _NO_FRAMES
        self._pos = 0
        self._failure: FrameError | None = None
        self._decode_more = False  # bytes left behind a HELLO/WELCOME (see ``_decode``)
        self._peer_goaway = False  # a server: whether the client has sent its GOAWAY
        self._out: list[bytes] = []
        self.bytes_to_send = 0
        # Ids of the REQUESTs we sent and whose RESPONSE has not come (``forget_request``
        # drops one whose waiter gave up). A RESPONSE matching none is ignored (§7.1).
        self.requests_sent: set[int] = set()
        self.responses_unmatched = 0
        # Ids of the peer's REQUESTs not answered yet (a server that checks them; empty
        # otherwise): a RESPONSE we send frees its id. A REQUEST reusing one is
        # DUPLICATE_REQUEST_ID (§4.6).
        self.check_request_ids = False
        self.requests_open: set[int] = set()
        # The highest REQUEST id accepted (what a server's GOAWAY announces), and the cut
        # our GOAWAY announced: a later REQUEST past it is answered SHUTTING_DOWN (§8).
        self.last_request_id = 0
        self.goaway_last_request_id: int | None = None
        self._refusal = "shutting down; retry on another server"
        # Heartbeat: None until the handshake completes (no PINGs before WELCOME, §2.4).
        self.heartbeat_interval_s = heartbeat_interval_s
        self._next_tick_s: float | None = None
        self._ping_id = 0
        self.last_received_s = 0.0
        # Since when the decoder has held an incomplete frame without completing one (None:
        # at a frame boundary); see ``tick``.
        self.partial_since_s: float | None = None
        self.reading_paused = False
        self.writing_paused = False

    # --- input ---------------------------------------------------------------------------
    def start(self, now_s: float) -> None:
        """The transport is up (TLS handshake done): the connection's clocks start now."""
        self.last_received_s = now_s

    def receive_data(self, data: bytes, now_s: float) -> None:
        """Feed bytes the peer sent; read the frames they complete with ``next_event``."""
        if self.state is State.CLOSED or self._failure is not None:
            return
        self.last_received_s = now_s
        self._decode(data, now_s)

    def _decode(self, data: bytes, now_s: float) -> None:
        decoder = self.decoder
        # Before the handshake completes, decoding stops after HELLO or WELCOME: the frames
        # behind it in the same read are judged by the limits it sets (§2.3), so they are
        # decoded once it has been acted on (``next_event``).
        stop = _HANDSHAKE_FRAMES if self.state is State.HANDSHAKE else _NO_STOP
        try:
            frames = decoder.feed(data, stop)
            # It stopped early only if its last frame is a HELLO/WELCOME and bytes remain.
            self._decode_more = (bool(stop) and bool(frames) and frames[-1].type in stop
                                 and decoder.buffered_bytes > 0)
        except FrameError as exc:
            # The frames before the bad bytes are still answered; the failure follows them.
            frames = [f for f in exc.frames_before if isinstance(f, Frame)]
            self._failure = exc
        if frames or self.partial_since_s is None:
            self.partial_since_s = now_s if decoder.buffered_bytes else None
        if self._pos >= len(self._frames):
            self._frames = frames
            self._pos = 0
        else:
            self._frames.extend(frames)

    def receive_eof(self) -> ConnectionFailed | None:
        """The peer ended its sending side (TLS close_notify). Inside a frame, that is
        TRUNCATED_FRAME (an ERROR is queued: TLS 1.3 still lets us write, §2.4)."""
        if self.state is State.CLOSED:
            return None
        if self._failure is not None:
            return self._fail_with(self._failure)
        try:
            self.decoder.eof()
        except FrameError as exc:
            return self._fail(exc.code, exc.message)
        return None

    def next_event(self) -> Event | None:
        """The next event from the bytes received so far, ``None`` when more are needed.

        After ``ConnectionFailed`` or ``ErrorReceived`` it returns ``None``: nothing that
        followed in the stream is acted on."""
        recv = self._recv
        while True:
            if self.state is State.CLOSED:
                return None
            frames = self._frames
            if self._pos >= len(frames):
                # Let go of the read's frames (an idle connection holds no bodies); the
                # shared empty list is replaced, never extended, by ``receive_data``.
                self._frames = _NO_FRAMES
                self._pos = 0
                if self._decode_more and self._failure is None:
                    # What followed the HELLO/WELCOME in its read, now under its limits.
                    self._decode_more = False
                    self._decode(b"", self.last_received_s)
                    continue
                if self._failure is not None:
                    return self._fail_with(self._failure)
                return None
            frame = frames[self._pos]
            self._pos += 1
            ftype = frame.type
            nxt = recv[self.state].get(ftype)
            if nxt is None:
                return self._fail(ErrorCode.UNEXPECTED_FRAME,
                                  f"{_type_name(ftype)} is not allowed from the "
                                  f"{self.side.value} side's view in state {self.state.value}")
            self.state = nxt
            if ftype == FrameType.REQUEST:
                # Written out here, not in a method: once per request (hot path).
                rid = frame.request_id
                check = self.check_request_ids
                if check and rid in self.requests_open:
                    # Checked first (§4.6): the duplicate is not executed, and an answer's
                    # id must never name two requests.
                    return self._fail(ErrorCode.DUPLICATE_REQUEST_ID,
                                      f"request_id {rid} is already in flight on this "
                                      "connection")
                cut = self.goaway_last_request_id
                if cut is not None and rid > cut:
                    self.send_error_response(rid, PaywireError(self._refusal,
                                                               code=ErrorCode.SHUTTING_DOWN))
                    continue
                if check:
                    self.requests_open.add(rid)
                if rid > self.last_request_id:
                    self.last_request_id = rid
                return frame
            if ftype == FrameType.RESPONSE:
                if frame.request_id in self.requests_sent:
                    self.requests_sent.discard(frame.request_id)
                    return frame
                self.responses_unmatched += 1  # late (its waiter gave up) or never asked
                continue
            elif ftype == FrameType.EVENT:
                return frame
            elif ftype == FrameType.PING:
                self._queue(encode_frame(FrameType.PONG, frame.request_id, _PONG_BODY),
                            FrameType.PONG)
                continue
            elif ftype == FrameType.PONG:
                continue  # its arrival already counted as "not silent"
            elif ftype == FrameType.ERROR:
                return self._peer_error(frame)
            else:
                event = self._control_received(frame)
            if event is not None:
                return event

    def _control_received(self, frame: Frame) -> Event | None:
        """HELLO, WELCOME or GOAWAY: per side."""
        return None

    def _peer_error(self, frame: Frame) -> ErrorReceived:
        self._out.clear()  # §7.1: answers not yet written are dropped
        self.bytes_to_send = 0
        try:
            body = messages.decode_body(FrameType.ERROR, frame.body)
        except PaywireError:
            body = {"code": int(ErrorCode.INTERNAL), "name": ErrorCode.INTERNAL.name,
                    "message": "malformed ERROR frame"}
        return ErrorReceived(body)

    # --- deadlines -----------------------------------------------------------------------
    def next_deadline_s(self) -> float | None:
        """When ``tick`` next has something to check (``None``: no timer needed)."""
        if self.state is State.CLOSED:
            return None
        return self._next_tick_s

    def tick(self, now_s: float) -> ConnectionFailed | None:
        """Run the deadlines due at ``now_s``: PING a quiet peer (queued), or fail one
        silent or stalled inside a frame for ``HEARTBEAT_MISSES_MAX`` intervals."""
        if self.state is State.CLOSED:
            return None
        next_s = self._next_tick_s
        interval_s = self.heartbeat_interval_s
        if next_s is None or interval_s is None or now_s < next_s - DEADLINE_EARLY_S:
            return None
        silent_s = now_s - self.last_received_s
        dead_s = interval_s * HEARTBEAT_MISSES_MAX
        if self.partial_since_s is not None and not self.reading_paused and \
                now_s - self.partial_since_s >= dead_s:
            # Stalled (or trickling) inside a frame: say so rather than "idle".
            return self._fail(ErrorCode.TRUNCATED_FRAME,
                              f"frame incomplete for {now_s - self.partial_since_s:.1f} s "
                              f"({self.decoder.buffered_bytes} bytes buffered)")
        if silent_s >= dead_s and not (self.reading_paused and not self.writing_paused):
            # Reads paused by our own bound (in flight) leave the peer's PONGs unread: that
            # silence is ours. Paused because the peer does not read what we send, it is not,
            # and the same three intervals bound how long such a peer holds the connection.
            return self._fail(ErrorCode.IDLE_TIMEOUT, f"peer silent for {silent_s:.1f} s")
        if silent_s >= interval_s * PING_AFTER_SILENT_INTERVALS:
            self._ping_id += 1
            self._queue(encode_frame(FrameType.PING, self._ping_id, _PING_BODY),
                        FrameType.PING)
        self._next_tick_s = now_s + interval_s
        return None

    def _start_heartbeat(self, interval_s: float, now_s: float) -> None:
        self.heartbeat_interval_s = interval_s
        self._next_tick_s = now_s + interval_s

    def set_reading_paused(self, paused: bool, now_s: float) -> None:
        """The adapter paused (or resumed) reading the socket. What the peer sent meanwhile
        waits unread: we paused, not the peer, so on resuming its silence and partial-frame
        clocks restart."""
        self.reading_paused = paused
        if not paused:
            self.last_received_s = now_s
            if self.partial_since_s is not None:
                self.partial_since_s = now_s

    # --- output --------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Everything queued since the last call, gathered into one buffer (one write)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.bytes_to_send = 0
        return data

    def _queue(self, data: bytes, ftype: int) -> None:
        """Pass one encoded frame we send through the send table and queue it."""
        nxt = self._send[self.state].get(ftype)
        if nxt is None:
            raise self._forbidden(ftype)
        if len(data) - HEADER_BYTES > self.peer_body_bytes_max:
            data = fit_frame(data, self.peer_body_bytes_max)  # §2.3; raises for a REQUEST
        self.state = nxt
        self._out.append(data)
        self.bytes_to_send += len(data)

    def may_send(self, ftype: int) -> bool:
        """Whether the send table lets this side send a frame of type ``ftype`` now: how a
        server that starts work itself (a bank node reporting a payment) picks a link that
        takes a new REQUEST, instead of learning it from ``ProtocolViolation``."""
        return ftype in self._send[self.state]

    def _forbidden(self, ftype: int) -> ProtocolViolation:
        return ProtocolViolation(
            f"sending {_type_name(ftype)} is not allowed on the {self.side.value} side "
            f"in state {self.state.value}", code=ErrorCode.UNEXPECTED_FRAME)

    def send_frame(self, data: bytes) -> None:
        """Queue one encoded REQUEST, RESPONSE, EVENT, PING or PONG. A frame too large for
        the peer's limit leaves as its stand-in (``protocol.fit``; a REQUEST raises
        FRAME_TOO_LARGE). HELLO, WELCOME, GOAWAY and ERROR have their own methods, which
        also change what the connection expects next."""
        ftype = data[5]
        if ftype == FrameType.RESPONSE:
            self.send_response_frame(_RID.unpack_from(data, 8)[0], data)
        elif ftype == FrameType.REQUEST:
            self.send_request(_RID.unpack_from(data, 8)[0], data)
        elif ftype in (FrameType.EVENT, FrameType.PING, FrameType.PONG):
            self._queue(data, ftype)
        else:
            raise ProtocolViolation(f"send {_type_name(ftype)} with its own method",
                                    code=ErrorCode.UNEXPECTED_FRAME)

    def send_request(self, request_id: int, data: bytes) -> None:
        """Queue an encoded REQUEST; its id is open until the RESPONSE arrives or
        ``forget_request``. Reusing an open id is our bug (the peer would refuse it)."""
        if request_id in self.requests_sent:
            raise ProtocolViolation(f"request_id {request_id} is already in flight",
                                    code=ErrorCode.DUPLICATE_REQUEST_ID)
        self._queue(data, FrameType.REQUEST)
        self.requests_sent.add(request_id)

    def forget_request(self, request_id: int) -> None:
        """Our waiter for ``request_id`` gave up (timeout): a late RESPONSE is ignored."""
        self.requests_sent.discard(request_id)

    def send_response_frame(self, request_id: int, data: bytes) -> None:
        """Queue an encoded RESPONSE to the peer's request ``request_id``."""
        # ``_queue`` and ``_answered`` written out: this runs once per request (hot path).
        nxt = self._send[self.state].get(FrameType.RESPONSE)
        if nxt is None:
            raise self._forbidden(FrameType.RESPONSE)
        if len(data) - HEADER_BYTES > self.peer_body_bytes_max:
            data = fit_frame(data, self.peer_body_bytes_max)
        self.state = nxt
        self._out.append(data)
        self.bytes_to_send += len(data)
        self.requests_open.discard(request_id)

    def send_response(self, request_id: int, result: dict[str, Any],
                      replayed: bool = False) -> None:
        self.send_response_frame(request_id,
                                 messages.encode_response(request_id, result, replayed=replayed))

    def send_error_response(self, request_id: int, error: PaywireError) -> None:
        """An error RESPONSE: fails that request only; the connection stays open."""
        self.send_response_frame(request_id, messages.encode_error_response(request_id, error))

    def send_error(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        """Queue a connection-level ERROR and move to ``CLOSED`` (nothing may follow it,
        §7.1); the adapter writes it and closes. A no-op once closed."""
        if self.state is State.CLOSED:
            return
        self._queue(messages.encode_error_frame(code, message, field), FrameType.ERROR)

    def close(self) -> None:
        """The transport is gone or being aborted: nothing more is sent or acted on."""
        self.state = State.CLOSED
        self._out.clear()
        self.bytes_to_send = 0
        self._frames = _NO_FRAMES
        self._pos = 0

    def _fail(self, code: ErrorCode, message: str, field: str | None = None) -> ConnectionFailed:
        self.send_error(code, message, field)
        return ConnectionFailed(code, message)

    def _fail_with(self, exc: FrameError) -> ConnectionFailed:
        self._failure = None
        return self._fail(exc.code, exc.message)


class ServerConnection(Connection):
    """The accepting side (the hub for merchants, a bank node for hubs).

    ``role``: the HELLO role this server accepts; ``peer_identity`` (set once the TLS
    certificate is checked) is the identity the HELLO must claim. ``body_bytes_max`` and
    ``in_flight_max`` are this server's own limits: the negotiated ones are the minimum of
    these and the HELLO's wishes. ``check_request_ids``: refuse a REQUEST reusing the id of
    one not answered yet with DUPLICATE_REQUEST_ID (§4.6).
    """

    side = Side.SERVER

    def __init__(self, *, role: str, body_bytes_max: int, in_flight_max: int,
                 heartbeat_interval_s: float,
                 hello_timeout_s: float = handshake.HELLO_TIMEOUT_S_DEFAULT,
                 versions: frozenset[int] = SUPPORTED_VERSIONS,
                 check_request_ids: bool = True) -> None:
        super().__init__(heartbeat_interval_s=heartbeat_interval_s)
        self.role = role
        self.peer_identity: str | None = None
        self.body_bytes_max_own = body_bytes_max
        self.in_flight_max_own = in_flight_max
        self.hello_timeout_s = hello_timeout_s
        self.versions = versions
        self.check_request_ids = check_request_ids
        self._hello_deadline_s: float | None = None
        self.hello: handshake.Hello | None = None
        self._welcome_due = False

    def start(self, now_s: float) -> None:
        super().start(now_s)
        self._hello_deadline_s = now_s + self.hello_timeout_s

    def _handshaking(self) -> bool:
        """Before our WELCOME the handshake deadline holds (a HELLO the application has not
        answered yet included), after it the heartbeat."""
        return self._next_tick_s is None and self._hello_deadline_s is not None

    def next_deadline_s(self) -> float | None:
        if self.state is not State.CLOSED and self._handshaking():
            return self._hello_deadline_s
        return super().next_deadline_s()

    def tick(self, now_s: float) -> ConnectionFailed | None:
        if self.state is not State.CLOSED and self._handshaking():
            assert self._hello_deadline_s is not None
            if now_s < self._hello_deadline_s - DEADLINE_EARLY_S:
                return None
            what = "no HELLO" if self.hello is None else "HELLO not answered"
            return self._fail(ErrorCode.HANDSHAKE_TIMEOUT,
                              f"{what} within {self.hello_timeout_s} s")
        return super().tick(now_s)

    def _control_received(self, frame: Frame) -> Event | None:
        if frame.type == FrameType.HELLO:
            try:
                accepted = handshake.accept_hello(
                    frame.body, role=self.role, identity=self.peer_identity,
                    supported_versions=self.versions, body_bytes_max=self.body_bytes_max_own,
                    in_flight_max=self.in_flight_max_own)
            except PaywireError as exc:
                return self._fail(exc.code, exc.message, exc.field)
            # In force for what we receive from here on; for what we send, from WELCOME.
            self.decoder.body_bytes_max = accepted.body_bytes_max
            self.in_flight_max = accepted.in_flight_max
            self.hello = accepted
            self._welcome_due = True
            return HelloReceived(accepted)
        # GOAWAY from a client: informative only, the server acts on nothing. Ours may have
        # crossed it (we are draining already); a second one from the client is refused.
        if self._peer_goaway:
            return self._fail(ErrorCode.UNEXPECTED_FRAME,
                              "GOAWAY is not allowed twice from the client side")
        self._peer_goaway = True
        return None

    def send_welcome(self, *, server: str, session_id: str, now_s: float,
                     resume_token: bytes = b"", event_seq: int = 0,
                     server_time_ms: int = 0) -> None:
        """Answer the HELLO: the negotiated version and limits and our heartbeat interval
        come from this connection; from here they bind what we send, and the heartbeat
        runs."""
        hello = self.hello
        if not self._welcome_due or hello is None:
            raise ProtocolViolation("WELCOME answers a HELLO, once",
                                    code=ErrorCode.UNEXPECTED_FRAME)
        interval_s = self.heartbeat_interval_s
        assert interval_s is not None
        self._queue(messages.encode_message(FrameType.WELCOME, {
            "version": hello.version, "server": server, "session_id": session_id,
            "body_bytes_max": hello.body_bytes_max, "in_flight_max": hello.in_flight_max,
            "heartbeat_interval_ms": int(interval_s * 1000), "resume_token": resume_token,
            "event_seq": event_seq, "server_time_ms": server_time_ms,
        }), FrameType.WELCOME)
        self._welcome_due = False
        self.peer_body_bytes_max = hello.body_bytes_max
        self._start_heartbeat(interval_s, now_s)

    def send_goaway(self, code: ErrorCode = ErrorCode.SHUTTING_DOWN,
                    message: str = "shutting down",
                    refusal: str = "shutting down; retry on another server") -> None:
        """Announce the last request id we will process (the highest received) and drain:
        a later REQUEST past it is answered SHUTTING_DOWN with ``refusal`` (§8)."""
        last = self.last_request_id
        self._queue(messages.encode_message(FrameType.GOAWAY, {
            "last_request_id": last, "code": int(code), "message": message}),
            FrameType.GOAWAY)
        if self.goaway_last_request_id is None:
            self.goaway_last_request_id = last
            self._refusal = refusal


class ClientConnection(Connection):
    """The dialling side (a merchant's client, the hub's link to a bank node)."""

    side = Side.CLIENT

    def __init__(self, *, role: str, identity: str) -> None:
        super().__init__()
        self.role = role
        self.identity = identity
        self._hello_sent = False
        self.welcome: dict[str, Any] | None = None
        # The lowest ``last_request_id`` of the server's GOAWAYs (None: none received).
        self.peer_goaway_last_request_id: int | None = None

    def send_hello(self, fields: dict[str, Any] | None = None) -> None:
        """Queue our HELLO (once): the versions we speak, our role and identity, and the
        optional ``fields`` (limits we want, event subscription, ``client``)."""
        if self._hello_sent:
            raise ProtocolViolation("HELLO is sent once", code=ErrorCode.UNEXPECTED_FRAME)
        body: dict[str, Any] = {"versions": [PROTOCOL_VERSION], "role": self.role,
                                "identity": self.identity}
        if fields:
            body.update(fields)
        self._queue(messages.encode_message(FrameType.HELLO, body), FrameType.HELLO)
        self._hello_sent = True

    def send_goaway(self, message: str = "client leaving") -> None:
        """Tell the server we are leaving (§8.1: informative; it acts on nothing)."""
        self._queue(messages.encode_message(FrameType.GOAWAY, {
            "last_request_id": 0, "code": int(ErrorCode.SHUTTING_DOWN), "message": message}),
            FrameType.GOAWAY)

    def _control_received(self, frame: Frame) -> Event | None:
        if frame.type == FrameType.WELCOME:
            try:
                welcome = messages.decode_body(FrameType.WELCOME, frame.body)
            except PaywireError as exc:
                return self._fail(ErrorCode.MALFORMED_BODY, exc.message)
            self.decoder.body_bytes_max = welcome["body_bytes_max"]
            self.peer_body_bytes_max = welcome["body_bytes_max"]
            self.in_flight_max = welcome["in_flight_max"]
            self.welcome = welcome
            self._start_heartbeat(welcome["heartbeat_interval_ms"] / 1000,
                                  self.last_received_s)
            return WelcomeReceived(welcome)
        if frame.type == FrameType.GOAWAY:
            try:
                last = messages.decode_body(FrameType.GOAWAY, frame.body)["last_request_id"]
            except PaywireError:
                last = 0
            peer_last = self.peer_goaway_last_request_id
            if peer_last is None or last < peer_last:
                self.peer_goaway_last_request_id = last
            return GoawayReceived(last)
        return None
