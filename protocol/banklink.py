"""Operations on the hub ↔ bank-node link, carried in the same REQUEST/RESPONSE frames.

Every money-moving operation carries an ``op_id`` chosen by the hub; the bank node stores
the first answer under it and returns that answer for any repeat, so the hub may resend an
operation after a timeout or to another node of the same bank without moving money twice.
Declines (unknown card, expired card, currency not held, insufficient funds) are answers, not
errors: they are stored too.
Errors are reserved for "nothing happened, ask again" (``BANK_UNAVAILABLE``).
"""

from __future__ import annotations

from typing import Any

from protocol.errors import BodyError, ErrorCode
from protocol.operations import AMOUNT, CARD, CURRENCY, MERCHANT_ID
from protocol.schema import Bool, Int, Map, Opt, Str

OP_ID = Str(1, 128)
TXID = Str(1, 64)

AUTHORIZE = "bank.authorize"
CAPTURE = "bank.capture"
VOID = "bank.void"
REFUND = "bank.refund"
REVERSE = "bank.reverse"
INQUIRY = "bank.inquiry"
OPEN_PAYMENT = "bank.open_payment"
CLOSE_PAYMENT = "bank.close_payment"
PAYMENT = "bank.payment"  # bank -> hub: a customer paid (or a payment closed)
ADMIN_PAY = "admin.pay"
ADMIN_BALANCES = "admin.balances"
ADMIN_FAULTS = "admin.faults"
ADMIN_PAYMENTS = "admin.payments"
ADMIN_STATS = "admin.stats"

ARGS: dict[str, Map] = {
    AUTHORIZE: Map({"op_id": OP_ID, "transaction_id": TXID, "account": Str(1, 32),
                    "exp_month": CARD.fields["exp_month"], "exp_year": CARD.fields["exp_year"],
                    "amount": AMOUNT, "currency": CURRENCY, "capture": Bool()}),
    CAPTURE: Map({"op_id": OP_ID, "transaction_id": TXID, "amount": AMOUNT}),
    VOID: Map({"op_id": OP_ID, "transaction_id": TXID}),
    REFUND: Map({"op_id": OP_ID, "transaction_id": TXID, "amount": AMOUNT}),
    REVERSE: Map({"op_id": OP_ID, "transaction_id": TXID, "target_op_id": OP_ID}),
    INQUIRY: Map({"op_id": OP_ID}),
    OPEN_PAYMENT: Map({"op_id": OP_ID, "transaction_id": TXID,
                       "kind": Str(choices=("va", "ewallet")), "amount": AMOUNT,
                       "currency": CURRENCY, "expiry_ms": Int(0, 2**63 - 1),
                       "merchant_id": MERCHANT_ID}),
    CLOSE_PAYMENT: Map({"op_id": OP_ID, "transaction_id": TXID,
                        "reason": Str(choices=("expire", "cancel"))}),
    PAYMENT: Map({"notification_id": Int(1, 2**63 - 1), "transaction_id": TXID,
                  "status": Str(choices=("settlement",)), "amount": AMOUNT,
                  "paid_ms": Int(0, 2**63 - 1)}),
    ADMIN_PAY: Map({"transaction_id": Opt(TXID), "number": Opt(Str(1, 32))}),
    ADMIN_BALANCES: Map({}),
    ADMIN_FAULTS: Map({"latency_ms": Opt(Int(0, 600_000)),
                       "failure_rate_pct": Opt(Int(0, 100)),
                       "blackhole": Opt(Bool())}),
    ADMIN_PAYMENTS: Map({}),
    ADMIN_STATS: Map({}),
}


def validate(op: str, args: Any) -> dict[str, Any]:
    spec = ARGS.get(op)
    if spec is None:
        raise BodyError(f"unknown operation {op!r}", code=ErrorCode.UNKNOWN_OPERATION,
                        field="op")
    checked: dict[str, Any] = spec.check(args, "args")
    return checked
