"""The transaction lifecycle table, tested directly (h11's test_state.py): every allowed and
every forbidden (status, fraud_status, event), and that nothing in the hub changes a status
behind the table's back."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from gateway.audit import reachable
from gateway.transactions.model import Transaction
from protocol.errors import ErrorCode, PaywireError
from protocol.lifecycle import (
    BY_VALUE,
    INITIAL,
    STATES,
    TABLE,
    TERMINAL,
    TRANSITIONS,
    Event,
    allows,
    next_state,
)
from protocol.operations import FraudStatus as F
from protocol.operations import TransactionStatus as S

ROOT = Path(__file__).resolve().parent.parent

# Written out again on purpose: a change to the table must change this list too.
EXPECTED: set[tuple[str, str, str, str, str]] = {
    ("pending", "accept", "screen_denied", "deny", "deny"),
    ("pending", "accept", "screen_challenged", "pending", "challenge"),
    ("pending", "accept", "authorize_captured", "capture", "accept"),
    ("pending", "accept", "authorize_approved", "authorize", "accept"),
    ("pending", "accept", "authorize_declined", "deny", "accept"),
    ("pending", "accept", "reversed", "failure", "accept"),
    ("pending", "challenge", "authorize_approved", "authorize", "challenge"),
    ("pending", "challenge", "authorize_declined", "deny", "challenge"),
    ("pending", "challenge", "reversed", "failure", "challenge"),
    ("pending", "accept", "payment_opened", "pending", "accept"),
    ("pending", "accept", "open_failed", "failure", "accept"),
    ("pending", "accept", "paid", "settlement", "accept"),
    ("pending", "accept", "close_expired", "expire", "accept"),
    ("pending", "accept", "close_cancelled", "cancel", "accept"),
    ("authorize", "accept", "capture_ok", "capture", "accept"),
    ("authorize", "accept", "void_ok", "cancel", "accept"),
    ("authorize", "challenge", "review_approved", "capture", "accept"),
    ("authorize", "challenge", "review_denied", "deny", "deny"),
    ("authorize", "challenge", "void_ok", "cancel", "challenge"),
    ("capture", "accept", "refund_partial", "partial_refund", "accept"),
    ("capture", "accept", "refund_full", "refund", "accept"),
    ("settlement", "accept", "refund_partial", "partial_refund", "accept"),
    ("settlement", "accept", "refund_full", "refund", "accept"),
    ("partial_refund", "accept", "refund_partial", "partial_refund", "accept"),
    ("partial_refund", "accept", "refund_full", "refund", "accept"),
}

ALL = list(itertools.product(S, F, Event))
ALLOWED = [k for k in ALL if k in TABLE]
FORBIDDEN = [k for k in ALL if k not in TABLE]


def _tx(status: S, fraud: F) -> Transaction:
    return Transaction(transaction_id="t1", merchant_id="M1", order_id="o1", gross_amount=100,
                       currency="IDR", payment_type="credit_card", status=status.value,
                       fraud_status=fraud.value, request_hash=b"h" * 16, created_ms=1,
                       updated_ms=1)


def test_the_table_is_exactly_the_expected_rows() -> None:
    got = {(s.value, f.value, e.value, ns.value, nf.value)
           for (s, f, e), (ns, nf) in TABLE.items()}
    assert got == EXPECTED


def test_reachable_states() -> None:
    assert INITIAL == (S.PENDING, F.ACCEPT)
    expected = {
        (S.PENDING, F.ACCEPT), (S.PENDING, F.CHALLENGE), (S.AUTHORIZE, F.ACCEPT),
        (S.AUTHORIZE, F.CHALLENGE), (S.CAPTURE, F.ACCEPT), (S.SETTLEMENT, F.ACCEPT),
        (S.PARTIAL_REFUND, F.ACCEPT), (S.REFUND, F.ACCEPT), (S.DENY, F.ACCEPT),
        (S.DENY, F.CHALLENGE), (S.DENY, F.DENY), (S.CANCEL, F.ACCEPT),
        (S.CANCEL, F.CHALLENGE), (S.EXPIRE, F.ACCEPT), (S.FAILURE, F.ACCEPT),
        (S.FAILURE, F.CHALLENGE)}
    assert expected == STATES


@pytest.mark.parametrize(("status", "fraud", "event"), ALLOWED,
                         ids=[f"{s}-{f}-{e}" for s, f, e in ALLOWED])
def test_allowed_event_moves_the_transaction(status: S, fraud: F, event: Event) -> None:
    assert allows(status, fraud, event)
    new_status, new_fraud = next_state(status, fraud, event)
    tx = _tx(status, fraud)
    tx.apply_event(event)
    assert (tx.status, tx.fraud_status) == (new_status.value, new_fraud.value)
    assert tx.updated_ms > 1
    if new_status is S.SETTLEMENT:
        assert tx.settlement_ms == tx.updated_ms


@pytest.mark.parametrize(("status", "fraud", "event"), FORBIDDEN,
                         ids=[f"{s}-{f}-{e}" for s, f, e in FORBIDDEN])
def test_forbidden_event_raises_naming_state_and_event(status: S, fraud: F,
                                                       event: Event) -> None:
    assert not allows(status, fraud, event)
    with pytest.raises(PaywireError) as info:
        next_state(status, fraud, event)
    assert info.value.code is ErrorCode.INVALID_TRANSITION
    assert event.value in info.value.message
    assert f"{status.value}/{fraud.value}" in info.value.message
    tx = _tx(status, fraud)
    with pytest.raises(PaywireError):
        tx.apply_event(event)
    assert (tx.status, tx.fraud_status, tx.updated_ms) == (status.value, fraud.value, 1)


def test_terminal_statuses_have_no_way_out() -> None:
    for (s, _f, _e) in TABLE:
        assert s not in TERMINAL
    for s in TERMINAL:
        assert TRANSITIONS[s] == frozenset()
        assert reachable(s.value) == {s.value}


def test_the_by_value_index_is_the_table() -> None:
    assert {(S(s), F(f), e): (S(ns), F(nf)) for (s, f, e), (ns, nf, _) in BY_VALUE.items()} \
        == TABLE
    assert all(settled == (ns == "settlement") for ns, _nf, settled in BY_VALUE.values())


def test_status_summary_is_derived_from_the_table() -> None:
    for s in S:
        assert TRANSITIONS[s] == {ns for (st, _f, _e), (ns, _nf) in TABLE.items() if st == s}
    # the audit reads the summary: what may follow an acknowledged status
    assert reachable("pending") == {s.value for s in S}
    assert reachable("authorize") == {"authorize", "capture", "cancel", "deny",
                                      "partial_refund", "refund"}
    assert reachable("settlement") == {"settlement", "partial_refund", "refund"}


_ASSIGNED = {"status", "fraud_status"}
# (file, function) pairs allowed to assign a ``status`` attribute: the one transition
# function, and the fraud screen's own verdict object (not a transaction).
_ALLOWED_ASSIGNERS = {("gateway/transactions/model.py", "apply_event"),
                      ("gateway/fraud/engine.py", "add")}


def _assignments(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) \
                else func
            targets: list[ast.expr] = []
            if isinstance(child, ast.Assign):
                targets = list(child.targets)
            elif isinstance(child, ast.AugAssign | ast.AnnAssign):
                targets = [child.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr in _ASSIGNED:
                    found.append((func, child.lineno))
            visit(child, name)

    visit(tree, "")
    return found


def test_no_status_change_bypasses_the_table() -> None:
    """h11's rule: every change of a transaction's status or fraud status goes through
    ``Transaction.apply_event``; no other code in the hub assigns them."""
    offenders = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for func, line in _assignments(path):
            if (rel, func) not in _ALLOWED_ASSIGNERS:
                offenders.append(f"{rel}:{line} in {func or '<module>'}")
    assert offenders == []


def test_the_bypass_check_sees_an_assignment(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text("def f(tx):\n    tx.status = 'capture'\n    tx.fraud_status += 'x'\n")
    assert _assignments(src) == [("f", 2), ("f", 3)]
