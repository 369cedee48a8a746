"""The Wireshark dissector (``docs/wireshark/paywire.lua``) and its generated tables.

- The tables in the Lua file and the README's field list equal what ``protocol.wireshark``
  renders from the protocol package (never skipped: no tshark needed).
- tshark with the dissector reads a capture file this test writes byte by byte from the
  spec's worked examples, split at every byte boundary and packed several to a segment, and
  shows each frame once with its fields.
- A live capture: real hub and bank processes, ``SSLKEYLOGFILE`` set, ``dumpcap`` on the
  loopback, a client that sends requests with ids it chooses (one of them pipelined with
  another in one write); tshark decrypts with the key log and the dissector names the frame
  types, request ids, operations, order ids and error codes.

Without tshark (or without the right to capture), the tests that run it are skipped with
the reason printed; ``.ci/run`` installs Debian's tshark so CI always runs them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shlex
import shutil
import signal
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gateway.client import Card
from gateway.config import BankNodeConfig, HubConfig
from gateway.transactions.model import now_ms
from protocol import body as bodycodec
from protocol import docgen, messages, signing, wireshark
from protocol.errors import ErrorCode
from protocol.frame import Flags, FrameType, encode_frame
from tests.deploy import KEYS, RICH, Deployment
from tests.rawclient import Raw
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "docs" / "wireshark" / "paywire.lua"
README = ROOT / "docs" / "wireshark" / "README.md"
TSHARK = shutil.which("tshark")
DUMPCAP = shutil.which("dumpcap")
TSHARK_TIMEOUT_S = 120.0  # a generous bound for one tshark run on a loaded 2-core machine
CAPTURE_WAIT_S = 60.0


# -- generated tables -----------------------------------------------------------------------

def test_generated_tables_match_the_protocol() -> None:
    for path in (LUA, README):
        in_file = wireshark.sections_in(path.read_text())
        rendered = wireshark.rendered_for(str(path))
        assert set(in_file) == set(rendered), (path, set(in_file) ^ set(rendered))
        for name, body in rendered.items():
            assert in_file[name] == body, (
                f"{path.name}: section {name} is stale: run python -m protocol.wireshark "
                "--write docs/wireshark/paywire.lua docs/wireshark/README.md")


def test_generated_tables_name_every_type_and_error_code() -> None:
    lua = wireshark.render_lua()["protocol-tables"]
    for ftype in FrameType:
        assert f'[{int(ftype)}] = "{ftype.name}",' in lua
    for code in ErrorCode:
        assert f'[{int(code)}] = "{code.name}",' in lua
    assert '{"order_id", "str", "paywire.order_id"},' in lua
    assert '{"op", "str", "paywire.op"},' in lua


def test_default_ports_are_the_nodes_default_ports() -> None:
    assert (HubConfig().listen_port, BankNodeConfig().listen_port) == wireshark.DEFAULT_TLS_PORTS


# -- running tshark -------------------------------------------------------------------------

def need_tshark() -> str:
    if TSHARK is None:
        pytest.skip("tshark is not installed (Debian: apt-get install tshark; .ci/run installs "
                    "it), so the dissector cannot be run here")
    return TSHARK


Fields = dict[str, list[str]]


def _fields_of(element: ET.Element, out: Fields) -> None:
    for child in element:
        name = child.get("name")
        if child.tag == "field" and name and name.startswith("paywire."):
            out.setdefault(name, []).append(child.get("show", ""))
        _fields_of(child, out)


def dissect(pcap: Path, *options: str, growing: bool = False) -> list[tuple[int, int, Fields]]:
    """Every Paywire frame tshark shows in ``pcap``: (packet number, TCP source port, its
    fields by filter name), in order. Fails on a Lua error in the dissector. ``growing``:
    the file is still being written, so it may end inside a packet (tshark then says the
    file was cut short and exits non-zero, after showing the packets before)."""
    tshark = need_tshark()
    run = subprocess.run(
        [tshark, "-n", "-r", str(pcap), "-X", f"lua_script:{LUA}", *options,
         "-Y", "paywire", "-T", "pdml"],
        capture_output=True, timeout=TSHARK_TIMEOUT_S, check=False)
    text = run.stdout.decode("utf-8", "replace")
    assert run.returncode == 0 or growing, run.stderr.decode("utf-8", "replace")
    assert "Lua Error" not in text and b"Lua Error" not in run.stderr, text[-4000:]
    if growing and "</pdml>" not in text:
        return []
    found = []
    for packet in ET.fromstring(text).iter("packet"):
        number = sport = 0
        for proto in packet.iter("proto"):
            if proto.get("name") == "geninfo":
                for f in proto.iter("field"):
                    if f.get("name") == "num":
                        number = int(f.get("show", "0"))
            if proto.get("name") == "tcp":
                for f in proto.iter("field"):
                    if f.get("name") == "tcp.srcport":
                        sport = int(f.get("show", "0"))
        for proto in packet.findall("proto"):
            if proto.get("name") == "paywire":
                fields: Fields = {}
                _fields_of(proto, fields)
                found.append((number, sport, fields))
    return found


def one(fields: Fields, name: str) -> str:
    values = fields.get(name, [])
    assert len(values) == 1, (name, fields)
    return values[0]


# -- a capture file written by hand ---------------------------------------------------------

def _pcap(path: Path, segments: list[tuple[int, int, bytes]]) -> None:
    """A classic pcap of TCP segments (source port, destination port, payload) between
    127.0.0.1 and itself, each stream's sequence numbers counted from 1. No handshake:
    Wireshark dissects mid-stream captures; checksums are 0 (not verified by default)."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # Ethernet
    seq: dict[tuple[int, int], int] = {}
    for i, (sport, dport, payload) in enumerate(segments):
        s = seq.setdefault((sport, dport), 1)
        ack = seq.setdefault((dport, sport), 1)
        seq[(sport, dport)] = s + len(payload)
        tcp = struct.pack(">HHIIBBHHH", sport, dport, s, ack, 5 << 4, 0x18, 65535, 0, 0)
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), i & 0xFFFF, 0,
                         64, 6, 0, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
        packet = b"\0" * 12 + b"\x08\x00" + ip + tcp + payload
        out += struct.pack("<IIII", 1 + i // 1_000_000, i % 1_000_000, len(packet), len(packet))
        out += packet
    path.write_bytes(bytes(out))


def _odd_body() -> bytes:
    """A map (in the 16-bit map form) holding every msgpack family and values of the wrong
    type for their key; ``seq`` is an int 64 (0xd3), a form Python's msgpack never picks."""
    entries: list[tuple[Any, bytes]] = [
        (k, msgpack.packb(v)) for k, v in [
            ("s", "x"), ("i", -5), ("big", 2**64 - 1), ("small", -2**63), ("f", 1.5),
            ("n", None), ("subscribe_events", True), ("raw", b"ab"),
            ("e", msgpack.ExtType(1, b"ab")), ("nest", [1, [2, {"order_id": "o-9"}]]),
            (5, "int key"), ("gross_amount", "abc"), ("amount", -1)]]
    entries.append(("seq", b"\xd3" + (7).to_bytes(8, "big")))
    return b"\xde" + len(entries).to_bytes(2, "big") + b"".join(
        msgpack.packb(k) + v for k, v in entries)


def test_reassembles_frames_split_anywhere_and_packed_together(tmp_path: Path) -> None:
    need_tshark()
    request = docgen.example_request()
    batch = docgen.example_batch_request()
    response = docgen.example_response()
    batch_response = docgen.example_batch_response()
    error = encode_frame(FrameType.RESPONSE, 2, bodycodec.pack(
        {"code": 504, "name": "REFUND_EXCEEDS_CAPTURED", "message": "too much"}),
        int(Flags.ERROR))
    port = 7999
    segments: list[tuple[int, int, bytes]] = []
    # One stream per split position of the example REQUEST (inside the header, at the
    # header/body boundary, inside the body): each must show one whole frame.
    for k in range(1, len(request)):
        client = 20000 + k
        segments += [(client, port, request[:k]), (client, port, request[k:])]
    # One stream where frames share segments: the end of one and the start of the next.
    stream = request + batch + response + batch_response + error
    cuts = [0, 7, len(request) + 3, len(request) + len(batch) + 100, len(stream)]
    for a, b in itertools.pairwise(cuts):
        segments.append((19999, port, stream[a:b]))
    # The same, its first segment starting with a whole frame (what the heuristic needs).
    for a, b in itertools.pairwise(cuts[:1] + cuts[2:]):
        segments.append((19998, port, stream[a:b]))
    # Header defects a receiver refuses (§2.1, §2.5), flagged by the dissector.
    reserved = encode_frame(FrameType.PING, 0, b"\x80", flags=0x0004)
    zero_id = encode_frame(FrameType.REQUEST, 0, b"\x80")
    segments.append((19997, port, reserved + zero_id))
    # Connection-level errors: an ERROR frame and a GOAWAY carry codes too (§7, §8).
    segments.append((19995, port, messages.encode_message(FrameType.GOAWAY, {
        "last_request_id": 41, "code": int(ErrorCode.SHUTTING_DOWN), "message": "draining"})
        + messages.encode_message(FrameType.ERROR, {
            "code": int(ErrorCode.TRUNCATED_FRAME), "name": "TRUNCATED_FRAME",
            "message": "the stream ended inside a frame"})))
    # Bodies the protocol refuses but a capture may hold: every msgpack family, wrong types,
    # nesting deeper than the dissector follows, a truncated map, a body that is no map.
    deep: Any = "bottom"
    for _ in range(40):
        deep = [deep]
    odd_frames = [
        encode_frame(FrameType.EVENT, 0, _odd_body()),
        encode_frame(FrameType.EVENT, 0, msgpack.packb({"deep": deep})),
        encode_frame(FrameType.EVENT, 0, b"\x85\xa1a\x01"),
        encode_frame(FrameType.EVENT, 0, b"\x05"),
    ]
    segments.append((19996, port, b"".join(odd_frames)))
    pcap = tmp_path / "split.pcap"
    _pcap(pcap, segments)

    # By port alone (the heuristic off), as in the plaintext lab mode.
    frames = dissect(pcap, "-o", "paywire.heuristic:FALSE", "-o", f"paywire.tcp_ports:{port}")
    by_port: dict[int, list[Fields]] = {}
    for _number, sport, fields in frames:
        by_port.setdefault(sport, []).append(fields)
    for k in range(1, len(request)):
        shown = by_port.get(20000 + k)
        assert shown is not None and len(shown) == 1, (k, shown)
        (f,) = shown
        assert one(f, "paywire.type") == str(int(FrameType.REQUEST))
        assert one(f, "paywire.request_id") == "1"
        assert one(f, "paywire.length") == str(len(request) - 16)
        assert f["paywire.op"] == ["charge"] and f["paywire.order_id"] == ["order-1001"]
        assert f["paywire.number"] == [docgen.EXAMPLE_ARGS["card"]["number"]]
        assert "paywire.args" in f and "paywire.signature" in f

    packed = by_port[19999]
    assert [one(f, "paywire.type_name") for f in packed] == [
        "REQUEST", "REQUEST", "RESPONSE", "RESPONSE", "RESPONSE"]
    assert [one(f, "paywire.request_id") for f in packed] == ["1", "7", "1", "7", "2"]
    assert packed[1]["paywire.op"] == ["bank.batch", "bank.authorize", "bank.refund"]
    assert packed[1]["paywire.op_id"] == ["t-1001:auth", "t-0999:refund:1"]
    assert packed[2]["paywire.transaction_status"] == ["capture"]
    # The batch answer's second entry is an error body: its code shown by name.
    assert packed[3]["paywire.error_code"] == [str(int(ErrorCode.INVALID_FIELD))]
    assert packed[3]["paywire.error_name"] == ["INVALID_FIELD"]
    assert one(packed[4], "paywire.flags") == "0x0001"
    assert one(packed[4], "paywire.flags.error") == "1"
    assert packed[4]["paywire.error_code"] == ["504"]
    assert packed[4]["paywire.error_name"] == ["REFUND_EXCEEDS_CAPTURED"]

    odd = by_port[19996]
    assert [one(f, "paywire.type_name") for f in odd] == ["EVENT", "EVENT", "EVENT", "EVENT"]
    values = odd[0]["paywire.value"]
    for shown in ('"x"', "-5", "18446744073709551615", "-9223372036854775808", "1.5", "nil",
                  '"int key"', '"abc"', "-1", "<2 bytes> 6162", "ext type 1 <2 bytes> 6162"):
        assert shown in values, (shown, values)
    assert odd[0]["paywire.order_id"] == ["o-9"]  # in a map in an array in an array
    assert odd[0]["paywire.seq"] == ["7"]  # an int 64 (0xd3) in an unsigned field
    assert odd[0]["paywire.subscribe_events"] == ["1"]
    assert "paywire.bad_body" not in odd[0]
    for f in odd[1:]:  # too deep, truncated, not a map
        assert "paywire.bad_body" in f, f

    goaway, error_frame = by_port[19995]
    assert one(goaway, "paywire.type_name") == "GOAWAY"
    assert goaway["paywire.last_request_id"] == ["41"]
    assert goaway["paywire.error_code"] == [str(int(ErrorCode.SHUTTING_DOWN))]
    assert one(error_frame, "paywire.type") == str(int(FrameType.ERROR))
    assert error_frame["paywire.error_code"] == [str(int(ErrorCode.TRUNCATED_FRAME))]
    assert error_frame["paywire.error_name"] == ["TRUNCATED_FRAME"]

    bad = by_port[19997]
    assert [one(f, "paywire.type_name") for f in bad] == ["PING", "REQUEST"]
    assert "paywire.bad_header" in bad[0] and "paywire.bad_header" in bad[1], bad
    assert "paywire.bad_header" not in packed[0]

    # On any port by the heuristic: a stream whose first segment starts with a whole frame.
    found = [f for _n, sport, f in dissect(pcap) if sport == 19998]
    assert found == packed


# -- a live capture of real processes over TLS ----------------------------------------------

class Capture:
    """``dumpcap`` on the loopback for some TCP ports, into a pcapng file."""

    def __init__(self, path: Path, ports: list[int]) -> None:
        self.path = path
        self.ports = ports
        self.stderr = path.with_suffix(".stderr")
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        assert DUMPCAP is not None
        capture_filter = " or ".join(f"tcp port {p}" for p in self.ports)
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [DUMPCAP, "-i", "lo", "-f", capture_filter, "-w", str(self.path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        proc = self.proc

        # dumpcap prints "Capturing on ..." before it opens the interface, and "File: ..."
        # once the interface is open (packets are being kept from then on) and the file made.
        def started_or_gone() -> bool:
            return "\nFile: " in self.stderr.read_text() or proc.poll() is not None

        await wait_until(started_or_gone, "dumpcap to start capturing", timeout_s=CAPTURE_WAIT_S)
        if proc.poll() is not None:
            said = self.stderr.read_text().strip()
            if "permission" in said.lower() or "not permitted" in said:
                pytest.skip(f"capturing on the loopback is not permitted here: {said[:400]}")
            raise AssertionError(f"dumpcap failed: {said}")
        assert self.path.exists(), self.stderr.read_text()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # dumpcap writes out what it has and exits
        try:
            self.proc.wait(timeout=CAPTURE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def signed(rid: int, op: str, args: dict[str, Any], merchant: str = "M1") -> bytes:
    nonce = os.urandom(16)
    ts = now_ms()
    args_raw = messages.encode_args(args)
    sig = signing.sign_request(KEYS[merchant].encode(), merchant, rid, op, ts, nonce, args_raw)
    return messages.encode_request(rid, op, merchant, ts, nonce, sig, args_raw)


async def test_live_tls_capture_is_dissected(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    need_tshark()
    if DUMPCAP is None:
        pytest.skip("dumpcap is not installed (it comes with tshark on Debian), so nothing "
                    "can be captured here")
    keylog = tmp_path / "sslkeys.log"
    # The hub and bank nodes inherit it too, so the hub's links to the banks decrypt as well.
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    dep = Deployment(tmp_path / "dep", bca_nodes=1)
    capture: Capture | None = None
    try:
        await dep.astart()
        bank_ports = [p.port for procs in dep.banks.values() for p in procs]
        ports = [dep.port, *bank_ports]
        capture = Capture(tmp_path / "paywire.pcapng", ports)
        await capture.start()
        # Restarted inside the capture, the hub's TLS handshakes with the bank nodes are in
        # it, so the bank link decrypts too.
        await asyncio.get_running_loop().run_in_executor(None, dep.hub.terminate)  # type: ignore[union-attr]
        await dep.arestart_hub()

        lib_order = f"ws-lib-{os.urandom(3).hex()}"
        async with dep.client() as c:
            tx = await c.charge(lib_order, 25_000, card=Card(RICH[0], 12, 2030, "123"))
        assert tx.transaction_status == "capture"

        raw_order = f"ws-raw-{os.urandom(3).hex()}"
        raw = await Raw.open(dep)
        try:
            await raw.hello()
            raw.send(signed(1001, "charge", {
                "order_id": raw_order, "gross_amount": 10_000, "payment_type": "credit_card",
                "card": {"number": RICH[1], "exp_month": 12, "exp_year": 2030, "cvv": "123"}}))
            charged = await raw.next_frame()
            assert (charged.type, charged.request_id, charged.flags) == (FrameType.RESPONSE,
                                                                           1001, 0)
            # Two requests in one write: several frames in one TLS record.
            raw.send(signed(1002, "refund", {"order_id": raw_order, "refund_key": "rk-1",
                                             "amount": 20_000})
                     + signed(1003, "status", {"order_id": f"{raw_order}-nowhere"}))
            answers = {f.request_id: f for f in [await raw.next_frame(), await raw.next_frame()]}
            codes = {rid: bodycodec.unpack(f.body)["code"] for rid, f in answers.items()}
            assert codes == {1002: ErrorCode.REFUND_EXCEEDS_CAPTURED, 1003: ErrorCode.NOT_FOUND}
        finally:
            raw.close()

        # By port alone (the heuristic off); the heuristic is checked on its own below.
        options = ["-o", f"tls.keylog_file:{keylog}", "-o", "paywire.heuristic:FALSE",
                   "-o", f"paywire.tls_ports:{','.join(str(p) for p in ports)}"]

        pcap = capture.path

        async def last_answer_captured() -> bool:
            frames = await asyncio.to_thread(lambda: dissect(pcap, *options, growing=True))
            return any(f.get("paywire.request_id") == ["1003"]
                       and f.get("paywire.type_name") == ["RESPONSE"] for _, _, f in frames)

        # dumpcap writes its file as it goes: wait until the last answer is in it.
        await wait_until(last_answer_captured,
                         "the capture to hold the RESPONSE to request 1003",
                         timeout_s=CAPTURE_WAIT_S, poll_s=0.5)
    finally:
        if capture is not None:
            capture.stop()
        await asyncio.get_running_loop().run_in_executor(None, dep.stop)

    frames = [f for _, _, f in dissect(pcap, *options)]
    names = [one(f, "paywire.type_name") for f in frames]
    for expected in ("HELLO", "WELCOME", "REQUEST", "RESPONSE"):
        assert expected in names, names
    by_id: dict[tuple[str, str], Fields] = {}
    for f in frames:
        by_id.setdefault((one(f, "paywire.type_name"), one(f, "paywire.request_id")), f)
    for rid, op in (("1001", "charge"), ("1002", "refund"), ("1003", "status")):
        assert by_id[("REQUEST", rid)]["paywire.op"] == [op]
    assert by_id[("REQUEST", "1001")]["paywire.order_id"] == [raw_order]
    assert by_id[("RESPONSE", "1001")]["paywire.order_id"] == [raw_order]
    assert by_id[("RESPONSE", "1001")]["paywire.transaction_status"] == ["capture"]
    for rid, code in (("1002", ErrorCode.REFUND_EXCEEDS_CAPTURED),
                      ("1003", ErrorCode.NOT_FOUND)):
        answer = by_id[("RESPONSE", rid)]
        assert one(answer, "paywire.flags.error") == "1"
        assert answer["paywire.error_code"] == [str(int(code))]
        assert answer["paywire.error_name"] == [code.name]
    # The library client's charge, and the hub asking the bank for it on the bank link.
    lib = [f for f in frames if f.get("paywire.order_id") == [lib_order]]
    assert {one(f, "paywire.type_name") for f in lib} == {"REQUEST", "RESPONSE"}, lib
    bank_ops = {op for f in frames for op in f.get("paywire.op", []) if op.startswith("bank.")}
    assert "bank.authorize" in bank_ops, bank_ops

    # Without the port list, the heuristic finds the same frames in the TLS sessions.
    by_heuristic = [f for _, _, f in dissect(pcap, "-o", f"tls.keylog_file:{keylog}")]
    assert by_heuristic == frames

    # The README's commands, as a student types them (the capture and key log have the
    # names it uses), print what it says.
    summary, fields = readme_commands()
    out = run_readme_command(summary, tmp_path)
    assert f"REQUEST #1001 op=charge order_id={raw_order}" in out, out
    assert "RESPONSE #1002 [ERROR] REFUND_EXCEEDS_CAPTURED" in out, out
    assert "RESPONSE #1003 [ERROR] NOT_FOUND" in out, out
    rows = [line.split("\t") for line in run_readme_command(fields, tmp_path).splitlines()]
    assert ["RESPONSE", "1002", "", "", "REFUND_EXCEEDS_CAPTURED"] in [r[1:] for r in rows]
    # The pipelined pair went out in one write: one segment, two frames.
    assert ["REQUEST,REQUEST", "1002,1003", "refund,status"] in [r[1:4] for r in rows], rows


def readme_commands() -> tuple[str, str]:
    """The README's two tshark commands on a capture file: the summary and the fields."""
    commands = [line for line in README.read_text().splitlines()
                if line.startswith("tshark -r paywire.pcapng ")]
    summary = [c for c in commands if " -T fields " not in c]
    fields = [c for c in commands if " -T fields " in c]
    assert len(summary) == 1 and len(fields) == 1, commands
    return summary[0], fields[0]


def run_readme_command(command: str, cwd: Path) -> str:
    tshark = need_tshark()
    argv = shlex.split(command)
    assert argv[0] == "tshark"
    argv = [tshark, *[a.replace("lua_script:docs/", f"lua_script:{ROOT}/docs/") for a in argv[1:]]]
    run = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=TSHARK_TIMEOUT_S,
                         check=False)
    assert run.returncode == 0, run.stderr
    return run.stdout.decode("utf-8", "replace")
