"""Hostile peers, second round: what docs/protocol.md promises in the corners the first
round (tests/test_hostile_peers.py, test_conformance.py, test_spec_second_client.py) does not
reach: the hub's drain (§8, GOAWAY both ways), ``sent_us`` and request ids at their limits
(§4.1, §2.5), PING bodies at the negotiated limit (§8.1), pipelines that end in a fatal
frame (§3, §3.4, §7.1), a peer that floods PINGs and never reads (§3, §2.4), the plaintext
lab listener fed bytes that are not frames (§12), and the health listener fed requests a
load balancer never sends. The bank link has its own file (tests/test_hostile_bank_link.py).

A test marked ``xfail(strict=True)`` shows a defect: it asserts what the spec says, and fails
on the current code for the reason given.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol import body as bodycodec
from protocol import messages, signing
from protocol.errors import ErrorCode
from protocol.frame import Flags, Frame, FrameType, encode_frame
from tests.deploy import KEYS, RICH, Deployment, deployment
from tests.healthprobe import free_port, probe
from tests.rawclient import Raw
from tests.test_conformance import answers, card_charge, order, outcome
from tests.test_hostile_peers import signed, still_serving
from tests.test_plaintext import plaintext_port
from tests.waiting import wait_until

WAIT_S = 30.0


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("hostile2"), bca_nodes=1,
                    hub_overrides={"plaintext_listen": "127.0.0.1:0",
                                   "health_listen": f"127.0.0.1:{free_port()}"}) as d:
        yield d


def request_with_envelope(rid: int, op: str, args: dict[str, Any], **extra: Any) -> bytes:
    """A REQUEST signed with M1's key whose envelope also holds ``extra`` (packed by hand, so
    any value goes on the wire, in or out of range)."""
    nonce, ts = os.urandom(16), int(time.time() * 1000)
    args_raw = messages.encode_args(args)
    sig = signing.sign_request(KEYS["M1"].encode(), "M1", rid, op, ts, nonce, args_raw)
    return encode_frame(FrameType.REQUEST, rid, bodycodec.pack({
        "op": op, "merchant_id": "M1", "timestamp_ms": ts, "nonce": nonce, "signature": sig,
        "args": args_raw, **extra}))


def error_body(frame: Frame) -> dict[str, Any]:
    assert frame.type == FrameType.RESPONSE and frame.flags & Flags.ERROR, frame
    body: dict[str, Any] = bodycodec.unpack(frame.body)
    return body


async def frames_until_closed(raw: Raw, timeout_s: float = WAIT_S) -> list[Frame]:
    """Every frame the peer sends until it closes (PINGs included)."""
    got: list[Frame] = []
    while True:
        try:
            got.append(await raw.next_frame(timeout_s))
        except (EOFError, ConnectionError):
            return got
        except OSError:
            return got


# --- §4.1: the optional ``sent_us`` ---------------------------------------------------------
@pytest.mark.parametrize("sent_us", [0, 2**63 - 1, None])
async def test_sent_us_at_its_limits_is_display_only(dep: Deployment, sent_us: int | None
                                                     ) -> None:
    """Any value of the table (and nil: absent) is accepted, stored as the ``client_sent``
    hop as it came, and changes nothing else: the charge is captured."""
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(request_with_envelope(1, "charge", card_charge(oid), sent_us=sent_us))
    frame = (await answers(raw, 1))[1]
    assert outcome(frame) == "capture"
    hops = bodycodec.unpack(frame.body)["hops_us"]
    if sent_us is None:
        assert "client_sent" not in hops
    else:
        assert hops["client_sent"] == sent_us
    raw.close()


@pytest.mark.parametrize("sent_us", [2**63, -1, True, "1764547200000000", b"\x00" * 8])
async def test_sent_us_out_of_its_table_fails_only_that_request(dep: Deployment,
                                                                sent_us: Any) -> None:
    """Out of range or of the wrong type, the envelope fails the table of §4.1:
    INVALID_FIELD naming ``sent_us``, an error RESPONSE; nothing is recorded and the next
    request on the connection is served."""
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(request_with_envelope(1, "charge", card_charge(oid), sent_us=sent_us)
             + signed("M1", 2, "status", {"order_id": oid}))
    got = await answers(raw, 2)
    body = error_body(got[1])
    assert (body["code"], body.get("field")) == (ErrorCode.INVALID_FIELD, "sent_us")
    assert outcome(got[2]) is ErrorCode.NOT_FOUND  # the charge was not recorded
    raw.close()


async def test_sent_us_is_not_signed_so_changing_it_keeps_the_signature(dep: Deployment
                                                                         ) -> None:
    """§4.1: not covered by the signature. The same signed request with two different
    ``sent_us`` values both verify (the second is a new nonce: a different frame)."""
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(request_with_envelope(1, "status", {"order_id": "nope"}, sent_us=1)
             + request_with_envelope(2, "status", {"order_id": "nope"}, sent_us=2**62))
    got = await answers(raw, 2)
    assert outcome(got[1]) is ErrorCode.NOT_FOUND and outcome(got[2]) is ErrorCode.NOT_FOUND
    raw.close()


# --- §2.5, §4.6: request ids at their limits --------------------------------------------------
async def test_request_id_at_the_top_of_its_range_is_answered_with_that_id(dep: Deployment
                                                                           ) -> None:
    top = 2**64 - 1
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", top, "charge", card_charge(oid))
             + signed("M1", 1, "status", {"order_id": oid}))
    got = await answers(raw, 2)
    # §4.5: the status was admitted after the charge, so it reflects it.
    assert outcome(got[top]) == "capture" and outcome(got[1]) == "capture"
    # The id is free again once answered (§4.6): reusing it is a new request.
    raw.send(signed("M1", top, "status", {"order_id": oid}))
    assert outcome((await answers(raw, 1))[top]) == "capture"
    raw.close()


# --- §8.1: PING bodies up to the negotiated limit ---------------------------------------------
async def test_ping_body_at_the_negotiated_limit_is_answered_one_byte_past_it_is_fatal(
        dep: Deployment) -> None:
    raw = await Raw.open(dep)
    raw.send(messages.encode_message(FrameType.HELLO, {
        "versions": [1], "role": "merchant", "identity": "M1", "body_bytes_max": 1024}))
    welcome = messages.decode_body(FrameType.WELCOME, (await raw.next_frame()).body)
    assert welcome["body_bytes_max"] == 1024
    # Not msgpack at all, exactly at the limit: receivers do not decode PING bodies.
    raw.send(encode_frame(FrameType.PING, 5, b"\xc1" * 1024))
    pong = await raw.next_frame()
    assert (pong.type, pong.request_id, pong.body) == (FrameType.PONG, 5, b"\x80")
    # An unsolicited PONG with a hostile body is accepted too; then one byte too many.
    raw.send(encode_frame(FrameType.PONG, 9, b"\xc1" * 1024)
             + encode_frame(FrameType.PING, 6, b"\x80" * 1025))
    code, body = await raw.error_body_then_close(WAIT_S)
    assert code is ErrorCode.FRAME_TOO_LARGE, body
    await still_serving(dep)


# --- §3, §3.4, §7.1: a pipeline that ends in a fatal frame ------------------------------------
async def charged(dep: Deployment) -> str:
    """A captured order the hub has at hand (its status is answered at once, §4.5)."""
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(oid)))
    assert outcome((await answers(raw, 1))[1]) == "capture"
    raw.close()
    return oid


async def test_answers_gathered_before_a_fatal_frame_precede_its_error(dep: Deployment) -> None:
    """One write: a status answered at once, a PING, a client GOAWAY whose body is not
    msgpack (§8.1: not decoded), another status, then a second HELLO. Everything before the
    HELLO is answered, in order, then ERROR UNEXPECTED_FRAME, then the close."""
    oid = await charged(dep)
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "status", {"order_id": oid})
             + messages.encode_message(FrameType.PING, {}, 2)
             + encode_frame(FrameType.GOAWAY, 0, b"\xc1 not msgpack")
             + signed("M1", 3, "status", {"order_id": oid})
             + messages.encode_message(FrameType.HELLO, {
                 "versions": [1], "role": "merchant", "identity": "M1"}))
    got = await frames_until_closed(raw)
    kinds = [(f.type, f.request_id) for f in got if f.type != FrameType.PING]
    assert kinds == [(FrameType.RESPONSE, 1), (FrameType.PONG, 2), (FrameType.RESPONSE, 3),
                     (FrameType.ERROR, 0)], got
    assert outcome(got[0]) == "capture"
    assert bodycodec.unpack(got[-1].body)["code"] == ErrorCode.UNEXPECTED_FRAME
    await still_serving(dep)


async def test_a_duplicate_id_behind_answered_requests_fails_only_the_connection(
        dep: Deployment) -> None:
    """[charge 1 (in flight), status 2 (answered at once), charge 1 again]: RESPONSE 2, then
    ERROR DUPLICATE_REQUEST_ID; the first charge's effect stands, the duplicate never ran."""
    known = await charged(dep)
    first, second = order(), order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(first))
             + signed("M1", 2, "status", {"order_id": known})
             + signed("M1", 1, "charge", card_charge(second)))
    got = await frames_until_closed(raw)
    assert [(f.type, f.request_id) for f in got if f.type != FrameType.PING] == [
        (FrameType.RESPONSE, 2), (FrameType.ERROR, 0)], got
    assert bodycodec.unpack(got[-1].body)["code"] == ErrorCode.DUPLICATE_REQUEST_ID
    async with dep.client() as c:
        async def captured() -> bool:
            return (await c.status(first)).transaction_status == "capture"

        await wait_until(captured, "the first charge to stand")
        with pytest.raises(Exception) as exc:
            await c.status(second)
    assert getattr(exc.value, "code", None) is ErrorCode.NOT_FOUND


