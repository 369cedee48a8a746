"""Nonces: a bounded space per merchant (issue 11, item 2), and spent by authentication."""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.config import ConfigError, HubConfig, MerchantConfig
from gateway.hub.auth import NONCE_ENTRY_BYTES, Authenticator, AuthError, NonceCache
from gateway.transactions.model import now_ms
from protocol import body as bodycodec
from protocol import messages, signing
from protocol.errors import ErrorCode
from protocol.frame import Flags, FrameType
from tests.deploy import KEYS, Deployment, deployment
from tests.rawclient import Raw

SPACE = 6  # M1's nonce space in the deployment below


def request(merchant: str, rid: int, op: str, args: dict[str, Any], *,
            key: str | None = None) -> messages.Request:
    nonce, ts = os.urandom(16), now_ms()
    args_raw = messages.encode_args(args)
    sig = signing.sign_request((key or KEYS[merchant]).encode(), merchant, rid, op, ts, nonce,
                               args_raw)
    return messages.Request(rid, op, merchant, ts, nonce, sig, args_raw)


def test_each_merchant_has_its_own_nonce_space() -> None:
    auth = Authenticator({m: k.encode() for m, k in KEYS.items()}, 300.0, {"M1": 3, "M2": 3})
    for rid in range(1, 4):
        auth.check(request("M1", rid, "status", {"order_id": "x"}), "M1")
    with pytest.raises(AuthError) as info:
        auth.check(request("M1", 4, "status", {"order_id": "x"}), "M1")
    assert info.value.code is ErrorCode.RATE_LIMITED
    auth.check(request("M2", 1, "status", {"order_id": "x"}), "M2")  # M2 is unaffected
    assert (len(auth.nonces["M1"]), len(auth.nonces["M2"])) == (3, 1)


def test_a_request_that_fails_authentication_spends_no_nonce() -> None:
    auth = Authenticator({"M1": b"k"}, 300.0, {"M1": 1})
    forged = request("M1", 1, "status", {"order_id": "x"}, key="not-the-key")
    for _ in range(3):
        with pytest.raises(AuthError) as info:
            auth.check(forged, "M1")
        assert info.value.code is ErrorCode.BAD_SIGNATURE
    assert len(auth.nonces["M1"]) == 0


def test_nonces_expire_with_their_timestamp() -> None:
    cache = NonceCache(10.0, 2)
    cache.add(b"a" * 16, timestamp_s=100.0, now_s=100.0)
    cache.add(b"b" * 16, timestamp_s=100.0, now_s=100.5)
    with pytest.raises(AuthError) as info:
        cache.add(b"a" * 16, timestamp_s=100.0, now_s=105.0)
    assert info.value.code is ErrorCode.REPLAYED
    with pytest.raises(AuthError) as info:
        cache.add(b"c" * 16, timestamp_s=105.0, now_s=105.0)
    assert info.value.code is ErrorCode.RATE_LIMITED
    cache.add(b"c" * 16, timestamp_s=111.0, now_s=111.0)  # a and b left the window
    assert len(cache) == 1


# 5,000 and 20,000 come just after the set's table has grown (the worst case per entry).
@pytest.mark.parametrize("entries", [1_000, 5_000, 20_000, 50_000])
def test_memory_per_nonce_is_within_the_documented_bound(entries: int) -> None:
    cache = NonceCache(300.0, entries)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        start_s = time.time()
        for i in range(entries):
            # The largest nonce the schema allows, arriving over many seconds (many buckets).
            cache.add(os.urandom(32), start_s + i / 1000, start_s + i / 1000)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == entries
    assert used / entries <= NONCE_ENTRY_BYTES, used / entries


def test_nonce_space_is_derived_from_the_rate_limit_and_window() -> None:
    m = MerchantConfig("M1", "k", rate_per_s=100.0, rate_burst=200)
    cfg = HubConfig(merchants=[m], timestamp_window_s=300.0)
    assert cfg.nonce_entries_max(m) == 200 + 100 * 601
    small = MerchantConfig("M2", "k", rate_per_s=100.0, rate_burst=200, nonce_entries_max=500)
    assert HubConfig(merchants=[small]).nonce_entries_max(small) == 500
    with pytest.raises(ConfigError, match="rate_burst"):
        HubConfig(merchants=[MerchantConfig("M3", "k", rate_burst=200, nonce_entries_max=10)])


