"""The money decisions: for each operation, which bank op to call with which arguments (or an
immediate answer), and how the bank's answer changes the transaction. Pure: no I/O, no clock
(times are arguments), nothing shared; the hub's runner does the I/O around them.

An operation is decided in three steps, each a function here:

1. ``charge_call`` / ``capture`` / ``cancel`` / ``expire`` / ``refund`` / ``approve`` /
   ``deny`` / ``repeat_charge`` look at the transaction as committed and return a
   :class:`BankCall` (record it as the intent, then send it), :data:`REPLAY` (answer with the
   transaction as it is now, ``REPLAYED``) or a :class:`Refusal` (answer with that error,
   change nothing). Preconditions are the lifecycle table's (``protocol.lifecycle.allows``)
   for the event the bank's success would cause, so a bank answer can always be applied.
2. ``effect_of_answer`` turns the bank's answer to the recorded intent (``pending_op``) into
   an :class:`Effect`; ``payment_effect`` does the same for a customer's payment reported by
   a bank; ``unknown_outcome`` says how to settle an intent whose answer never came.
3. ``apply_effect`` applies an :class:`Effect` to a working copy of the transaction; the one
   status change in it goes through ``Transaction.apply_event`` (the enforced table).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from gateway.transactions.model import Transaction
from protocol import banklink
from protocol.errors import ErrorCode
from protocol.lifecycle import BY_VALUE, Event, next_state
from protocol.operations import FraudStatus, PaymentType
from protocol.operations import TransactionStatus as S

# Refunds one transaction may have. Its result lists them all, in every status answer and
# event: without a bound, a merchant's many tiny refunds would grow that result past any
# body limit a client can negotiate (and past the 256 items of a collection, protocol §2.2).
# 100 refunds of the longest reason and key stay within the default 64 KiB body.
REFUNDS_PER_TRANSACTION_MAX = 100

# Bank operations whose outcome defines the transaction: after a timeout they are settled by
# inquiry then reversal, never re-sent (the hub does not keep card numbers to re-send).
DEFINING_OPS = frozenset({banklink.AUTHORIZE, banklink.OPEN_PAYMENT})

REVERSED_REASON = "the bank did not answer in time; the request was reversed"


# BankCall and Effect are made once per bank call on the hot path: not frozen, because a
# frozen dataclass sets each field through object.__setattr__ (timeit, 8 fields: ~1.6 us
# frozen, ~0.7 us plain). Nothing changes them after they are made.
@dataclass(slots=True)
class BankCall:
    """Call ``op`` with ``args`` at the transaction's bank, after recording the intent.
    ``extra`` is kept in the intent beside it (refund key and reason, fraud review) so the
    answer can be applied after a restart too."""

    op: str
    args: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def intent(self) -> dict[str, Any]:
        """The ``pending_op`` recorded before the call (never the card details)."""
        return {"op": self.op, "op_id": self.args["op_id"], "args": self.args, **self.extra}


@dataclass(frozen=True, slots=True)
class Replay:
    """A repeat of an operation that already happened: answer with the transaction as it is
    now, marked ``REPLAYED``; no bank call, no change."""


REPLAY = Replay()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer with this error and change nothing (an error as a value)."""

    code: ErrorCode
    message: str
    field: str | None = None


Decision = BankCall | Replay | Refusal


@dataclass(slots=True)
class Effect:
    """What a bank's answer (or a reported payment) does to the transaction. ``event`` is the
    lifecycle event (None: the status stays); ``error``, when set, is the operation's answer
    although the effect is applied (e.g. a close that found the payment already paid)."""

    event: Event | None = None
    captured_amount: int | None = None
    refund: dict[str, Any] | None = None       # appended to ``refunds``; adds to refunded
    va_number: str | None = None
    decline_reason: str | None = None
    sets_decline_reason: bool = False           # the answer's reason replaces the old one
    settlement_ms: int | None = None
    error: Refusal | None = None


def _invalid(message: str) -> Refusal:
    return Refusal(ErrorCode.INVALID_TRANSITION, message)


def _not_allowed(tx: Transaction, action: str, event: Event) -> Refusal:
    return _invalid(f"cannot {action}: transaction is {tx.status}/{tx.fraud_status}, "
                    f"and {event.value} is not allowed there")


def _allows(tx: Transaction, event: Event) -> bool:
    """``lifecycle.allows`` for a record's wire strings (no enums built: see BY_VALUE)."""
    return (tx.status, tx.fraud_status, event) in BY_VALUE


