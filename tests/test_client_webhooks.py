"""``gateway.client.webhooks.construct_event``: a genuine notification comes back typed; every
way of faking, editing, delaying or replaying one is refused with its reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.client import FraudStatus, PaymentType, TransactionStatus
from gateway.client.webhooks import (
    ReplayGuard,
    SignatureVerificationError,
    VerificationFailure,
    WebhookNotification,
    construct_event,
)
from gateway.webhooks.payload import notification_body
from protocol.signing import signature_key, webhook_signature_header

KEY = "SB-Mid-server-webhook-test"
NOW = 1_790_000_000
RESULT: dict[str, Any] = {
    "transaction_id": "0193a1b2-0000-7000-8000-000000000001", "order_id": "order-7",
    "merchant_id": "M1", "status_code": "200",
    "status_message": "Success, card transaction is captured", "gross_amount": 150_000,
    "currency": "IDR", "payment_type": "credit_card", "transaction_status": "capture",
    "fraud_status": "accept", "transaction_time": "2026-11-24 16:05:00.123",
    "masked_card": "481111******1114", "bank": "bca", "fraud_reasons": ["velocity"],
    "metadata": {"cart": "c-9", "event_id": "", "note": "ünïcode \" , quote"}}


def signed(body: bytes, at: int = NOW, key: str = KEY) -> dict[str, str]:
    return {"X-Paywire-Signature": webhook_signature_header(key.encode(), at, body),
            "Content-Type": "application/json"}


def reason_of(body: bytes, headers: dict[str, str], **kw: Any) -> VerificationFailure:
    with pytest.raises(SignatureVerificationError) as info:
        construct_event(body, headers, KEY, now_s=kw.pop("now_s", NOW), **kw)
    assert info.value.message
    return info.value.reason


BODY = notification_body(RESULT, KEY, 42)


def test_a_genuine_notification_comes_back_typed() -> None:
    n = construct_event(BODY, signed(BODY), KEY, now_s=NOW)
    assert isinstance(n, WebhookNotification)
    assert n.event_id == "evt_M1_42" and n.order_id == "order-7"
    assert n.transaction_status is TransactionStatus.CAPTURE
    assert n.fraud_status is FraudStatus.ACCEPT and n.payment_type is PaymentType.CREDIT_CARD
    assert n.gross_amount == "150000.00" and n.signed_at_s == NOW
    assert n.masked_card == "481111******1114" and n.card_type == "credit"
    assert n.fraud_reasons == ("velocity",)
    # A metadata key named like the body's own event_id does not confuse the body builder.
    assert n.metadata == RESULT["metadata"]
    assert n.body["event_id"] == "evt_M1_42"
    # Headers of any case (WSGI frameworks lower them), a str body, within the tolerance.
    lower = {k.lower(): v for k, v in signed(BODY, NOW - 299).items()}
    assert construct_event(BODY.decode(), lower, KEY, now_s=NOW).order_id == "order-7"
    assert construct_event(BODY, signed(BODY, NOW + 299), KEY, now_s=NOW).event_id


def test_a_bank_transfer_notification_has_its_va_numbers() -> None:
    va = {**RESULT, "payment_type": "bank_transfer", "transaction_status": "pending",
          "status_code": "201", "va_number": "8808123"}
    del va["masked_card"], va["metadata"]
    body = notification_body(va, KEY, 3)
    n = construct_event(body, signed(body), KEY, now_s=NOW)
    assert n.va_numbers[0].va_number == "8808123" and n.va_numbers[0].bank == "bca"
    assert n.metadata == {} and n.masked_card is None


def test_a_tampered_body_is_refused() -> None:
    header = signed(BODY)
    as_refund = BODY.replace(b'"transaction_status":"capture"',
                             b'"transaction_status":"refund"')
    assert as_refund != BODY
    assert reason_of(as_refund, header) is VerificationFailure.BAD_SIGNATURE
    # Even with a signature_key recomputed to match (it does not cover the status).
    edited = json.loads(as_refund)
    assert edited["signature_key"] == signature_key(
        edited["order_id"], edited["status_code"], edited["gross_amount"], KEY)
    assert reason_of(BODY + b" ", header) is VerificationFailure.BAD_SIGNATURE


def test_a_tampered_header_is_refused() -> None:
    header = signed(BODY)["X-Paywire-Signature"]
    t, mac = header.split(",v1=")
    later = f"t={NOW + 1},v1={mac}"  # the timestamp moved, the MAC kept
    assert reason_of(BODY, {"X-Paywire-Signature": later}) is VerificationFailure.BAD_SIGNATURE
    flipped = f"{t},v1={mac[:-1]}{'0' if mac[-1] != '0' else '1'}"
    assert reason_of(BODY, {"X-Paywire-Signature": flipped}) \
        is VerificationFailure.BAD_SIGNATURE
    for bad in ("", "t=abc,v1=" + mac, f"{t}", f"v1={mac}", f"{t},v1=xyz",
                f"{t},v1={mac.upper()}", f"{t},{t},v1={mac}", "t=" + "9" * 20 + f",v1={mac}",
                f"{t},v1={mac}" + "," * 600):
        assert reason_of(BODY, {"X-Paywire-Signature": bad}) \
            is VerificationFailure.MALFORMED_HEADER, bad
    assert reason_of(BODY, {"Content-Type": "application/json"}) \
        is VerificationFailure.MISSING_HEADER


def test_an_event_id_header_must_repeat_the_signed_one() -> None:
    """The dispatcher's ``X-Paywire-Event-Id`` is unsigned: accepted only when it agrees."""
    ok = {**signed(BODY), "X-Paywire-Event-Id": "evt_M1_42"}
    assert construct_event(BODY, ok, KEY, now_s=NOW).event_id == "evt_M1_42"
    other = {**signed(BODY), "X-Paywire-Event-Id": "evt_M1_41"}
    assert reason_of(BODY, other) is VerificationFailure.EVENT_ID_MISMATCH


