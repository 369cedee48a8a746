"""The money decisions (gateway.transactions.decisions), without I/O: for every state, every
operation and every bank answer, which bank op is called with which arguments (or which
immediate answer is given) and what the answer does to the transaction. Then random
operation sequences against a simulated bank, checking the money invariants."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.transactions import decisions as d
from gateway.transactions.decisions import (
    REPLAY,
    BankCall,
    Effect,
    InquireThenReverse,
    Refusal,
    Resend,
)
from gateway.transactions.model import Transaction
from protocol import banklink
from protocol.errors import ErrorCode
from protocol.lifecycle import STATES, TERMINAL, Event
from protocol.operations import FraudStatus as F
from protocol.operations import TransactionStatus as S

GROSS = 1000
NOW = 1_700_000_000_000
TXID = "tx-1"
CARD, VA, EWALLET = "credit_card", "bank_transfer", "echannel"


def make(status: S = S.PENDING, fraud: F = F.ACCEPT, ptype: str = CARD, *,
         captured: int = 0, refunds: tuple[int, ...] = (), **kw: Any) -> Transaction:
    tx = Transaction(transaction_id=TXID, merchant_id="M1", order_id="o1", gross_amount=GROSS,
                     currency="IDR", payment_type=ptype, status=status.value,
                     fraud_status=fraud.value, request_hash=b"h" * 16, created_ms=NOW,
                     updated_ms=NOW, bank="bca", captured_amount=captured, **kw)
    for i, amount in enumerate(refunds):
        tx.refunds.append({"refund_key": f"k{i}", "amount": amount, "time_ms": NOW,
                           "reason": None})
        tx.refunded_amount += amount
    return tx


def answer(tx: Transaction, call: BankCall, result: dict[str, Any]) -> Effect:
    """Record ``call`` as the intent, apply the bank's ``result``; return the effect."""
    tx.pending_op = call.intent()
    effect = d.effect_of_answer(tx, result, NOW + 5)
    d.apply_effect(tx, effect)
    assert tx.pending_op is None
    return effect


def state(tx: Transaction) -> tuple[str, str]:
    return tx.status, tx.fraud_status


def refusal(decision: d.Decision) -> Refusal:
    assert isinstance(decision, Refusal), decision
    return decision


# --- the charge ----------------------------------------------------------------------------
def test_charge_call_card_authorizes_with_capture_flag() -> None:
    tx = make(capture_requested=False)
    call = d.charge_call(tx)
    assert call == BankCall(banklink.AUTHORIZE, {
        "op_id": f"{TXID}:authorize", "transaction_id": TXID, "amount": GROSS,
        "currency": "IDR", "capture": False})
    assert call.intent() == {"op": banklink.AUTHORIZE, "op_id": f"{TXID}:authorize",
                             "args": call.args}


@pytest.mark.parametrize(("ptype", "kind"), [(VA, "va"), (EWALLET, "ewallet")])
def test_charge_call_opens_a_payment(ptype: str, kind: str) -> None:
    tx = make(ptype=ptype, expiry_ms=NOW + 60_000)
    assert d.charge_call(tx) == BankCall(banklink.OPEN_PAYMENT, {
        "op_id": f"{TXID}:open", "transaction_id": TXID, "kind": kind, "amount": GROSS,
        "currency": "IDR", "expiry_ms": NOW + 60_000, "merchant_id": "M1"})


@pytest.mark.parametrize(("verdict", "is_card", "event"), [
    (F.ACCEPT, True, None), (F.ACCEPT, False, None),
    (F.CHALLENGE, True, Event.SCREEN_CHALLENGED), (F.CHALLENGE, False, None),
    (F.DENY, True, Event.SCREEN_DENIED), (F.DENY, False, Event.SCREEN_DENIED)])
def test_screen_event(verdict: F, is_card: bool, event: Event | None) -> None:
    assert d.screen_event(verdict, is_card) is event


