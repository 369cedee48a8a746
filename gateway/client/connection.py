"""The client side of one hub connection: HELLO, correlated responses, pushed frames."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.net.framed import FramedProtocol, FrameHandler
from gateway.net.plaintext import peer_is_loopback
from gateway.net.signed import Correlator
from gateway.tls import PeerRefused, Use, check_peer
from protocol import connection as pconn
from protocol import messages
from protocol.errors import BodyError, ConnectionLost, ErrorCode, RemoteError, error_from_code
from protocol.frame import Frame, FrameType
from protocol.messages import ROLE_MERCHANT

EVENTS_QUEUED_MAX = 10_000


class ClientConnection(FrameHandler):
    """One hub connection of the client, held by its adapter (``self.net``; give
    ``lambda: ClientConnection(...).net`` to ``create_connection``). The handshake, limits,
    heartbeat and request-id correlation live in ``self.net.conn``."""

    def __init__(self, merchant_id: str, hello: dict[str, Any], *, plaintext: bool = False,
                 trace_frames: bool | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.merchant_id = merchant_id
        self.hello = hello
        # Plaintext lab mode (gateway/net/plaintext.py): no TLS, so no hub certificate.
        self.plaintext = plaintext
        self.conn = pconn.ClientConnection(role=ROLE_MERCHANT, identity=merchant_id)
        self.net = FramedProtocol(self, self.conn, trace_frames)
        self.correlator = Correlator(self.loop, self.conn.forget_request)
        self.welcome: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.goaway: dict[str, Any] | None = None
        # Pushed events; ``None`` marks the end of the connection. Unbounded as a queue, but a
        # consumer that falls EVENTS_QUEUED_MAX behind is cut off (it resumes by seq).
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.lost_reason: str | None = None
        self.peer_error: RemoteError | None = None  # the ERROR frame that ended it, if any
        # Request ids the hub refused with SHUTTING_DOWN (labs and the GOAWAY test read it).
        self.shutting_down_rids: set[int] = set()

    def on_connected(self) -> None:
        # The card number and CVV go to whoever holds the server end, so the server must
        # prove it is a hub before it gets even the HELLO: any certificate of the CA passes
        # the TLS handshake. Refused: close without sending a frame, and fail for good.
        assert self.transport is not None
        if self.plaintext:
            # Nothing proves what the server is: at least it must be this machine (the
            # client refused a non-loopback target already; this is the socket's own view).
            reason = None if peer_is_loopback(self.peer) else f"peer {self.peer} is not loopback"
        else:
            peer = check_peer(self.transport, "hub", Use.SERVER)
            reason = peer.reason if isinstance(peer, PeerRefused) else None
        if reason is not None:
            err = error_from_code(ErrorCode.FORBIDDEN, f"the server is not a hub: {reason}",
                                  remote=True)
            self.lost_reason = f"{err.code.name}: {err.message}"
            self.welcome.set_exception(err)
            self.abort_soon()
            return
        self.net.send_hello({"client": "paywire-py/0.1", **self.hello})

    def on_welcome(self, event: pconn.WelcomeReceived) -> None:
        if not self.welcome.done():
            self.welcome.set_result(event.welcome)

    def on_goaway(self, event: pconn.GoawayReceived) -> None:
        self.goaway = {"last_request_id": event.last_request_id}

    def frame_received(self, frame: Frame) -> None:
        if frame.type == FrameType.RESPONSE:
            self.correlator.resolve(frame)
        elif frame.type == FrameType.EVENT:
            try:
                event = messages.decode_body(FrameType.EVENT, frame.body)
            except BodyError:
                return
            if self.events.qsize() >= EVENTS_QUEUED_MAX:
                self.lost_reason = "event consumer fell too far behind"
                self.abort_soon()
                return
            self.events.put_nowait(event)

    def on_peer_error(self, body: dict[str, Any]) -> None:
        err = RemoteError.from_body(body)
        self.lost_reason = f"{err.code.name}: {err.message}"
        self.peer_error = err  # after WELCOME too (RESUME_EXPIRED during a replay)
        if not self.welcome.done():
            self.welcome.set_exception(err)

    def on_disconnected(self, exc: Exception | None) -> None:
        reason = self.lost_reason or (repr(exc) if exc else "closed by peer")
        self.lost_reason = reason  # the client's reconnect log says why
        self.correlator.fail_all(ConnectionLost(f"connection lost: {reason}"))
        self.events.put_nowait(None)
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionLost(f"closed during handshake: {reason}"))
