"""What the hub reads of a bank node's answers (``protocol.banklink.ANSWERS``,
docs/protocol.md §10.4): a readable answer of each op passes; one that lacks what the
hub's decisions read, or holds it with the wrong type, is named as unreadable (the hub then
settles the op as an unknown outcome, ``tests/test_hostile_bank_link.py``)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.transactions import decisions
from protocol import banklink as b

READABLE: list[tuple[str, Any]] = [
    (b.AUTHORIZE, {"approved": True, "captured": False, "auth_code": "ABC123"}),
    (b.AUTHORIZE, {"approved": False, "code": 502, "reason": "insufficient funds"}),
    (b.AUTHORIZE, decisions.reversed_answer()),
    (b.AUTHORIZE, {"approved": True, "captured": True, "duplicate": True,
                   b.TIMINGS_US: {"received": 1}}),
    (b.OPEN_PAYMENT, {"ok": True, "number": "8808000000000001"}),
    (b.OPEN_PAYMENT, {"ok": False, "code": 508, "reason": "currency"}),
    (b.OPEN_PAYMENT, decisions.reversed_answer()),
    (b.CAPTURE, {"ok": True}),
    (b.VOID, {"ok": False, "reason": "no open authorization"}),
    (b.REFUND, {"ok": True, "reason": None}),
    (b.CLOSE_PAYMENT, {"closed": True}),
    (b.CLOSE_PAYMENT, {"closed": False, "paid": True, "paid_ms": 1_764_547_200_000}),
    (b.REVERSE, {"ok": True, "undone": False}),
    (b.INQUIRY, {"found": False, "result": None}),
    (b.INQUIRY, {"found": True, "result": {"approved": True, "captured": True}}),
    (b.ADMIN_PAY, {"anything": "goes"}),  # no table: tools read their own answers
]

UNREADABLE: list[tuple[str, Any]] = [
    (b.AUTHORIZE, {"auth_code": "F00001"}),  # no ``approved``
    (b.AUTHORIZE, {"approved": True}),  # approved, but captured or not?
    (b.AUTHORIZE, {"approved": "yes", "captured": True}),
    (b.AUTHORIZE, {"approved": False, "reason": 5}),
    (b.AUTHORIZE, {"approved": False, "reason": "x" * 256}),
    (b.AUTHORIZE, [True]),
    (b.AUTHORIZE, None),
    (b.OPEN_PAYMENT, {"ok": True}),  # no ``number``
    (b.OPEN_PAYMENT, {"ok": True, "number": ""}),
    (b.CAPTURE, {}),
    (b.VOID, {"ok": 1}),
    (b.REFUND, {"result": {"ok": True}}),
    (b.CLOSE_PAYMENT, {"paid": True}),
    (b.CLOSE_PAYMENT, {"closed": False, "paid": True, "paid_ms": -1}),
    (b.REVERSE, {"undone": True}),
    (b.INQUIRY, {"found": True}),
    (b.INQUIRY, {"found": True, "result": "approved"}),
    (b.INQUIRY, {"result": None}),
]


@pytest.mark.parametrize(("op", "answer"), READABLE)
def test_a_readable_answer_passes(op: str, answer: Any) -> None:
    assert b.answer_defect(op, answer) is None


@pytest.mark.parametrize(("op", "answer"), UNREADABLE)
def test_an_unreadable_answer_is_named(op: str, answer: Any) -> None:
    defect = b.answer_defect(op, answer)
    assert isinstance(defect, str) and defect


def test_every_hub_to_bank_op_has_a_table() -> None:
    """A new batchable op without a table would reach ``effect_of_answer`` unchecked."""
    assert set(b.BATCHABLE) <= set(b.ANSWERS)