@pytest.mark.parametrize(("fraud", "result", "expected", "captured", "reason"), [
    (F.ACCEPT, {"approved": True, "captured": True}, ("capture", "accept"), GROSS, None),
    (F.ACCEPT, {"approved": True, "captured": False}, ("authorize", "accept"), 0, None),
    (F.ACCEPT, {"approved": False, "captured": False, "reason": "insufficient funds"},
     ("deny", "accept"), 0, "insufficient funds"),
    (F.ACCEPT, d.reversed_answer(), ("failure", "accept"), 0, d.REVERSED_REASON),
    (F.CHALLENGE, {"approved": True, "captured": False}, ("authorize", "challenge"), 0, None),
    (F.CHALLENGE, {"approved": False, "captured": False, "reason": "stolen"},
     ("deny", "challenge"), 0, "stolen"),
    (F.CHALLENGE, d.reversed_answer(), ("failure", "challenge"), 0, d.REVERSED_REASON),
])
def test_authorize_answers(fraud: F, result: dict[str, Any], expected: tuple[str, str],
                           captured: int, reason: str | None) -> None:
    tx = make(fraud=fraud)
    effect = answer(tx, d.charge_call(tx), result)
    assert effect.error is None
    assert state(tx) == expected
    assert tx.captured_amount == captured and tx.decline_reason == reason
    assert tx.charge_result == tx.to_result()  # what a repeated charge is answered


def test_authorize_captured_while_held_breaks_the_table() -> None:
    """A held charge is sent with capture=false; a bank capturing it anyway is not guessed
    into a state: the table refuses (the runner then leaves the intent unresolved)."""
    tx = make(fraud=F.CHALLENGE)
    tx.pending_op = d.charge_call(tx).intent()
    effect = d.effect_of_answer(tx, {"approved": True, "captured": True}, NOW)
    intent = dict(tx.pending_op or {})
    before = dataclasses.replace(tx, pending_op=intent)
    with pytest.raises(Exception) as info:
        d.apply_effect(tx, effect)
    assert getattr(info.value, "code", None) is ErrorCode.INVALID_TRANSITION
    # ... and the record is left as it was: the intent stays, so the resolver can settle it
    # again, and no amount was recorded for a state the table refused.
    assert tx.pending_op == intent and tx.captured_amount == 0
    assert dataclasses.asdict(tx) == dataclasses.asdict(before)


@pytest.mark.parametrize(("result", "expected", "va", "reason"), [
    ({"ok": True, "number": "8800123"}, ("pending", "accept"), "8800123", None),
    ({"ok": False, "reason": "no such bank"}, ("failure", "accept"), None, "no such bank"),
    (d.reversed_answer(), ("failure", "accept"), None, d.REVERSED_REASON),
])
def test_open_payment_answers(result: dict[str, Any], expected: tuple[str, str],
                              va: str | None, reason: str | None) -> None:
    tx = make(ptype=VA, expiry_ms=NOW + 1)
    assert answer(tx, d.charge_call(tx), result).error is None
    assert state(tx) == expected and tx.va_number == va and tx.decline_reason == reason
    assert tx.updated_ms > NOW - 1 and tx.charge_result == tx.to_result()


def test_repeat_charge() -> None:
    tx = make(S.CAPTURE, captured=GROSS)
    assert refusal(d.repeat_charge(tx, b"x" * 16)) == Refusal(
        ErrorCode.DUPLICATE_ORDER, "order 'o1' exists with different content",
        "args.order_id")
    assert refusal(d.repeat_charge(tx, b"h" * 16)).code is ErrorCode.OUTCOME_UNKNOWN
    tx.charge_result = {"first": "answer"}
    assert d.repeat_charge(tx, b"h" * 16) == {"first": "answer"}
    tx.pending_op = {"op": banklink.AUTHORIZE, "op_id": "x", "args": {}}
    assert refusal(d.repeat_charge(tx, b"h" * 16)).code is ErrorCode.OUTCOME_UNKNOWN


def test_status_of_an_unanswered_charge_is_unknown_not_pending() -> None:
    tx = make()
    assert d.status_unknown(tx) is None
    tx.pending_op = d.charge_call(tx).intent()
    assert refusal(d.status_unknown(tx)).code is ErrorCode.OUTCOME_UNKNOWN
    tx = make(S.AUTHORIZE)
    decision = d.capture(tx, None)
    assert isinstance(decision, BankCall)
    tx.pending_op = decision.intent()
    assert d.status_unknown(tx) is None  # a later op: the status is known, only that op isn't


# --- later operations: the immediate answers and the calls -------------------------------------
def _capture_call(amount: int) -> BankCall:
    return BankCall(banklink.CAPTURE, {"op_id": f"{TXID}:capture", "transaction_id": TXID,
                                       "amount": amount})


