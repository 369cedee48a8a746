"""Typed results of the client library, and the name merchants catch errors by."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.errors import RemoteError

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
    """A transaction as the hub reports it (Midtrans field names)."""

    transaction_id: str
    order_id: str
    merchant_id: str
    gross_amount: int
    currency: str
    payment_type: str
    transaction_status: str
    fraud_status: str
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
    replayed: bool = False

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> TransactionResult:
        data = dict(body)
        replayed = bool(data.pop("_replayed", False))
        known = set(cls.__dataclass_fields__)
        data = {k: v for k, v in data.items() if k in known}
        data["refunds"] = tuple(Refund(**r) for r in data.get("refunds", ()))
        data["fraud_reasons"] = tuple(data.get("fraud_reasons", ()))
        return cls(**data, replayed=replayed)


@dataclass(frozen=True)
class Event:
    """A pushed status change. ``seq`` counts up by one per merchant, without gaps."""

    seq: int
    type: str
    merchant_id: str
    transaction: TransactionResult
