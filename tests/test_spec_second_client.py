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
        while True:
            got = self.recv()
            if got is None or got.type != PING:
                return got
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
    assert resp.flags & FLAG_ERROR, resp
    body: dict[str, Any] = resp.body
    return body


def ok(resp: Frame) -> dict[str, Any]:
    assert not resp.flags & FLAG_ERROR, resp.body
    body: dict[str, Any] = resp.body
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


def test_request_before_hello_is_unexpected(dep: Deployment) -> None:
    c = Conn(dep)
    try:
        _, data = c.request("status", {"order_id": "x"})
        c.send(data)
        assert c.expect_error_and_close()["code"] == 106
    finally:
        c.close()


# --- section 2.1 / 2.5: header checks ----------------------------------------------------

@pytest.mark.parametrize(("header", "code"), [
    (HEADER.pack(0, 2, PING, 0, 0), 101),         # version
    (HEADER.pack(0, 2, 42, 0, 0), 101),           # version is checked before type
    (HEADER.pack(0, 1, 10, 0, 0), 103),           # unknown type
    (HEADER.pack(0, 1, 0, 0, 0), 103),
    (HEADER.pack(1, 1, 10, 0x8000, 0), 103),      # type before flags
    (HEADER.pack(1, 1, REQUEST, FLAG_ERROR, 5), 104),   # RESPONSE flags on a REQUEST
    (HEADER.pack(1, 1, PING, 0x0100, 0), 104),
    (HEADER.pack(70_000, 1, PING, 0x0100, 0), 104),     # flags before length
    (HEADER.pack(65_537, 1, REQUEST, 0, 5), 102),  # above the negotiated default 65 536
    (HEADER.pack(1, 1, REQUEST, 0, 0), 100),       # REQUEST with request_id 0
    (HEADER.pack(1, 1, GOAWAY, 0, 9), 100),        # GOAWAY must carry 0
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
