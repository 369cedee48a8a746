"""A second client written from ``docs/protocol.md`` alone, run against the real hub.

Nothing here imports ``protocol`` or ``gateway``: framing, HELLO, signing and the checks are
built from the spec's words (section numbers in the comments), with the standard library,
``msgpack`` and ``ssl`` only. ``tests.deploy`` starts the hub and bank nodes and tells where
the certificates and merchant keys are. Each test asserts what the spec says, exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.deploy import KEYS, RICH, Deployment

SPEC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
HEADER = struct.Struct(">IBBHQ")  # section 2
HELLO, WELCOME, REQUEST, RESPONSE, EVENT, PING, PONG, GOAWAY, ERROR = range(1, 10)
FLAG_ERROR, FLAG_REPLAYED = 0x0001, 0x0002
TAG = b"paywire-request-v2\x00"  # section 4.3
WAIT_S = 10.0  # bound on every single wait for the hub


# --- section 4.3: the signing array, shortest-form headers written by hand ----------------

def _str(s: str) -> bytes:
    b = s.encode()
    n = len(b)
    if n <= 31:
        return bytes([0xA0 | n]) + b
    if n <= 0xFF:
        return b"\xd9" + struct.pack(">B", n) + b
    if n <= 0xFFFF:
        return b"\xda" + struct.pack(">H", n) + b
    return b"\xdb" + struct.pack(">I", n) + b


def _uint(v: int) -> bytes:
    assert v >= 0
    if v <= 0x7F:
        return bytes([v])
    if v <= 0xFF:
        return b"\xcc" + struct.pack(">B", v)
    if v <= 0xFFFF:
        return b"\xcd" + struct.pack(">H", v)
    if v <= 0xFFFFFFFF:
        return b"\xce" + struct.pack(">I", v)
    return b"\xcf" + struct.pack(">Q", v)


def _bin(b: bytes) -> bytes:
    n = len(b)
    if n <= 0xFF:
        return b"\xc4" + struct.pack(">B", n) + b
    if n <= 0xFFFF:
        return b"\xc5" + struct.pack(">H", n) + b
    return b"\xc6" + struct.pack(">I", n) + b


def signing_input(merchant_id: str, request_id: int, op: str, timestamp_ms: int,
                  nonce: bytes, args: bytes) -> bytes:
    return (TAG + b"\x96" + _str(merchant_id) + _uint(request_id) + _str(op)
            + _uint(timestamp_ms) + _bin(nonce) + _bin(args))


def sign(key: str, *parts: Any) -> bytes:
    return hmac.new(key.encode(), signing_input(*parts), hashlib.sha256).digest()


def frame(ftype: int, body: bytes, request_id: int = 0, flags: int = 0,
          version: int = 1) -> bytes:
    return HEADER.pack(len(body), version, ftype, flags, request_id) + body


def request_body(op: str, args: dict[str, Any] | bytes, request_id: int, *,
                 merchant: str = "M1", key: str | None = None, nonce: bytes | None = None,
                 timestamp_ms: int | None = None) -> bytes:
    raw = args if isinstance(args, bytes) else msgpack.packb(args)
    nonce = os.urandom(16) if nonce is None else nonce
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    sig = sign(KEYS[merchant] if key is None else key, merchant, request_id, op, ts, nonce, raw)
    return msgpack.packb({"op": op, "merchant_id": merchant, "timestamp_ms": ts,
                          "nonce": nonce, "signature": sig, "args": raw})


# --- TLS over a memory BIO, so that a half-close (close_notify, keep reading) is possible --

class Frame:
    def __init__(self, ftype: int, flags: int, request_id: int, body: bytes,
                 version: int) -> None:
        self.type, self.flags, self.request_id, self.raw = ftype, flags, request_id, body
        self.version = version

    @property
    def body(self) -> Any:
        return msgpack.unpackb(self.raw)

    def __repr__(self) -> str:
        return f"Frame(type={self.type}, flags={self.flags}, id={self.request_id}, {self.raw!r})"


class Conn:
    """One TLS connection to the hub; every blocking step is bounded by ``WAIT_S``."""

    def __init__(self, dep: Deployment, merchant: str = "M1") -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(dep.certs / "ca.crt")
        ctx.load_cert_chain(dep.certs / f"merchant-{merchant}.crt",
                            dep.certs / f"merchant-{merchant}.key")
        self.raw = socket.create_connection(("127.0.0.1", dep.port), timeout=WAIT_S)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.buf = b""
        self.close_notify = False  # the hub ended with a TLS close_notify
        self.eof = False
        self.merchant = merchant
        self.next_id = 1
        self._pump(self.tls.do_handshake)
        # Section 1.1: before sending any frame, the peer must be the hub (one OU, one CN).
        subject = self.tls.getpeercert()["subject"]  # type: ignore[index]
        ous = [v for rdn in subject for k, v in rdn if k == "organizationalUnitName"]
        cns = [v for rdn in subject for k, v in rdn if k == "commonName"]
        assert ous == ["hub"] and len(cns) == 1, subject

    def _flush(self) -> None:
        data = self.out.read()
        if data:
            self.raw.sendall(data)

    def _fill(self) -> bool:
        data = self.raw.recv(65536)
        if not data:
            self.inc.write_eof()
            return False
        self.inc.write(data)
        return True

    def _pump(self, fn: Any) -> Any:
        while True:
            try:
                result = fn()
                self._flush()
                return result
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    return fn()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def _read_more(self) -> bool:
        if self.eof:
            return False
        try:
            data = self._pump(lambda: self.tls.read(65536))
        except ssl.SSLZeroReturnError:
            self.close_notify = self.eof = True
            return False
        except (ssl.SSLEOFError, ssl.SSLSyscallError, ConnectionResetError):
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def recv(self) -> Frame | None:
        """The next frame, or None when the hub has closed the connection."""
        while True:
            if len(self.buf) >= HEADER.size:
                length, version, ftype, flags, rid = HEADER.unpack_from(self.buf)
                if len(self.buf) >= HEADER.size + length:
                    body = self.buf[HEADER.size:HEADER.size + length]
                    self.buf = self.buf[HEADER.size + length:]
                    return Frame(ftype, flags, rid, body, version)
            if not self._read_more():
                assert not self.buf, f"stream ended inside a frame: {self.buf!r}"
                return None

    def half_close(self) -> None:
        """Send close_notify and keep reading (TLS 1.3 half-close, section 2.4)."""
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._flush()

    def close(self) -> None:
        self.raw.close()

    # -- protocol helpers --

    def hello(self, **fields: Any) -> Frame:
        body = {"versions": [1], "role": "merchant", "identity": self.merchant, **fields}
        self.send(frame(HELLO, msgpack.packb(body)))
        got = self.recv()
        assert got is not None
        return got

    def request(self, op: str, args: dict[str, Any] | bytes, **kw: Any) -> tuple[int, bytes]:
        rid = kw.pop("request_id", None)
        if rid is None:
            rid, self.next_id = self.next_id, self.next_id + 1
        return rid, frame(REQUEST, request_body(op, args, rid, merchant=self.merchant, **kw),
                          rid)

    def call(self, op: str, args: dict[str, Any] | bytes, **kw: Any) -> Frame:
        rid, data = self.request(op, args, **kw)
        self.send(data)
        got = self.recv_non_ping()
        assert got is not None and got.type == RESPONSE and got.request_id == rid, got
        return got

    def recv_non_ping(self) -> Frame | None:
        """The next frame that is not a PING (answered); bounded even if PINGs keep coming."""
        deadline = time.monotonic() + WAIT_S
        while True:
            got = self.recv()
            if got is None or got.type != PING:
                return got
            assert time.monotonic() < deadline, "only PINGs for too long"
            self.send(frame(PONG, b"\x80", got.request_id))

    def responses(self, count: int) -> list[Frame]:
        out: list[Frame] = []
        while len(out) < count:
            got = self.recv_non_ping()
            assert got is not None, f"closed after {out}"
            if got.type == RESPONSE:
                out.append(got)
        return out

    def expect_error_and_close(self) -> dict[str, Any]:
        """An ERROR frame (request_id 0), then the hub closes with nothing after it."""
        got = self.recv_non_ping()
        assert got is not None and got.type == ERROR, got
        assert got.request_id == 0 and got.flags == 0
        body: dict[str, Any] = got.body
        assert self.recv() is None  # section 7.1: nothing after an ERROR frame
        return body


def connect(dep: Deployment, merchant: str = "M1", **hello: Any) -> tuple[Conn, dict[str, Any]]:
    conn = Conn(dep, merchant)
    welcome = conn.hello(**hello)
    assert welcome.type == WELCOME, welcome
    return conn, welcome.body


_orders = iter(range(10**9))


def order() -> str:
    return f"sc-{os.getpid()}-{time.time_ns()}-{next(_orders)}"


def card_charge(order_id: str, amount: int = 10_000, **extra: Any) -> dict[str, Any]:
    return {"order_id": order_id, "gross_amount": amount, "payment_type": "credit_card",
            "card": {"number": RICH[0], "exp_month": 12, "exp_year": 2099, "cvv": "123"},
            **extra}


def error_of(resp: Frame) -> dict[str, Any]:
    assert resp.flags == FLAG_ERROR, resp  # section 7: an error body, never REPLAYED
    body: dict[str, Any] = resp.body
    assert {"code", "name", "message"} <= set(body) <= {"code", "name", "message", "field"}
    return body


TX_REQUIRED = {"transaction_id", "order_id", "merchant_id", "gross_amount", "currency",
               "payment_type", "transaction_status", "fraud_status", "status_code",
               "status_message", "transaction_time", "captured_amount", "refunded_amount"}
TX_OPTIONAL = {"settlement_time", "expiry_time", "masked_card", "card_brand", "bank",
               "va_number", "provider", "refunds", "fraud_reasons", "decline_reason", "hops_us"}


def ok(resp: Frame) -> dict[str, Any]:
    assert resp.flags in (0, FLAG_REPLAYED), resp.body
    body: dict[str, Any] = resp.body
    assert TX_REQUIRED <= set(body) <= TX_REQUIRED | TX_OPTIONAL, body  # section 5.2
    return body


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = Deployment(tmp_path_factory.mktemp("spec2"), bca_nodes=1)
    try:
        yield d.start()
    finally:
        d.stop()


@pytest.fixture
def conn(dep: Deployment) -> Iterator[Conn]:
    c, _ = connect(dep)
    try:
        yield c
    finally:
        c.close()


# --- section 9: the worked example, rebuilt from the recipe -------------------------------

def _spec_hex(name: str) -> bytes:
    text = SPEC.read_text()
    block = re.search(rf"<!-- BEGIN GENERATED: {name} -->\n```\n(.*?)```", text, re.S)
    assert block, name
    return bytes.fromhex("".join(line[6:] for line in block.group(1).splitlines()))


def test_worked_example_is_what_the_recipe_gives() -> None:
    args = msgpack.packb({"order_id": "order-1001", "gross_amount": 150000,
                          "payment_type": "credit_card",
                          "card": {"number": "4811111111111114", "exp_month": 12,
                                   "exp_year": 2030, "cvv": "123"}})
    assert args == _spec_hex("example-args")
    nonce = bytes(range(16))
    parts = ("M1", 1, "charge", 1764547200000, nonce, args)
    assert signing_input(*parts) == _spec_hex("example-signing-input")
    sig = sign("SB-Mid-server-EXAMPLE", *parts)
    shown = re.search(r"example-signature -->\n`([0-9a-f]{64})`", SPEC.read_text())
    assert shown and sig.hex() == shown.group(1)
    body = msgpack.packb({"op": "charge", "merchant_id": "M1", "timestamp_ms": 1764547200000,
                          "nonce": nonce, "signature": sig, "args": args})
    assert frame(REQUEST, body, 1) == _spec_hex("example-request")
    resp = _spec_hex("example-response")
    length, version, ftype, flags, rid = HEADER.unpack_from(resp)
    assert (length, version, ftype, flags, rid) == (len(resp) - 16, 1, RESPONSE, 0, 1)
    tx = msgpack.unpackb(resp[16:])
    assert tx["order_id"] == "order-1001" and tx["transaction_status"] == "capture"
    err = _spec_hex("example-error")
    length, version, ftype, flags, rid = HEADER.unpack_from(err)
    assert (version, ftype, flags, rid) == (1, RESPONSE, FLAG_ERROR, 2)
    assert msgpack.unpackb(err[16:])["field"] == "args.gross_amount"


# --- sections 3.1-3.3: HELLO / WELCOME --------------------------------------------------

def test_welcome_fields_and_negotiation(dep: Deployment) -> None:
    c = Conn(dep)
    try:
        c.send(frame(HELLO, msgpack.packb({"versions": [3, 1, 2], "role": "merchant",
                                           "identity": "M1", "body_bytes_max": 2048,
                                           "in_flight_max": 10**3, "client": "spec2"})))
        got = c.recv()
        assert got is not None and got.type == WELCOME, got
        assert (got.version, got.flags, got.request_id) == (1, 0, 0)
        w = got.body
        assert set(w) == {"version", "server", "session_id", "body_bytes_max", "in_flight_max",
                          "heartbeat_interval_ms", "resume_token", "event_seq",
                          "server_time_ms"}
        assert w["version"] == 1
        assert w["body_bytes_max"] == 2048  # min(client wish, hub limit)
        assert w["in_flight_max"] == min(1000, 256)
        assert isinstance(w["resume_token"], bytes) and len(w["resume_token"]) == 16
        assert abs(w["server_time_ms"] - time.time() * 1000) < 300_000
    finally:
        c.close()


@pytest.mark.parametrize(("hello", "code", "field"), [
    ({"color": "red"}, 201, "color"),
    ({"identity": None}, 201, "identity"),
    ({"body_bytes_max": 10}, 201, "body_bytes_max"),
    ({"in_flight_max": 0}, 201, "in_flight_max"),
    ({"versions": []}, 201, "versions"),
    ({"versions": ["1"]}, 201, "versions[0]"),
    ({"subscribe_events": 1}, 201, "subscribe_events"),
    ({"versions": [2, 7]}, 101, "versions"),
    ({"role": "hub"}, 304, "role"),
    ({"identity": "M2"}, 304, "identity"),
    ({"events_since": 0}, 201, "events_since"),
    ({"subscribe_events": True, "events_since": 10**12}, 201, "events_since"),
    ({"resume_token": b"t" * 65}, 201, "resume_token"),
    ({"client": 5}, 201, "client"),
])
def test_refused_hello_names_the_field(dep: Deployment, hello: dict[str, Any], code: int,
                                        field: str) -> None:
    c = Conn(dep)
    try:
        body = {"versions": [1], "role": "merchant", "identity": "M1", **hello}
        body = {k: v for k, v in body.items() if not (k == "identity" and v is None)}
        c.send(frame(HELLO, msgpack.packb(body)))
        err = c.expect_error_and_close()
        assert (err["code"], err.get("field")) == (code, field), err
    finally:
        c.close()


def test_hello_body_not_a_map_is_malformed_without_field(dep: Deployment) -> None:
    c = Conn(dep)
    try:
        c.send(frame(HELLO, msgpack.packb([1, 2, 3])))
        err = c.expect_error_and_close()
        assert err["code"] == 200 and "field" not in err
    finally:
        c.close()


@pytest.mark.parametrize(("data", "code"), [
    (frame(HELLO, msgpack.packb({"versions": [1], "role": "merchant", "identity": "M1"}),
           version=2), 101),
    (frame(HELLO, msgpack.packb({"versions": [1], "role": "merchant", "identity": "M1"})
           + b"\x00"), 200),
    (frame(HELLO, b""), 200),
], ids=["header-version-2", "bytes-after-the-map", "empty-body"])
def test_hello_frame_defects(dep: Deployment, data: bytes, code: int) -> None:
    c = Conn(dep)
    try:
        c.send(data)
        err = c.expect_error_and_close()
        assert err["code"] == code and "field" not in err
    finally:
        c.close()


def test_resume_token_is_accepted_and_ignored(dep: Deployment) -> None:
    c, w = connect(dep)
    c.close()
    c, w2 = connect(dep, resume_token=w["resume_token"])
    try:
        assert w2["resume_token"] != w["resume_token"]  # 16 fresh random bytes
        assert error_of(c.call("status", {"order_id": order()}))["code"] == 503
    finally:
        c.close()


def test_tls_below_1_3_is_refused(dep: Deployment) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(dep.certs / "ca.crt")
    ctx.load_cert_chain(dep.certs / "merchant-M1.crt", dep.certs / "merchant-M1.key")
    with (socket.create_connection(("127.0.0.1", dep.port), timeout=WAIT_S) as raw,
          pytest.raises((ssl.SSLError, ConnectionResetError))):
        ctx.wrap_socket(raw, server_hostname="localhost")


def test_request_before_hello_is_unexpected(dep: Deployment) -> None:
    c = Conn(dep)
    try:
        _, data = c.request("status", {"order_id": "x"})
        c.send(data)
        assert c.expect_error_and_close()["code"] == 106
    finally:
        c.close()


# --- section 2.1 / 2.5: header checks ----------------------------------------------------

@pytest.mark.parametrize(("header", "code"), ids=lambda v: v.hex() if isinstance(v, bytes)
                         else str(v), argvalues=[
    (HEADER.pack(0, 2, PING, 0, 0), 101),         # version
    (HEADER.pack(0, 2, 42, 0, 0), 101),           # version is checked before type
    (HEADER.pack(0, 1, 10, 0, 0), 103),           # unknown type
    (HEADER.pack(0, 1, 0, 0, 0), 103),
    (HEADER.pack(1, 1, 10, 0x8000, 0), 103),      # type before flags
    (HEADER.pack(1, 1, REQUEST, FLAG_ERROR, 5), 104),   # RESPONSE flags on a REQUEST
    (HEADER.pack(1, 1, PING, 0x0100, 0), 104),
    (HEADER.pack(70_000, 1, PING, 0x0100, 0), 104),     # flags before length
    (HEADER.pack(65_537, 1, REQUEST, 0, 5), 102),  # above the negotiated default 65 536
])
def test_header_checks_after_welcome(conn: Conn, header: bytes, code: int) -> None:
    conn.send(header)  # no body byte needed: the checks run on the 16 header bytes
    assert conn.expect_error_and_close()["code"] == code


def test_frame_too_large_before_welcome_is_16384(dep: Deployment) -> None:
    c = Conn(dep)
    try:
        c.send(HEADER.pack(16_385, 1, HELLO, 0, 0))
        assert c.expect_error_and_close()["code"] == 102
    finally:
        c.close()


def test_negotiated_limit_binds_client_frames(dep: Deployment) -> None:
    c, w = connect(dep, body_bytes_max=1024)
    try:
        assert w["body_bytes_max"] == 1024
        c.send(HEADER.pack(1025, 1, PING, 0, 3))
        assert c.expect_error_and_close()["code"] == 102
    finally:
        c.close()


def test_unexpected_event_from_client(conn: Conn) -> None:
    conn.send(frame(EVENT, msgpack.packb({"seq": 1, "type": "x", "merchant_id": "M1",
                                          "data": {}})))
    assert conn.expect_error_and_close()["code"] == 106


# --- section 2.4: TRUNCATED_FRAME on a half-close -----------------------------------------

def test_half_close_inside_a_frame_gets_truncated_frame(conn: Conn) -> None:
    conn.send(HEADER.pack(30, 1, PING, 0, 1)[:10])
    conn.half_close()
    err = conn.expect_error_and_close()
    assert err["code"] == 105
    assert conn.close_notify  # then its own close_notify


def test_half_close_inside_a_body_after_answers(conn: Conn) -> None:
    rid, data = conn.request("status", {"order_id": order()})
    conn.send(data + HEADER.pack(30, 1, PING, 0, 1) + b"\x80")
    conn.half_close()
    (resp,) = conn.responses(1)  # the answer queued before is delivered first
    assert resp.request_id == rid and error_of(resp)["code"] == 503
    assert conn.expect_error_and_close()["code"] == 105


def test_half_close_at_a_frame_boundary_is_no_error(conn: Conn) -> None:
    conn.half_close()
    assert conn.recv() is None
    assert conn.close_notify


# --- section 8.1: PING / PONG ---------------------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"\x80", b"\x81\xa7time_ms\x05", b"\xc1\xc1"])
def test_pong_is_the_empty_map_with_the_ping_id(conn: Conn, body: bytes) -> None:
    conn.send(frame(PING, body, 0xFFFF_FFFF_FFFF))
    got = conn.recv()
    assert got is not None and got.type == PONG, got
    assert (got.request_id, got.flags, got.raw) == (0xFFFF_FFFF_FFFF, 0, b"\x80")


def test_ping_with_id_zero(conn: Conn) -> None:
    conn.send(frame(PING, b"\x80", 0))
    got = conn.recv()
    assert got is not None and (got.type, got.request_id, got.raw) == (PONG, 0, b"\x80")


# --- sections 4, 5: requests, authentication, operations -----------------------------------

def test_charge_status_capture_refund_flow(conn: Conn) -> None:
    oid = order()
    tx = ok(conn.call("charge", card_charge(oid, 10_000, capture=False)))
    assert (tx["transaction_status"], tx["status_code"], tx["order_id"]) == (
        "authorize", "200", oid)
    assert tx["currency"] == "IDR" and tx["masked_card"] == RICH[0][:6] + "*" * 6 + RICH[0][-4:]
    assert ok(conn.call("status", {"order_id": oid}))["transaction_status"] == "authorize"
    # 5.3: capture more than authorized
    err = error_of(conn.call("capture", {"order_id": oid, "gross_amount": 10_001}))
    assert (err["code"], err["name"], err.get("field")) == (
        201, "INVALID_FIELD", "args.gross_amount")
    tx = ok(conn.call("capture", {"order_id": oid, "gross_amount": 8_000}))
    assert (tx["transaction_status"], tx["captured_amount"]) == ("capture", 8_000)
    rep = conn.call("capture", {"order_id": oid, "gross_amount": 8_000})
    assert rep.flags == FLAG_REPLAYED and rep.body["transaction_status"] == "capture"
    # 5.3: refund more than remains
    err = error_of(conn.call("refund", {"order_id": oid, "refund_key": "r1", "amount": 8_001}))
    assert (err["code"], err.get("field")) == (504, "args.amount")
    tx = ok(conn.call("refund", {"order_id": oid, "refund_key": "r1", "amount": 3_000}))
    assert (tx["transaction_status"], tx["refunded_amount"]) == ("partial_refund", 3_000)
    tx = ok(conn.call("refund", {"order_id": oid, "refund_key": "r2"}))  # what remains
    assert (tx["transaction_status"], tx["refunded_amount"]) == ("refund", 8_000)
    # 5.3: a fully refunded transaction, a new key -> INVALID_TRANSITION
    err = error_of(conn.call("refund", {"order_id": oid, "refund_key": "r3", "amount": 1}))
    assert (err["code"], err["name"]) == (501, "INVALID_TRANSITION")
    # an old key is a repeat before any status check
    rep = conn.call("refund", {"order_id": oid, "refund_key": "r1", "amount": 3_000})
    assert rep.flags == FLAG_REPLAYED
    err = error_of(conn.call("refund", {"order_id": oid, "refund_key": "r1", "amount": 2_000}))
    assert err["code"] == 500
    assert error_of(conn.call("capture", {"order_id": oid}))["code"] == 501
    assert error_of(conn.call("status", {"order_id": order()}))["code"] == 503


def test_charge_idempotency_nil_is_absent(conn: Conn) -> None:
    oid = order()
    first = conn.call("charge", card_charge(oid))
    assert first.flags == 0
    again = conn.call("charge", card_charge(oid, description=None, capture=True,
                                            customer=None))
    assert again.flags == FLAG_REPLAYED and again.body == first.body
    err = error_of(conn.call("charge", card_charge(oid, 10_001)))
    assert (err["code"], err["name"]) == (500, "DUPLICATE_ORDER")
    err = error_of(conn.call("charge", card_charge(oid, description="other")))
    assert err["code"] == 500


def test_nil_is_absent_only_for_listed_optional_fields(conn: Conn) -> None:
    oid = order()
    tx = ok(conn.call("charge", card_charge(oid, customer={"name": None}, expiry_s=None)))
    assert tx["order_id"] == oid
    err = error_of(conn.call("status", {"order_id": oid, "zzz": None}))
    assert (err["code"], err.get("field")) == (201, "args.zzz")
    err = error_of(conn.call("status", {"order_id": None}))
    assert (err["code"], err.get("field")) == (201, "args.order_id")


def test_pipelined_requests_match_by_id(conn: Conn) -> None:
    oids = [order() for _ in range(6)]
    frames = [conn.request("charge", card_charge(o)) for o in oids]
    conn.send(b"".join(data for _, data in frames))
    got = {r.request_id: r for r in conn.responses(len(frames))}
    assert set(got) == {rid for rid, _ in frames}
    for (rid, _), oid in zip(frames, oids, strict=True):
        assert ok(got[rid])["order_id"] == oid


def test_reads_keep_their_place_per_order(conn: Conn) -> None:
    oid = order()
    ops = [("charge", card_charge(oid, 9_000, capture=False)), ("status", {"order_id": oid}),
           ("capture", {"order_id": oid}), ("status", {"order_id": oid}),
           ("refund", {"order_id": oid, "refund_key": "k", "amount": 1_000}),
           ("status", {"order_id": oid})]
    frames = [conn.request(op, args) for op, args in ops]
    conn.send(b"".join(data for _, data in frames))
    got = {r.request_id: r for r in conn.responses(len(frames))}
    statuses = [ok(got[rid])["transaction_status"] for rid, _ in frames]
    assert statuses == ["authorize", "authorize", "capture", "capture", "partial_refund",
                        "partial_refund"]


def test_status_on_another_connection_waits_for_an_admitted_capture(dep: Deployment) -> None:
    import asyncio

    a, _ = connect(dep)
    b, _ = connect(dep)
    oid = order()
    ok(a.call("charge", card_charge(oid, capture=False)))
    asyncio.run(dep.admin("bca", "admin.faults", {"latency_ms": 800}))
    try:
        cap_id, cap = a.request("capture", {"order_id": oid})
        a.send(cap + frame(PING, b"\x80", 4242))
        # The PONG is sent after the REQUEST before it was decoded, i.e. admitted (4.5).
        got = a.recv()
        assert got is not None and (got.type, got.request_id) == (PONG, 4242), got
        assert ok(b.call("status", {"order_id": oid}))["transaction_status"] == "capture"
        (resp,) = a.responses(1)
        assert resp.request_id == cap_id and ok(resp)["transaction_status"] == "capture"
    finally:
        a.close()
        b.close()
        asyncio.run(dep.admin("bca", "admin.faults", {"latency_ms": 0}))


def test_status_of_an_idle_order_overtakes_a_slow_one(dep: Deployment, conn: Conn) -> None:
    import asyncio

    idle = order()
    ok(conn.call("charge", card_charge(idle)))
    asyncio.run(dep.admin("bca", "admin.faults", {"latency_ms": 1500}))
    try:
        slow_id, slow = conn.request("charge", card_charge(order()))
        read_id, read = conn.request("status", {"order_id": idle})
        conn.send(slow + read)
        first, second = conn.responses(2)
        assert (first.request_id, second.request_id) == (read_id, slow_id)
        assert ok(second)["transaction_status"] == "capture"
    finally:
        asyncio.run(dep.admin("bca", "admin.faults", {"latency_ms": 0}))


def test_authentication_errors(conn: Conn) -> None:
    oid = order()
    ok(conn.call("charge", card_charge(oid)))
    status = {"order_id": oid}
    assert error_of(conn.call("status", status, key="wrong-key"))["code"] == 301
    stale = int(time.time() * 1000) - 301_000
    assert error_of(conn.call("status", status, timestamp_ms=stale))["code"] == 303
    future = int(time.time() * 1000) + 301_000
    assert error_of(conn.call("status", status, timestamp_ms=future))["code"] == 303
    # 4.2.1: a wrong signature is BAD_SIGNATURE even if args are not msgpack
    assert error_of(conn.call("status", b"\xc1\xc1", key="wrong"))["code"] == 301
    # 4.2 step 1: merchant_id must be the connection's identity
    rid, _ = conn.request("status", status)
    nonce = os.urandom(8)
    body = request_body("status", status, rid, merchant="M2", nonce=nonce, timestamp_ms=stale)
    conn.send(frame(REQUEST, body, rid))
    (resp,) = conn.responses(1)
    assert error_of(resp)["code"] == 304  # step 1 comes before the timestamp
    # 4.2.2: refusals before step 4 spend nothing, and the signature comes before the nonce
    assert error_of(conn.call("status", status, nonce=nonce, timestamp_ms=stale))["code"] == 303
    assert ok(conn.call("status", status, nonce=nonce))["order_id"] == oid
    assert error_of(conn.call("status", status, nonce=nonce, key="bad"))["code"] == 301
    assert error_of(conn.call("status", status, nonce=nonce))["code"] == 302


def test_nonce_reuse_is_replayed_also_after_a_failed_request(conn: Conn) -> None:
    oid = order()
    ok(conn.call("charge", card_charge(oid)))
    nonce = os.urandom(8)
    rid, data = conn.request("status", {"order_id": oid}, nonce=nonce)
    conn.send(data)
    assert ok(conn.responses(1)[0])["order_id"] == oid
    conn.send(data)  # the same frame again (its id is free once answered, section 4.6)
    (resp,) = conn.responses(1)
    assert resp.request_id == rid and error_of(resp)["code"] == 302
    # 4.2.2: authenticated but unknown op spends the nonce; BAD_SIGNATURE does not
    rid, data = conn.request("fly", {"order_id": oid})
    conn.send(data)
    assert error_of(conn.responses(1)[0])["code"] == 202
    conn.send(data)
    assert error_of(conn.responses(1)[0])["code"] == 302
    nonce = os.urandom(8)
    assert error_of(conn.call("status", {"order_id": oid}, nonce=nonce,
                              key="bad"))["code"] == 301
    assert ok(conn.call("status", {"order_id": oid}, nonce=nonce))["order_id"] == oid


def test_args_rules_after_authentication(conn: Conn) -> None:
    # 4.1: args that are not msgpack, once authenticated -> MALFORMED_BODY, field args
    err = error_of(conn.call("status", b"\xc1"))
    assert (err["code"], err.get("field")) == (200, "args")
    err = error_of(conn.call("status", {"order_id": "x", "extra": 1}))
    assert (err["code"], err.get("field")) == (201, "args.extra")
    # 2.6: the args map counts as depth 2 (as if embedded); depth 8 passes, depth 9 does not
    deep: Any = {}  # six maps: args.customer at depth 3 down to depth 8
    for _ in range(5):
        deep = {"d": deep}
    err = error_of(conn.call("charge", card_charge(order(), customer=deep)))
    assert (err["code"], err.get("field")) == (201, "args.customer.d")  # depth 8: schema
    err = error_of(conn.call("charge", card_charge(order(), customer={"d": deep})))
    assert (err["code"], err.get("field")) == (200, "args")
    err = error_of(conn.call("charge", card_charge(order(), currency="XYZ")))
    assert (err["code"], err.get("field")) == (201, "args.currency")
    # 2.2: keys must be strings at every depth
    err = error_of(conn.call("charge", msgpack.packb({"order_id": "o", 1: 2})))
    assert err["code"] == 200


def test_envelope_holds_scalars_only(conn: Conn) -> None:
    body = msgpack.unpackb(request_body("status", {"order_id": "x"}, 9))
    body["extra"] = [1]
    conn.send(frame(REQUEST, msgpack.packb(body), 9))
    (resp,) = conn.responses(1)
    assert resp.request_id == 9 and error_of(resp)["code"] == 200


def test_envelope_in_long_header_forms_still_verifies(conn: Conn) -> None:
    oid = order()
    ok(conn.call("charge", card_charge(oid)))
    rid, ts, nonce = 77, int(time.time() * 1000), os.urandom(8)
    args = msgpack.packb({"order_id": oid})
    sig = sign(KEYS["M1"], "M1", rid, "status", ts, nonce, args)
    # map16 header, str8 for short strings, uint64 for the timestamp, bin32 for args
    def s8(s: str) -> bytes:
        return b"\xd9" + bytes([len(s)]) + s.encode()
    body = (b"\xde\x00\x06" + s8("op") + s8("status") + s8("merchant_id") + s8("M1")
            + s8("timestamp_ms") + b"\xcf" + struct.pack(">Q", ts)
            + s8("nonce") + b"\xc6" + struct.pack(">I", len(nonce)) + nonce
            + s8("signature") + b"\xc4\x20" + sig
            + s8("args") + b"\xc6" + struct.pack(">I", len(args)) + args)
    conn.send(frame(REQUEST, body, rid))
    (resp,) = conn.responses(1)
    assert ok(resp)["order_id"] == oid


def test_response_too_large_for_the_negotiated_limit(dep: Deployment) -> None:
    c, _ = connect(dep, body_bytes_max=1024)
    try:
        oid = order()
        frames = [c.request("charge", card_charge(oid, 60_000))]
        frames += [c.request("refund", {"order_id": oid, "refund_key": f"key-{i:02d}" * 4,
                                        "amount": 100, "reason": "r" * 60})
                   for i in range(6)]
        frames.append(c.request("status", {"order_id": oid}))
        c.send(b"".join(data for _, data in frames))
        got = {r.request_id: r for r in c.responses(len(frames))}
        last = got[frames[-1][0]]
        err = error_of(last)
        assert (err["code"], err["name"]) == (404, "RESPONSE_TOO_LARGE")
        assert len(last.raw) <= 1024
    finally:
        c.close()
    c, _ = connect(dep)
    try:
        tx = ok(c.call("status", {"order_id": oid}))
        assert tx["refunded_amount"] == 600 and len(tx["refunds"]) == 6
    finally:
        c.close()


def test_duplicate_request_id_in_flight(dep: Deployment) -> None:
    import asyncio

    c, _ = connect(dep)
    first, second = order(), order()
    asyncio.run(dep.admin("bca", "admin.faults", {"latency_ms": 1000}))
    try:
        rid, a = c.request("charge", card_charge(first))
        b = frame(REQUEST, request_body("charge", card_charge(second), rid), rid)
        c.send(a + b)
        err = c.expect_error_and_close()
        assert (err["code"], err["name"]) == (109, "DUPLICATE_REQUEST_ID")
    finally:
        c.close()
        asyncio.run(dep.admin("bca", "admin.faults", {"latency_ms": 0}))
    c, _ = connect(dep)
    try:
        assert ok(c.call("status", {"order_id": first}))["transaction_status"] == "capture"
        assert error_of(c.call("status", {"order_id": second}))["code"] == 503
    finally:
        c.close()


# --- section 7.1: client ERROR, GOAWAY and unsolicited RESPONSE -----------------------------

def test_client_error_frame_closes_and_later_requests_do_not_run(conn: Conn) -> None:
    oid = order()
    err = msgpack.packb({"code": 900, "name": "INTERNAL", "message": "bye"})
    _, data = conn.request("charge", card_charge(oid))
    conn.send(frame(ERROR, err) + data)
    assert conn.recv() is None
    c2, _ = connect_again(conn)
    try:
        assert error_of(c2.call("status", {"order_id": oid}))["code"] == 503
    finally:
        c2.close()


_DEP: dict[str, Deployment] = {}


def connect_again(conn: Conn) -> tuple[Conn, dict[str, Any]]:
    return connect(_DEP["dep"])


@pytest.fixture(autouse=True)
def _remember(dep: Deployment) -> None:
    _DEP["dep"] = dep


def test_client_goaway_and_unsolicited_response_are_ignored(conn: Conn) -> None:
    conn.send(frame(GOAWAY, b"\xc1"))  # 8.1: the body is not decoded
    conn.send(frame(RESPONSE, b"\x80", 12345))
    conn.send(frame(RESPONSE, b"\xc1", 12346, flags=FLAG_ERROR | FLAG_REPLAYED))
    conn.send(frame(PONG, b"\xc1", 3))  # an unsolicited PONG, body not decoded either
    oid = order()
    assert ok(conn.call("charge", card_charge(oid)))["order_id"] == oid
    conn.send(frame(GOAWAY, msgpack.packb({"last_request_id": 0, "code": 0, "message": ""})))
    assert conn.expect_error_and_close()["code"] == 106  # a second GOAWAY


def test_client_error_frame_before_hello_closes_silently(dep: Deployment) -> None:
    c = Conn(dep)
    try:
        c.send(frame(ERROR, b"\xc1") + frame(HELLO, msgpack.packb(
            {"versions": [1], "role": "merchant", "identity": "M1"})))
        assert c.recv() is None
    finally:
        c.close()


@pytest.mark.parametrize("data", [frame(RESPONSE, b"\x80", 0), frame(GOAWAY, b"\x80", 9),
                                  frame(REQUEST, b"\x80", 0), frame(EVENT, b"\x80", 1)],
                         ids=["response-0", "goaway-9", "request-0", "event-1"])
def test_bad_request_ids_in_complete_frames(conn: Conn, data: bytes) -> None:
    conn.send(data)
    assert conn.expect_error_and_close()["code"] == 100


@pytest.mark.parametrize("header", [HEADER.pack(1, 1, REQUEST, 0, 0),
                                    HEADER.pack(3, 1, GOAWAY, 0, 9),
                                    HEADER.pack(1, 1, RESPONSE, 0, 0)],
                         ids=["request-id-0", "goaway-id-9", "response-id-0"])
def test_bad_request_id_is_refused_on_the_header(fast_dep: Deployment, header: bytes) -> None:
    c, _ = connect(fast_dep)
    try:
        c.send(header)  # no body byte: the check needs none
        got = c.recv()
        assert got is not None and got.type == ERROR, got  # not a PING: refused at once
        assert got.body["code"] == 100
    finally:
        c.close()


@pytest.mark.parametrize("rid", [127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32,
                                 2**64 - 1])
def test_signing_input_uses_shortest_integer_forms(conn: Conn, rid: int) -> None:
    resp = conn.call("status", {"order_id": order()}, request_id=rid)
    assert error_of(resp)["code"] == 503  # authenticated: the signature verified


def test_signing_input_bin16_args(dep: Deployment) -> None:
    c, w = connect(dep, body_bytes_max=200_000)
    try:
        assert w["body_bytes_max"] == 65_536  # the hub's own limit (bin 32 args cannot fit)
        oid = order()
        tx = ok(c.call("charge", card_charge(oid, description="d" * 255),
                       nonce=os.urandom(32)))
        assert tx["order_id"] == oid  # args > 255 bytes: bin 16 in the signing input
        big = {"order_id": oid, "junk": ["j" * 4000] * 15}  # 60 KB: still authenticated
        err = error_of(c.call("status", big))
        assert (err["code"], err.get("field")) == (201, "args.junk")
    finally:
        c.close()


def test_envelope_errors_are_error_responses(conn: Conn) -> None:
    def send(mutate: Any) -> dict[str, Any]:
        rid = conn.next_id
        conn.next_id += 1
        body = msgpack.unpackb(request_body("status", {"order_id": "x"}, rid))
        mutate(body)
        conn.send(frame(REQUEST, msgpack.packb(body), rid))
        (resp,) = conn.responses(1)
        assert resp.request_id == rid
        return error_of(resp)

    err = send(lambda b: b.update(foo=1))
    assert (err["code"], err.get("field")) == (201, "foo")
    assert send(lambda b: b.update({f"k{i}": i for i in range(11)}))["code"] == 200
    err = send(lambda b: b.update(nonce=b"1234567"))
    assert (err["code"], err.get("field")) == (201, "nonce")
    assert send(lambda b: b.update(timestamp_ms=1.5))["code"] == 200
    err = send(lambda b: b.update(args="text"))
    assert (err["code"], err.get("field")) == (201, "args")
    err = send(lambda b: b.update(op=None))  # nil is absent; op is required
    assert (err["code"], err.get("field")) == (201, "op")
    conn.send(frame(REQUEST, b"", 99))
    (resp,) = conn.responses(1)
    assert resp.request_id == 99 and error_of(resp)["code"] == 200


def test_in_flight_bound_answers_the_rest_of_the_read(dep: Deployment) -> None:
    import asyncio

    c, w = connect(dep, in_flight_max=1)
    asyncio.run(dep.admin("bca", "admin.faults", {"latency_ms": 500}))
    try:
        assert w["in_flight_max"] == 1
        orders = [order(), order()]
        frames = [c.request("charge", card_charge(o)) for o in orders]
        c.send(b"".join(data for _, data in frames))
        got = {r.request_id: r for r in c.responses(2)}
        assert ok(got[frames[0][0]])["transaction_status"] == "capture"
        assert error_of(got[frames[1][0]])["code"] == 401
        assert error_of(c.call("status", {"order_id": orders[1]}))["code"] == 503
    finally:
        c.close()
        asyncio.run(dep.admin("bca", "admin.faults", {"latency_ms": 0}))


def test_cancel_and_virtual_account_expire(conn: Conn) -> None:
    oid = order()
    ok(conn.call("charge", card_charge(oid, capture=False)))
    assert ok(conn.call("cancel", {"order_id": oid}))["transaction_status"] == "cancel"
    assert conn.call("cancel", {"order_id": oid}).flags == FLAG_REPLAYED
    assert error_of(conn.call("capture", {"order_id": oid}))["code"] == 501
    va = order()
    tx = ok(conn.call("charge", {"order_id": va, "gross_amount": 5_000,
                                 "payment_type": "bank_transfer", "bank": "bca"}))
    assert (tx["transaction_status"], tx["status_code"]) == ("pending", "201")
    assert tx["va_number"]
    tx = ok(conn.call("expire", {"order_id": va}))
    assert (tx["transaction_status"], tx["status_code"]) == ("expire", "407")
    assert conn.call("expire", {"order_id": va}).flags == FLAG_REPLAYED


def test_what_replayed_answers_carry(conn: Conn) -> None:
    oid = order()
    first = ok(conn.call("charge", card_charge(oid, 10_000, capture=False)))
    # 5.3: a capture repeats only with the captured amount, while the status is `capture`
    ok(conn.call("capture", {"order_id": oid, "gross_amount": 8_000}))
    assert conn.call("capture", {"order_id": oid, "gross_amount": 8_000}).flags == FLAG_REPLAYED
    assert error_of(conn.call("capture", {"order_id": oid}))["code"] == 501  # 10 000 != 8 000
    assert error_of(conn.call("capture", {"order_id": oid,
                                          "gross_amount": 9_000}))["code"] == 501
    ok(conn.call("refund", {"order_id": oid, "refund_key": "a", "amount": 1_000}))
    ok(conn.call("refund", {"order_id": oid, "refund_key": "b", "amount": 2_000}))
    # a repeated refund returns the transaction as it is now
    rep = conn.call("refund", {"order_id": oid, "refund_key": "a", "amount": 1_000})
    assert rep.flags == FLAG_REPLAYED and ok(rep)["refunded_amount"] == 3_000
    # a capture after the transaction moved on is INVALID_TRANSITION
    assert error_of(conn.call("capture", {"order_id": oid,
                                          "gross_amount": 8_000}))["code"] == 501
    # a repeated charge returns the stored first result
    rep = conn.call("charge", card_charge(oid, 10_000, capture=False))
    assert rep.flags == FLAG_REPLAYED and rep.body == first
    full = order()
    ok(conn.call("charge", card_charge(full, 5_000, capture=False)))
    ok(conn.call("capture", {"order_id": full}))
    assert conn.call("capture", {"order_id": full}).flags == FLAG_REPLAYED
    assert conn.call("capture", {"order_id": full, "gross_amount": 5_000}).flags == FLAG_REPLAYED


# --- section 6 / 3.3: pushed events --------------------------------------------------------

def _events_until(c: Conn, pred: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        got = c.recv_non_ping()
        assert got is not None, f"closed after {out}"
        if got.type != EVENT:
            continue
        assert (got.flags, got.request_id) == (0, 0)
        ev: dict[str, Any] = got.body
        assert set(ev) == {"seq", "type", "merchant_id", "data"}
        out.append(ev)
        if pred(ev):
            return out


def test_events_live_and_replay(dep: Deployment) -> None:
    sub, w = connect(dep, "M2", subscribe_events=True)
    worker, _ = connect(dep, "M2")
    try:
        start = w["event_seq"]
        oid = order()
        ok(worker.call("charge", card_charge(oid)))
        live = _events_until(sub, lambda ev: ev["data"]["order_id"] == oid
                             and ev["data"]["transaction_status"] == "capture")
        assert [ev["seq"] for ev in live] == list(range(start + 1, start + 1 + len(live)))
        assert {(ev["type"], ev["merchant_id"]) for ev in live} == {("transaction.status",
                                                                    "M2")}
        last = live[-1]["seq"]
    finally:
        sub.close()
        worker.close()
    # Replay from the first seq we saw, then nothing skipped, nothing repeated.
    sub, w = connect(dep, "M2", subscribe_events=True, events_since=start)
    try:
        assert w["event_seq"] == last
        replay = _events_until(sub, lambda ev: ev["seq"] == last)
        assert replay == live
    finally:
        sub.close()
    # events_since equal to the latest seq is allowed and replays nothing; live follows.
    sub, w = connect(dep, "M2", subscribe_events=True, events_since=last)
    worker, _ = connect(dep, "M2")
    try:
        oid = order()
        ok(worker.call("charge", card_charge(oid)))
        more = _events_until(sub, lambda ev: ev["data"]["order_id"] == oid
                             and ev["data"]["transaction_status"] == "capture")
        assert more[0]["seq"] == last + 1
    finally:
        sub.close()
        worker.close()
    # events_since beyond the latest seq is refused with the field.
    c = Conn(dep, "M2")
    try:
        c.send(frame(HELLO, msgpack.packb({"versions": [1], "role": "merchant",
                                           "identity": "M2", "subscribe_events": True,
                                           "events_since": more[-1]["seq"] + 1})))
        err = c.expect_error_and_close()
        assert (err["code"], err.get("field")) == (201, "events_since")
    finally:
        c.close()


# --- sections 3 and 2.4: heartbeat, IDLE_TIMEOUT, an incomplete frame left too long -------

@pytest.fixture(scope="module")
def fast_dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = Deployment(tmp_path_factory.mktemp("spec2hb"), bca_nodes=1,
                   hub_overrides={"heartbeat_interval_s": 0.2, "bank_timeout_s": 0.3,
                                  "bank_retry_attempts_max": 1})
    try:
        yield d.start()
    finally:
        d.stop()


def test_hub_pings_an_idle_client_then_idle_timeout(fast_dep: Deployment) -> None:
    c, w = connect(fast_dep)
    try:
        assert w["heartbeat_interval_ms"] == 200
        pings = 0
        while True:  # never answer: after 3 silent intervals the hub gives up
            got = c.recv()
            assert got is not None
            if got.type != PING:
                break
            pings += 1
            assert got.flags == 0
        assert pings >= 1 and got.type == ERROR and got.request_id == 0
        assert got.body["code"] == 108
        assert c.recv() is None
    finally:
        c.close()


def test_answering_pings_keeps_the_connection(fast_dep: Deployment) -> None:
    c, _ = connect(fast_dep)
    try:
        for _ in range(8):  # 8 PINGs span more than 3 heartbeat intervals
            got = c.recv()
            assert got is not None and got.type == PING, got
            c.send(frame(PONG, b"\x80", got.request_id))
        assert error_of(c.call("status", {"order_id": order()}))["code"] == 503
    finally:
        c.close()


def test_incomplete_frame_left_too_long_is_truncated(fast_dep: Deployment) -> None:
    c, _ = connect(fast_dep)
    try:
        c.send(HEADER.pack(30, 1, PING, 0, 1) + b"\x80")
        while True:
            got = c.recv()
            assert got is not None
            if got.type != PING:
                break
        assert got.type == ERROR and got.body["code"] == 105  # not IDLE_TIMEOUT
        assert c.recv() is None
    finally:
        c.close()


def test_event_too_large_for_the_subscriber_gets_its_stand_in(dep: Deployment) -> None:
    sub, w = connect(dep, "M2", subscribe_events=True, body_bytes_max=1024)
    worker, _ = connect(dep, "M2")
    try:
        oid = order()
        frames = [worker.request("charge", card_charge(oid, 60_000))]
        frames += [worker.request("refund", {"order_id": oid, "refund_key": f"key-{i:02d}" * 4,
                                             "amount": 100, "reason": "r" * 60})
                   for i in range(5)]
        # the last refund makes the status `refund` (an event) with six refunds in `data`
        frames.append(worker.request("refund", {"order_id": oid, "refund_key": "last" * 8,
                                                "reason": "r" * 60}))
        worker.send(b"".join(data for _, data in frames))
        worker.responses(len(frames))
        seen: list[dict[str, Any]] = []
        while not any(ev["data"]["order_id"] == oid
                      and ev["data"]["transaction_status"] == "refund" for ev in seen):
            got = sub.recv_non_ping()
            assert got is not None
            assert got.type == EVENT and len(got.raw) <= 1024, got
            seen.append(got.body)
        assert [ev["seq"] for ev in seen] == list(range(w["event_seq"] + 1,
                                                        w["event_seq"] + 1 + len(seen)))
        # 6: one event per change of transaction_status (capture, partial_refund, refund)
        assert [ev["data"]["transaction_status"] for ev in seen] == [
            "capture", "partial_refund", "refund"]
        stand_ins = [ev for ev in seen if ev["type"] == "transaction.status.truncated"]
        assert stand_ins == [seen[-1]], seen
        for ev in stand_ins:
            assert set(ev["data"]) == {"transaction_id", "order_id", "transaction_status"}
            assert ev["merchant_id"] == "M2"
    finally:
        sub.close()
        worker.close()


def test_outcome_unknown_then_the_retry_gets_the_settled_result(fast_dep: Deployment) -> None:
    import asyncio

    c, _ = connect(fast_dep)
    oid = order()
    asyncio.run(fast_dep.admin("bca", "admin.faults", {"blackhole": True}))
    try:
        err = error_of(c.call("charge", card_charge(oid)))  # 5.3: after at most 2 x B
        assert (err["code"], err["name"]) == (602, "OUTCOME_UNKNOWN")
    finally:
        asyncio.run(fast_dep.admin("bca", "admin.faults", {"blackhole": False}))
    try:
        deadline = time.monotonic() + WAIT_S
        while True:  # "the client retries the same request later"
            resp = c.call("charge", card_charge(oid))
            if not resp.flags & FLAG_ERROR or resp.body["code"] not in (600, 602):
                break
            assert time.monotonic() < deadline, resp.body
            time.sleep(0.05)  # retry pacing, not synchronisation: the loop polls the answer
        # the bank never saw the charge: it was reversed, recorded as `failure`
        assert resp.flags == FLAG_REPLAYED
        assert (ok(resp)["transaction_status"], resp.body["status_code"]) == ("failure", "202")
    finally:
        c.close()


# --- section 8: GOAWAY on hub shutdown (last: it restarts the hub) -------------------------

def test_goaway_on_hub_shutdown(dep: Deployment) -> None:
    import asyncio

    c, _ = connect(dep)
    oid = order()
    asyncio.run(dep.admin("bca", "admin.faults", {"latency_ms": 1000}))
    stopper: threading.Thread | None = None
    try:
        slow_id, slow = c.request("charge", card_charge(oid), request_id=50)
        c.send(slow)
        assert dep.hub is not None
        stopper = threading.Thread(target=dep.hub.terminate)
        stopper.start()
        got = c.recv_non_ping()
        assert got is not None and got.type == GOAWAY, got
        assert (got.flags, got.request_id) == (0, 0)
        goaway = got.body
        assert goaway["code"] == 901 and goaway["last_request_id"] == slow_id  # highest id
        late_id, late = c.request("status", {"order_id": oid},
                                  request_id=goaway["last_request_id"] + 1)
        # the cut is by id: a lower id sent after GOAWAY is still executed
        early_id, early = c.request("charge", card_charge(order()), request_id=7)
        c.send(late + early)
        answers = {r.request_id: r for r in c.responses(3)}
        assert error_of(answers[late_id])["code"] == 901
        assert ok(answers[early_id])["transaction_status"] == "capture"
        assert ok(answers[slow_id])["transaction_status"] == "capture"
        assert c.recv_non_ping() is None
    finally:
        c.close()
        if stopper is not None:
            stopper.join(timeout=60)
        asyncio.run(dep.admin("bca", "admin.faults", {"latency_ms": 0}))
        dep.start_hub()
    c, _ = connect(dep)
    try:
        assert ok(c.call("status", {"order_id": oid}))["transaction_status"] == "capture"
    finally:
        c.close()
