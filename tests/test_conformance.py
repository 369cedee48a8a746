"""The hub against docs/protocol.md on real TLS sockets: what an independent client relies on.

Each test sends frames by hand (``tests.rawclient.Raw``), mostly pipelined in one write, and
asserts the answers the spec promises (issue 11, items 14-18).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.client import Card
from protocol import body as bodycodec
from protocol.errors import ErrorCode, RemoteError
from protocol.frame import HEADER, Flags, Frame, FrameType
from tests.deploy import RICH, Deployment, deployment
from tests.rawclient import Raw
from tests.test_hostile_peers import signed


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("conformance"), bca_nodes=1) as d:
        yield d


def card_charge(order_id: str, amount: int = 10_000, capture: bool = True) -> dict[str, Any]:
    return {"order_id": order_id, "gross_amount": amount, "payment_type": "credit_card",
            "capture": capture,
            "card": {"number": RICH[2], "exp_month": 12, "exp_year": 2030, "cvv": "123"}}


def outcome(frame: Frame) -> Any:
    """A RESPONSE's transaction status, or its error code."""
    body = bodycodec.unpack(frame.body)
    if frame.flags & Flags.ERROR:
        return ErrorCode(body["code"])
    return body["transaction_status"]


async def answers(raw: Raw, count: int, timeout_s: float = 20.0,
                  others: list[Frame] | None = None) -> dict[int, Frame]:
    """The next ``count`` RESPONSEs by request id (responses may come in any order); other
    frames go to ``others``."""
    got: dict[int, Frame] = {}
    while len(got) < count:
        frame = await raw.next_frame(timeout_s)
        if frame.type == FrameType.RESPONSE:
            got[frame.request_id] = frame
        elif others is not None:
            others.append(frame)
    return got


def order() -> str:
    return f"conf-{os.urandom(4).hex()}"


# --- item 14: per-order ordering includes reads ---------------------------------------------
async def test_status_pipelined_behind_capture_and_refund_reflects_them(dep: Deployment) -> None:
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(oid, capture=False)))
    assert outcome((await answers(raw, 1))[1]) == "authorize"
    raw.send(b"".join([
        signed("M1", 2, "capture", {"order_id": oid}),
        signed("M1", 3, "status", {"order_id": oid}),
        signed("M1", 4, "refund", {"order_id": oid, "refund_key": "r1", "amount": 1_000}),
        signed("M1", 5, "status", {"order_id": oid}),
    ]))
    got = await answers(raw, 4)
    assert [outcome(got[i]) for i in (2, 3, 4, 5)] == \
        ["capture", "capture", "partial_refund", "partial_refund"]
    assert bodycodec.unpack(got[5].body)["refunded_amount"] == 1_000
    raw.close()


async def test_status_pipelined_behind_its_charge_sees_the_charge(dep: Deployment) -> None:
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(oid)) +
             signed("M1", 2, "status", {"order_id": oid}))
    got = await answers(raw, 2)
    assert [outcome(got[1]), outcome(got[2])] == ["capture", "capture"]
    raw.close()


async def test_status_with_nothing_queued_is_answered_at_once(dep: Deployment) -> None:
    """The fast path stays: a status of an idle order needs no bank and no ledger."""
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(oid)))
    await answers(raw, 1)
    raw.send(signed("M1", 2, "status", {"order_id": oid}))
    assert outcome((await answers(raw, 1))[2]) == "capture"
    raw.close()


# --- item 16: HELLO errors, one rule on the hub and on bank nodes ----------------------------
def _hello(role_: str, identity_: str, changes: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"versions": [1], "role": role_, "identity": identity_}
    for k, v in changes.items():
        if v is _DROP:
            body.pop(k)
        else:
            body[k] = v
    return body