async def in_flight_one(dep: Deployment) -> Raw:
    raw = await Raw.open(dep)
    raw.send(messages.encode_message(FrameType.HELLO, {
        "versions": [1], "role": "merchant", "identity": "M1", "in_flight_max": 1}))
    welcome = messages.decode_body(FrameType.WELCOME, (await raw.next_frame()).body)
    assert welcome["in_flight_max"] == 1
    return raw


async def test_statuses_of_an_idle_order_are_never_in_flight(dep: Deployment) -> None:
    """§3.4: a status of an idle order is answered at once and never in flight, so two of
    them in one write fit an ``in_flight_max`` of 1."""
    oid = await charged(dep)
    raw = await in_flight_one(dep)
    raw.send(signed("M1", 1, "status", {"order_id": oid})
             + signed("M1", 2, "status", {"order_id": oid}))
    got = await answers(raw, 2)
    assert outcome(got[1]) == "capture" and outcome(got[2]) == "capture"
    raw.close()


async def test_a_status_read_from_the_ledger_is_in_flight_until_answered(
        dep: Deployment) -> None:
    """§3.4: a `status` the hub answers from memory is never in flight; one of an order it
    must read from its ledger (never made) is, until answered: with `in_flight_max` 1 the
    second of two such statuses in one write is `TOO_MANY_IN_FLIGHT` (retryable), and sent
    again after the first's answer it is answered."""
    raw = await in_flight_one(dep)
    second = order()
    raw.send(signed("M1", 1, "status", {"order_id": order()})
             + signed("M1", 2, "status", {"order_id": second}))
    got = await answers(raw, 2)
    assert (outcome(got[1]), outcome(got[2])) == \
        (ErrorCode.NOT_FOUND, ErrorCode.TOO_MANY_IN_FLIGHT)
    raw.send(signed("M1", 3, "status", {"order_id": second}))
    assert outcome((await answers(raw, 1))[3]) == ErrorCode.NOT_FOUND
    raw.close()


