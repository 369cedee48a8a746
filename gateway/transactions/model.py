"""The hub's record of one transaction, and its wire form (the ``transaction`` result map)."""

from __future__ import annotations

import operator
import os
import time
from dataclasses import dataclass, field, fields
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

    def to_record(self) -> bytes:
        return msgpack.packb(_all_fields(self), use_bin_type=True)  # type: ignore[no-any-return]

    def copy(self) -> Transaction:
        """A shallow copy. Not ``copy.copy``: on a slotted dataclass that goes through
        ``__getstate__`` and ``dataclasses.fields`` (measured ~3x slower; it runs for every
        bank call)."""
        return Transaction(*_all_fields(self))

    @classmethod
    def from_record(cls, data: bytes) -> Transaction:
        values = msgpack.unpackb(data, raw=False)
        return cls(*values)

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
        return out


_FIELD_NAMES = tuple(f.name for f in fields(Transaction))
_all_fields = operator.attrgetter(*_FIELD_NAMES)


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
