"""The error for an operation or event the transaction lifecycle (``protocol.lifecycle``)
does not allow in the transaction's state (defined in the one error module)."""

from __future__ import annotations

from protocol.errors import InvalidTransition

__all__ = ["InvalidTransition"]