_DROP = object()
HELLO_VIOLATIONS: list[tuple[str, dict[str, Any], ErrorCode, str | None]] = [
    ("unknown field", {"bogus": 1}, ErrorCode.INVALID_FIELD, "bogus"),
    ("missing identity", {"identity": _DROP}, ErrorCode.INVALID_FIELD, "identity"),
    ("missing versions", {"versions": _DROP}, ErrorCode.INVALID_FIELD, "versions"),
    ("empty versions", {"versions": []}, ErrorCode.INVALID_FIELD, "versions"),
    ("versions not an array", {"versions": 1}, ErrorCode.INVALID_FIELD, "versions"),
    ("version out of range", {"versions": [0]}, ErrorCode.INVALID_FIELD, "versions[0]"),
    ("body_bytes_max too small", {"body_bytes_max": 1023}, ErrorCode.INVALID_FIELD,
     "body_bytes_max"),
    ("body_bytes_max too large", {"body_bytes_max": 4_194_305}, ErrorCode.INVALID_FIELD,
     "body_bytes_max"),
    ("in_flight_max zero", {"in_flight_max": 0}, ErrorCode.INVALID_FIELD, "in_flight_max"),
    ("role of the wrong type", {"role": 1}, ErrorCode.INVALID_FIELD, "role"),
    ("subscribe_events an int", {"subscribe_events": 1}, ErrorCode.INVALID_FIELD,
     "subscribe_events"),
    ("resume_token a string", {"resume_token": "x"}, ErrorCode.INVALID_FIELD, "resume_token"),
    ("no common version", {"versions": [2, 3]}, ErrorCode.UNSUPPORTED_VERSION, "versions"),
    ("identity not the certificate's", {"identity": "someone-else"}, ErrorCode.FORBIDDEN,
     "identity"),
]


async def _hello_outcome(raw: Raw, body: bytes) -> tuple[ErrorCode, dict[str, Any]]:
    from protocol.frame import encode_frame

    raw.send(encode_frame(FrameType.HELLO, 0, body))
    return await raw.error_body_then_close()


@pytest.mark.parametrize("node", ["hub", "bank"])
@pytest.mark.parametrize(("case", "changes", "code", "field"), HELLO_VIOLATIONS,
                         ids=[c[0] for c in HELLO_VIOLATIONS])
async def test_hello_violation_gets_its_code_and_field(
        dep: Deployment, node: str, case: str, changes: dict[str, Any], code: ErrorCode,
        field: str | None) -> None:
    from gateway import tls

    if node == "hub":
        raw = await Raw.open(dep)
        body = _hello("merchant", "M1", changes)
    else:
        ctx = tls.node_client_context(dep.certs, "hub", "hub")
        raw = await Raw.connect(dep.banks["bca"][0].port, ctx)
        body = _hello("hub", "hub", changes)
    got, error = await _hello_outcome(raw, bodycodec.pack(body))
    assert (got, error.get("field")) == (code, field), error


@pytest.mark.parametrize("node", ["hub", "bank"])
async def test_hello_that_is_not_a_map_is_malformed_body(dep: Deployment, node: str) -> None:
    from gateway import tls

    if node == "hub":
        raw = await Raw.open(dep)
    else:
        raw = await Raw.connect(dep.banks["bca"][0].port,
                                tls.node_client_context(dep.certs, "hub", "hub"))
    got, error = await _hello_outcome(raw, b"\x93\x01\x02\x03")
    assert (got, error.get("field")) == (ErrorCode.MALFORMED_BODY, None)


