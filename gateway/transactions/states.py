"""The error for an operation or event the transaction lifecycle (``protocol.lifecycle``)
does not allow in the transaction's state."""

from __future__ import annotations

from protocol.errors import ErrorCode, PaywireError


class InvalidTransition(PaywireError):
    code = ErrorCode.INVALID_TRANSITION
