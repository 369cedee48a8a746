"""The hub's record of one transaction, and its wire form (the ``transaction`` result map)."""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import msgpack

from protocol.lifecycle import BY_VALUE, Event, next_state
from protocol.operations import STATUS_CODES, FraudStatus, TransactionStatus

STATUS_MESSAGES: dict[TransactionStatus, str] = {
    TransactionStatus.PENDING: "Success, transaction is created and waiting for payment",
    TransactionStatus.AUTHORIZE: "Success, card transaction is authorized",
    TransactionStatus.CAPTURE: "Success, card transaction is captured",
    TransactionStatus.SETTLEMENT: "Success, transaction is settled",
    TransactionStatus.DENY: "Transaction is denied",
    TransactionStatus.CANCEL: "Success, transaction is canceled",
    TransactionStatus.EXPIRE: "Transaction has expired",
    TransactionStatus.REFUND: "Success, transaction is refunded",
    TransactionStatus.PARTIAL_REFUND: "Success, transaction is partially refunded",
    TransactionStatus.FAILURE: "Transaction failed at the bank",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def time_ordered_id(ms: int | None = None) -> str:
    """A UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits.

    Transaction ids key unique indexes in the ledger and, through op ids, in the banks'
    books. Random (version 4) ids land on a random leaf page of those B-trees on every
    insert, so once an index outgrows SQLite's page cache each commit dirties and rewrites
    pages all over it; ids that grow with time append at the right edge. 74 random bits
    keep them unguessable, and the clock keeps them sortable by creation.
    """
    stamp = (now_ms() if ms is None else ms) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (stamp << 80) | (0x7 << 76) | (((rand >> 64) & 0xFFF) << 64) | (0b10 << 62) \
        | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"  # formatted directly: uuid.UUID costs ~3x as much, once per charge
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now_us() -> int:
    return time.time_ns() // 1_000


def iso_ms(ms: int | None) -> str | None:
    """UTC wall clock as Midtrans prints it, with milliseconds: 2026-11-24 16:05:00.123."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(seconds))}.{millis:03d}"


@dataclass(slots=True)
class Transaction:
    transaction_id: str
    merchant_id: str
    order_id: str
    gross_amount: int
    currency: str
    payment_type: str
    status: str
    fraud_status: str
    request_hash: bytes
    created_ms: int
    updated_ms: int
    bank: str | None = None
    capture_requested: bool = True
    settlement_ms: int | None = None
    expiry_ms: int | None = None
    masked_card: str | None = None
    card_brand: str | None = None
    va_number: str | None = None
    provider: str | None = None
    captured_amount: int = 0
    refunded_amount: int = 0
    refunds: list[dict[str, Any]] = field(default_factory=list)
    fraud_reasons: list[str] = field(default_factory=list)
    decline_reason: str | None = None
    # A bank call whose answer is not yet recorded: {op, op_id, node, sent_ms, args}.
    # Non-empty means "unresolved": recovery must settle it before the hub trusts the status.
    pending_op: dict[str, Any] | None = None
    hops_us: dict[str, int] = field(default_factory=dict)
    charge_result: dict[str, Any] | None = None
    customer: dict[str, Any] | None = None
    card_fingerprint: str | None = None
    # Added after format 2 was introduced (issue 15): absent from older records, which
    # read with these defaults. The merchant's metadata, returned in every result; and the
    # per-transaction webhook URL overriding the merchant's (never returned).
    metadata: dict[str, str] | None = None
    notification_url: str | None = None

    def to_record(self) -> bytes:
        """The ledger's stored form, record format 2 (see ``RECORD_FORMAT``): named fields.

        Built as a constant head (version and field names, packed once at import) followed
        by the packed values: as cheap as the positional format 1 it replaced (one ``packb``
        per save, measured 2.4 µs for both, where a name-to-value map cost 4.6 µs)."""
        return _RECORD_HEAD + _packb(_all_fields(self), use_bin_type=True)

    def copy(self) -> Transaction:
        """A shallow copy. Not ``copy.copy``: on a slotted dataclass that goes through
        ``__getstate__`` and ``dataclasses.fields`` (measured ~3x slower; it runs for every
        bank call)."""
        return Transaction(*_all_fields(self))

    @classmethod
    def from_record(cls, data: bytes) -> Transaction:
        """Read a stored transaction of any known record format (1 or 2); raises
        ``RecordFormatError`` for a record this code cannot read without guessing."""
        return _from_record(data)

    @property
    def unresolved(self) -> bool:
        return self.pending_op is not None

    def apply_event(self, event: Event) -> None:
        """The one way a transaction's status or fraud status changes: through the lifecycle
        table (``protocol.lifecycle``), which raises INVALID_TRANSITION naming the state and
        the event when the table has no such row (the record is then unchanged)."""
        nxt = BY_VALUE.get((self.status, self.fraud_status, event))
        if nxt is None:
            next_state(TransactionStatus(self.status), FraudStatus(self.fraud_status), event)
            raise AssertionError("BY_VALUE and TABLE disagree")  # next_state raised
        self.status, self.fraud_status, settled = nxt
        self.updated_ms = now_ms()
        if settled:
            self.settlement_ms = self.updated_ms

    def to_result(self, with_hops: bool = True) -> dict[str, Any]:
        """The ``transaction`` map of ``docs/protocol.md``: what merchants see."""
        status = TransactionStatus(self.status)
        out: dict[str, Any] = {
            "transaction_id": self.transaction_id,
            "order_id": self.order_id,
            "merchant_id": self.merchant_id,
            "gross_amount": self.gross_amount,
            "currency": self.currency,
            "payment_type": self.payment_type,
            "transaction_status": self.status,
            "fraud_status": self.fraud_status,
            "status_code": STATUS_CODES[status],
            "status_message": STATUS_MESSAGES[status],
            "transaction_time": iso_ms(self.created_ms),
            "captured_amount": self.captured_amount,
            "refunded_amount": self.refunded_amount,
        }
        if self.settlement_ms is not None:
            out["settlement_time"] = iso_ms(self.settlement_ms)
        if self.expiry_ms is not None:
            out["expiry_time"] = iso_ms(self.expiry_ms)
        if self.masked_card is not None:
            out["masked_card"] = self.masked_card
            out["card_brand"] = self.card_brand
        if self.bank is not None:
            out["bank"] = self.bank
        if self.va_number is not None:
            out["va_number"] = self.va_number
        if self.provider is not None:
            out["provider"] = self.provider
        if self.refunds:
            out["refunds"] = [
                {"refund_key": r["refund_key"], "amount": r["amount"],
                 "time": iso_ms(r["time_ms"]), **({"reason": r["reason"]} if r.get("reason")
                                                  else {})}
                for r in self.refunds
            ]
        if self.fraud_reasons:
            out["fraud_reasons"] = list(self.fraud_reasons)
        if self.decline_reason is not None:
            out["decline_reason"] = self.decline_reason
        if with_hops and self.hops_us:
            out["hops_us"] = dict(self.hops_us)
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out


_FIELD_NAMES = tuple(f.name for f in fields(Transaction))
_all_fields = operator.attrgetter(*_FIELD_NAMES)
_packb: Callable[..., bytes] = msgpack.packb


# The ledger record. Rows outlive the code that wrote them, so a record says what it is.
#
# Format 1 (up to issue 12, still read): a msgpack array of the dataclass's fields in
# declaration order, no version, no names. Adding or moving a field misread every row, so
# its field list is frozen here, as it was when format 1 was last written.
#
# Format 2 (written now): a msgpack map {"v": 2, "fields": [names], "values": [values]}.
# Values are matched to fields by name, so fields can be added, removed or reordered
# without a new format: a field the record lacks takes its default (a field without a
# default must be present), and a stored field this code no longer has is ignored. Bump
# the version only when a field keeps its name but changes meaning; a reader refuses a
# version it does not know rather than guess. Code before format 2 cannot read it at all;
# a row rewritten by an older format-2 reader loses the fields that reader does not know.
RECORD_FORMAT = 2
RECORD_FIELDS_V1 = (
    "transaction_id", "merchant_id", "order_id", "gross_amount", "currency", "payment_type",
    "status", "fraud_status", "request_hash", "created_ms", "updated_ms", "bank",
    "capture_requested", "settlement_ms", "expiry_ms", "masked_card", "card_brand",
    "va_number", "provider", "captured_amount", "refunded_amount", "refunds",
    "fraud_reasons", "decline_reason", "pending_op", "hops_us", "charge_result", "customer",
    "card_fingerprint")
RECORD_FIELDS_MAX = 256  # a record naming more fields than this is not one we wrote
_FIELD_SET = frozenset(_FIELD_NAMES)
_REQUIRED = frozenset(f.name for f in fields(Transaction)
                      if f.default is MISSING and f.default_factory is MISSING)
_NAMES_NOW = list(_FIELD_NAMES)
_V1_IS_NOW = list(RECORD_FIELDS_V1) == _NAMES_NOW
# A map of three entries whose third value, the values array, is appended per record.
_RECORD_HEAD = b"\x83" + b"".join(
    _packb(x, use_bin_type=True) for x in ("v", RECORD_FORMAT, "fields", _NAMES_NOW, "values"))


class RecordFormatError(ValueError):
    """A stored record this code cannot read without guessing (a newer format, a
    missing required field, a malformed record). The ledger must not misread money."""


def _from_record(data: bytes) -> Transaction:
    try:
        rec = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise RecordFormatError(f"ledger record is not msgpack: {exc!r}") from exc
    if isinstance(rec, list):  # format 1
        if len(rec) != len(RECORD_FIELDS_V1):
            raise RecordFormatError(f"format 1 record has {len(rec)} values, not "
                                    f"{len(RECORD_FIELDS_V1)}")
        if _V1_IS_NOW:
            return Transaction(*rec)
        return _by_name(RECORD_FIELDS_V1, rec)
    if not isinstance(rec, dict):
        raise RecordFormatError(f"ledger record is a {type(rec).__name__}")
    version = rec.get("v")
    if version != RECORD_FORMAT:
        raise RecordFormatError(f"ledger record format {version!r} is not known to this "
                                f"code (it reads 1 and {RECORD_FORMAT})")
    names, values = rec.get("fields"), rec.get("values")
    if not isinstance(names, list) or not isinstance(values, list) \
            or len(names) != len(values) or len(names) > RECORD_FIELDS_MAX:
        raise RecordFormatError("format 2 record without matching fields and values")
    if names == _NAMES_NOW:  # written by this code: no per-field work
        return Transaction(*values)
    return _by_name(names, values)


def _by_name(names: Sequence[Any], values: list[Any]) -> Transaction:
    if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise RecordFormatError("ledger record names a field twice or not by a string")
    known = {n: v for n, v in zip(names, values, strict=True) if n in _FIELD_SET}
    missing = _REQUIRED - known.keys()
    if missing:
        raise RecordFormatError(f"ledger record lacks required field(s) {sorted(missing)}")
    return Transaction(**known)


def card_brand(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in ("51", "52", "53", "54", "55") or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number[:2] in ("34", "37"):
        return "amex"
    if number[:4] == "3528" or "3528" <= number[:4] <= "3589":
        return "jcb"
    return "unknown"