VOID = BankCall(banklink.VOID, {"op_id": f"{TXID}:void", "transaction_id": TXID})


def _close(reason: str) -> BankCall:
    return BankCall(banklink.CLOSE_PAYMENT, {"op_id": f"{TXID}:close", "transaction_id": TXID,
                                             "reason": reason})


INVALID = ErrorCode.INVALID_TRANSITION


@pytest.mark.parametrize(("tx", "amount", "expected"), [
    (make(S.AUTHORIZE), None, _capture_call(GROSS)),
    (make(S.AUTHORIZE), 600, _capture_call(600)),
    (make(S.AUTHORIZE), 1500, Refusal(ErrorCode.INVALID_FIELD,
                                      "capture amount exceeds the authorized amount",
                                      "args.gross_amount")),
    (make(S.AUTHORIZE, F.CHALLENGE), None,
     Refusal(INVALID, "transaction is held for fraud review; use approve or deny")),
    (make(S.CAPTURE, captured=GROSS), None, REPLAY),
    (make(S.CAPTURE, captured=600), 600, REPLAY),
    (make(S.CAPTURE, captured=600), None, INVALID),
    (make(S.PARTIAL_REFUND, captured=GROSS, refunds=(1,)), None, INVALID),
    (make(S.PENDING), None,
     Refusal(INVALID, "only an authorized card transaction can be captured")),
    (make(S.PENDING, ptype=VA), None, INVALID),
    (make(S.SETTLEMENT, ptype=VA, captured=GROSS), None, INVALID),
    (make(S.CANCEL), None, INVALID),
    (make(S.DENY, F.DENY), None, INVALID),
])
def test_capture_decisions(tx: Transaction, amount: int | None, expected: Any) -> None:
    got = d.capture(tx, amount)
    if isinstance(expected, ErrorCode):
        assert refusal(got).code is expected
    else:
        assert got == expected


@pytest.mark.parametrize(("tx", "op", "expected"), [
    (make(S.AUTHORIZE), "cancel", VOID),
    (make(S.AUTHORIZE, F.CHALLENGE), "cancel", VOID),
    (make(S.PENDING, ptype=VA), "cancel", _close("cancel")),
    (make(S.CANCEL), "cancel", REPLAY),
    (make(S.CAPTURE, captured=GROSS), "cancel", INVALID),
    (make(S.EXPIRE, ptype=VA), "cancel", INVALID),
    (make(S.PENDING, ptype=VA), "expire", _close("expire")),
    (make(S.EXPIRE, ptype=VA), "expire", REPLAY),
    (make(S.SETTLEMENT, ptype=VA, captured=GROSS), "expire", INVALID),
    (make(S.AUTHORIZE), "expire", INVALID),
    (make(S.AUTHORIZE, F.CHALLENGE), "approve",
     BankCall(banklink.CAPTURE, _capture_call(GROSS).args, {"fraud_review": True})),
    (make(S.CAPTURE, captured=GROSS, fraud_reasons=["amount"]), "approve", REPLAY),
    (make(S.CAPTURE, captured=GROSS), "approve", INVALID),  # never held: not a repeat
    (make(S.AUTHORIZE), "approve", INVALID),
    (make(S.AUTHORIZE, F.CHALLENGE), "deny", BankCall(banklink.VOID, VOID.args,
                                                      {"fraud_review": True})),
    (make(S.DENY, F.DENY), "deny", REPLAY),
    (make(S.DENY, F.ACCEPT), "deny", INVALID),
    (make(S.AUTHORIZE), "deny", INVALID),
])
def test_cancel_expire_approve_deny_decisions(tx: Transaction, op: str, expected: Any) -> None:
    got = getattr(d, op)(tx)
    if isinstance(expected, ErrorCode):
        assert refusal(got).code is expected
    else:
        assert got == expected


def _refund_call(key: str, amount: int, reason: str | None = None) -> BankCall:
    return BankCall(banklink.REFUND, {"op_id": f"{TXID}:refund:{key}", "transaction_id": TXID,
                                      "amount": amount}, {"refund_key": key, "reason": reason})