# --- item 15: the negotiated body_bytes_max binds the hub's frames too -----------------------
async def test_results_and_events_never_exceed_the_clients_body_limit(dep: Deployment) -> None:
    from protocol import messages
    from protocol.fit import TRUNCATED_EVENT_TYPE

    oid = order()
    raw = await Raw.open(dep)
    raw.send(messages.encode_message(FrameType.HELLO, {
        "versions": [1], "role": "merchant", "identity": "M1", "body_bytes_max": 1024,
        "subscribe_events": True}))
    welcome = await raw.next_frame()
    assert messages.decode_body(FrameType.WELCOME, welcome.body)["body_bytes_max"] == 1024
    raw.decoder.body_bytes_max = 1024  # a larger frame from the hub fails this test
    events: list[Frame] = []
    raw.send(signed("M1", 1, "charge", card_charge(oid)))
    assert outcome((await answers(raw, 1, others=events))[1]) == "capture"
    refunds = []
    for i in range(6):  # six refunds with long reasons: the transaction outgrows 1 024 bytes
        rid = 2 + i
        args: dict[str, Any] = {"order_id": oid, "refund_key": f"k{i}", "reason": "r" * 200}
        if i < 5:
            args["amount"] = 100  # the sixth refunds the rest: a status change, so an event
        raw.send(signed("M1", rid, "refund", args))
        refunds.append(outcome((await answers(raw, 1, others=events))[rid]))
    raw.send(signed("M1", 9, "status", {"order_id": oid}))
    status = await answers(raw, 1, others=events)
    assert outcome(status[9]) is ErrorCode.RESPONSE_TOO_LARGE
    assert refunds[0] == "partial_refund"
    assert refunds[-1] is ErrorCode.RESPONSE_TOO_LARGE
    # Every refund happened: the effect stands, readable with a larger limit.
    async with dep.client() as c:
        tx = await c.status(oid)
    assert tx.refunded_amount == 10_000 and len(tx.refunds) == 6
    # Events: one per status change (capture, partial_refund, refund), the last too large
    # for 1 024 bytes, so sent as its summary.
    while sum(f.type == FrameType.EVENT for f in events) < 3:
        events.append(await raw.next_frame())
    bodies = [messages.decode_body(FrameType.EVENT, f.body) for f in events
              if f.type == FrameType.EVENT]
    mine = [b for b in bodies if b["data"].get("order_id") == oid]
    assert [b["type"] for b in mine] == ["transaction.status", "transaction.status",
                                         TRUNCATED_EVENT_TYPE]
    assert [b["seq"] for b in mine] == sorted(b["seq"] for b in mine)
    assert mine[-1]["data"] == {"transaction_id": tx.transaction_id, "order_id": oid,
                                "transaction_status": "refund"}
    raw.close()


def test_every_frame_type_that_would_not_fit_has_a_stand_in_that_does() -> None:
    from protocol import messages
    from protocol.errors import PaywireError
    from protocol.fit import fit_frame

    limit = 1024
    error = messages.encode_error_frame(ErrorCode.INVALID_FIELD, "é" * 1024, "args.x")
    fitted = fit_frame(error, limit)
    body = messages.decode_body(FrameType.ERROR, fitted[16:])
    assert len(fitted) - 16 <= limit
    assert (body["code"], body["field"]) == (ErrorCode.INVALID_FIELD, "args.x")
    big = {"order_id": "o", "blob": "x" * 2000}
    response = fit_frame(messages.encode_response(7, big), limit)
    assert len(response) - 16 <= limit
    assert bodycodec.unpack(response[16:])["code"] == ErrorCode.RESPONSE_TOO_LARGE
    with pytest.raises(PaywireError) as exc:
        fit_frame(signed("M1", 1, "status", {"order_id": "o" * 64, "x": "y" * 2000}), limit)
    assert exc.value.code is ErrorCode.FRAME_TOO_LARGE