# --- the charge ------------------------------------------------------------------------------
def screen_event(verdict: FraudStatus, is_card: bool) -> Event | None:
    """The fraud screen's verdict as a lifecycle event (a challenge holds cards only: a
    virtual account or e-wallet payment is paid by the customer, nothing to review)."""
    if verdict is FraudStatus.DENY:
        return Event.SCREEN_DENIED
    if verdict is FraudStatus.CHALLENGE and is_card:
        return Event.SCREEN_CHALLENGED
    return None


def charge_call(tx: Transaction) -> BankCall:
    """The first bank call of a new charge (routed, screened, not denied): authorize a card
    (capture too unless held or not asked), or open a virtual account / e-wallet payment."""
    txid = tx.transaction_id
    if tx.payment_type == PaymentType.CREDIT_CARD:
        return BankCall(banklink.AUTHORIZE, {
            "op_id": f"{txid}:authorize", "transaction_id": txid, "amount": tx.gross_amount,
            "currency": tx.currency, "capture": tx.capture_requested})
    kind = "va" if tx.payment_type == PaymentType.BANK_TRANSFER else "ewallet"
    return BankCall(banklink.OPEN_PAYMENT, {
        "op_id": f"{txid}:open", "transaction_id": txid, "kind": kind,
        "amount": tx.gross_amount, "currency": tx.currency, "expiry_ms": tx.expiry_ms,
        "merchant_id": tx.merchant_id})


def repeat_charge(tx: Transaction, request_hash: bytes) -> dict[str, Any] | Refusal:
    """A charge whose order id exists: the stored first answer if the content is the same,
    DUPLICATE_ORDER if not, OUTCOME_UNKNOWN while the first bank call is unanswered."""
    if not hmac.compare_digest(tx.request_hash, request_hash):
        return Refusal(ErrorCode.DUPLICATE_ORDER,
                       f"order {tx.order_id!r} exists with different content", "args.order_id")
    if tx.unresolved or tx.charge_result is None:
        return Refusal(ErrorCode.OUTCOME_UNKNOWN,
                       "the bank's answer for this order is not known yet; retry later")
    return tx.charge_result


def status_unknown(tx: Transaction) -> Refusal | None:
    """``status`` of a charge whose first bank call is unanswered: only the intent is on disk,
    and "pending" would be a guess. Say so instead."""
    if tx.pending_op is not None and tx.pending_op["op"] in DEFINING_OPS:
        return Refusal(ErrorCode.OUTCOME_UNKNOWN,
                       "the bank has not answered this charge yet; ask again")
    return None


# --- the other operations ----------------------------------------------------------------------
def capture(tx: Transaction, amount: int | None) -> Decision:
    """Capture ``amount`` (the authorized amount when None) of an authorization."""
    amount = amount or tx.gross_amount
    if tx.status == S.CAPTURE and tx.captured_amount == amount:
        return REPLAY
    if tx.fraud_status == FraudStatus.CHALLENGE:
        return _invalid("transaction is held for fraud review; use approve or deny")
    if not _allows(tx, Event.CAPTURE_OK) and tx.status != S.PENDING:
        return _not_allowed(tx, "capture", Event.CAPTURE_OK)
    if tx.payment_type != PaymentType.CREDIT_CARD or tx.status != S.AUTHORIZE:
        return _invalid("only an authorized card transaction can be captured")
    if amount > tx.gross_amount:
        return Refusal(ErrorCode.INVALID_FIELD, "capture amount exceeds the authorized amount",
                       "args.gross_amount")
    return BankCall(banklink.CAPTURE, {
        "op_id": f"{tx.transaction_id}:capture", "transaction_id": tx.transaction_id,
        "amount": amount})


def cancel(tx: Transaction) -> Decision:
    """Void an authorization, or close an unpaid virtual account / e-wallet payment."""
    if tx.status == S.CANCEL:
        return REPLAY
    if _allows(tx, Event.VOID_OK):
        return BankCall(banklink.VOID, {
            "op_id": f"{tx.transaction_id}:void", "transaction_id": tx.transaction_id})
    if _allows(tx, Event.CLOSE_CANCELLED):
        return BankCall(banklink.CLOSE_PAYMENT, {
            "op_id": f"{tx.transaction_id}:close", "transaction_id": tx.transaction_id,
            "reason": "cancel"})
    return _not_allowed(tx, "cancel", Event.CLOSE_CANCELLED)


def expire(tx: Transaction) -> Decision:
    """Close an unpaid payment whose time ran out (the expiry scheduler, or the merchant)."""
    if tx.status == S.EXPIRE:
        return REPLAY
    if not _allows(tx, Event.CLOSE_EXPIRED):
        return _not_allowed(tx, "expire", Event.CLOSE_EXPIRED)
    return BankCall(banklink.CLOSE_PAYMENT, {
        "op_id": f"{tx.transaction_id}:close", "transaction_id": tx.transaction_id,
        "reason": "expire"})