# --- over TLS, against a real hub -------------------------------------------------------------
@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # M1: a nonce space of SPACE; its token bucket refills fast, so what refuses it once the
    # space is full is the nonce space, not the rate limit.
    with deployment(tmp_path_factory.mktemp("nonces"), bca_nodes=1, merchant_overrides={
            "M1": {"rate_per_s": 10_000.0, "rate_burst": SPACE, "nonce_entries_max": SPACE}}) as d:
        yield d


def signed_frame(merchant: str, rid: int, op: str, args: dict[str, Any]) -> bytes:
    req = request(merchant, rid, op, args)
    return messages.encode_request(rid, op, merchant, req.timestamp_ms, req.nonce,
                                   req.signature, req.args_raw)


async def answer(raw: Raw) -> tuple[int, Any, str]:
    frame = await raw.next_frame(10)
    while frame.type == FrameType.PING:
        frame = await raw.next_frame(10)
    assert frame.type == FrameType.RESPONSE
    body = bodycodec.unpack(frame.body)
    if frame.flags & Flags.ERROR:
        return frame.request_id, ErrorCode(body["code"]), body["message"]
    return frame.request_id, None, ""


async def test_one_merchant_filling_its_nonce_space_locks_out_only_itself(
        dep: Deployment) -> None:
    m1 = await Raw.open(dep, "M1")
    await m1.hello("M1")
    m2 = await Raw.open(dep, "M2")
    await m2.hello("M2")
    for rid in range(1, SPACE + 1):  # one at a time: the bucket refills between them
        m1.send(signed_frame("M1", rid, "status", {"order_id": "x"}))
        assert (await answer(m1))[1] is ErrorCode.NOT_FOUND
    m1.send(signed_frame("M1", SPACE + 1, "status", {"order_id": "x"}))
    rid, code, message = await answer(m1)
    assert (rid, code) == (SPACE + 1, ErrorCode.RATE_LIMITED)
    assert "replay window" in message  # the nonce space refused it, not the token bucket
    for rid in range(1, SPACE + 3):  # M2 is served, beyond M1's space
        m2.send(signed_frame("M2", rid, "status", {"order_id": "x"}))
        assert (await answer(m2))[:2] == (rid, ErrorCode.NOT_FOUND)
    m1.close()
    m2.close()


async def test_a_request_rejected_after_authentication_spends_its_nonce(
        dep: Deployment) -> None:
    raw = await Raw.open(dep, "M2")
    await raw.hello("M2")
    invalid = signed_frame("M2", 100, "charge", {"order_id": "o-spent", "gross_amount": -1,
                                                 "payment_type": "credit_card"})
    unknown = signed_frame("M2", 101, "no.such.op", {"order_id": "x"})
    not_found = signed_frame("M2", 102, "status", {"order_id": "o-never"})
    for frame, first in ((invalid, ErrorCode.INVALID_FIELD),
                         (unknown, ErrorCode.UNKNOWN_OPERATION),
                         (not_found, ErrorCode.NOT_FOUND)):
        raw.send(frame)
        assert (await answer(raw))[1] is first
        raw.send(frame)  # the exact frame again: authenticated once, its nonce is spent
        assert (await answer(raw))[1] is ErrorCode.REPLAYED
    raw.close()


async def test_a_request_refused_before_authentication_spends_nothing(dep: Deployment) -> None:
    raw = await Raw.open(dep, "M2")
    await raw.hello("M2")
    good = request("M2", 200, "status", {"order_id": "x"})
    forged = messages.encode_request(200, "status", "M2", good.timestamp_ms, good.nonce,
                                     b"\x00" * 32, good.args_raw)
    raw.send(forged)
    assert (await answer(raw))[1] is ErrorCode.BAD_SIGNATURE
    # The same nonce, now with the right signature: not REPLAYED, the forgery spent nothing.
    raw.send(messages.encode_request(200, "status", "M2", good.timestamp_ms, good.nonce,
                                     good.signature, good.args_raw))
    assert (await answer(raw))[1] is ErrorCode.NOT_FOUND
    raw.close()