# --- §12: the plaintext listener fed bytes that are not frames --------------------------------
@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,  # a TLS ClientHello
    b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n",
    b"\x00\x00\x00\x02\x01\x01\x00\x00" + b"\x00" * 8 + b"\x90\x90",  # HELLO: body not a map
])
async def test_plaintext_listener_refuses_what_is_not_a_hello_with_an_error_frame(
        dep: Deployment, data: bytes) -> None:
    port = await plaintext_port(dep)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = Raw(reader, writer)
    raw.send(data)
    code = await raw.error_then_close(WAIT_S)
    assert code in (ErrorCode.UNSUPPORTED_VERSION, ErrorCode.MALFORMED_BODY), code
    raw.close()
    await still_serving(dep)


@pytest.mark.parametrize(("hello", "code", "field"), [
    ({"role": "hub", "identity": "M1"}, ErrorCode.FORBIDDEN, "role"),
    ({"role": "merchant", "identity": "nobody"}, ErrorCode.UNAUTHENTICATED, "identity"),
    ({"role": "merchant", "identity": "M1", "subscribe_events": True,
      "events_since": 0}, ErrorCode.FORBIDDEN, "subscribe_events"),
])
async def test_plaintext_hello_claims_that_get_nothing(dep: Deployment, hello: dict[str, Any],
                                                       code: ErrorCode, field: str) -> None:
    port = await plaintext_port(dep)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = Raw(reader, writer)
    raw.send(messages.encode_message(FrameType.HELLO, {"versions": [1], **hello}))
    got, body = await raw.error_body_then_close(WAIT_S)
    assert (got, body.get("field")) == (code, field), body
    raw.close()