@pytest.mark.parametrize(("tx", "key", "amount", "expected"), [
    (make(S.CAPTURE, captured=GROSS), "a", None, _refund_call("a", GROSS)),
    (make(S.CAPTURE, captured=GROSS), "a", 400, _refund_call("a", 400)),
    (make(S.SETTLEMENT, ptype=VA, captured=GROSS), "a", 1, _refund_call("a", 1)),
    (make(S.PARTIAL_REFUND, captured=GROSS, refunds=(400,)), "a", None,
     _refund_call("a", 600)),
    (make(S.PARTIAL_REFUND, captured=GROSS, refunds=(400,)), "k0", None, REPLAY),
    (make(S.PARTIAL_REFUND, captured=GROSS, refunds=(400,)), "k0", 400, REPLAY),
    (make(S.PARTIAL_REFUND, captured=GROSS, refunds=(400,)), "k0", 300,
     Refusal(ErrorCode.DUPLICATE_ORDER, "refund key 'k0' was used for another amount",
             "args.refund_key")),
    (make(S.REFUND, captured=GROSS, refunds=(GROSS,)), "k0", None, REPLAY),
    (make(S.REFUND, captured=GROSS, refunds=(GROSS,)), "new", None, INVALID),
    (make(S.CAPTURE, captured=GROSS), "a", 1001,
     Refusal(ErrorCode.REFUND_EXCEEDS_CAPTURED, "refund of 1001 exceeds the refundable 1000",
             "args.amount")),
    (make(S.PARTIAL_REFUND, captured=GROSS, refunds=(400,)), "a", 601,
     ErrorCode.REFUND_EXCEEDS_CAPTURED),
    (make(S.CAPTURE, captured=GROSS), "a", 0, ErrorCode.REFUND_EXCEEDS_CAPTURED),
    (make(S.PARTIAL_REFUND, captured=GROSS,
          refunds=(1,) * d.REFUNDS_PER_TRANSACTION_MAX), "a", 1,
     Refusal(ErrorCode.TOO_MANY_REFUNDS, "the transaction already has 100 refunds, the most "
             "one may have; refund the rest in one", "args.refund_key")),
    (make(S.AUTHORIZE), "a", None, INVALID),
    (make(S.PENDING, ptype=VA), "a", None, INVALID),
    (make(S.CANCEL), "a", None, INVALID),
])
def test_refund_decisions(tx: Transaction, key: str, amount: int | None,
                          expected: Any) -> None:
    got = d.refund(tx, key, amount, None)
    if isinstance(expected, ErrorCode):
        assert refusal(got).code is expected
    else:
        assert got == expected


# --- later operations: every bank answer -----------------------------------------------------
@pytest.mark.parametrize(("fraud", "decide", "result", "expected", "error"), [
    (F.ACCEPT, lambda t: d.capture(t, 600), {"ok": True}, ("capture", "accept"), None),
    (F.ACCEPT, lambda t: d.capture(t, 600), {"ok": False, "reason": "r"},
     ("authorize", "accept"), "bank refused capture: r"),
    (F.ACCEPT, d.cancel, {"ok": True}, ("cancel", "accept"), None),
    (F.ACCEPT, d.cancel, {"ok": False, "reason": "r"}, ("authorize", "accept"),
     "bank refused void: r"),
    (F.CHALLENGE, d.cancel, {"ok": True}, ("cancel", "challenge"), None),
    (F.CHALLENGE, d.approve, {"ok": True}, ("capture", "accept"), None),
    (F.CHALLENGE, d.approve, {"ok": False, "reason": "r"}, ("authorize", "challenge"),
     "bank refused capture: r"),
    (F.CHALLENGE, d.deny, {"ok": True}, ("deny", "deny"), None),
    (F.CHALLENGE, d.deny, {"ok": False, "reason": "r"}, ("authorize", "challenge"),
     "bank refused void: r"),
])
def test_answers_to_operations_on_an_authorization(fraud: F, decide: Any,
                                                   result: dict[str, Any],
                                                   expected: tuple[str, str],
                                                   error: str | None) -> None:
    tx = make(S.AUTHORIZE, fraud)
    call = decide(tx)
    effect = answer(tx, call, result)
    assert state(tx) == expected
    assert effect.error == (None if error is None else Refusal(INVALID, error))
    if expected[0] == "capture":
        assert tx.captured_amount == call.args["amount"]
    else:
        assert tx.captured_amount == 0
    assert tx.charge_result is None  # only a charge's answer is stored for repeats


