"""Checks against the transaction lifecycle table (``protocol.lifecycle``)."""

from __future__ import annotations

from protocol.errors import ErrorCode, PaywireError
from protocol.lifecycle import TRANSITIONS
from protocol.operations import TransactionStatus as S


class InvalidTransition(PaywireError):
    code = ErrorCode.INVALID_TRANSITION


def check(current: S, target: S, action: str) -> None:
    """Raise INVALID_TRANSITION naming the action and both statuses; change nothing."""
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(f"cannot {action}: transaction is {current.value}, "
                                f"and {current.value} -> {target.value} is not allowed")