def test_stand_ins_keep_an_errors_code_and_never_parse_our_frames_with_peer_limits() -> None:
    """Review findings: an error RESPONSE too large for the peer keeps its code (nothing ran,
    so 404 "effect stands" would misreport it); a long ``field`` is cut too; and our own
    frame is read without the limits meant for peers, so an EVENT of a transaction with more
    refunds than a peer may send items (256) still gets its stand-in instead of raising in
    the middle of a send."""
    from protocol import messages
    from protocol.errors import PaywireError
    from protocol.fit import TRUNCATED_EVENT_TYPE, fit_frame

    limit = 1024
    error = messages.encode_error_response(9, PaywireError(
        "args." + "k" * 1000 + ": is not a known field", code=ErrorCode.INVALID_FIELD,
        field="args." + "k" * 1000))
    fitted = fit_frame(error, limit)
    assert len(fitted) - 16 <= limit
    assert HEADER.unpack_from(fitted)[2] == FrameType.RESPONSE
    body = bodycodec.unpack(fitted[16:])
    assert body["code"] == ErrorCode.INVALID_FIELD and body["field"].startswith("args.kkk")
    frame_error = messages.encode_error_frame(ErrorCode.INVALID_FIELD, "m" * 2000,
                                              "versions." + "v" * 2000)
    fitted = fit_frame(frame_error, limit)
    assert len(fitted) - 16 <= limit
    assert messages.decode_body(FrameType.ERROR, fitted[16:])["code"] == ErrorCode.INVALID_FIELD
    refunds = [{"refund_key": f"r{i}", "amount": 1} for i in range(300)]
    event = messages.encode_message(FrameType.EVENT, {
        "seq": 5, "type": "transaction.status", "merchant_id": "M1",
        "data": {"transaction_id": "t", "order_id": "o", "transaction_status": "refund",
                 "refunds": refunds}})
    fitted = fit_frame(event, limit)
    body = messages.decode_body(FrameType.EVENT, fitted[16:])
    assert (body["seq"], body["type"]) == (5, TRUNCATED_EVENT_TYPE)
    assert body["data"]["transaction_status"] == "refund"


async def test_a_transaction_has_at_most_100_refunds(dep: Deployment) -> None:
    """Every result lists the refunds, so their number is bounded (§5.3): the 101st new
    refund key is TOO_MANY_REFUNDS and changes nothing; a repeat of a known key still is a
    repeat; what remains is refunded in one."""
    from gateway.hub.service import REFUNDS_PER_TRANSACTION_MAX

    async with dep.client() as c:
        await c.charge("many-refunds", 1_000, card=Card(RICH[3], 12, 2030, "123"))
        for i in range(REFUNDS_PER_TRANSACTION_MAX):
            await c.refund("many-refunds", f"r{i}", amount=1)
        with pytest.raises(RemoteError) as info:
            await c.refund("many-refunds", "one-more", amount=1)
        assert info.value.code is ErrorCode.TOO_MANY_REFUNDS
        assert info.value.field == "args.refund_key"
        tx = await c.status("many-refunds")
        assert tx.refunded_amount == REFUNDS_PER_TRANSACTION_MAX
        assert tx.transaction_status == "partial_refund"
        assert (await c.refund("many-refunds", "r0", amount=1)).replayed


# --- item 17: TRUNCATED_FRAME -----------------------------------------------------------------
class BioTls:
    """TLS over a plain asyncio stream through ``ssl.MemoryBIO``: unlike asyncio's SSL
    transport it can send close_notify (a TLS half-close) and then keep reading."""

    def __init__(self, reader: Any, writer: Any, obj: Any, inc: Any, out: Any) -> None:
        self.reader, self.writer, self.obj, self.inc, self.out = reader, writer, obj, inc, out
        from protocol.decoder import FrameDecoder

        self.decoder = FrameDecoder(1 << 20)
        self.frames: list[Frame] = []

    @classmethod
    async def open(cls, dep: Deployment) -> BioTls:
        import asyncio
        import ssl

        from gateway.client import client_ssl_context

        reader, writer = await asyncio.open_connection("127.0.0.1", dep.port)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_ssl_context(dep.certs, "M1").wrap_bio(inc, out,
                                                           server_hostname="127.0.0.1")
        self = cls(reader, writer, obj, inc, out)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._pump()
        self._push()
        return self

    def _push(self) -> None:
        data = self.out.read()
        if data:
            self.writer.write(data)

    async def _pump(self) -> None:
        self._push()
        data = await self.reader.read(65536)
        if data:
            self.inc.write(data)
        else:
            self.inc.write_eof()

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._push()

    def half_close(self) -> None:
        import ssl

        try:
            self.obj.unwrap()  # sends close_notify; the answer's close_notify comes later
        except ssl.SSLWantReadError:
            pass
        self._push()

    async def next_frame(self) -> Frame:
        import asyncio
        import ssl

        async with asyncio.timeout(10):
            while not self.frames:
                try:
                    data = self.obj.read(65536)
                except ssl.SSLWantReadError:
                    await self._pump()
                    continue
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    raise EOFError from None
                if not data:
                    raise EOFError
                self.frames += self.decoder.feed(data)
        return self.frames.pop(0)