@pytest.mark.parametrize(("start", "refunds", "amount", "expected", "refunded"), [
    (S.CAPTURE, (), 400, "partial_refund", 400),
    (S.CAPTURE, (), GROSS, "refund", GROSS),
    (S.SETTLEMENT, (), 999, "partial_refund", 999),
    (S.PARTIAL_REFUND, (400,), 300, "partial_refund", 700),
    (S.PARTIAL_REFUND, (400,), 600, "refund", GROSS),
])
def test_refund_answers(start: S, refunds: tuple[int, ...], amount: int, expected: str,
                        refunded: int) -> None:
    tx = make(start, captured=GROSS, refunds=refunds)
    call = d.refund(tx, "new", amount, "damaged")
    assert isinstance(call, BankCall)
    assert answer(tx, call, {"ok": True}).error is None
    assert tx.status == expected and tx.refunded_amount == refunded
    assert tx.refunds[-1] == {"refund_key": "new", "amount": amount, "time_ms": NOW + 5,
                              "reason": "damaged"}
    tx2 = make(start, captured=GROSS, refunds=refunds)
    effect = answer(tx2, call, {"ok": False, "reason": "r"})
    assert effect.error == Refusal(INVALID, "bank refused refund: r")
    assert tx2.status == start and tx2.refunded_amount == sum(refunds)


@pytest.mark.parametrize(("reason", "result", "expected", "error"), [
    ("cancel", {"closed": True}, "cancel", None),
    ("expire", {"closed": True}, "expire", None),
    ("cancel", {"closed": False, "paid": True, "paid_ms": NOW - 7}, "settlement",
     "the customer has already paid; the transaction is settled"),
    ("expire", {"closed": False, "paid": True}, "settlement",
     "the customer has already paid; the transaction is settled"),
    ("cancel", {"closed": False, "paid": False}, "pending", None),
])
def test_close_payment_answers(reason: str, result: dict[str, Any], expected: str,
                               error: str | None) -> None:
    tx = make(ptype=VA, va_number="88")
    call = d.cancel(tx) if reason == "cancel" else d.expire(tx)
    assert isinstance(call, BankCall)
    effect = answer(tx, call, result)
    assert tx.status == expected
    assert effect.error == (None if error is None else Refusal(INVALID, error))
    if expected == "settlement":
        assert tx.captured_amount == GROSS
        assert tx.settlement_ms == result.get("paid_ms", NOW + 5)
    else:
        assert tx.captured_amount == 0


def test_reversed_later_op_changes_only_the_reason() -> None:
    """A later op is settled forward (re-sent), never reversed; a reversed answer to one
    would leave the status alone rather than guess."""
    tx = make(S.AUTHORIZE)
    call = d.capture(tx, None)
    assert isinstance(call, BankCall)
    effect = answer(tx, call, d.reversed_answer())
    assert effect.event is None and effect.error is None
    assert state(tx) == ("authorize", "accept") and tx.decline_reason == d.REVERSED_REASON


@pytest.mark.parametrize(("start", "paid"), [
    ((S.PENDING, VA), True), ((S.SETTLEMENT, VA), False), ((S.EXPIRE, VA), False),
    ((S.CANCEL, VA), False), ((S.FAILURE, EWALLET), False)])
def test_payment_notification(start: tuple[S, str], paid: bool) -> None:
    tx = make(start[0], ptype=start[1])
    effect = d.payment_effect(tx, NOW - 3)
    if not paid:
        assert effect is None  # a repeat, or a payment already closed: nothing changes
        return
    assert effect is not None
    d.apply_effect(tx, effect)
    assert tx.status == "settlement" and tx.captured_amount == GROSS
    assert tx.settlement_ms == NOW - 3 and tx.charge_result is None


# --- unknown outcomes --------------------------------------------------------------------
def test_unknown_outcome_of_a_charge_is_inquired_then_reversed() -> None:
    tx = make()
    tx.pending_op = d.charge_call(tx).intent()
    plan = d.unknown_outcome(tx)
    assert plan == InquireThenReverse(
        BankCall(banklink.INQUIRY, {"op_id": f"{TXID}:authorize"}),
        BankCall(banklink.REVERSE, {"op_id": f"{TXID}:authorize:reverse",
                                    "transaction_id": TXID,
                                    "target_op_id": f"{TXID}:authorize"}))
    # found: the answer the bank recorded is applied as if it had arrived
    found = make()
    answer(found, d.charge_call(found), {"approved": True, "captured": True})
    assert state(found) == ("capture", "accept")
    # not found and reversed: the charge failed, its repeat says so
    d.apply_effect(tx, d.effect_of_answer(tx, d.reversed_answer(), NOW))
    assert state(tx) == ("failure", "accept") and tx.charge_result is not None


