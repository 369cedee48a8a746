"""Verify a webhook notification and read it as a typed value: ``construct_event``.

    from gateway.client.webhooks import SignatureVerificationError, construct_event

    try:
        n = construct_event(raw_body, request.headers, SERVER_KEY)
    except SignatureVerificationError as exc:
        return 401  # exc.reason says why (VerificationFailure)
    record(n.event_id, n.order_id, n.transaction_status)

What proves a notification (README "Webhooks"), checked in this order:

1. the ``X-Paywire-Signature`` header, ``t=<unix s>,v1=<hex HMAC-SHA256(key, "<t>." + body)>``,
   over the exact body bytes: it covers every field, and it is checked first so that no
   other answer (stale, malformed) is given about a body nobody signed;
2. its timestamp within ``tolerance_s`` of now, in both directions (``STALE`` before,
   ``FUTURE`` after: a clock far ahead is as suspect as one far behind);
3. the body's ``signature_key`` (Midtrans': SHA-512 of order id, status code, gross amount
   and key). Implied by 1 for a genuine hub, but a second implementation of the hub might
   get it wrong, and a Midtrans-style receiver relies on it: a mismatch is refused too;
4. the ``X-Paywire-Event-Id`` header, if present, equal to the body's ``event_id`` (the
   header is not signed; a receiver that deduplicates on it must not be misled);
5. optionally, that this exact signed delivery was not presented before (``ReplayGuard``).

**What "replayed" means here.** The hub signs each *delivery attempt* with the time of the
attempt, so a redelivery of the same notification (the receiver answered 5xx, or timed out)
carries the same ``event_id`` with a new ``t`` and a new MAC: it is not a replay, and the
receiver deduplicates it by ``event_id`` after processing, as it would any at-least-once
delivery. A *replay* is someone presenting a captured (header, body) pair again. The
timestamp bounds how long that works (``tolerance_s``); within that window only memory can
tell, so the helper stays stateless and takes the memory as an argument: a ``ReplayGuard``
(in-process, bounded: it holds each MAC only for the tolerance window, after which the
timestamp check refuses it anyway) or any object with the same ``first_time`` method (e.g.
backed by Redis ``SET NX EX`` for several receiver processes).
"""

from __future__ import annotations

import enum
import hmac
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.client.results import wire_member
from protocol.operations import FraudStatus, PaymentType, TransactionStatus
from protocol.signing import signature_key, webhook_signature_header

SIGNATURE_HEADER = "X-Paywire-Signature"
EVENT_ID_HEADER = "X-Paywire-Event-Id"
TOLERANCE_S_DEFAULT = 300
BODY_BYTES_MAX = 1_048_576  # a notification is a few KB; refuse to parse anything huge
HEADER_CHARS_MAX = 512
REPLAY_GUARD_ENTRIES_MAX_DEFAULT = 100_000


class VerificationFailure(enum.StrEnum):
    """Why a notification was refused (``SignatureVerificationError.reason``)."""

    MISSING_HEADER = "missing_header"      # no X-Paywire-Signature header
    MALFORMED_HEADER = "malformed_header"  # not t=<int>,v1=<64 hex>
    BAD_SIGNATURE = "bad_signature"        # the HMAC does not match: wrong key or edited
    STALE = "stale"                        # signed more than tolerance_s ago
    FUTURE = "future"                      # signed more than tolerance_s ahead of now
    MALFORMED_BODY = "malformed_body"      # signed, but not a notification (a hub bug)
    BAD_SIGNATURE_KEY = "bad_signature_key"  # the body's signature_key does not match
    REPLAYED = "replayed"                  # this exact signed delivery was seen before
    EVENT_ID_MISMATCH = "event_id_mismatch"  # X-Paywire-Event-Id is not the body's event_id


