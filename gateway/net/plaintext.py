"""Plaintext lab mode: a merchant connection without TLS, on loopback only (labs 1 and 3).

A student sees frames in a plain capture before TLS hides them. Everything that protects
money stays: each REQUEST is signed with the merchant's server key and checked (timestamp
window, HMAC, nonce) exactly as on TLS (docs/protocol.md §4.2). What goes is what TLS gave:
confidentiality (card numbers and CVVs cross the loopback interface in clear, which is why
every address involved must be loopback) and the client certificate. With no certificate,
the merchant is the one its HELLO *claims* (``PlaintextServerConnection``); the claim alone
reaches nothing a key does not: every request is refused unless signed with that
merchant's key (``FORBIDDEN`` if ``merchant_id`` is another, ``BAD_SIGNATURE`` otherwise).
Pushed events are refused on a plaintext connection, since a HELLO proves nothing and they
are not requests (no signature would guard them).

The refusal code ``PLAINTEXT_NOT_LOOPBACK`` starts every message of ``PlaintextRefused``: the
hub refuses to start (exit 2), the client refuses to connect.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from protocol import messages
from protocol.connection import Event, ServerConnection
from protocol.errors import PaywireError
from protocol.frame import Frame, FrameType

log = logging.getLogger("paywire.net")

REFUSED_CODE = "PLAINTEXT_NOT_LOOPBACK"
WARNING = ("PLAINTEXT LAB MODE: frames (card numbers and CVVs included) travel without "
           "TLS on {where}; loopback only, never for real payments")


class PlaintextRefused(ValueError):
    """A plaintext address that is not loopback. ``code`` is ``PLAINTEXT_NOT_LOOPBACK``."""

    code = REFUSED_CODE

    def __init__(self, what: str, address: str) -> None:
        super().__init__(f"{REFUSED_CODE}: {what} {address!r} is not a loopback address; "
                         "plaintext (no TLS) is allowed only on 127.0.0.0/8 or ::1, for labs")
        self.address = address


def is_loopback(host: str) -> bool:
    """An IP literal in 127.0.0.0/8 or ``::1``. Names (``localhost`` included) are refused:
    what a name resolves to is not ours to vouch for."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_loopback(what: str, host: str) -> None:
    """Raise ``PlaintextRefused`` unless ``host`` is a loopback IP literal."""
    if not is_loopback(host):
        raise PlaintextRefused(what, host)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` of a plaintext listener, checked to be loopback (``[::1]:PORT`` for
    IPv6). Raises ``PlaintextRefused`` or ``ValueError`` (no port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]")
    check_loopback("plaintext_listen", host)
    return host, int(port)


def peer_is_loopback(peer: Any) -> bool:
    """The connected peer (``peername``) is on loopback: the listener is bound to loopback,
    and this is checked again per connection in case of a misbound socket."""
    return isinstance(peer, tuple) and bool(peer) and is_loopback(str(peer[0]))


class PlaintextServerConnection(ServerConnection):
    """A merchant connection with no certificate to check the HELLO against: the HELLO's
    ``identity`` is taken as claimed (the common HELLO rule is applied to it unchanged).
    The per-request checks make the claim worth nothing without the merchant's key."""

    def _control_received(self, frame: Frame) -> Event | None:
        if frame.type == FrameType.HELLO and self.hello is None and self.peer_identity is None:
            try:
                body = messages.decode_body(FrameType.HELLO, frame.body)
            except PaywireError:
                pass  # refused below with the same code and field as on TLS
            else:
                self.peer_identity = str(body["identity"])
        return super()._control_received(frame)
