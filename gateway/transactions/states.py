"""Checks against the transaction lifecycle table (``protocol.lifecycle``)."""

from __future__ import annotations

from protocol.errors import InvalidTransition
from protocol.lifecycle import TRANSITIONS
from protocol.operations import TransactionStatus as S

__all__ = ["InvalidTransition", "check"]


def check(current: S, target: S, action: str) -> None:
    """Raise INVALID_TRANSITION naming the action and both statuses; change nothing."""
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(f"cannot {action}: transaction is {current.value}, "
                                f"and {current.value} -> {target.value} is not allowed")