def refund(tx: Transaction, refund_key: str, amount: int | None, reason: str | None
           ) -> Decision:
    """Refund ``amount`` (all that remains when None) under its own idempotency key. A key
    already used is a repeat (or DUPLICATE_ORDER for another amount) before any status
    check, also after the transaction is fully refunded (docs/protocol.md §5.3)."""
    for r in tx.refunds:
        if r["refund_key"] == refund_key:
            if amount is not None and amount != r["amount"]:
                return Refusal(ErrorCode.DUPLICATE_ORDER,
                               f"refund key {refund_key!r} was used for another amount",
                               "args.refund_key")
            return REPLAY
    if not _allows(tx, Event.REFUND_PARTIAL):
        return _not_allowed(tx, "refund", Event.REFUND_PARTIAL)
    if len(tx.refunds) >= REFUNDS_PER_TRANSACTION_MAX:
        return Refusal(ErrorCode.TOO_MANY_REFUNDS,
                       f"the transaction already has {len(tx.refunds)} refunds, the most one "
                       f"may have; refund the rest in one", "args.refund_key")
    remaining = tx.captured_amount - tx.refunded_amount
    if amount is None:
        amount = remaining
    if amount > remaining or amount <= 0:
        return Refusal(ErrorCode.REFUND_EXCEEDS_CAPTURED,
                       f"refund of {amount} exceeds the refundable {remaining}", "args.amount")
    return BankCall(banklink.REFUND, {
        "op_id": f"{tx.transaction_id}:refund:{refund_key}",
        "transaction_id": tx.transaction_id, "amount": amount},
        {"refund_key": refund_key, "reason": reason})


def approve(tx: Transaction) -> Decision:
    """Capture an authorization held for fraud review, and accept it."""
    if tx.fraud_status == FraudStatus.ACCEPT and tx.fraud_reasons and tx.status == S.CAPTURE:
        return REPLAY
    if not _allows(tx, Event.REVIEW_APPROVED):
        return _invalid("only a transaction held for fraud review (challenge) can be approved")
    return BankCall(banklink.CAPTURE, {
        "op_id": f"{tx.transaction_id}:capture", "transaction_id": tx.transaction_id,
        "amount": tx.gross_amount}, {"fraud_review": True})


def deny(tx: Transaction) -> Decision:
    """Void an authorization held for fraud review, and deny it."""
    if tx.fraud_status == FraudStatus.DENY and tx.status == S.DENY:
        return REPLAY
    if not _allows(tx, Event.REVIEW_DENIED):
        return _invalid("only a transaction held for fraud review (challenge) can be denied")
    return BankCall(banklink.VOID, {
        "op_id": f"{tx.transaction_id}:void", "transaction_id": tx.transaction_id},
        {"fraud_review": True})


# --- bank answers ------------------------------------------------------------------------------
def effect_of_answer(tx: Transaction, result: dict[str, Any], now_ms: int) -> Effect:
    """What the bank's ``result`` to the recorded intent (``tx.pending_op``) does.

    Answers, by op: authorize ``approved`` (+ ``captured``) or declined; open ``ok`` (+
    ``number``) or refused; capture / void / refund ``ok`` or refused (the operation fails
    with INVALID_TRANSITION and the transaction stays); close ``closed``, ``paid`` (the
    customer was faster: settled, and the close fails) or neither; and ``reversed`` for an
    answer that never came and was undone (a charge then fails)."""
    pending = tx.pending_op
    assert pending is not None, "an answer needs the intent it answers"
    op, args = pending["op"], pending["args"]
    reason = result.get("reason")
    if result.get("reversed"):
        return Effect(Event.REVERSED if op in DEFINING_OPS else None,
                      decline_reason=reason, sets_decline_reason=True)
    if op == banklink.AUTHORIZE:
        if result["approved"]:
            if result["captured"]:
                return Effect(Event.AUTHORIZE_CAPTURED, captured_amount=tx.gross_amount)
            return Effect(Event.AUTHORIZE_APPROVED)
        return Effect(Event.AUTHORIZE_DECLINED, decline_reason=reason, sets_decline_reason=True)
    if op == banklink.OPEN_PAYMENT:
        if result.get("ok"):
            return Effect(Event.PAYMENT_OPENED, va_number=result["number"])
        return Effect(Event.OPEN_FAILED, decline_reason=reason, sets_decline_reason=True)
    if op == banklink.CAPTURE:
        if result.get("ok"):
            return Effect(Event.REVIEW_APPROVED if pending.get("fraud_review")
                          else Event.CAPTURE_OK, captured_amount=args["amount"])
        return Effect(error=_invalid(f"bank refused capture: {reason}"))
    if op == banklink.VOID:
        if result.get("ok"):
            return Effect(Event.REVIEW_DENIED if pending.get("fraud_review") else Event.VOID_OK)
        return Effect(error=_invalid(f"bank refused void: {reason}"))
    if op == banklink.REFUND:
        if result.get("ok"):
            amount: int = args["amount"]
            full = tx.refunded_amount + amount >= tx.captured_amount
            return Effect(Event.REFUND_FULL if full else Event.REFUND_PARTIAL, refund={
                "refund_key": pending["refund_key"], "amount": amount, "time_ms": now_ms,
                "reason": pending.get("reason")})
        return Effect(error=_invalid(f"bank refused refund: {reason}"))
    if op == banklink.CLOSE_PAYMENT:
        if result.get("closed"):
            return Effect(Event.CLOSE_EXPIRED if args["reason"] == "expire"
                          else Event.CLOSE_CANCELLED)
        if result.get("paid"):
            return _paid(tx, result.get("paid_ms") or now_ms,
                         _invalid("the customer has already paid; the transaction is settled"))
        return Effect()
    raise AssertionError(f"no decision for bank op {op!r}")