# --- the health listener (``health_listen``) fed what a balancer never sends ------------------
def health_port(dep: Deployment) -> int:
    assert dep.hub_cfg is not None and dep.hub_cfg.health_listen is not None
    return int(dep.hub_cfg.health_listen.rpartition(":")[2])


async def test_health_listener_survives_garbage_huge_heads_and_a_connection_flood(
        dep: Deployment) -> None:
    port = health_port(dep)
    assert (await probe(port, "/healthz"))[0] == 200
    assert (await probe(port, raw=b"\x00\xff" * 100 + b"\r\n\r\n"))[0] == 400
    assert (await probe(port, raw=b"GET /readyz HTTP/1.1\r\n" + b"X: y\r\n" * 4000
                        + b"\r\n"))[0] == 431
    assert (await probe(port, raw=b"GET /readyz\r\n\r\n"))[0] == 400
    # Many idle connections (more than the listener serves at once) and half-sent heads.
    flood: list[asyncio.StreamWriter] = []
    try:
        for i in range(100):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.1\r\nX-Slow: " + b"a" * (i % 7))
            flood.append(writer)
        # The merchant port is another listener: unaffected while the health one is flooded.
        await still_serving(dep)
    finally:
        for writer in flood:
            writer.close()
    # Once the flood is gone (or timed out), probes are answered again.

    async def answered() -> bool:
        return (await probe(port, "/readyz"))[0] == 200

    await wait_until(answered, "the health listener to answer after the flood")
    assert dep.hub is not None and dep.hub.proc is not None and dep.hub.proc.poll() is None


# --- §3: a peer that sends but never reads -------------------------------------------------
@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("fast"), bca_nodes=1,
                    hub_overrides={"heartbeat_interval_s": 0.5, "log_level": "INFO",
                                   "health_listen": f"127.0.0.1:{free_port()}"}) as d:
        yield d


async def sessions(dep: Deployment) -> int:
    """The hub's open merchant sessions, as its /healthz reports them."""
    status, body = await probe(health_port(dep), "/healthz")
    assert status == 200 and isinstance(body, dict), body
    return int(body["sessions"])


