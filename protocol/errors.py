"""The one error module: stable error codes, and the exception classes that carry them.

Every error a peer can cause has a stable number and name; the numbers are part of the
wire format (``docs/protocol.md`` section "Error codes") and never change meaning.
Hundreds group them: 1xx framing and connection, 2xx request body, 3xx authentication,
4xx limits, 5xx business rules, 6xx upstream (banks), 9xx the hub itself.

The classes form one tree (asyncpg's pattern: one class per code family, a registry from
code to class filled by the class declarations themselves). Each class lists in ``codes``
the codes it is *the* class of; every ``ErrorCode`` belongs to exactly one class, and
``error_from_code`` returns an instance of that class::

    PaywireError                 root: code, message, field, retryable
    ├── ProtocolError            UNSUPPORTED_VERSION HANDSHAKE_TIMEOUT IDLE_TIMEOUT  (1xx)
    │   ├── FrameError           BAD_FRAME FRAME_TOO_LARGE UNKNOWN_FRAME_TYPE
    │   │                        RESERVED_FLAGS TRUNCATED_FRAME
    │   └── ProtocolViolation    UNEXPECTED_FRAME DUPLICATE_REQUEST_ID
    ├── BodyError                MALFORMED_BODY INVALID_FIELD UNKNOWN_OPERATION  (2xx)
    │   └── ResumeExpired        RESUME_EXPIRED
    ├── AuthenticationError      UNAUTHENTICATED BAD_SIGNATURE REPLAYED STALE_TIMESTAMP
    │   └── PermissionDenied     FORBIDDEN  (3xx)
    ├── LimitError               RESPONSE_TOO_LARGE  (4xx)
    │   └── RateLimitError       RATE_LIMITED TOO_MANY_IN_FLIGHT TOO_MANY_CONNECTIONS
    │                            QUEUE_FULL
    ├── TransactionError         REFUND_EXCEEDS_CAPTURED TOO_MANY_REFUNDS  (5xx)
    │   ├── NotFound             NOT_FOUND
    │   ├── DuplicateOrder       DUPLICATE_ORDER
    │   ├── InvalidTransition    INVALID_TRANSITION
    │   ├── CardError            INSUFFICIENT_FUNDS CARD_EXPIRED ACCOUNT_UNKNOWN
    │   │                        CURRENCY_NOT_SUPPORTED
    │   └── NoRoute              NO_ROUTE
    ├── UpstreamError            (no code of its own)  (6xx)
    │   ├── BankUnavailable      BANK_UNAVAILABLE
    │   ├── RequestTimeout       TIMEOUT
    │   └── OutcomeUnknown       OUTCOME_UNKNOWN; ``order_id`` (the client sets it)
    │       └── ConnectionLost   (client only: the connection died before the answer)
    ├── ServerError              INTERNAL  (9xx)
    │   └── ShuttingDown         SHUTTING_DOWN
    │       └── StorageClosed    (the node's storage writer is closing or gone)
    └── RemoteError              mixin: "a peer reported this" (``RequestError`` in
                                 ``gateway.client``)

**Local and remote.** The hub raises ``NotFound(...)``; the client, receiving that error
RESPONSE, raises an instance that is a ``NotFound`` *and* a ``RemoteError``: one generated
subclass per class (``remote_class``), made on first use, named like its class. So merchant
code catches either the kind (``except NotFound``, ``except CardError``) or everything the
hub refused (``except RequestError``), and ``.code`` is always the exact code. The two are
kept apart because a *local* error must not pass for a refusal by the peer: the client's
retry loop retries remote retryable codes, never its own encoding errors.

**Raise sites may carry a code of another class** (``BodyError`` with ``INVALID_FIELD`` is
the class's own; ``AuthenticationError`` with ``RATE_LIMITED`` from the nonce cache is not):
``code`` is what goes on the wire, and a received error always gets the code's own class.

**Not in this tree, on purpose** (operator or internal errors, never sent to a peer, never
seen by merchant code): ``gateway.config.ConfigError`` / ``gateway.secret_keys.SecretsError``
and ``gateway.pki.PkiError`` (bad configuration, keys or certificates: the command refuses
to start and says why), ``gateway.storage.lockfile.LockHeld`` (another process owns the data
file), ``gateway.bank.store.BooksError`` (the books disagree with the node's configuration),
and ``gateway.hub.banklink.LinkLost`` (a ``ConnectionError`` the bank pool turns into
``BankUnavailable`` or ``OutcomeUnknown`` before anything outside it sees it).

**Stripe's names, for merchants porting an integration** (aliases, not classes: the same
class under a second name): ``InvalidRequestError`` is ``BodyError``, ``IdempotencyError``
is ``DuplicateOrder``, ``APIConnectionError`` is ``ConnectionLost``. A *declined card* is no
exception at all: the charge succeeds as a request and its result says ``deny`` (with
``decline_reason``); ``CardError`` carries the banks' decline codes on the bank link only.
A webhook that fails verification is ``gateway.client.webhooks.SignatureVerificationError``,
outside this tree: it is no code of the protocol, and nothing a peer is answered with.

Errors pickle with their code, field and attributes (remote ones stay remote): results and
errors cross the storage writer's process boundary as pickles.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, cast


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
    RESUME_EXPIRED = 203
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


Codes = tuple[ErrorCode, ...]


class PaywireError(Exception):
    """Root of every error this project raises on purpose; carries a stable ``code``.

    ``field`` names the offending field (dotted path) for body errors, else ``None``.
    ``codes`` (class attribute) lists the codes this class is the registered class of;
    ``code`` defaults to the first of them.
    """

    codes: ClassVar[Codes] = ()
    code: ErrorCode = ErrorCode.INTERNAL
    # Set on generated remote classes only: the local class they are the remote form of.
    _remote_of: ClassVar[type[PaywireError] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("codes", ())
        cls.codes = own  # a class's own claims: a subclass declaring none claims none
        for code in own:
            if code in _REGISTRY:
                raise TypeError(f"{code.name} is claimed by {_REGISTRY[code].__name__} "
                                f"and {cls.__name__}")
            _REGISTRY[code] = cls
        if own and "code" not in cls.__dict__:
            cls.code = own[0]

    def __init__(self, message: str, *, code: ErrorCode | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.field = field

    @property
    def retryable(self) -> bool:
        """The same request (same idempotency key) may be sent again."""
        return self.code.is_retryable

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

    def __reduce__(self) -> tuple[Any, ...]:
        # The default (``cls(*args)`` then ``__dict__``) cannot rebuild a generated remote
        # class (it is not a module attribute) nor classes with keyword-only arguments.
        remote = type(self)._remote_of
        local = remote if remote is not None else type(self)
        return (_restore, (local, remote is not None, self.args), self.__dict__)


# Filled by ``PaywireError.__init_subclass__`` as the classes below are declared.
_REGISTRY: dict[ErrorCode, type[PaywireError]] = {}
_REMOTE_CLASSES: dict[type[PaywireError], type[PaywireError]] = {}


# --- 1xx: framing and connection -----------------------------------------------------------
class ProtocolError(PaywireError):
    """The connection broke the protocol or its deadlines; it is closed after ERROR."""

    codes: ClassVar[Codes] = (
        ErrorCode.UNSUPPORTED_VERSION, ErrorCode.HANDSHAKE_TIMEOUT, ErrorCode.IDLE_TIMEOUT,
    )


class FrameError(ProtocolError):
    """Raised by the frame decoder: the byte stream is not valid framing.

    ``frames_before`` holds the complete frames decoded from the same ``feed`` call before
    the bad bytes, so an adapter can still answer them before closing.
    """

    codes: ClassVar[Codes] = (
        ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.UNKNOWN_FRAME_TYPE,
        ErrorCode.RESERVED_FLAGS, ErrorCode.TRUNCATED_FRAME,
    )

    def __init__(self, message: str, *, code: ErrorCode | None = None, field: str | None = None,
                 frames_before: list[object] | None = None) -> None:
        super().__init__(message, code=code, field=field)
        self.frames_before: list[object] = frames_before or []


class ProtocolViolation(ProtocolError):
    """Raised by the connection state machine: a frame is not allowed in this state."""

    codes: ClassVar[Codes] = (ErrorCode.UNEXPECTED_FRAME, ErrorCode.DUPLICATE_REQUEST_ID)


# --- 2xx: one request's body ---------------------------------------------------------------
class BodyError(PaywireError):
    """A body is not valid msgpack, breaks a limit, or fails its schema (stripe's
    ``InvalidRequestError``); ``field`` names the offending field when there is one."""

    codes: ClassVar[Codes] = (
        ErrorCode.MALFORMED_BODY, ErrorCode.INVALID_FIELD, ErrorCode.UNKNOWN_OPERATION,
    )


class ResumeExpired(BodyError):
    """The HELLO's ``events_since`` is below the merchant's resume floor: events after it
    were deleted by the hub's retention (its resume horizon passed), so resuming would
    skip them. Reconcile the orders with ``status``, then subscribe again without
    ``events_since`` (docs/protocol.md §3.3). Not retryable: the events will not return."""

    codes: ClassVar[Codes] = (ErrorCode.RESUME_EXPIRED,)


# --- 3xx: authentication -------------------------------------------------------------------
class AuthenticationError(PaywireError):
    """The request is not provably the merchant's: unknown, forged, replayed or stale."""

    codes: ClassVar[Codes] = (
        ErrorCode.UNAUTHENTICATED, ErrorCode.BAD_SIGNATURE, ErrorCode.REPLAYED,
        ErrorCode.STALE_TIMESTAMP,
    )