def test_a_stale_notification_is_refused() -> None:
    assert reason_of(BODY, signed(BODY, NOW - 301)) is VerificationFailure.STALE
    assert reason_of(BODY, signed(BODY, NOW - 3600)) is VerificationFailure.STALE
    # The tolerance is the caller's.
    assert construct_event(BODY, signed(BODY, NOW - 3600), KEY, tolerance_s=7200,
                           now_s=NOW).event_id == "evt_M1_42"
    assert reason_of(BODY, signed(BODY, NOW - 11), tolerance_s=10) is VerificationFailure.STALE


def test_a_notification_from_the_future_is_refused() -> None:
    assert reason_of(BODY, signed(BODY, NOW + 301)) is VerificationFailure.FUTURE


def test_a_wrong_key_is_refused_and_rotation_keys_are_accepted() -> None:
    other = "SB-Mid-server-someone-else"
    assert reason_of(BODY, signed(BODY, key=other)) is VerificationFailure.BAD_SIGNATURE
    with pytest.raises(SignatureVerificationError) as info:
        construct_event(BODY, signed(BODY), other, now_s=NOW)
    assert info.value.reason is VerificationFailure.BAD_SIGNATURE
    # During a key rotation both keys are given: either signature passes.
    assert construct_event(BODY, signed(BODY), [other, KEY], now_s=NOW).order_id == "order-7"


@pytest.mark.parametrize("keys", ["", [], [""], [KEY, ""]])
def test_an_empty_server_key_is_a_configuration_error_not_a_pass(keys: Any) -> None:
    """With an empty key anyone can sign (a forger signs with "" too): refused whatever the
    delivery, as the receiver's own mistake (say, an unset environment variable)."""
    forged_body = notification_body(RESULT, "", 42)
    with pytest.raises(ValueError, match="empty key"):
        construct_event(forged_body, signed(forged_body, key=""), keys, now_s=NOW)


def test_a_key_given_as_bytes_is_named_as_such() -> None:
    with pytest.raises(TypeError, match="not bytes"):
        construct_event(BODY, signed(BODY), KEY.encode(), now_s=NOW)  # type: ignore[arg-type]


def test_a_signed_body_with_a_wrong_signature_key_is_refused() -> None:
    """A hub that signs the HMAC but computes ``signature_key`` wrongly (another
    implementation) is not trusted halfway."""
    data = json.loads(BODY)
    data["signature_key"] = "0" * 128
    body = json.dumps(data).encode()
    assert reason_of(body, signed(body)) is VerificationFailure.BAD_SIGNATURE_KEY
    for broken in (b"not json", b"[1, 2]", json.dumps({**data, "order_id": 7}).encode()):
        assert reason_of(broken, signed(broken)) is VerificationFailure.MALFORMED_BODY


def test_a_replayed_delivery_is_refused_and_a_redelivery_is_not() -> None:
    """"Replayed" = the same signed delivery (header and body) presented again. The hub's
    own redelivery of the event is signed anew (new ``t``): it passes, and the receiver
    deduplicates it by ``event_id``."""
    guard = ReplayGuard()
    first = signed(BODY, NOW)
    assert construct_event(BODY, first, KEY, seen=guard, now_s=NOW).event_id == "evt_M1_42"
    assert reason_of(BODY, first, seen=guard, now_s=NOW + 5) is VerificationFailure.REPLAYED
    redelivery = construct_event(BODY, signed(BODY, NOW + 60), KEY, seen=guard,
                                 now_s=NOW + 60)
    assert redelivery.event_id == "evt_M1_42"
    # A refused delivery is not remembered: forged ones cannot poison the guard.
    assert reason_of(BODY + b" ", first, seen=guard, now_s=NOW + 5) \
        is VerificationFailure.BAD_SIGNATURE
    # After the tolerance the timestamp refuses the old header; the guard has forgotten it.
    assert reason_of(BODY, first, seen=guard, now_s=NOW + 400) is VerificationFailure.STALE
    assert len(guard._seen) <= 2


def test_the_replay_guard_is_bounded() -> None:
    guard = ReplayGuard(tolerance_s=300, entries_max=10)
    for i in range(100):
        assert guard.first_time(f"{i:064x}", NOW, NOW)
    assert len(guard._seen) <= 10


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.text(max_size=200))
def test_garbage_never_escapes_as_another_exception(body: bytes, header: str) -> None:
    try:
        construct_event(body, {"X-Paywire-Signature": header}, KEY, now_s=NOW)
    except SignatureVerificationError:
        pass
