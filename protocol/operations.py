"""Request operations, their argument schemas, and the vocabulary of transaction results.

Statuses and fraud statuses follow Midtrans' vocabulary so merchants porting an integration
recognise them. Amounts are integer minor units of an ISO 4217 currency; never floats.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from protocol.errors import BodyError, ErrorCode
from protocol.schema import Bin, Bool, Int, ListOf, Map, Opt, Str


class Operation(enum.StrEnum):
    CHARGE = "charge"
    CAPTURE = "capture"
    CANCEL = "cancel"
    REFUND = "refund"
    APPROVE = "approve"
    DENY = "deny"
    STATUS = "status"
    EXPIRE = "expire"


class PaymentType(enum.StrEnum):
    CREDIT_CARD = "credit_card"
    BANK_TRANSFER = "bank_transfer"
    EWALLET = "ewallet"


class TransactionStatus(enum.StrEnum):
    PENDING = "pending"
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    SETTLEMENT = "settlement"
    DENY = "deny"
    CANCEL = "cancel"
    EXPIRE = "expire"
    REFUND = "refund"
    PARTIAL_REFUND = "partial_refund"
    FAILURE = "failure"


class FraudStatus(enum.StrEnum):
    ACCEPT = "accept"
    CHALLENGE = "challenge"
    DENY = "deny"


# Midtrans' status_code per transaction status (a string on the wire, as Midtrans sends it).
STATUS_CODES: dict[TransactionStatus, str] = {
    TransactionStatus.PENDING: "201",
    TransactionStatus.AUTHORIZE: "200",
    TransactionStatus.CAPTURE: "200",
    TransactionStatus.SETTLEMENT: "200",
    TransactionStatus.DENY: "202",
    TransactionStatus.CANCEL: "200",
    TransactionStatus.EXPIRE: "407",
    TransactionStatus.REFUND: "200",
    TransactionStatus.PARTIAL_REFUND: "200",
    TransactionStatus.FAILURE: "202",
}

# Identifiers that end up in URLs, logs and SQL parameters: a conservative alphabet.
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._~-]*"
ORDER_ID = Str(1, 64, ID_PATTERN)
MERCHANT_ID = Str(1, 64, ID_PATTERN)
CURRENCY = Str(3, 3, r"[A-Z]{3}")
AMOUNT = Int(1, 10**15)
AMOUNT_OR_ZERO = Int(0, 10**15)
EXPIRY_S_MAX = 30 * 24 * 3600
EXPIRY_S_DEFAULT = 24 * 3600

CARD = Map(
    {
        "number": Str(12, 19, r"[0-9]+"),
        "exp_month": Int(1, 12),
        "exp_year": Int(2000, 2199),
        "cvv": Str(3, 4, r"[0-9]+"),
    }
)
CUSTOMER = Map(
    {
        "email": Opt(Str(3, 254, r"[^@\s]+@[^@\s]+")),
        "name": Opt(Str(1, 100)),
        "phone": Opt(Str(3, 32, r"\+?[0-9 ()-]+")),
        "country": Opt(Str(2, 2, r"[A-Z]{2}")),
        "ip": Opt(Str(2, 45, r"[0-9A-Fa-f:.]+")),
    }
)

# The merchant's own key-value pairs on a charge (Stripe's and Midtrans' ``metadata`` /
# ``custom_field``): stored with the transaction and returned in every result, webhook and
# event, never interpreted. Bounded because they travel in every one of those, and a result
# must stay within the default ``body_bytes_max`` (docs/protocol.md §5.1.2).
METADATA_KEYS_MAX = 20
METADATA_KEY_CHARS_MAX = 40
METADATA_VALUE_CHARS_MAX = 500
METADATA_KEY_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
# All keys and values together, UTF-8 encoded: the per-key limits allow 20 x 540 = 10 800
# ASCII bytes, but 4-byte characters would make that 40 800; with the largest refund list
# a result could then outgrow the default body_bytes_max (65 536) and never be readable.
METADATA_BYTES_MAX = 16_384
# A per-transaction notification URL (Midtrans' ``X-Override-Notification``); the hub checks
# it against its webhook rules (https, or http to loopback with the lab opt-in) as well.
NOTIFICATION_URL_CHARS_MAX = 2048


class StrMap(Map):
    """A map of string keys to string values, bounded in key count and in the length of each
    key and value (in characters). A map rather than free-form: metadata is stored and sent
    back verbatim, so anything but a flat map of strings would be a merchant's surprise
    later (a float that comes back rounded, a nested map a webhook receiver cannot read)."""

    def __init__(self, keys_max: int, key_chars_max: int, value_chars_max: int,
                 key_pattern: str, bytes_max: int) -> None:
        super().__init__({}, allow_extra=True)
        # Map is a frozen dataclass: set our own attributes the way its __init__ does.
        object.__setattr__(self, "keys_max", keys_max)
        object.__setattr__(self, "bytes_max", bytes_max)
        object.__setattr__(self, "key", Str(1, key_chars_max, key_pattern))
        object.__setattr__(self, "value", Str(0, value_chars_max))

    keys_max: int
    bytes_max: int
    key: Str
    value: Str

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise BodyError(f"{path}: must be a map", code=ErrorCode.INVALID_FIELD, field=path)
        if len(value) > self.keys_max:
            raise BodyError(f"{path}: at most {self.keys_max} keys, got {len(value)}",
                            code=ErrorCode.INVALID_FIELD, field=path)
        out: dict[str, str] = {}
        for key, item in value.items():
            try:
                self.key.check(key, path)
            except BodyError:
                shown = repr(key)[:self.key.max_len + 10]
                raise BodyError(f"{path}: a key must be a string of 1..{self.key.max_len} "
                                f"characters matching {self.key.pattern}, got {shown}",
                                code=ErrorCode.INVALID_FIELD, field=path) from None
            out[key] = self.value.check(item, f"{path}.{key}")
        size = sum(len(k.encode()) + len(v.encode()) for k, v in out.items())
        if size > self.bytes_max:
            raise BodyError(f"{path}: keys and values take {size} bytes (UTF-8), more than "
                            f"{self.bytes_max}", code=ErrorCode.INVALID_FIELD, field=path)
        return out

    def describe(self) -> str:
        return (f"map of str to str, 0..{self.keys_max} keys; keys 1..{self.key.max_len} chars, "
                f"`{self.key.pattern}`; values 0..{self.value.max_len} chars; "
                f"keys and values 0..{self.bytes_max} bytes (UTF-8) in all")


METADATA = StrMap(METADATA_KEYS_MAX, METADATA_KEY_CHARS_MAX, METADATA_VALUE_CHARS_MAX,
                  METADATA_KEY_PATTERN, METADATA_BYTES_MAX)
TRANSACTION_ID = Str(1, 64, ID_PATTERN)

ARGS: dict[Operation, Map] = {
    Operation.CHARGE: Map(
        {
            "order_id": ORDER_ID,
            "gross_amount": AMOUNT,
            "currency": Opt(CURRENCY, "IDR"),
            "payment_type": Str(choices=tuple(PaymentType)),
            "capture": Opt(Bool(), True),
            "card": Opt(CARD),
            "bank": Opt(Str(1, 32, ID_PATTERN)),
            "provider": Opt(Str(1, 32, ID_PATTERN)),
            "customer": Opt(CUSTOMER),
            "expiry_s": Opt(Int(1, EXPIRY_S_MAX)),
            "description": Opt(Str(0, 255)),
            "metadata": Opt(METADATA),
            "notification_url": Opt(Str(1, NOTIFICATION_URL_CHARS_MAX, r"https?://\S+")),
        }
    ),
    Operation.CAPTURE: Map({"order_id": ORDER_ID, "gross_amount": Opt(AMOUNT)}),
    Operation.CANCEL: Map({"order_id": ORDER_ID}),
    Operation.REFUND: Map(
        {
            "order_id": ORDER_ID,
            "refund_key": Str(1, 64, ID_PATTERN),
            "amount": Opt(AMOUNT),
            "reason": Opt(Str(0, 255)),
        }
    ),
    Operation.APPROVE: Map({"order_id": ORDER_ID}),
    Operation.DENY: Map({"order_id": ORDER_ID}),
    # Either id names the transaction (Midtrans' /v2/{order_id or transaction_id}/status):
    # exactly one of them (``_check_status``).
    Operation.STATUS: Map({"order_id": Opt(ORDER_ID), "transaction_id": Opt(TRANSACTION_ID)}),
    Operation.EXPIRE: Map({"order_id": ORDER_ID}),
}

_OPERATIONS = {op.value: op for op in Operation}


def parse_operation(name: str) -> Operation:
    op = _OPERATIONS.get(name)
    if op is None:
        raise BodyError(f"unknown operation {name!r}", code=ErrorCode.UNKNOWN_OPERATION,
                        field="op")
    return op


def validate_args(op: Operation, args: Any) -> dict[str, Any]:
    """Validate and normalise the ``args`` of one request; raise ``BodyError`` naming the field."""
    checked: dict[str, Any] = ARGS[op].check(args, "args")
    if op is Operation.CHARGE:
        _check_charge(checked)
    elif op is Operation.STATUS:
        _check_status(checked)
    return checked


def _check_status(args: dict[str, Any]) -> None:
    """Exactly one id: with both, which one answers would be a guess if they disagreed."""
    given = [name for name in ("order_id", "transaction_id") if name in args]
    if len(given) != 1:
        raise BodyError("args: give exactly one of order_id and transaction_id, got "
                        f"{' and '.join(given) or 'neither'}", code=ErrorCode.INVALID_FIELD,
                        field="args.order_id")


def _check_charge(args: dict[str, Any]) -> None:
    """Rules that span fields: each payment type needs its own details and no others'."""
    if "metadata" in args and not args["metadata"]:
        del args["metadata"]  # an empty map is no metadata (for idempotency too: §5.3)
    payment_type = args["payment_type"]
    needed = {"credit_card": "card", "bank_transfer": "bank", "ewallet": "provider"}
    for ptype, name in needed.items():
        if ptype == payment_type and name not in args:
            raise BodyError(f"args.{name}: is required for payment_type {ptype}",
                            code=ErrorCode.INVALID_FIELD, field=f"args.{name}")
        if ptype != payment_type and name in args:
            raise BodyError(f"args.{name}: is not allowed for payment_type {payment_type}",
                            code=ErrorCode.INVALID_FIELD, field=f"args.{name}")
    if payment_type == "credit_card" and not luhn_valid(args["card"]["number"]):
        raise BodyError("args.card.number: fails the Luhn check",
                        code=ErrorCode.INVALID_FIELD, field="args.card.number")