def test_unknown_outcome_of_an_open_payment_is_inquired_then_reversed() -> None:
    tx = make(ptype=VA, expiry_ms=NOW + 1)
    tx.pending_op = d.charge_call(tx).intent()
    plan = d.unknown_outcome(tx)
    assert isinstance(plan, InquireThenReverse)
    assert plan.inquiry.args == {"op_id": f"{TXID}:open"}


@pytest.mark.parametrize("decide", [
    lambda t: d.capture(make(S.AUTHORIZE), 700),
    lambda t: d.cancel(make(S.AUTHORIZE)),
    lambda t: d.refund(make(S.CAPTURE, captured=GROSS), "r", 5, None),
    lambda t: d.expire(make(S.PENDING, ptype=VA)),
])
def test_unknown_outcome_of_a_later_op_is_resent(decide: Any) -> None:
    call = decide(None)
    assert isinstance(call, BankCall)
    tx = make()
    tx.pending_op = call.intent()
    assert d.unknown_outcome(tx) == Resend(BankCall(call.op, call.args))


# --- exhaustively: a call the decisions make can always take the bank's answer ---------------
ANSWERS: dict[str, list[dict[str, Any]]] = {
    banklink.CAPTURE: [{"ok": True}, {"ok": False, "reason": "r"}, d.reversed_answer()],
    banklink.VOID: [{"ok": True}, {"ok": False, "reason": "r"}, d.reversed_answer()],
    banklink.REFUND: [{"ok": True}, {"ok": False, "reason": "r"}, d.reversed_answer()],
    banklink.CLOSE_PAYMENT: [{"closed": True}, {"paid": True, "paid_ms": NOW},
                             {"closed": False}, d.reversed_answer()],
}
OPS = [("capture", lambda t: d.capture(t, None)), ("capture_part", lambda t: d.capture(t, 1)),
       ("cancel", d.cancel), ("expire", d.expire), ("approve", d.approve), ("deny", d.deny),
       ("refund", lambda t: d.refund(t, "new", None, None)),
       ("refund_part", lambda t: d.refund(t, "new", 1, None))]


def _in(status: S, fraud: F, ptype: str) -> Transaction:
    captured = GROSS if status in (S.CAPTURE, S.SETTLEMENT, S.PARTIAL_REFUND, S.REFUND) else 0
    refunds = (GROSS,) if status is S.REFUND else (100,) if status is S.PARTIAL_REFUND else ()
    return make(status, fraud, ptype, captured=captured, refunds=refunds,
                fraud_reasons=["rule"] if fraud is not F.ACCEPT else [])


CASES = [(s, f, p, name) for (s, f), p, (name, _fn) in
         itertools.product(sorted(STATES), (CARD, VA), OPS)]


@pytest.mark.parametrize(("status", "fraud", "ptype", "op"), CASES,
                         ids=[f"{s}-{f}-{p}-{o}" for s, f, p, o in CASES])
def test_every_state_operation_and_answer(status: S, fraud: F, ptype: str, op: str) -> None:
    decide = dict(OPS)[op]
    before = _in(status, fraud, ptype)
    decision = decide(before)
    if isinstance(decision, Refusal):
        assert decision.code in {ErrorCode.INVALID_TRANSITION, ErrorCode.INVALID_FIELD,
                                 ErrorCode.DUPLICATE_ORDER, ErrorCode.REFUND_EXCEEDS_CAPTURED,
                                 ErrorCode.TOO_MANY_REFUNDS}
        return
    if decision is REPLAY:
        return
    assert isinstance(decision, BankCall)
    assert status not in TERMINAL  # a final transaction never calls a bank
    for result in ANSWERS[decision.op]:
        tx = _in(status, fraud, ptype)
        effect = answer(tx, decision, result)  # never INVALID_TRANSITION after the bank
        assert (S(tx.status), F(tx.fraud_status)) in STATES
        assert 0 <= tx.refunded_amount <= tx.captured_amount <= tx.gross_amount
        if effect.error is not None or effect.event is None:
            assert tx.status == status.value or tx.status == "settlement"