class SignatureVerificationError(ValueError):
    """The notification is not provably a fresh one from the hub: answer 4xx, do nothing.
    ``reason`` is the machine-readable cause; the message says it for people."""

    def __init__(self, reason: VerificationFailure, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"SignatureVerificationError({self.reason.value}, {self.message!r})"


class SeenSignatures(Protocol):
    """Memory of signed deliveries already accepted (see the module docstring)."""

    def first_time(self, mac: str, timestamp_s: int, now_s: float) -> bool:
        """Record ``mac`` (signed at ``timestamp_s``) and say whether it was new."""
        ...


class ReplayGuard:
    """In-process ``SeenSignatures``: remembers each accepted MAC until its timestamp leaves
    the tolerance window (then the timestamp check refuses it anyway), and at most
    ``entries_max`` of them: when full, the oldest are forgotten first. Not shared between
    processes; one receiver process per guard."""

    def __init__(self, tolerance_s: int = TOLERANCE_S_DEFAULT,
                 entries_max: int = REPLAY_GUARD_ENTRIES_MAX_DEFAULT) -> None:
        self.tolerance_s = tolerance_s
        self.entries_max = entries_max
        self._seen: OrderedDict[str, int] = OrderedDict()

    def first_time(self, mac: str, timestamp_s: int, now_s: float) -> bool:
        horizon = now_s - self.tolerance_s
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at >= horizon and len(self._seen) < self.entries_max:
                break
            del self._seen[oldest]
        if mac in self._seen:
            return False
        self._seen[mac] = timestamp_s
        return True


@dataclass(frozen=True)
class VaNumber:
    bank: str | None
    va_number: str


@dataclass(frozen=True)
class WebhookNotification:
    """A verified notification (the README's webhook body, Midtrans field names).

    ``gross_amount`` is Midtrans' decimal string (``"150000.00"``), as signed; the statuses
    are the client's ``StrEnum`` members (they compare equal to the wire strings).
    ``signed_at_s`` is the header's timestamp; ``body`` the whole parsed JSON, for fields
    a newer hub adds."""

    event_id: str
    transaction_id: str
    order_id: str
    merchant_id: str
    status_code: str
    status_message: str
    gross_amount: str
    currency: str
    payment_type: PaymentType
    transaction_status: TransactionStatus
    fraud_status: FraudStatus
    transaction_time: str
    signature_key: str
    signed_at_s: int
    settlement_time: str | None = None
    masked_card: str | None = None
    card_type: str | None = None
    bank: str | None = None
    va_numbers: tuple[VaNumber, ...] = ()
    provider: str | None = None
    refund_amount: str | None = None
    fraud_reasons: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict, repr=False)


_REQUIRED_STR = ("event_id", "transaction_id", "order_id", "merchant_id", "status_code",
                 "status_message", "gross_amount", "currency", "payment_type",
                 "transaction_status", "fraud_status", "transaction_time", "signature_key")
_OPTIONAL_STR = ("settlement_time", "masked_card", "card_type", "bank", "provider",
                 "refund_amount")


