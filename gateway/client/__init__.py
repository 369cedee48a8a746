"""The Paywire client library for merchant code, benchmarks and labs.

    from gateway.client import connect, Card

    async with connect("127.0.0.1", 7400, merchant_id="M1", server_key=KEY,
                       certs_dir="certs") as client:
        tx = await client.charge("order-1", 150_000,
                                 card=Card("4811111111111114", 12, 2030, "123"))
        assert tx.transaction_status == "capture"

Errors are typed (protocol/errors.py): an error the hub reports is an instance of its code's
class (``NotFound``, ``DuplicateOrder``, ``InvalidTransition``, ``CardError``,
``RateLimitError``...) and of ``RequestError``; ``.code`` is the exact ``ErrorCode``.
Stripe's names are there too (``InvalidRequestError``, ``IdempotencyError``,
``APIConnectionError``). A declined card is a result (``transaction_status`` ``deny``), not
an exception. Statuses are exported enums (``TransactionStatus``, ``FraudStatus``,
``PaymentType``; ``StrEnum``, so comparing with strings works). Webhooks are verified with
``gateway.client.webhooks.construct_event``. The package ships ``py.typed``.
"""

from gateway.net.plaintext import PlaintextRefused
from protocol.errors import (
    APIConnectionError,
    AuthenticationError,
    BankUnavailable,
    BodyError,
    CardError,
    ConnectionLost,
    DuplicateOrder,
    ErrorCode,
    IdempotencyError,
    InvalidRequestError,
    InvalidTransition,
    LimitError,
    NoRoute,
    NotFound,
    OutcomeUnknown,
    PaywireError,
    PermissionDenied,
    ProtocolError,
    RateLimitError,
    RequestTimeout,
    ResumeExpired,
    ServerError,
    ShuttingDown,
    TransactionError,
    UpstreamError,
    error_from_code,
)
from protocol.operations import FraudStatus, PaymentType, TransactionStatus

from .client import Client, client_ssl_context, connect
from .results import Card, Event, Refund, RequestError, TransactionResult
from .sync import SyncClient
from .webhooks import (
    ReplayGuard,
    SignatureVerificationError,
    VerificationFailure,
    WebhookNotification,
    construct_event,
)

__all__ = [
    "APIConnectionError",
    "AuthenticationError",
    "BankUnavailable",
    "BodyError",
    "Card",
    "CardError",
    "Client",
    "ConnectionLost",
    "DuplicateOrder",
    "ErrorCode",
    "Event",
    "FraudStatus",
    "IdempotencyError",
    "InvalidRequestError",
    "InvalidTransition",
    "LimitError",
    "NoRoute",
    "NotFound",
    "OutcomeUnknown",
    "PaymentType",
    "PaywireError",
    "PermissionDenied",
    "PlaintextRefused",
    "ProtocolError",
    "RateLimitError",
    "Refund",
    "ReplayGuard",
    "RequestError",
    "RequestTimeout",
    "ResumeExpired",
    "ServerError",
    "ShuttingDown",
    "SignatureVerificationError",
    "SyncClient",
    "TransactionError",
    "TransactionResult",
    "TransactionStatus",
    "UpstreamError",
    "VerificationFailure",
    "WebhookNotification",
    "client_ssl_context",
    "connect",
    "construct_event",
    "error_from_code",
]