def _paid(tx: Transaction, paid_ms: int, error: Refusal | None = None) -> Effect:
    return Effect(Event.PAID, captured_amount=tx.gross_amount, settlement_ms=paid_ms,
                  error=error)


def payment_effect(tx: Transaction, paid_ms: int) -> Effect | None:
    """A bank reports that the customer paid: settle a pending payment; anything else (a
    repeat, a payment already closed) changes nothing (None)."""
    if not _allows(tx, Event.PAID):
        return None
    return _paid(tx, paid_ms)


def lifecycle_check(tx: Transaction, event: Event) -> None:
    """Raise INVALID_TRANSITION, naming state and event, unless the table allows ``event``
    in ``tx``'s state (nothing changes either way)."""
    if not _allows(tx, event):
        next_state(S(tx.status), FraudStatus(tx.fraud_status), event)


def apply_effect(tx: Transaction, effect: Effect) -> None:
    """Apply ``effect`` to the working copy ``tx``: the intent is answered (cleared), the
    amounts and details change, and the status changes through the lifecycle table. A
    defining op (the charge's) stores the answer a repeated charge gets.

    An event the table does not allow in ``tx``'s state raises INVALID_TRANSITION before
    anything of ``tx`` changes (the intent stays, so the answer can be settled again)."""
    if effect.event is not None:
        lifecycle_check(tx, effect.event)
    pending = tx.pending_op
    tx.pending_op = None
    if effect.sets_decline_reason:
        tx.decline_reason = effect.decline_reason
    if effect.va_number is not None:
        tx.va_number = effect.va_number
    if effect.captured_amount is not None:
        tx.captured_amount = effect.captured_amount
    if effect.refund is not None:
        tx.refunds.append(effect.refund)
        tx.refunded_amount += effect.refund["amount"]
    if effect.event is not None:
        tx.apply_event(effect.event)
    if effect.settlement_ms is not None:
        tx.settlement_ms = effect.settlement_ms
    if pending is not None and pending["op"] in DEFINING_OPS:
        tx.charge_result = tx.to_result()


# --- unknown outcomes ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Resend:
    """Settle by sending the same op again under the same op id (the bank deduplicates)."""

    call: BankCall


@dataclass(frozen=True, slots=True)
class InquireThenReverse:
    """Ask the bank what became of ``inquiry``'s op id; if it never happened, reverse it so it
    cannot happen later, and apply :func:`reversed_answer`."""

    inquiry: BankCall
    reversal: BankCall


def unknown_outcome(tx: Transaction) -> Resend | InquireThenReverse:
    """How to settle the recorded intent of a bank call that got no answer. A charge's op
    (``DEFINING_OPS``) is never re-sent (the hub keeps no card numbers): inquiry, then
    reversal. Later ops carry everything they need and are re-sent."""
    pending = tx.pending_op
    assert pending is not None
    op, op_id = pending["op"], pending["op_id"]
    if op not in DEFINING_OPS:
        return Resend(BankCall(op, pending["args"]))
    return InquireThenReverse(
        BankCall(banklink.INQUIRY, {"op_id": op_id}),
        BankCall(banklink.REVERSE, {"op_id": f"{op_id}:reverse",
                                    "transaction_id": tx.transaction_id,
                                    "target_op_id": op_id}))


def reversed_answer() -> dict[str, Any]:
    """The answer applied after a reversal: the op did not happen and never will."""
    return {"approved": False, "ok": False, "reversed": True, "reason": REVERSED_REASON}
