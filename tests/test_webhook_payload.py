"""The webhook body is built by the hub in two parts around the event's seq (the ledger
assigns the seq in its commit): joined, they must be exactly the JSON of the whole body,
whatever the merchant put in its order id."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.webhooks.payload import event_id, notification_body, notification_body_parts
from protocol.signing import format_gross_amount, signature_key


def _whole_body(result: dict[str, Any], server_key: str, seq: int) -> bytes:
    """The body as the ledger's writer built it before issue 12, in one piece."""
    gross = format_gross_amount(result["gross_amount"], result["currency"])
    body: dict[str, Any] = {
        "transaction_id": result["transaction_id"], "order_id": result["order_id"],
        "merchant_id": result["merchant_id"], "status_code": result["status_code"],
        "status_message": result["status_message"], "gross_amount": gross,
        "currency": result["currency"], "payment_type": result["payment_type"],
        "transaction_status": result["transaction_status"],
        "fraud_status": result["fraud_status"], "transaction_time": result["transaction_time"],
        "settlement_time": result.get("settlement_time"),
        "event_id": event_id(result["merchant_id"], seq),
        "signature_key": signature_key(result["order_id"], result["status_code"], gross,
                                       server_key),
    }
    if "masked_card" in result:
        body["masked_card"] = result["masked_card"]
        body["card_type"] = "credit"
        body["bank"] = result.get("bank")
    if "va_number" in result and result["payment_type"] == "bank_transfer":
        body["va_numbers"] = [{"bank": result.get("bank"), "va_number": result["va_number"]}]
    if result["payment_type"] == "ewallet":
        body["provider"] = result.get("provider")
    if result.get("refunds"):
        body["refund_amount"] = format_gross_amount(result["refunded_amount"],
                                                    result["currency"])
    if result.get("fraud_reasons"):
        body["fraud_reasons"] = result["fraud_reasons"]
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


# Text that tries to look like the cut: quotes, the key itself, escapes, non-ASCII.
_tricky = st.text(alphabet=st.sampled_from([*'"\\:,{}e_vntid', "é", "\u2028", "\x00"]),
                  max_size=30) | st.just('","event_id":"","') | st.just('\\",event_id')


@settings(max_examples=300, deadline=None)
@given(order_id=_tricky, merchant_id=_tricky, bank=st.none() | _tricky,
       payment_type=st.sampled_from(["credit_card", "bank_transfer", "ewallet"]),
       masked=st.booleans(), refunds=st.booleans(), reasons=st.lists(_tricky, max_size=2),
       seq=st.integers(0, 2**63), server_key=_tricky)
def test_the_parts_joined_around_the_seq_are_the_whole_body(
        order_id: str, merchant_id: str, bank: str | None, payment_type: str, masked: bool,
        refunds: bool, reasons: list[str], seq: int, server_key: str) -> None:
    result: dict[str, Any] = {
        "transaction_id": "t-1", "order_id": order_id, "merchant_id": merchant_id,
        "gross_amount": 10_000, "currency": "IDR", "payment_type": payment_type,
        "transaction_status": "capture", "fraud_status": "accept", "status_code": "200",
        "status_message": "ok", "transaction_time": "2026-11-25 10:00:00.000",
        "captured_amount": 10_000, "refunded_amount": 500 if refunds else 0, "bank": bank,
        "va_number": "8808", "provider": "gopay", "fraud_reasons": reasons}
    if masked:
        result["masked_card"] = "4811"
    if refunds:
        result["refunds"] = [{"refund_key": "r", "amount": 500}]
    whole = _whole_body(result, server_key, seq)
    head, tail = notification_body_parts(result, server_key)
    assert head + str(seq).encode() + tail == whole
    assert notification_body(result, server_key, seq) == whole
