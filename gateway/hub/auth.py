"""Per-request authentication: timestamp window, nonce replay check, HMAC signature.

Order matters: the signature is checked before the nonce is remembered, so an attacker
without the key cannot fill the nonce cache with junk and lock real requests out. Each
merchant has its own nonce space, so a merchant can fill only its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.ledger.base import SharedLedger
from protocol import signing
from protocol.errors import AuthenticationError as AuthError
from protocol.errors import ErrorCode
from protocol.messages import Request

# Memory per remembered nonce, an upper bound: its bytes object (49 + length), a list slot in
# its bucket (8) and its share of the set's table, which is what varies: measured with
# tracemalloc at 86-106 bytes for 16-byte nonces and 102-122 for 32-byte ones at most
# sizes, up to 179 just after the set has grown (its table is then 4-8x the entries). The
# per-second buckets keep expiry bookkeeping off the per-entry cost.
# tests/test_auth_nonces.py checks the bound at those worst sizes.
NONCE_ENTRY_BYTES = 192


class NonceCache:
    """One merchant's nonces seen within the timestamp window. Bounded: past
    ``entries_max`` live entries, that merchant's requests are refused with RATE_LIMITED
    rather than growing memory; other merchants have caches of their own.

    A nonce is kept until its request's timestamp leaves the window. Entries are grouped in
    one bucket per second of arrival (the bucket expires with its latest entry), so an entry
    lives at most ``2 * window_s`` + 1 s after it arrived (its timestamp may be ``window_s``
    ahead of the hub's clock): live entries ≤ the requests accepted in that time.
    """

    __slots__ = ("_buckets", "_seen", "entries_max", "window_s")

    def __init__(self, window_s: float, entries_max: int) -> None:
        self.window_s = window_s
        self.entries_max = entries_max
        self._seen: set[bytes] = set()
        # [arrival second, expiry (s), nonces that arrived in that second]
        self._buckets: deque[list[Any]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: bytes, timestamp_s: float, now_s: float) -> None:
        buckets = self._buckets
        while buckets and buckets[0][1] < now_s:
            self._seen.difference_update(buckets.popleft()[2])
        if nonce in self._seen:
            raise AuthError("nonce already used within the window", code=ErrorCode.REPLAYED)
        if len(self._seen) >= self.entries_max:
            raise AuthError(f"more than {self.entries_max} requests within the replay window "
                            f"for this merchant", code=ErrorCode.RATE_LIMITED)
        self._seen.add(nonce)
        # A nonce must be remembered until its timestamp falls out of the window.
        expires_s = timestamp_s + self.window_s
        second = int(now_s)
        if buckets and buckets[-1][0] == second:
            last = buckets[-1]
            if expires_s > last[1]:
                last[1] = expires_s
            last[2].append(nonce)
        else:
            buckets.append([second, expires_s, [nonce]])


class Authenticator:
    """Per-request authentication for every merchant of a hub: each merchant has its own
    keys (one, or two during a rotation: either verifies) and its own nonce space
    (``nonce_entries_max``), so one merchant can exhaust only its own.

    ``update`` swaps the merchants and keys in place (a configuration reload, SIGHUP): a
    request is checked against the keys in force when it is decoded."""

    def __init__(self, keys: Mapping[str, bytes | Sequence[bytes]], window_s: float,
                 nonce_entries_max: dict[str, int]) -> None:
        self.window_s = window_s
        self.keys: dict[str, tuple[bytes, ...]] = {}
        self.nonces: dict[str, NonceCache] = {}
        self.update(keys, nonce_entries_max)
        # Set on a ledger other hubs share: nonces are spent there too, so a request replayed
        # to another hub is refused. The local cache still refuses replays to this hub at
        # once and bounds each merchant's share here.
        self.shared: SharedLedger | None = None

    def update(self, keys: Mapping[str, bytes | Sequence[bytes]],
               nonce_entries_max: dict[str, int]) -> None:
        """The merchants and keys from now on. A removed merchant's nonce space is kept
        (bounded, it empties as its window passes): were the merchant added back within the
        window, a request captured before its removal is still REPLAYED."""
        self.keys = {m: (k,) if isinstance(k, bytes) else tuple(k) for m, k in keys.items()}
        for merchant in self.keys:
            cache = self.nonces.get(merchant)
            if cache is None:
                self.nonces[merchant] = NonceCache(self.window_s, nonce_entries_max[merchant])
            else:
                cache.entries_max = nonce_entries_max[merchant]

    def check(self, req: Request, session_merchant: str) -> asyncio.Future[int | None] | None:
        """Raise AuthError with the precise code, or return when the request is authentic.

        An authentic request's nonce is spent here, whatever happens to the request next
        (invalid args, a business error): the exact frame sent again is REPLAYED. With a
        shared ledger, returns the nonce's write there, which the request must await before
        acting (``replayed_elsewhere``); else ``None``.
        """
        if req.merchant_id != session_merchant:
            raise AuthError(f"merchant_id {req.merchant_id!r} does not match the connection's "
                            f"certificate and HELLO", code=ErrorCode.FORBIDDEN)
        keys = self.keys.get(req.merchant_id)
        if keys is None:
            # Also a merchant removed by a reload while its connection was open.
            raise AuthError("unknown merchant", code=ErrorCode.UNAUTHENTICATED)
        now_s = time.time()
        ts_s = req.timestamp_ms / 1000
        if abs(now_s - ts_s) > self.window_s:
            raise AuthError(f"timestamp is {now_s - ts_s:.0f} s from the hub's clock; the "
                            f"window is ±{self.window_s:.0f} s", code=ErrorCode.STALE_TIMESTAMP)
        # The primary key first: after a rotation most requests use it, so the second HMAC
        # is paid only by clients still on the previous key (and by forgeries).
        # (Unrolled, not any(generator): this runs for every request.)
        if not signing.verify_request(keys[0], req.signature, req.merchant_id, req.request_id,
                                      req.op, req.timestamp_ms, req.nonce, req.args_raw) \
                and not (len(keys) > 1 and signing.verify_request(
                    keys[1], req.signature, req.merchant_id, req.request_id, req.op,
                    req.timestamp_ms, req.nonce, req.args_raw)):
            raise AuthError("signature does not verify", code=ErrorCode.BAD_SIGNATURE)
        self.nonces[req.merchant_id].add(req.nonce, ts_s, now_s)
        if self.shared is None:
            return None
        return self.shared.spend_nonce(req.merchant_id, req.nonce,
                                       int((ts_s + self.window_s) * 1000))


def replayed_elsewhere(spent: int | None) -> None:
    """Raise REPLAYED if a shared ledger's nonce write found the nonce spent (by any hub)."""
    if spent is not None and spent < 0:
        raise AuthError("nonce already used within the window (on another hub)",
                        code=ErrorCode.REPLAYED)


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
