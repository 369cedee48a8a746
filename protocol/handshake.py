"""HELLO on the server side, one rule for the hub and bank nodes (sans-I/O).

Both servers decode, validate and negotiate a HELLO with ``accept_hello`` and answer its
failure with the same ERROR frame: a body that is not a msgpack map within the limits is
``MALFORMED_BODY``; a schema violation (unknown field, missing or mistyped field, a value
out of range, an empty ``versions``) is ``INVALID_FIELD`` naming the field's path; no
common version is ``UNSUPPORTED_VERSION``; a role or identity the certificate does not back
is ``FORBIDDEN``. The node-specific checks (the hub's merchant table and connection limit)
come after, in the adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import messages
from protocol.errors import ErrorCode, PaywireError
from protocol.frame import FrameType

# Both servers wait this long for a HELLO after the TLS handshake (hub: ``hello_timeout_s``).
HELLO_TIMEOUT_S_DEFAULT = 5.0


@dataclass(frozen=True, slots=True)
class Hello:
    """An accepted HELLO: the negotiated values and the validated body."""

    version: int
    body_bytes_max: int
    in_flight_max: int
    body: dict[str, Any]


def accept_hello(raw: bytes, *, role: str, identity: str | None,
                 supported_versions: frozenset[int], body_bytes_max: int,
                 in_flight_max: int) -> Hello:
    """Validate a HELLO against the certificate's ``role``/``identity`` and this server's
    limits; raise ``PaywireError`` whose code and ``field`` go into the ERROR frame."""
    body = messages.decode_body(FrameType.HELLO, raw)  # MALFORMED_BODY / INVALID_FIELD
    version = messages.negotiate_version(body["versions"], supported_versions)
    if body["role"] != role:
        raise PaywireError(f"HELLO role {body['role']!r} does not match the certificate",
                           code=ErrorCode.FORBIDDEN, field="role")
    if body["identity"] != identity:
        raise PaywireError("HELLO identity does not match the client certificate",
                           code=ErrorCode.FORBIDDEN, field="identity")
    return Hello(
        version,
        min(body.get("body_bytes_max") or body_bytes_max, body_bytes_max),
        min(body.get("in_flight_max") or in_flight_max, in_flight_max),
        body,
    )
