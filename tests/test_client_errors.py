"""Typed errors for merchants: every protocol code, received in a RESPONSE, raises a class of
the family a merchant catches (issue 15: declined card, invalid request, authentication,
rate limited, idempotency conflict, outcome unknown, connection), and still a
``RequestError`` with its exact code."""

from __future__ import annotations

import asyncio

import pytest

from gateway import client as pw
from gateway.net.signed import Correlator
from protocol import body as bodycodec
from protocol.errors import ErrorCode, PaywireError, class_for, error_from_code
from protocol.frame import Flags, Frame, FrameType

# The family a merchant catches for each hundred or code (stripe-python's names in the
# comments). Written out, not derived from the registry: the test is that the registry
# agrees with what the README promises.
FAMILY: dict[ErrorCode, type[PaywireError]] = {
    **{c: pw.ProtocolError for c in ErrorCode if 100 <= c < 200},
    **{c: pw.InvalidRequestError for c in ErrorCode if 200 <= c < 300},  # InvalidRequestError
    **{c: pw.AuthenticationError for c in ErrorCode if 300 <= c < 400},  # AuthenticationError
    ErrorCode.RATE_LIMITED: pw.RateLimitError,                           # RateLimitError
    ErrorCode.TOO_MANY_IN_FLIGHT: pw.RateLimitError,
    ErrorCode.TOO_MANY_CONNECTIONS: pw.RateLimitError,
    ErrorCode.QUEUE_FULL: pw.RateLimitError,
    ErrorCode.RESPONSE_TOO_LARGE: pw.LimitError,
    ErrorCode.DUPLICATE_ORDER: pw.IdempotencyError,                      # IdempotencyError
    ErrorCode.INVALID_TRANSITION: pw.InvalidTransition,
    ErrorCode.NOT_FOUND: pw.NotFound,
    ErrorCode.REFUND_EXCEEDS_CAPTURED: pw.TransactionError,
    ErrorCode.TOO_MANY_REFUNDS: pw.TransactionError,
    ErrorCode.NO_ROUTE: pw.NoRoute,
    ErrorCode.INSUFFICIENT_FUNDS: pw.CardError,                          # CardError
    ErrorCode.CARD_EXPIRED: pw.CardError,
    ErrorCode.ACCOUNT_UNKNOWN: pw.CardError,
    ErrorCode.CURRENCY_NOT_SUPPORTED: pw.CardError,
    ErrorCode.BANK_UNAVAILABLE: pw.BankUnavailable,
    ErrorCode.TIMEOUT: pw.RequestTimeout,
    ErrorCode.OUTCOME_UNKNOWN: pw.OutcomeUnknown,
    ErrorCode.INTERNAL: pw.ServerError,
    ErrorCode.SHUTTING_DOWN: pw.ShuttingDown,
}


def test_every_code_has_a_family() -> None:
    assert set(FAMILY) == set(ErrorCode)


async def test_every_code_received_raises_its_family_and_request_error() -> None:
    """Through the client's own correlator, from real RESPONSE frames with the ERROR flag."""
    loop = asyncio.get_running_loop()
    correlator = Correlator(loop, None)
    for code in ErrorCode:
        rid, fut = correlator.new(30.0)
        sent = error_from_code(code, f"hub says {code.name}", "args.x")
        frame = Frame(FrameType.RESPONSE, rid, bodycodec.pack(sent.to_body()), Flags.ERROR)
        assert correlator.resolve(frame)
        with pytest.raises(pw.RequestError) as info:
            await fut
        err = info.value
        assert isinstance(err, FAMILY[code]), (code, type(err).__mro__)
        assert isinstance(err, class_for(code))
        assert err.code is code and err.message == f"hub says {code.name}"
        assert err.field == "args.x" and err.retryable == code.is_retryable


def test_the_families_merchants_catch_are_exported_with_stripes_names() -> None:
    assert pw.InvalidRequestError is pw.BodyError
    assert pw.IdempotencyError is pw.DuplicateOrder
    assert pw.APIConnectionError is pw.ConnectionLost
    # A lost connection is an unknown outcome (retry with the same key), never a refusal.
    assert issubclass(pw.ConnectionLost, pw.OutcomeUnknown)
    assert not issubclass(pw.ConnectionLost, pw.RequestError)
    for name in ("CardError", "InvalidRequestError", "AuthenticationError", "RateLimitError",
                 "IdempotencyError", "OutcomeUnknown", "APIConnectionError",
                 "ConnectionLost", "SignatureVerificationError", "TransactionStatus",
                 "FraudStatus", "PaymentType", "construct_event"):
        assert name in pw.__all__, name


def test_statuses_are_exported_str_enums_on_results() -> None:
    wire = {"transaction_id": "t", "order_id": "o", "merchant_id": "M1",
            "gross_amount": 5, "currency": "IDR", "payment_type": "credit_card",
            "transaction_status": "deny", "fraud_status": "accept", "status_code": "202",
            "status_message": "Transaction is denied", "transaction_time": "x",
            "captured_amount": 0, "refunded_amount": 0, "decline_reason": "card expired"}
    tx = pw.TransactionResult.from_wire(wire)
    assert tx.transaction_status == "deny"  # a str enum: string comparisons keep working
    assert tx.transaction_status is pw.TransactionStatus.DENY
    assert tx.fraud_status is pw.FraudStatus.ACCEPT
    assert tx.payment_type is pw.PaymentType.CREDIT_CARD and tx.metadata == {}
    # A status from a newer hub stays its string: the result is still read.
    newer = pw.TransactionResult.from_wire({**wire, "transaction_status": "chargeback"})
    assert newer.transaction_status == "chargeback"
