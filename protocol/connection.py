"""The connection lifecycle as one table: which frames each side may receive in each state.

States: HANDSHAKE (before WELCOME) → OPEN → DRAINING (after GOAWAY) → CLOSED. The adapters
(hub, bank node, client) ask ``on_receive`` before acting on a frame; a frame the table does
not allow is a ``ProtocolViolation`` that names the state and the frame type.
"""

from __future__ import annotations

import enum

from protocol.errors import ErrorCode, ProtocolViolation
from protocol.frame import FrameType


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


class ConnectionState:
    """Tracks one connection's state; ``on_receive`` applies the table."""

    __slots__ = ("side", "state")

    def __init__(self, side: Side) -> None:
        self.side = side
        self.state = State.HANDSHAKE

    def on_receive(self, frame_type: int) -> State:
        """Advance on a received frame; raise ``ProtocolViolation`` if the table forbids it."""
        try:
            ftype = FrameType(frame_type)
        except ValueError:
            raise ProtocolViolation(f"unknown frame type {frame_type}",
                                    code=ErrorCode.UNKNOWN_FRAME_TYPE) from None
        nxt = TRANSITIONS.get((self.side, self.state, ftype))
        if nxt is None:
            raise ProtocolViolation(
                f"{ftype.name} is not allowed from the {self.side.value} side's view "
                f"in state {self.state.value}",
                code=ErrorCode.UNEXPECTED_FRAME,
            )
        self.state = nxt
        return nxt

    def start_draining(self) -> None:
        """We sent GOAWAY: no new work will be accepted, in-flight work finishes."""
        if self.state in (State.OPEN, State.HANDSHAKE):
            self.state = State.DRAINING

    def close(self) -> None:
        self.state = State.CLOSED