def construct_event(body: bytes | str, headers: Mapping[str, str],
                    server_key: str | Sequence[str], tolerance_s: int = TOLERANCE_S_DEFAULT,
                    *, seen: SeenSignatures | None = None,
                    now_s: float | None = None) -> WebhookNotification:
    """Verify a webhook delivery and return it typed, or raise
    ``SignatureVerificationError`` with its ``reason``.

    ``body``: the raw request body, exactly as received (verify before parsing).
    ``headers``: the request's headers (any mapping; names are matched without case).
    ``server_key``: the merchant's server key, or several (during a key rotation any of
    them may have signed: pass ``[new, old]`` from before the hub switches to the new key
    until the hub's retries of notifications queued before the switch are over; see
    docs/operations.md "Rotating a merchant's server key"). An empty key, or none, raises
    a plain ``ValueError`` (the receiver's configuration, whatever was delivered).
    ``seen``: a ``ReplayGuard`` to refuse a delivery presented twice.
    ``now_s``: the time to judge freshness by (default: the clock; tests pass one)."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    header = _header(headers, SIGNATURE_HEADER)
    if header is None:
        raise SignatureVerificationError(VerificationFailure.MISSING_HEADER,
                                         f"no {SIGNATURE_HEADER} header")
    timestamp_s, mac = _parse_header(header)
    if isinstance(server_key, bytes | bytearray):
        raise TypeError("construct_event takes the server key as str (or a list of str), "
                        "not bytes")
    keys = [server_key] if isinstance(server_key, str) else list(server_key)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        # A key from an unset environment variable: with an empty key anyone could sign
        # (the HMAC key is public), so this is the receiver's configuration error, not a
        # verdict on the delivery.
        raise ValueError("construct_event needs the merchant's server key: got an empty "
                         "key (or none)")
    key = next((k for k in keys if hmac.compare_digest(
        webhook_signature_header(k.encode(), timestamp_s, raw).split(",v1=", 1)[1], mac)),
        None)
    if key is None:
        raise SignatureVerificationError(
            VerificationFailure.BAD_SIGNATURE,
            f"{SIGNATURE_HEADER} does not match the body: signed with another key, or the "
            "body or header was changed")
    now = time.time() if now_s is None else now_s
    if timestamp_s < now - tolerance_s:
        raise SignatureVerificationError(
            VerificationFailure.STALE,
            f"signed {now - timestamp_s:.0f} s ago, more than the tolerance of {tolerance_s} s")
    if timestamp_s > now + tolerance_s:
        raise SignatureVerificationError(
            VerificationFailure.FUTURE,
            f"signed {timestamp_s - now:.0f} s in the future, more than the tolerance of "
            f"{tolerance_s} s (check this host's clock)")
    notification = _parse_body(raw, timestamp_s)
    # The event id header is not signed: a receiver deduplicating on it could be made to
    # drop a genuine notification, so it must repeat the signed body's, or be absent.
    header_event_id = _header(headers, EVENT_ID_HEADER)
    if header_event_id is not None and header_event_id != notification.event_id:
        raise SignatureVerificationError(
            VerificationFailure.EVENT_ID_MISMATCH,
            f"{EVENT_ID_HEADER} {header_event_id[:80]!r} is not the signed body's event_id "
            f"{notification.event_id!r}")
    # Any of the keys: the hub builds a body (and its signature_key) when the change is
    # committed but signs the header when it delivers, with the key primary by then, so a
    # notification queued before a key rotation and delivered after it carries the old
    # key's signature_key under a header signed with the new key.
    if not any(hmac.compare_digest(signature_key(notification.order_id,
                                                 notification.status_code,
                                                 notification.gross_amount, k),
                                   notification.signature_key) for k in (key, *keys)):
        raise SignatureVerificationError(
            VerificationFailure.BAD_SIGNATURE_KEY,
            "the body's signature_key does not match its order_id, status_code and "
            "gross_amount")
    # Last: only a delivery that passed every check is remembered, so forged ones cannot
    # fill the guard or make a genuine delivery look replayed.
    if seen is not None and not seen.first_time(mac, timestamp_s, now):
        raise SignatureVerificationError(
            VerificationFailure.REPLAYED,
            f"this signed delivery of {notification.event_id} was presented before")
    return notification


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _parse_header(header: str) -> tuple[int, str]:
    malformed = SignatureVerificationError(
        VerificationFailure.MALFORMED_HEADER,
        f"{SIGNATURE_HEADER} must be t=<unix seconds>,v1=<64 hex digits>")
    if len(header) > HEADER_CHARS_MAX:
        raise malformed
    parts: dict[str, str] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name in parts:
            raise malformed
        parts[name] = value
    t, mac = parts.get("t", ""), parts.get("v1", "")
    if not t.isascii() or not t.isdigit() or len(t) > 12 or len(mac) != 64 \
            or any(c not in "0123456789abcdef" for c in mac):
        raise malformed
    return int(t), mac


def _parse_body(raw: bytes, signed_at_s: int) -> WebhookNotification:
    def bad(why: str) -> SignatureVerificationError:
        return SignatureVerificationError(VerificationFailure.MALFORMED_BODY,
                                          f"the signed body is not a notification: {why}")

    if len(raw) > BODY_BYTES_MAX:
        raise bad(f"larger than {BODY_BYTES_MAX} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    for name in _REQUIRED_STR:
        if not isinstance(data.get(name), str):
            raise bad(f"{name} missing or not a string")
    for name in _OPTIONAL_STR:
        if data.get(name) is not None and not isinstance(data[name], str):
            raise bad(f"{name} is not a string")
    va_numbers = data.get("va_numbers") or []
    reasons = data.get("fraud_reasons") or []
    metadata = data.get("metadata") or {}
    if not (isinstance(va_numbers, list) and all(
            isinstance(v, dict) and isinstance(v.get("va_number"), str)
            and isinstance(v.get("bank"), str | None) for v in va_numbers)):
        raise bad("va_numbers is not a list of {bank, va_number}")
    if not (isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)):
        raise bad("fraud_reasons is not a list of strings")
    if not (isinstance(metadata, dict)
            and all(isinstance(v, str) for v in metadata.values())):
        raise bad("metadata is not a map of strings")
    strings: dict[str, Any] = {name: data[name] for name in _REQUIRED_STR
                               if name not in ("payment_type", "transaction_status",
                                               "fraud_status")}
    strings.update((name, data.get(name)) for name in _OPTIONAL_STR)
    return WebhookNotification(
        **strings,
        payment_type=wire_member(PaymentType, data["payment_type"]),
        transaction_status=wire_member(TransactionStatus, data["transaction_status"]),
        fraud_status=wire_member(FraudStatus, data["fraud_status"]),
        signed_at_s=signed_at_s,
        va_numbers=tuple(VaNumber(v.get("bank"), v["va_number"]) for v in va_numbers),
        fraud_reasons=tuple(reasons),
        metadata=dict(metadata),
        body=data,
    )
