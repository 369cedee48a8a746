"""The Paywire client library for merchant code, benchmarks and labs.

    from gateway.client import connect, Card

    async with connect("127.0.0.1", 7400, merchant_id="M1", server_key=KEY,
                       certs_dir="certs") as client:
        tx = await client.charge("order-1", 150_000,
                                 card=Card("4811111111111114", 12, 2030, "123"))
        assert tx.transaction_status == "capture"
"""

from gateway.net.signed import RequestTimeout
from protocol.errors import ErrorCode

from .client import Client, client_ssl_context, connect
from .results import (
    Card,
    ConnectionLost,
    Event,
    OutcomeUnknown,
    Refund,
    RequestError,
    TransactionResult,
)
from .sync import SyncClient

__all__ = [
    "Card",
    "Client",
    "ConnectionLost",
    "ErrorCode",
    "Event",
    "OutcomeUnknown",
    "Refund",
    "RequestError",
    "RequestTimeout",
    "SyncClient",
    "TransactionResult",
    "client_ssl_context",
    "connect",
]