async def test_a_peer_that_pings_and_never_reads_is_dropped(fast: Deployment) -> None:
    """A peer that floods PINGs and reads nothing (not the PONGs, not the hub's own PINGs)
    is declared dead after 3 heartbeat intervals (§3); its connection ends within the
    bounded close (§2.4) although its socket holds unread PONGs, and it is no longer
    counted as a session."""
    from gateway.client import client_ssl_context

    base = await sessions(fast)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the hub's PONGs pile up
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", fast.port))
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=client_ssl_context(fast.certs, "M1"), server_hostname="127.0.0.1")
    raw = Raw(reader, writer)
    await raw.hello()
    assert fast.hub is not None
    start = len(fast.hub.log_path.read_text(errors="replace"))
    writer.transport.pause_reading()
    raw.send(encode_frame(FrameType.PING, 1, b"\x80") * 40_000)  # 40 000 PONGs to read
    try:
        def idle() -> bool:
            assert fast.hub is not None
            return "IDLE_TIMEOUT" in fast.hub.log_path.read_text(errors="replace")[start:]

        await wait_until(idle, "the hub to give up on the peer that does not read")
        async def uncounted() -> bool:
            return await sessions(fast) == base

        await wait_until(uncounted, "the dropped session to be uncounted")
        writer.transport.resume_reading()
        got = await frames_until_closed(raw)  # PONGs, perhaps the ERROR, then the end
        assert all(f.type in (FrameType.PONG, FrameType.PING, FrameType.ERROR) for f in got)
    finally:
        raw.close()
    await still_serving(fast)


