"""The webhook body: Midtrans' notification fields, with its ``signature_key``.

Built once, inside the commit that records the status change (transactional outbox), and
stored as bytes: every redelivery sends exactly the same body, so receivers can deduplicate
on ``event_id`` and the ``X-Paywire-Signature`` HMAC covers what was stored.
"""

from __future__ import annotations

import json
from typing import Any

from protocol.signing import format_gross_amount, signature_key

SIGNATURE_HEADER = "X-Paywire-Signature"
EVENT_ID_HEADER = "X-Paywire-Event-Id"


def event_id(merchant_id: str, seq: int) -> str:
    return f"evt_{merchant_id}_{seq}"


def notification_body(result: dict[str, Any], server_key: str, seq: int) -> bytes:
    gross = format_gross_amount(result["gross_amount"], result["currency"])
    body: dict[str, Any] = {
        "transaction_id": result["transaction_id"],
        "order_id": result["order_id"],
        "merchant_id": result["merchant_id"],
        "status_code": result["status_code"],
        "status_message": result["status_message"],
        "gross_amount": gross,
        "currency": result["currency"],
        "payment_type": result["payment_type"],
        "transaction_status": result["transaction_status"],
        "fraud_status": result["fraud_status"],
        "transaction_time": result["transaction_time"],
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