def luhn_valid(number: str) -> bool:
    """The mod-10 check every card number carries; catches typos before a bank sees them."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_expired(exp_month: int, exp_year: int, today: dt.date) -> bool:
    """A card is valid through the last day of its expiry month (``today`` is the issuer's
    date, UTC): 11/2026 is still good on 30 November 2026 and expired on 1 December."""
    return (exp_year, exp_month) < (today.year, today.month)


def mask_card(number: str) -> str:
    """First six and last four digits, the rest as ``*`` (PCI DSS display rule)."""
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


REFUND_ENTRY = Map(
    {"refund_key": Str(1, 64), "amount": AMOUNT, "time": Str(0, 40), "reason": Opt(Str(0, 255))}
)

# The result of every operation, and the ``data`` of a transaction EVENT.
TRANSACTION = Map(
    {
        "transaction_id": Str(1, 64),
        "order_id": ORDER_ID,
        "merchant_id": MERCHANT_ID,
        "gross_amount": AMOUNT,
        "currency": CURRENCY,
        "payment_type": Str(choices=tuple(PaymentType)),
        "transaction_status": Str(choices=tuple(TransactionStatus)),
        "fraud_status": Str(choices=tuple(FraudStatus)),
        "status_code": Str(3, 3),
        "status_message": Str(0, 255),
        "transaction_time": Str(0, 40),
        "captured_amount": AMOUNT_OR_ZERO,
        "refunded_amount": AMOUNT_OR_ZERO,
        "settlement_time": Opt(Str(0, 40)),
        "expiry_time": Opt(Str(0, 40)),
        "masked_card": Opt(Str(0, 19)),
        "card_brand": Opt(Str(0, 16)),
        "bank": Opt(Str(0, 32)),
        "va_number": Opt(Str(0, 32)),
        "provider": Opt(Str(0, 32)),
        "refunds": Opt(ListOf(REFUND_ENTRY, 64)),
        "fraud_reasons": Opt(ListOf(Str(0, 128), 32)),
        "decline_reason": Opt(Str(0, 255)),
        "hops_us": Opt(Map({}, allow_extra=True)),
        "metadata": Opt(METADATA),
    }
)

NONCE = Bin(8, 32)
SIGNATURE = Bin(32, 32)