def _error_code(frame: Frame) -> ErrorCode:
    assert frame.type == FrameType.ERROR, frame
    return ErrorCode(bodycodec.unpack(frame.body)["code"])


async def test_tls_half_close_mid_frame_is_answered_truncated_frame(dep: Deployment) -> None:
    from protocol import messages

    peer = await BioTls.open(dep)
    peer.send(messages.encode_message(FrameType.HELLO, {
        "versions": [1], "role": "merchant", "identity": "M1"}))
    assert (await peer.next_frame()).type == FrameType.WELCOME
    frame = signed("M1", 1, "status", {"order_id": "x"})
    peer.send(frame[: len(frame) // 2])
    peer.half_close()
    assert _error_code(await peer.next_frame()) is ErrorCode.TRUNCATED_FRAME
    with pytest.raises(EOFError):
        await peer.next_frame()
    peer.writer.close()


async def test_tls_half_close_at_a_frame_boundary_is_no_error(dep: Deployment) -> None:
    from protocol import messages

    peer = await BioTls.open(dep)
    peer.send(messages.encode_message(FrameType.HELLO, {
        "versions": [1], "role": "merchant", "identity": "M1"}))
    assert (await peer.next_frame()).type == FrameType.WELCOME
    peer.half_close()
    with pytest.raises(EOFError):
        await peer.next_frame()
    peer.writer.close()


@pytest.fixture(scope="module")
def fast_heartbeat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("heartbeat"), bca_nodes=1,
                    hub_overrides={"heartbeat_interval_s": 0.3, "hello_timeout_s": 0.5},
                    bank_overrides={"hello_timeout_s": 0.5}) as d:
        yield d


@pytest.mark.parametrize("node", ["hub", "bank"])
async def test_no_hello_in_time_is_handshake_timeout_on_hub_and_bank(
        fast_heartbeat: Deployment, node: str) -> None:
    """Both servers time a missing HELLO from their own ``hello_timeout_s`` setting."""
    from gateway import tls

    if node == "hub":
        raw = await Raw.open(fast_heartbeat)
    else:
        raw = await Raw.connect(fast_heartbeat.banks["bca"][0].port,
                                tls.node_client_context(fast_heartbeat.certs, "hub", "hub"))
    code, body = await raw.error_body_then_close()
    assert code is ErrorCode.HANDSHAKE_TIMEOUT
    assert body["message"] == "no HELLO within 0.5 s"


async def test_peer_that_stalls_inside_a_frame_gets_truncated_frame(
        fast_heartbeat: Deployment) -> None:
    raw = await Raw.open(fast_heartbeat)
    await raw.hello()
    frame = signed("M1", 1, "status", {"order_id": "x"})
    raw.send(frame[:20])  # the header and 4 body bytes, then nothing
    while (got := await raw.next_frame(10)).type == FrameType.PING:
        pass
    assert _error_code(got) is ErrorCode.TRUNCATED_FRAME
    assert await raw.closed()


async def test_peer_that_trickles_a_frame_gets_truncated_frame(
        fast_heartbeat: Deployment) -> None:
    """One byte per PING keeps the peer from being silent, but the frame never completes
    within three heartbeat intervals: TRUNCATED_FRAME, not an endless slow read."""
    raw = await Raw.open(fast_heartbeat)
    await raw.hello()
    frame = signed("M1", 1, "status", {"order_id": "x"})
    sent = 0
    while (got := await raw.next_frame(10)).type == FrameType.PING:
        assert sent < len(frame) - 1, "the hub waited for the whole trickled frame"
        raw.send(frame[sent:sent + 1])
        sent += 1
    assert _error_code(got) is ErrorCode.TRUNCATED_FRAME
    assert await raw.closed()


# --- item 18: what the spec settles -------------------------------------------------------------
async def _fatal(raw: Raw) -> ErrorCode:
    return await raw.error_then_close()


async def test_request_with_request_id_zero_is_bad_frame(dep: Deployment) -> None:
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 0, "status", {"order_id": "x"}))
    assert await _fatal(raw) is ErrorCode.BAD_FRAME