# --- §8: the hub's drain, seen by three connections -----------------------------------------
@pytest.fixture(scope="module")
def drained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One drain, observed (its own deployment: the hub ends): connection ``a`` has charge 10
    in flight, ``c`` charge 7, and ``late`` has finished TLS but not sent HELLO when the hub
    gets SIGTERM. The bank black-holes the charges, so the drain lasts until the scenario
    lets them through."""
    return asyncio.run(_drain_scenario(tmp_path_factory.mktemp("drain")))


async def _drain_scenario(workdir: Path) -> dict[str, Any]:
    own = Deployment(workdir, bca_nodes=1,
                     hub_overrides={"hello_timeout_s": 120.0, "shutdown_grace_s": 120.0})
    await own.astart()
    seen: dict[str, Any] = {}
    try:
        await own.admin("bca", "admin.faults", {"blackhole": True})
        a, c, d = await Raw.open(own), await Raw.open(own), await Raw.open(own)
        late = await Raw.open(own)
        await a.hello()
        await c.hello()
        await d.hello()
        # d: the client's GOAWAY first (§8.1: the hub acts on nothing), then a request.
        d.send(messages.encode_message(FrameType.GOAWAY, {
            "last_request_id": 0, "code": 901, "message": "client leaving"})
            + signed("M1", 3, "status", {"order_id": "none"}))
        seen["d_before"] = await answers(d, 1)
        a.send(signed("M1", 10, "charge", card_charge(order())))
        c.send(signed("M1", 7, "charge", {**card_charge(order()),
                                          "card": {"number": RICH[3], "exp_month": 12,
                                                   "exp_year": 2030, "cvv": "123"}}))

        async def both_at_the_bank() -> bool:
            return await own.received("bca", "bank.authorize") >= 2

        await wait_until(both_at_the_bank, "both charges to reach the bank")
        assert own.hub is not None and own.hub.proc is not None
        own.hub.proc.send_signal(signal.SIGTERM)
        early: list[Frame] = []  # a's frames read while waiting for others
        for raw, name in ((a, "a"), (c, "c"), (d, "d")):
            while (frame := await raw.next_frame(WAIT_S)).type != FrameType.GOAWAY:
                if raw is a:
                    early.append(frame)
            seen[f"goaway_{name}"] = messages.decode_body(FrameType.GOAWAY, frame.body)
        # a: one id under the cut (still executed), one above it (refused).
        a.send(signed("M1", 5, "status", {"order_id": "none"})
               + signed("M1", 11, "status", {"order_id": "none"}))
        seen["a_after"] = await responses_for(a, {5, 11}, early)
        # c: the id still in flight, after GOAWAY: DUPLICATE_REQUEST_ID first (§4.6).
        c.send(signed("M1", 7, "status", {"order_id": "none"}))
        seen["c_frames"] = await frames_until_closed(c)
        # d: the hub's GOAWAY crossed (followed) the client's; its cut holds as for any.
        d.send(signed("M1", 2, "status", {"order_id": "none"})
               + signed("M1", 4, "status", {"order_id": "none"}))
        seen["d_after"] = await answers(d, 2)
        # late: its HELLO arrives while the hub drains.
        late.send(messages.encode_message(FrameType.HELLO, {
            "versions": [1], "role": "merchant", "identity": "M1"}))
        late.send(signed("M1", 1, "status", {"order_id": "none"}))
        # Let the charges through: the drain ends once they are answered.
        await own.admin("bca", "admin.faults", {"blackhole": False})
        seen["a_frames"] = early + await frames_until_closed(a, 60.0)
        seen["late_frames"] = await frames_until_closed(late, 60.0)
        proc = own.hub.proc
        seen["exit"] = await wait_until(lambda: (proc.poll(),) if proc.poll() is not None
                                        else None, "the hub to exit after its drain")
        seen["log"] = own.hub.log_path.read_text(errors="replace")
        return seen
    finally:
        own.stop()


async def responses_for(raw: Raw, ids: set[int], others: list[Frame]) -> dict[int, Frame]:
    """The RESPONSEs to ``ids``; any other frame read meanwhile goes to ``others``."""
    got: dict[int, Frame] = {}
    while not ids <= set(got):
        frame = await raw.next_frame(WAIT_S)
        if frame.type == FrameType.RESPONSE and frame.request_id in ids:
            got[frame.request_id] = frame
        else:
            others.append(frame)
    return got


async def test_drain_answers_up_to_the_cut_and_refuses_past_it(drained: dict[str, Any]
                                                               ) -> None:
    assert drained["goaway_a"]["last_request_id"] == 10
    assert drained["goaway_c"]["last_request_id"] == 7
    # A client that sent its own GOAWAY first still gets the hub's, and the same cut.
    assert outcome(drained["d_before"][3]) is ErrorCode.NOT_FOUND
    assert drained["goaway_d"]["last_request_id"] == 3
    assert outcome(drained["d_after"][2]) is ErrorCode.NOT_FOUND
    assert outcome(drained["d_after"][4]) is ErrorCode.SHUTTING_DOWN
    after = drained["a_after"]
    assert outcome(after[5]) is ErrorCode.NOT_FOUND  # ≤ the cut: executed
    assert outcome(after[11]) is ErrorCode.SHUTTING_DOWN  # past it: refused
    # The charge in flight when GOAWAY left is answered before the hub closes.
    responses = [f for f in drained["a_frames"] if f.type == FrameType.RESPONSE]
    assert [f.request_id for f in responses] == [10]
    c_last = drained["c_frames"][-1]
    assert c_last.type == FrameType.ERROR
    assert bodycodec.unpack(c_last.body)["code"] == ErrorCode.DUPLICATE_REQUEST_ID
    assert drained["exit"] == (0,)
    assert "Traceback" not in drained["log"]


async def test_a_hello_during_the_drain_is_told_the_hub_is_draining(drained: dict[str, Any]
                                                                    ) -> None:
    frames = drained["late_frames"]
    told = [f for f in frames if f.type in (FrameType.GOAWAY, FrameType.ERROR)]
    assert told, f"the late connection got only {frames}"
    responses = {f.request_id: f for f in frames if f.type == FrameType.RESPONSE}
    if 1 in responses:  # answered only as the spec allows past a GOAWAY's cut of 0
        assert outcome(responses[1]) is ErrorCode.SHUTTING_DOWN
