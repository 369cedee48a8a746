"""Per-request authentication: timestamp window, nonce replay check, HMAC signature.

Order matters: the signature is checked before the nonce is remembered, so an attacker
without the key cannot fill the nonce cache with junk and lock real requests out.
"""

from __future__ import annotations

import time
from collections import deque

from protocol import signing
from protocol.errors import ErrorCode, PaywireError
from protocol.messages import Request


class AuthError(PaywireError):
    code = ErrorCode.UNAUTHENTICATED


class NonceCache:
    """Nonces seen within the timestamp window. Bounded: past ``entries_max`` live entries,
    requests are refused with RATE_LIMITED rather than growing memory."""

    def __init__(self, window_s: float, entries_max: int) -> None:
        self.window_s = window_s
        self.entries_max = entries_max
        self._seen: set[bytes] = set()
        self._order: deque[tuple[float, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: bytes, timestamp_s: float, now_s: float) -> None:
        order = self._order
        while order and order[0][0] < now_s:
            self._seen.discard(order.popleft()[1])
        if key in self._seen:
            raise AuthError("nonce already used within the window", code=ErrorCode.REPLAYED)
        if len(self._seen) >= self.entries_max:
            raise AuthError("too many requests within the replay window",
                            code=ErrorCode.RATE_LIMITED)
        self._seen.add(key)
        # A nonce must be remembered until its timestamp falls out of the window.
        order.append((timestamp_s + self.window_s, key))


class Authenticator:
    def __init__(self, keys: dict[str, bytes], window_s: float, nonce_entries_max: int) -> None:
        self.keys = keys
        self.window_s = window_s
        self.nonces = NonceCache(window_s, nonce_entries_max)

    def check(self, req: Request, session_merchant: str) -> None:
        """Raise AuthError with the precise code, or return when the request is authentic."""
        if req.merchant_id != session_merchant:
            raise AuthError(f"merchant_id {req.merchant_id!r} does not match the connection's "
                            f"certificate and HELLO", code=ErrorCode.FORBIDDEN)
        key = self.keys.get(req.merchant_id)
        if key is None:
            raise AuthError("unknown merchant", code=ErrorCode.UNAUTHENTICATED)
        now_s = time.time()
        ts_s = req.timestamp_ms / 1000
        if abs(now_s - ts_s) > self.window_s:
            raise AuthError(f"timestamp is {now_s - ts_s:.0f} s from the hub's clock; the "
                            f"window is ±{self.window_s:.0f} s", code=ErrorCode.STALE_TIMESTAMP)
        if not signing.verify_request(key, req.signature, req.merchant_id, req.request_id,
                                      req.op, req.timestamp_ms, req.nonce, req.args):
            raise AuthError("signature does not verify", code=ErrorCode.BAD_SIGNATURE)
        self.nonces.add(req.merchant_id.encode() + b"\x00" + req.nonce, ts_s, now_s)


class TokenBucket:
    """``rate_per_s`` sustained, ``burst`` at once. Refilled lazily on each take."""

    __slots__ = ("burst", "rate_per_s", "stamp_s", "tokens")

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.stamp_s = now_s

    def take(self, now_s: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now_s - self.stamp_s) * self.rate_per_s)
        self.stamp_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