@pytest.mark.parametrize("ftype", [FrameType.HELLO, FrameType.GOAWAY])
async def test_non_zero_request_id_where_the_type_has_none_is_bad_frame(
        dep: Deployment, ftype: FrameType) -> None:
    from protocol import messages

    raw = await Raw.open(dep)
    if ftype == FrameType.HELLO:
        body: dict[str, Any] = {"versions": [1], "role": "merchant", "identity": "M1"}
    else:
        await raw.hello()
        body = {"last_request_id": 0, "code": 0, "message": ""}
    raw.send(messages.encode_message(ftype, body, request_id=3))
    assert await _fatal(raw) is ErrorCode.BAD_FRAME


@pytest.mark.parametrize("ping_id", [0, 77])
async def test_ping_with_an_empty_body_gets_an_empty_map_pong_with_its_id(
        dep: Deployment, ping_id: int) -> None:
    from protocol.frame import encode_frame

    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(encode_frame(FrameType.PING, ping_id, b""))
    pong = await raw.next_frame()
    assert (pong.type, pong.request_id, pong.body) == (FrameType.PONG, ping_id, b"\x80")
    raw.close()


async def test_duplicate_in_flight_request_id_is_refused_without_executing(
        dep: Deployment) -> None:
    first, second = order(), order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 5, "charge", card_charge(first)) +
             signed("M1", 5, "charge", card_charge(second)))
    assert await _fatal(raw) is ErrorCode.DUPLICATE_REQUEST_ID
    async with dep.client() as c:
        for _ in range(200):  # the first request still completes (its effect stands)
            try:
                tx = await c.status(first)
                if tx.transaction_status == "capture":
                    break
            except Exception:
                pass
        assert tx.transaction_status == "capture"
        with pytest.raises(Exception) as exc:
            await c.status(second)
    assert getattr(exc.value, "code", None) is ErrorCode.NOT_FOUND


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


@pytest.mark.parametrize(("extra_depth", "code"), [(6, ErrorCode.INVALID_FIELD),
                                                   (7, ErrorCode.MALFORMED_BODY)])
async def test_nesting_depth_counts_the_body_map_as_one(
        dep: Deployment, extra_depth: int, code: ErrorCode) -> None:
    """body (1) → args (2) → ``n`` maps: 6 more is depth 8 (allowed, then refused by the
    schema as an unknown field), 7 more is depth 9 (refused by the body rules)."""
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "status", {"order_id": "x", "n": _nested(extra_depth)}))
    assert outcome((await answers(raw, 1))[1]) is code
    raw.close()


async def test_welcome_event_seq_is_the_latest_and_resume_token_is_ignored(
        dep: Deployment) -> None:
    from protocol import messages

    raw = await Raw.open(dep)
    raw.send(messages.encode_message(FrameType.HELLO, {
        "versions": [1], "role": "merchant", "identity": "M1", "subscribe_events": True,
        "resume_token": b"anything at all"}))
    welcome = messages.decode_body(FrameType.WELCOME, (await raw.next_frame()).body)
    events: list[Frame] = []
    raw.send(signed("M1", 1, "charge", card_charge(order())))
    await answers(raw, 1, others=events)
    seq = messages.decode_body(FrameType.EVENT, events[0].body)["seq"]
    assert seq == welcome["event_seq"] + 1
    raw.close()
    again = await Raw.open(dep)
    assert (await again.hello())["event_seq"] == seq
    again.close()