class PermissionDenied(AuthenticationError):
    """Authentic, but not allowed: identity and certificate disagree, or the role is wrong."""

    codes: ClassVar[Codes] = (ErrorCode.FORBIDDEN,)


# --- 4xx: limits ---------------------------------------------------------------------------
class LimitError(PaywireError):
    """A bound was reached. RESPONSE_TOO_LARGE: the operation took effect, only its answer
    did not fit (ask with status); the others refused the request before it did anything."""

    codes: ClassVar[Codes] = (ErrorCode.RESPONSE_TOO_LARGE,)


class RateLimitError(LimitError):
    """Too much at once (rate, in flight, connections, a full queue): retry later."""

    codes: ClassVar[Codes] = (
        ErrorCode.RATE_LIMITED, ErrorCode.TOO_MANY_IN_FLIGHT, ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.QUEUE_FULL,
    )


# --- 5xx: business rules -------------------------------------------------------------------
class TransactionError(PaywireError):
    """The operation breaks a rule of the transaction (amounts, refund count); nothing
    changed."""

    codes: ClassVar[Codes] = (ErrorCode.REFUND_EXCEEDS_CAPTURED, ErrorCode.TOO_MANY_REFUNDS)


class NotFound(TransactionError):
    """No transaction for this merchant and order id."""

    codes: ClassVar[Codes] = (ErrorCode.NOT_FOUND,)


