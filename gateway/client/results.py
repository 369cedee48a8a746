"""Typed results of the client library, and the name merchants catch errors by."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from protocol.errors import RemoteError
from protocol.operations import FraudStatus, PaymentType, TransactionStatus

# The hub refused or failed one request; ``code`` says why (see docs/protocol.md). Every
# error the hub reports is an instance of its code's class (``NotFound``, ``CardError``...,
# protocol/errors.py) *and* of this one, so ``except RequestError`` catches them all.
RequestError = RemoteError


@dataclass(frozen=True)
class Card:
    number: str
    exp_month: int
    exp_year: int
    cvv: str

    def to_wire(self) -> dict[str, Any]:
        return {"number": self.number, "exp_month": self.exp_month,
                "exp_year": self.exp_year, "cvv": self.cvv}


@dataclass(frozen=True)
class Refund:
    refund_key: str
    amount: int
    time: str
    reason: str | None = None


@dataclass(frozen=True)
class TransactionResult:
    """A transaction as the hub reports it (Midtrans field names).

    ``transaction_status``, ``fraud_status`` and ``payment_type`` are ``StrEnum`` members
    (``TransactionStatus.CAPTURE``...): they are ``str`` and compare equal to their wire
    value, so ``tx.transaction_status == "capture"`` keeps working. A declined charge is not
    an exception: it is a result with ``transaction_status`` ``deny`` (and its
    ``decline_reason``). ``metadata`` is what the charge was given (empty when none)."""

    transaction_id: str
    order_id: str
    merchant_id: str
    gross_amount: int
    currency: str
    payment_type: PaymentType
    transaction_status: TransactionStatus
    fraud_status: FraudStatus
    status_code: str
    status_message: str
    transaction_time: str
    captured_amount: int
    refunded_amount: int
    settlement_time: str | None = None
    expiry_time: str | None = None
    masked_card: str | None = None
    card_brand: str | None = None
    bank: str | None = None
    va_number: str | None = None
    provider: str | None = None
    refunds: tuple[Refund, ...] = ()
    fraud_reasons: tuple[str, ...] = ()
    decline_reason: str | None = None
    hops_us: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    replayed: bool = False

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> TransactionResult:
        data = dict(body)
        replayed = bool(data.pop("_replayed", False))
        known = set(cls.__dataclass_fields__)
        data = {k: v for k, v in data.items() if k in known}
        data["refunds"] = tuple(Refund(**r) for r in data.get("refunds", ()))
        data["fraud_reasons"] = tuple(data.get("fraud_reasons", ()))
        data["metadata"] = dict(data.get("metadata") or {})
        data["transaction_status"] = wire_member(TransactionStatus, data.get("transaction_status"))
        data["fraud_status"] = wire_member(FraudStatus, data.get("fraud_status"))
        data["payment_type"] = wire_member(PaymentType, data.get("payment_type"))
        return cls(**data, replayed=replayed)


_E = TypeVar("_E", TransactionStatus, FraudStatus, PaymentType)


def wire_member(kind: type[_E], value: Any) -> _E:
    """The enum member of a wire value. A value this client does not know (a newer hub's
    status) stays the plain string rather than failing a result whose money has already
    moved: it still compares as that string, it just has no member name."""
    try:
        return kind(value)
    except ValueError:
        return cast(_E, value)


@dataclass(frozen=True)
class Event:
    """A pushed status change. ``seq`` counts up by one per merchant, without gaps."""

    seq: int
    type: str
    merchant_id: str
    transaction: TransactionResult