@pytest.mark.parametrize("subscribe", [False, True])
async def test_events_since_without_subscribing_or_beyond_the_latest_is_invalid(
        dep: Deployment, subscribe: bool) -> None:
    from protocol import messages

    probe = await Raw.open(dep)
    latest = (await probe.hello())["event_seq"]
    probe.close()
    raw = await Raw.open(dep)
    raw.send(messages.encode_message(FrameType.HELLO, {
        "versions": [1], "role": "merchant", "identity": "M1", "subscribe_events": subscribe,
        "events_since": latest + 1 if subscribe else 0}))
    code, body = await raw.error_body_then_close()
    assert (code, body.get("field")) == (ErrorCode.INVALID_FIELD, "events_since")


async def test_multi_version_hello_is_answered_with_the_highest_common_version(
        dep: Deployment) -> None:
    from protocol import messages

    raw = await Raw.open(dep)
    raw.send(messages.encode_message(FrameType.HELLO, {
        "versions": [7, 1, 2], "role": "merchant", "identity": "M1"}))
    welcome = await raw.next_frame()
    assert welcome.version == 1
    assert messages.decode_body(FrameType.WELCOME, welcome.body)["version"] == 1
    raw.close()


async def test_over_capture_and_refund_error_codes(dep: Deployment) -> None:
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(oid, 10_000, capture=False)))
    await answers(raw, 1)
    raw.send(signed("M1", 2, "capture", {"order_id": oid, "gross_amount": 10_001}))
    over = (await answers(raw, 1))[2]
    assert outcome(over) is ErrorCode.INVALID_FIELD
    assert bodycodec.unpack(over.body)["field"] == "args.gross_amount"
    raw.send(signed("M1", 3, "capture", {"order_id": oid}))
    await answers(raw, 1)
    raw.send(signed("M1", 4, "refund", {"order_id": oid, "refund_key": "a", "amount": 10_001}))
    too_much = (await answers(raw, 1))[4]
    assert outcome(too_much) is ErrorCode.REFUND_EXCEEDS_CAPTURED
    assert bodycodec.unpack(too_much.body)["field"] == "args.amount"
    raw.send(signed("M1", 5, "refund", {"order_id": oid, "refund_key": "b"}))
    assert outcome((await answers(raw, 1))[5]) == "refund"
    raw.send(signed("M1", 6, "refund", {"order_id": oid, "refund_key": "c", "amount": 1}))
    assert outcome((await answers(raw, 1))[6]) is ErrorCode.INVALID_TRANSITION
    raw.close()


async def test_nil_counts_as_absent_in_the_idempotency_comparison(dep: Deployment) -> None:
    oid = order()
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(oid)))
    first = (await answers(raw, 1))[1]
    raw.send(signed("M1", 2, "charge", {**card_charge(oid), "description": None,
                                        "customer": None, "expiry_s": None}))
    again = (await answers(raw, 1))[2]
    assert again.flags == Flags.REPLAYED and again.body == first.body
    raw.close()


async def test_client_goaway_and_unsolicited_response_change_nothing(dep: Deployment) -> None:
    from protocol import messages

    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(messages.encode_response(99, {"ok": True}))
    raw.send(messages.encode_message(FrameType.GOAWAY, {
        "last_request_id": 0, "code": 901, "message": "client leaving"}))
    raw.send(signed("M1", 1, "status", {"order_id": "never-made"}))
    assert outcome((await answers(raw, 1))[1]) is ErrorCode.NOT_FOUND
    raw.close()


