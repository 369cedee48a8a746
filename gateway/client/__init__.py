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
"""

from gateway.net.plaintext import PlaintextRefused
from protocol.errors import (
    AuthenticationError,
    BankUnavailable,
    BodyError,
    CardError,
    ConnectionLost,
    DuplicateOrder,
    ErrorCode,
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
    ServerError,
    ShuttingDown,
    TransactionError,
    UpstreamError,
    error_from_code,
)

from .client import Client, client_ssl_context, connect
from .results import Card, Event, Refund, RequestError, TransactionResult
from .sync import SyncClient

__all__ = [
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
    "InvalidTransition",
    "LimitError",
    "NoRoute",
    "NotFound",
    "OutcomeUnknown",
    "PaywireError",
    "PermissionDenied",
    "PlaintextRefused",
    "ProtocolError",
    "RateLimitError",
    "Refund",
    "RequestError",
    "RequestTimeout",
    "ServerError",
    "ShuttingDown",
    "SyncClient",
    "TransactionError",
    "TransactionResult",
    "UpstreamError",
    "client_ssl_context",
    "connect",
    "error_from_code",
]
