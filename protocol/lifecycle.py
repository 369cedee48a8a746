"""The transaction lifecycle: which status may follow which. One table, pure data.

``pending`` is also where every transaction starts while its first bank call is in flight,
so the intent is on disk before any money moves.
"""

from __future__ import annotations

from protocol.operations import TransactionStatus as S

TERMINAL = frozenset({S.DENY, S.CANCEL, S.EXPIRE, S.REFUND, S.FAILURE})

# status -> the statuses it may move to.
TRANSITIONS: dict[S, frozenset[S]] = {
    S.PENDING: frozenset({S.AUTHORIZE, S.CAPTURE, S.SETTLEMENT, S.DENY, S.FAILURE,
                          S.EXPIRE, S.CANCEL}),
    S.AUTHORIZE: frozenset({S.CAPTURE, S.CANCEL, S.DENY}),
    S.CAPTURE: frozenset({S.SETTLEMENT, S.PARTIAL_REFUND, S.REFUND}),
    S.SETTLEMENT: frozenset({S.PARTIAL_REFUND, S.REFUND}),
    S.PARTIAL_REFUND: frozenset({S.PARTIAL_REFUND, S.REFUND}),
    S.DENY: frozenset(),
    S.CANCEL: frozenset(),
    S.EXPIRE: frozenset(),
    S.REFUND: frozenset(),
    S.FAILURE: frozenset(),
}
assert set(TRANSITIONS) == set(S)
assert all(not TRANSITIONS[s] for s in TERMINAL)
