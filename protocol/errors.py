"""Error codes shared by the hub, the bank nodes and the client, and the exceptions carrying them.

Every error a peer can cause has a stable number and name; the numbers are part of the
wire format (``docs/protocol.md`` section "Error codes") and never change meaning.
Hundreds group them: 1xx framing and connection, 2xx request body, 3xx authentication,
4xx limits, 5xx business rules, 6xx upstream (banks), 9xx the hub itself.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Stable error codes. ``is_fatal`` ones close the connection after an ERROR frame."""

    # 1xx: framing and connection. The connection is closed after an ERROR frame.
    BAD_FRAME = 100
    UNSUPPORTED_VERSION = 101
    FRAME_TOO_LARGE = 102
    UNKNOWN_FRAME_TYPE = 103
    RESERVED_FLAGS = 104
    TRUNCATED_FRAME = 105
    UNEXPECTED_FRAME = 106
    HANDSHAKE_TIMEOUT = 107
    IDLE_TIMEOUT = 108
    DUPLICATE_REQUEST_ID = 109
    # 2xx: one request's body. Only that request fails.
    MALFORMED_BODY = 200
    INVALID_FIELD = 201
    UNKNOWN_OPERATION = 202
    # 3xx: authentication.
    UNAUTHENTICATED = 300
    BAD_SIGNATURE = 301
    REPLAYED = 302
    STALE_TIMESTAMP = 303
    FORBIDDEN = 304
    # 4xx: limits.
    RATE_LIMITED = 400
    TOO_MANY_IN_FLIGHT = 401
    TOO_MANY_CONNECTIONS = 402
    QUEUE_FULL = 403
    RESPONSE_TOO_LARGE = 404
    # 5xx: business rules.
    DUPLICATE_ORDER = 500
    INVALID_TRANSITION = 501
    INSUFFICIENT_FUNDS = 502
    NOT_FOUND = 503
    REFUND_EXCEEDS_CAPTURED = 504
    NO_ROUTE = 505
    ACCOUNT_UNKNOWN = 506
    CARD_EXPIRED = 507
    CURRENCY_NOT_SUPPORTED = 508
    TOO_MANY_REFUNDS = 509
    # 6xx: upstream.
    BANK_UNAVAILABLE = 600
    TIMEOUT = 601
    OUTCOME_UNKNOWN = 602
    # 9xx: the hub itself.
    INTERNAL = 900
    SHUTTING_DOWN = 901

    @property
    def is_fatal(self) -> bool:
        """Framing errors poison the byte stream, so the connection cannot continue."""
        return 100 <= self.value < 200

    @property
    def is_retryable(self) -> bool:
        """Errors after which the same request (same idempotency key) may be sent again."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        ErrorCode.RATE_LIMITED,
        ErrorCode.TOO_MANY_IN_FLIGHT,
        ErrorCode.QUEUE_FULL,
        ErrorCode.BANK_UNAVAILABLE,
        ErrorCode.TIMEOUT,
        ErrorCode.OUTCOME_UNKNOWN,
        ErrorCode.SHUTTING_DOWN,
    }
)


class PaywireError(Exception):
    """Base of every error this project raises on purpose; carries a stable ``code``.

    ``field`` names the offending field (dotted path) for body errors, else ``None``.
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None, field: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.field = field

    def to_body(self) -> dict[str, object]:
        """The msgpack body of an ERROR frame or an error RESPONSE."""
        body: dict[str, object] = {
            "code": int(self.code),
            "name": self.code.name,
            "message": self.message,
        }
        if self.field is not None:
            body["field"] = self.field
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r}, field={self.field!r})"


class FrameError(PaywireError):
    """Raised by the frame decoder: the byte stream is not valid framing.

    ``frames_before`` holds the complete frames decoded from the same ``feed`` call before
    the bad bytes, so an adapter can still answer them before closing.
    """

    code = ErrorCode.BAD_FRAME

    def __init__(self, message: str, *, code: ErrorCode, frames_before: list[object] | None = None):
        super().__init__(message, code=code)
        self.frames_before: list[object] = frames_before or []


class BodyError(PaywireError):
    """Raised when a body is not valid msgpack, breaks a limit, or fails its schema."""

    code = ErrorCode.MALFORMED_BODY


class ProtocolViolation(PaywireError):
    """Raised by the connection state machine: a frame is not allowed in this state."""

    code = ErrorCode.UNEXPECTED_FRAME


class RemoteError(PaywireError):
    """An error reported by the peer (an ERROR frame or an error RESPONSE)."""

    @classmethod
    def from_body(cls, body: object) -> RemoteError:
        """Build from a received error body; unknown codes map to INTERNAL, never crash."""
        if not isinstance(body, dict):
            return cls("peer sent a malformed error body", code=ErrorCode.INTERNAL)
        raw_code = body.get("code")
        try:
            code = ErrorCode(raw_code) if isinstance(raw_code, int) else ErrorCode.INTERNAL
        except ValueError:
            code = ErrorCode.INTERNAL
        message = body.get("message")
        field = body.get("field")
        return cls(
            message if isinstance(message, str) else code.name,
            code=code,
            field=field if isinstance(field, str) else None,
        )