class DuplicateOrder(TransactionError):
    """The order id (or refund key) was used before with different content."""

    codes: ClassVar[Codes] = (ErrorCode.DUPLICATE_ORDER,)


class InvalidTransition(TransactionError):
    """The operation is not allowed in the transaction's status."""

    codes: ClassVar[Codes] = (ErrorCode.INVALID_TRANSITION,)


class CardError(TransactionError):
    """The issuing bank refused the card or account (bank link; merchants see ``deny``)."""

    codes: ClassVar[Codes] = (
        ErrorCode.INSUFFICIENT_FUNDS, ErrorCode.CARD_EXPIRED, ErrorCode.ACCOUNT_UNKNOWN,
        ErrorCode.CURRENCY_NOT_SUPPORTED,
    )


class NoRoute(TransactionError):
    """No bank for this card BIN, virtual-account bank or e-wallet provider."""

    codes: ClassVar[Codes] = (ErrorCode.NO_ROUTE,)


# --- 6xx: upstream -------------------------------------------------------------------------
class UpstreamError(PaywireError):
    """The next hop (a bank for the hub, the hub for the client) did not give an answer."""


class BankUnavailable(UpstreamError):
    """No node of the bank could be asked. Nothing happened at the bank."""

    codes: ClassVar[Codes] = (ErrorCode.BANK_UNAVAILABLE,)


class RequestTimeout(UpstreamError):
    """No response within the request's timeout."""

    codes: ClassVar[Codes] = (ErrorCode.TIMEOUT,)