# --- random sequences against a simulated bank ------------------------------------------------
@dataclasses.dataclass
class SimBank:
    """A truthful bank that deduplicates by op id. ``customer`` pays, ``settlement`` is the
    merchant's account, ``held`` is authorized and not captured."""

    customer: int = 10 * GROSS
    settlement: int = 0
    held: int = 0
    done: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    reversed: set[str] = dataclasses.field(default_factory=set)
    payment: str | None = None  # None, "open", "paid", "closed"

    def total(self) -> int:
        return self.customer + self.settlement + self.held

    def call(self, op: str, args: dict[str, Any], approve: bool) -> dict[str, Any]:
        op_id = args["op_id"]
        if op == banklink.INQUIRY:
            return {"found": op_id in self.done, "result": self.done.get(op_id)}
        if op_id in self.done:
            return self.done[op_id]
        if op == banklink.REVERSE:
            self.reversed.add(args["target_op_id"])
            return {"ok": True}
        assert op_id not in self.reversed
        result = self._do(op, args, approve)
        self.done[op_id] = result
        return result

    def _do(self, op: str, args: dict[str, Any], approve: bool) -> dict[str, Any]:
        amount = args.get("amount", 0)
        if op == banklink.AUTHORIZE:
            if not approve or self.customer < amount:
                return {"approved": False, "captured": False, "reason": "declined"}
            self.customer -= amount
            if args["capture"]:
                self.settlement += amount
            else:
                self.held += amount
            return {"approved": True, "captured": args["capture"]}
        if op == banklink.CAPTURE:
            assert self.held >= amount > 0
            self.settlement += amount
            self.customer += self.held - amount
            self.held = 0
            return {"ok": True}
        if op == banklink.VOID:
            self.customer += self.held
            self.held = 0
            return {"ok": True}
        if op == banklink.REFUND:
            assert self.settlement >= amount > 0
            self.settlement -= amount
            self.customer += amount
            return {"ok": True}
        if op == banklink.OPEN_PAYMENT:
            if not approve:
                return {"ok": False, "reason": "refused"}
            self.payment = "open"
            return {"ok": True, "number": "8800"}
        if op == banklink.CLOSE_PAYMENT:
            if self.payment == "paid":
                return {"closed": False, "paid": True, "paid_ms": NOW}
            self.payment = "closed"
            return {"closed": True}
        raise AssertionError(op)

    def customer_pays(self) -> bool:
        if self.payment != "open":
            return False
        self.payment = "paid"
        self.customer -= GROSS
        self.settlement += GROSS
        return True


def run(tx: Transaction, bank: SimBank, call: BankCall, approve: bool, lost: str) -> None:
    """Intent, bank call, answer; ``lost``: the answer never came ("before": the request
    did not reach the bank, "after": it did), then settled as the runner settles it."""
    tx.pending_op = call.intent()
    if lost == "no":
        result = bank.call(call.op, call.args, approve)
    else:
        if lost == "after":
            bank.call(call.op, call.args, approve)
        plan = d.unknown_outcome(tx)
        if isinstance(plan, Resend):
            result = bank.call(plan.call.op, plan.call.args, approve)
        else:
            found = bank.call(plan.inquiry.op, plan.inquiry.args, approve)
            if found["found"]:
                result = found["result"]
            else:
                bank.call(plan.reversal.op, plan.reversal.args, approve)
                result = d.reversed_answer()
    d.apply_effect(tx, d.effect_of_answer(tx, result, NOW))


