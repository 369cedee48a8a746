"""The webhook body: Midtrans' notification fields, with its ``signature_key``.

Built once per status change, by the hub (it holds the merchants' server keys; the ledger's
writer never sees them), and stored as bytes in the same commit as the change
(transactional outbox): every redelivery sends exactly the same body, so receivers can
deduplicate on ``event_id`` and the ``X-Paywire-Signature`` HMAC covers what was stored.

The body names its event, and the event's sequence number is assigned by the ledger inside
the commit (numbered per merchant without gaps). So the hub builds the body in two parts,
split where the number goes (``notification_body_parts``); the ledger stores
``head + str(seq) + tail`` and nothing else about it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from gateway.ledger.base import event_id
from protocol.signing import format_gross_amount, signature_key

SIGNATURE_HEADER = "X-Paywire-Signature"
EVENT_ID_HEADER = "X-Paywire-Event-Id"


def notification_body(result: dict[str, Any], server_key: str, seq: int) -> bytes:
    """The body of event ``seq``, as the ledger stores it from the parts."""
    head, tail = notification_body_parts(result, server_key)
    return head + str(seq).encode() + tail


_EVENT_ID_MARK = b',"event_id":""'


def notification_body_parts(result: dict[str, Any], server_key: str) -> tuple[bytes, bytes]:
    """The JSON body with its ``event_id`` cut open before the sequence number.

    Dumped once with an empty ``event_id``, then split there. The mark cannot be found
    inside a string value: a ``"`` inside a JSON string is always escaped, so an unescaped
    ``,"event_id":""`` is the key itself (keys are sorted: ``currency`` is always before
    it). Digits need no escaping, so head + digits + tail is exactly the JSON the whole
    body would dump to."""
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
        "event_id": "",
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
    if result.get("metadata"):
        # Sorted after ``event_id``, so the split below finds the real key first even if
        # the merchant named a metadata key ``event_id`` (tests/test_client_merchant.py).
        body["metadata"] = result["metadata"]
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()  # ASCII only
    at = data.index(_EVENT_ID_MARK)
    return (data[:at] + _event_id_head(result["merchant_id"]),
            data[at + len(_EVENT_ID_MARK) - 1:])


@functools.lru_cache(maxsize=4096)  # per merchant; bounded for any number of merchants
def _event_id_head(merchant_id: str) -> bytes:
    """``,"event_id":"evt_<merchant>_`` as JSON (the merchant id escaped like the rest)."""
    return b',"event_id":' + json.dumps(event_id(merchant_id, 0)[:-1])[:-1].encode()