class OutcomeUnknown(UpstreamError):
    """The call was sent and no answer came: it may or may not have taken effect.

    Never charge again with a new order id: retry with the same one (idempotent), or ask
    ``status(order_id)`` later. The client sets ``order_id``; the hub leaves it ``None``.
    """

    codes: ClassVar[Codes] = (ErrorCode.OUTCOME_UNKNOWN,)

    def __init__(self, message: str, *, code: ErrorCode | None = None, field: str | None = None,
                 order_id: str | None = None) -> None:
        super().__init__(message, code=code, field=field)
        self.order_id = order_id


class ConnectionLost(OutcomeUnknown):
    """The connection closed before the answer came. Safe to retry: every operation carries
    its idempotency key (order id, refund key), so a retry never charges twice."""


# --- 9xx: the hub itself -------------------------------------------------------------------
class ServerError(PaywireError):
    """A fault in the server; nothing is acknowledged."""

    codes: ClassVar[Codes] = (ErrorCode.INTERNAL,)


class ShuttingDown(ServerError):
    """The server is draining: retry on another hub."""

    codes: ClassVar[Codes] = (ErrorCode.SHUTTING_DOWN,)


class StorageClosed(ShuttingDown):
    """The node's storage writer is closing or has exited: nothing more is committed."""


# --- errors reported by the peer -----------------------------------------------------------
class RemoteError(PaywireError):
    """An error reported by the peer (an ERROR frame or an error RESPONSE).

    Received errors are instances of a generated subclass of both this and the code's class
    (see ``remote_class``); ``RemoteError`` itself is left for errors with no better class.
    """

    @classmethod
    def from_body(cls, body: object) -> RemoteError:
        """Build from a received error body; unknown codes map to INTERNAL, never crash."""
        if not isinstance(body, dict):
            return cast(RemoteError, error_from_code(
                ErrorCode.INTERNAL, "peer sent a malformed error body", remote=True))
        raw_code = body.get("code")
        try:
            code = ErrorCode(raw_code) if isinstance(raw_code, int) else ErrorCode.INTERNAL
        except ValueError:
            code = ErrorCode.INTERNAL
        message = body.get("message")
        field = body.get("field")
        return cast(RemoteError, error_from_code(
            code, message if isinstance(message, str) else code.name,
            field if isinstance(field, str) else None, remote=True))


assert set(_REGISTRY) == set(ErrorCode), set(ErrorCode) - set(_REGISTRY)

# Stripe-python's names for the same families (see the module docstring).
InvalidRequestError = BodyError
IdempotencyError = DuplicateOrder
APIConnectionError = ConnectionLost


def class_for(code: ErrorCode) -> type[PaywireError]:
    """The class registered for ``code`` (the most specific one: each code has one)."""
    return _REGISTRY[code]


def remote_class(cls: type[PaywireError]) -> type[PaywireError]:
    """The subclass of ``cls`` and ``RemoteError`` used for errors a peer reported."""
    if issubclass(cls, RemoteError):
        return cls
    if cls is PaywireError:
        return RemoteError
    made = _REMOTE_CLASSES.get(cls)
    if made is None:
        # Named like ``cls`` so tracebacks and reprs read "NotFound", not an internal name.
        made = type(cls.__name__, (cls, RemoteError), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__, "_remote_of": cls})
        _REMOTE_CLASSES[cls] = made
    return made


def error_from_code(code: ErrorCode | int, message: str, field: str | None = None, *,
                    remote: bool = False, **extra: Any) -> PaywireError:
    """An instance of the code's class carrying ``code``, ``message`` and ``field``;
    ``remote=True`` makes it a ``RemoteError`` as well. ``extra`` sets attributes (e.g.
    ``order_id``). A number that is no known code gives an INTERNAL error (never raises)."""
    try:
        code = ErrorCode(code)
    except ValueError:
        code = ErrorCode.INTERNAL
    cls = _REGISTRY[code]
    if remote:
        cls = remote_class(cls)
    err = cls(message, code=code, field=field)
    for name, value in extra.items():
        setattr(err, name, value)
    return err


def _restore(cls: type[PaywireError], remote: bool, args: tuple[Any, ...]) -> PaywireError:
    """Unpickle (see ``PaywireError.__reduce__``); the instance's attributes follow."""
    klass = remote_class(cls) if remote else cls
    err = klass.__new__(klass)
    err.args = args
    return err