async def test_client_error_frame_closes_without_an_answer(dep: Deployment) -> None:
    from protocol import messages

    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(messages.encode_error_frame(ErrorCode.INTERNAL, "client gives up"))
    raw.send(signed("M1", 1, "status", {"order_id": "never-made"}))
    with pytest.raises(EOFError):
        await raw.next_frame()


async def test_bank_admin_result_shapes(dep: Deployment) -> None:
    faults = await dep.admin("bca", "admin.faults", {})
    assert set(faults) == {"latency_ms", "failure_rate_pct", "blackhole"}
    balances = (await dep.admin("bca", "admin.balances"))["balances"]
    assert all(isinstance(v, list) and len(v) == 2 for v in balances.values())
    assert balances[RICH[0]][1] >= 0
    payments = await dep.admin("bca", "admin.payments")
    assert set(payments) == {"payments"}
    paid = await dep.admin("bca", "admin.pay", {"number": "no-such-number"})
    assert paid == {"paid": False, "reason": "no such payment"}


async def test_bank_call_stops_at_its_deadline_without_sending(dep: Deployment) -> None:
    """The OUTCOME_UNKNOWN bound (§5.3) rests on this: a bank call never sends past its
    deadline, so the settlement after a timeout (inquiry, then reversal) shares one budget."""
    import asyncio

    from gateway import secret_keys, tls
    from gateway.hub.banklink import BankPool, BankUnavailable

    pool = BankPool("bca", [f"bca-1@127.0.0.1:{dep.banks['bca'][0].port}"], hub_id="hub",
                    key=secret_keys.load_link_key(dep.secrets),
                    ssl_ctx=tls.node_client_context(dep.certs, "hub", "hub"),
                    on_bank_request=lambda link, frame: None, timeout_s=10.0, attempts_max=3)
    pool.start()
    try:
        assert await pool.wait_ready(10.0)
        assert pool.call_budget_s == 30.0
        loop = asyncio.get_running_loop()
        with pytest.raises(BankUnavailable):  # nothing was sent: the deadline had passed
            await pool.call("bank.inquiry", {"op_id": "conf-none"}, loop.time())
        found = await pool.call("bank.inquiry", {"op_id": "conf-none"}, pool.deadline())
        assert found["found"] is False
    finally:
        await pool.stop()


async def test_goaway_code_is_shutting_down_and_names_the_last_request(tmp_path: Any) -> None:
    import signal

    from protocol import messages
    from tests.deploy import Deployment as Dep

    own = await Dep(tmp_path, bca_nodes=1).astart()
    try:
        raw = await Raw.open(own)
        await raw.hello()
        raw.send(signed("M1", 41, "status", {"order_id": "none"}))
        await answers(raw, 1)
        assert own.hub is not None and own.hub.proc is not None
        own.hub.proc.send_signal(signal.SIGTERM)
        while (frame := await raw.next_frame(10)).type != FrameType.GOAWAY:
            pass
        goaway = messages.decode_body(FrameType.GOAWAY, frame.body)
        assert (goaway["code"], goaway["last_request_id"]) == (ErrorCode.SHUTTING_DOWN, 41)
        assert frame.request_id == 0
        raw.close()
    finally:
        own.stop()


async def test_a_request_too_large_to_send_fails_locally_and_leaves_nothing_waiting(
        dep: Deployment) -> None:
    """§2.3: a REQUEST that would not fit the negotiated limit is not sent; the client raises
    FRAME_TOO_LARGE at once and keeps no waiting entry for it (review finding: the entry
    stayed until its timeout), and the connection goes on serving."""
    from protocol.errors import PaywireError

    async with dep.client(hello={"body_bytes_max": 1024}) as c:
        with pytest.raises(PaywireError) as info:
            await c.request("status", {"order_id": "o", "padding": "x" * 2000})
        assert info.value.code is ErrorCode.FRAME_TOO_LARGE
        assert c.conn is not None and c.conn.correlator.waiting == {}
        with pytest.raises(RemoteError) as missing:
            await c.status("never-charged")
        assert missing.value.code is ErrorCode.NOT_FOUND
