"""Hostile peers on raw sockets: each gets its documented outcome; the hub keeps serving."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.client import Card
from gateway.transactions.model import now_ms
from protocol import body as bodycodec
from protocol import messages, signing
from protocol.errors import ErrorCode
from protocol.frame import Flags, FrameType
from tests.deploy import KEYS, RICH, Deployment, deployment
from tests.rawclient import Raw

IN_FLIGHT_MAX = 4


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("hostile"), bca_nodes=1,
                    hub_overrides={"hello_timeout_s": 0.5, "in_flight_max": IN_FLIGHT_MAX},
                    merchant_overrides={"M2": {"rate_per_s": 5.0, "rate_burst": 10}}) as d:
        yield d


def signed(merchant: str, rid: int, op: str, args: dict[str, Any]) -> bytes:
    nonce = os.urandom(16)
    ts = now_ms()
    sig = signing.sign_request(KEYS[merchant].encode(), merchant, rid, op, ts, nonce, args)
    return messages.encode_request(rid, op, merchant, ts, nonce, sig, args)


async def still_serving(dep: Deployment) -> None:
    async with dep.client() as c:
        tx = await c.charge(f"alive-{os.urandom(4).hex()}", 1_000,
                            card=Card(RICH[0], 12, 2030, "123"))
    assert tx.transaction_status == "capture"


@pytest.mark.parametrize("after_hello", [False, True])
async def test_length_prefix_0xffffffff(dep: Deployment, after_hello: bool) -> None:
    raw = await Raw.open(dep)
    if after_hello:
        await raw.hello()
    raw.send(struct.pack(">IBBHQ", 0xFFFFFFFF, 1, 3, 0, 1))
    assert await raw.error_then_close() is ErrorCode.FRAME_TOO_LARGE
    await still_serving(dep)


async def test_truncated_frame_then_eof(dep: Deployment) -> None:
    raw = await Raw.open(dep)
    await raw.hello()
    frame = signed("M1", 1, "status", {"order_id": "x"})
    raw.send(frame[: len(frame) // 2])
    await raw.writer.drain()
    raw.writer.transport.abort()  # EOF mid-frame; the hub just closes its side
    await still_serving(dep)


async def test_connection_that_never_sends_hello(dep: Deployment) -> None:
    raw = await Raw.open(dep)
    assert await raw.error_then_close() is ErrorCode.HANDSHAKE_TIMEOUT
    await still_serving(dep)


async def test_plaintext_to_the_tls_port(dep: Deployment) -> None:
    raw = await Raw.open(dep, tls=False)
    raw.send(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n")
    raw.send(messages.encode_message(FrameType.HELLO, {"versions": [1]}))
    try:
        data = await asyncio.wait_for(raw.reader.read(65536), 5)
    except ConnectionError:
        data = b""  # reset: as good an answer as any
    # Nothing, or a TLS alert record (content type 21), and never a Paywire frame.
    assert data == b"" or data[0] == 0x15, data[:16]
    assert await raw.closed()
    await still_serving(dep)


@pytest.mark.parametrize("garbage", [b"\x00" * 4 + b"\x09" + b"\x00" * 11,  # version 9
                                     b"\x00\x00\x00\x00\x01\x63" + b"\x00" * 10,  # type 99
                                     b"\x00\x00\x00\x00\x01\x03\x80\x00" + b"\x00" * 8])
async def test_garbage_after_a_valid_handshake(dep: Deployment, garbage: bytes) -> None:
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(garbage)
    code = await raw.error_then_close()
    assert code in (ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNKNOWN_FRAME_TYPE,
                    ErrorCode.RESERVED_FLAGS)
    await still_serving(dep)


async def test_random_garbage_never_kills_the_hub(dep: Deployment) -> None:
    for seed in range(5):
        raw = await Raw.open(dep)
        await raw.hello()
        raw.send(os.urandom(64 + seed * 100))
        code = await raw.error_then_close()
        assert code.is_fatal
    await still_serving(dep)


async def test_malformed_body_fails_only_that_request(dep: Deployment) -> None:
    raw = await Raw.open(dep)
    await raw.hello()
    from protocol.frame import encode_frame

    raw.send(encode_frame(FrameType.REQUEST, 7, b"\xc1not msgpack"))
    raw.send(signed("M1", 8, "status", {"order_id": "nope"}))
    first, second = await raw.next_frame(), await raw.next_frame()
    assert (first.request_id, first.flags) == (7, Flags.ERROR)
    assert bodycodec.unpack(first.body)["code"] == ErrorCode.MALFORMED_BODY
    assert bodycodec.unpack(second.body)["code"] == ErrorCode.NOT_FOUND  # still open
    raw.close()


async def test_requests_past_the_in_flight_limit(dep: Deployment) -> None:
    await dep.admin("bca", "admin.faults", {"latency_ms": 300})
    try:
        raw = await Raw.open(dep)
        welcome = await raw.hello()
        assert welcome["in_flight_max"] == IN_FLIGHT_MAX
        batch = b"".join(signed("M1", i, "charge", {
            "order_id": f"flood-{os.urandom(3).hex()}-{i}", "gross_amount": 1_000,
            "payment_type": "credit_card",
            "card": {"number": RICH[1], "exp_month": 12, "exp_year": 2030, "cvv": "123"}})
            for i in range(1, 21))
        raw.send(batch)
        codes = []
        for _ in range(20):
            frame = await raw.next_frame(10)
            codes.append(bodycodec.unpack(frame.body).get("code") if frame.flags & Flags.ERROR
                         else "ok")
        assert codes.count("ok") == IN_FLIGHT_MAX
        assert codes.count(ErrorCode.TOO_MANY_IN_FLIGHT) == 20 - IN_FLIGHT_MAX
        raw.close()
    finally:
        await dep.admin("bca", "admin.faults", {"latency_ms": 0})
    await still_serving(dep)


async def test_flood_past_the_rate_limit(dep: Deployment) -> None:
    raw = await Raw.open(dep, "M2")
    await raw.hello("M2")
    raw.send(b"".join(signed("M2", i, "status", {"order_id": "x"}) for i in range(1, 41)))
    codes = [bodycodec.unpack((await raw.next_frame()).body)["code"] for _ in range(40)]
    limited = codes.count(ErrorCode.RATE_LIMITED)
    assert limited >= 25  # burst 10, refill 5/s
    # The burst was let through (then bounded by the in-flight limit, not buffered).
    served = codes.count(ErrorCode.NOT_FOUND)
    assert served >= 1 and served + codes.count(ErrorCode.TOO_MANY_IN_FLIGHT) == 40 - limited
    raw.close()
    await still_serving(dep)  # M1 is not affected by M2's flood


async def test_peer_that_goes_silent_is_dropped_after_three_heartbeats(tmp_path: Path) -> None:
    # 1 s, not less: the hub PINGs on its timer and gives up after 3 silent intervals, so
    # a stall of the hub's loop longer than two intervals (a loaded machine) would make it
    # give up before its second PING, and the test would see fewer than 2.
    dep = await Deployment(tmp_path, bca_nodes=1,
                            hub_overrides={"heartbeat_interval_s": 1.0}).astart()
    try:
        raw = await Raw.open(dep)
        welcome = await raw.hello()
        assert welcome["heartbeat_interval_ms"] == 1000
        pings = 0
        while True:  # never answer: after ~3 silent intervals the hub gives up
            frame = await raw.next_frame(10)
            if frame.type == FrameType.PING:
                pings += 1
                continue
            assert frame.type == FrameType.ERROR
            code = ErrorCode(messages.decode_body(FrameType.ERROR, frame.body)["code"])
            break
        assert code is ErrorCode.IDLE_TIMEOUT and pings >= 2
        assert await raw.closed()
    finally:
        dep.stop()