op_strategy = st.one_of(
    st.tuples(st.just("capture"), st.sampled_from([None, 1, GROSS // 2, GROSS, GROSS + 1])),
    st.tuples(st.just("refund"), st.sampled_from(["a", "b", "c", "d"]),
              st.sampled_from([None, 1, 300, GROSS // 2, GROSS, GROSS + 1])),
    st.tuples(st.sampled_from(["cancel", "expire", "approve", "deny", "pay", "pay_unnoticed",
                               "notify"])))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(ptype=st.sampled_from([CARD, VA, EWALLET]), capture=st.booleans(),
       verdict=st.sampled_from(list(F)), approve=st.booleans(),
       lost=st.lists(st.sampled_from(["no", "no", "no", "before", "after"]), min_size=20,
                     max_size=20),
       ops=st.lists(op_strategy, max_size=12))
def test_random_operation_sequences_keep_the_money_invariants(
        ptype: str, capture: bool, verdict: F, approve: bool, lost: list[str],
        ops: list[tuple[Any, ...]]) -> None:
    bank = SimBank()
    start_total = bank.total()
    tx = make(ptype=ptype, capture_requested=capture, expiry_ms=NOW + 1)
    screened = d.screen_event(verdict, ptype == CARD)
    if screened is not None:
        tx.apply_event(screened)
    if screened is Event.SCREEN_CHALLENGED:
        tx.capture_requested = False
    if screened is not Event.SCREEN_DENIED:
        run(tx, bank, d.charge_call(tx), approve, lost[0])
    unnoticed = False
    terminal_at: str | None = None
    history = [tx.status]

    def check() -> None:
        assert (S(tx.status), F(tx.fraud_status)) in STATES
        assert 0 <= tx.refunded_amount <= tx.captured_amount <= tx.gross_amount
        assert tx.refunded_amount == sum(r["amount"] for r in tx.refunds)
        assert len({r["refund_key"] for r in tx.refunds}) == len(tx.refunds)
        assert bank.total() == start_total  # the bank creates and destroys no money
        if not unnoticed:
            # money conserved: what moved to the merchant is what the hub says was captured
            # and not refunded
            assert bank.settlement == tx.captured_amount - tx.refunded_amount
            if tx.status in ("capture", "settlement"):
                assert tx.captured_amount > 0 and tx.refunded_amount == 0
            if tx.status == "refund":
                assert tx.refunded_amount == tx.captured_amount
            if tx.status == "partial_refund":
                assert 0 < tx.refunded_amount < tx.captured_amount
        assert tx.pending_op is None

    check()
    for i, op in enumerate(ops, start=1):
        name = op[0]
        decision: d.Decision | None
        if name == "capture":
            decision = d.capture(tx, op[1])
        elif name == "refund":
            decision = d.refund(tx, op[1], op[2], None)
        elif name in ("pay", "pay_unnoticed"):
            if bank.customer_pays():
                unnoticed = True
                if name == "pay":
                    name = "notify"
            decision = None
        else:
            decision = getattr(d, name)(tx) if name != "notify" else None
        if name == "notify" and unnoticed:
            effect = d.payment_effect(tx, NOW)
            if effect is not None:
                d.apply_effect(tx, effect)
            unnoticed = False
        if isinstance(decision, BankCall):
            run(tx, bank, decision, True, lost[i % len(lost)])
            if tx.status == "settlement":
                unnoticed = False  # the close found it paid: the hub knows now
        history.append(tx.status)
        if terminal_at is not None:
            assert tx.status == terminal_at  # terminal states stay terminal
        elif S(tx.status) in TERMINAL:
            terminal_at = tx.status
        check()
    if unnoticed:  # the payment report arrives in the end
        effect = d.payment_effect(tx, NOW)
        if effect is not None:
            d.apply_effect(tx, effect)
        unnoticed = False
        check()


@pytest.mark.parametrize("result", [{"approved": True, "captured": True},
                                    {"approved": True, "captured": False},
                                    {"approved": False, "reason": "insufficient funds"}])
def test_a_charge_answer_is_the_event_map_with_its_hop_times(result: dict[str, Any]) -> None:
    """The runner reuses a charge's stored answer (``charge_result``, built by apply_effect)
    as the event's and webhook's map without ``hops_us``, instead of building the map again
    (gateway/hub/runner.py, charge_answered): the two must be the same map."""
    tx = make(masked_card="481100******0001", card_brand="visa")
    tx.hops_us["received"] = 1
    call = BankCall(banklink.AUTHORIZE, {"op_id": f"{TXID}:authorize", "transaction_id": TXID,
                                         "amount": GROSS, "currency": "IDR"})
    answer(tx, call, {"ok": True, **result})
    assert tx.charge_result is not None and "hops_us" in tx.charge_result
    shown = {k: v for k, v in tx.charge_result.items() if k != "hops_us"}
    assert shown == tx.to_result(with_hops=False)
    assert list(shown) == list(tx.to_result(with_hops=False))
