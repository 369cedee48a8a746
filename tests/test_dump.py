"""``paywire dump`` decodes the spec's worked examples exactly, masks secrets, and never raises.

Every hexdump of docs/protocol.md is read from the document itself: a new example must be
classified here (frame, bare body or signing input), so none goes unchecked.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import cli
from protocol import dump
from protocol.operations import mask_card

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
CARD = "4811111111111114"


def doc_hexdumps() -> dict[str, bytes]:
    """Every generated hexdump block of the spec, by its section name (read with its own
    parser, not ``dump.parse_hex``: the dumps' offsets column is 4 hex digits, two spaces)."""
    text = DOC.read_text()
    out = {}
    for name, block in re.findall(r"<!-- BEGIN GENERATED: ([\w.-]+) -->\n```\n(.*?)```",
                                  text, re.S):
        lines = [ln for ln in block.splitlines() if re.match(r"^[0-9a-f]{4}  ", ln)]
        out[name] = bytes.fromhex("".join(ln[6:] for ln in lines))
    return out


def kind_of(name: str) -> str:
    for suffix, kind in (("-request", "frame"), ("-response", "frame"), ("-error", "frame"),
                         ("-args", "body"), ("-signing-input", "signing")):
        if name.endswith(suffix):
            return kind
    raise AssertionError(f"hexdump {name} of docs/protocol.md is not classified by this test")


def expected_masked(obj: Any, key: str | None = None, *, args: bool = False) -> Any:
    """What the dump must show for a value decoded by msgpack itself: the masking rules of
    protocol/dump.py's docstring, written out again."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "args" and args and isinstance(v, bytes):
                out[k] = expected_masked(msgpack.unpackb(v, raw=False))
            else:
                out[k] = expected_masked(v, k)
        return out
    if isinstance(obj, list):
        return [expected_masked(v, key) for v in obj]
    if key == "cvv":
        return "***"
    if isinstance(obj, bytes):
        if key == "signature":
            return obj[:4].hex() + "…"
        return obj.hex() if len(obj) <= 16 else obj[:8].hex() + "…"
    if isinstance(obj, str) and key in ("number", "account") and \
            re.fullmatch(r"[0-9]{12,19}", obj):
        return mask_card(obj)
    return obj


EXAMPLES = doc_hexdumps()


def test_the_spec_has_the_examples_this_test_expects() -> None:
    kinds = {name: kind_of(name) for name in EXAMPLES}
    assert {"example-request", "example-response", "example-error", "batch-request",
            "batch-response", "example-args", "batch-args"} <= set(kinds)


@pytest.mark.parametrize("name", sorted(n for n in EXAMPLES if kind_of(n) == "frame"))
def test_every_frame_of_the_spec_decodes_exactly(name: str) -> None:
    data = EXAMPLES[name]
    frames = dump.dump(data)
    assert len(frames) == 1
    frame = frames[0]
    assert frame.complete and frame.problems == [], frame.problems
    length, version, ftype, flags, rid = struct.unpack(">IBBHQ", data[:16])
    assert (frame.body_length, frame.version, frame.frame_type, frame.flags,
            frame.request_id) == (length, version, ftype, flags, rid)
    assert length == len(data) - 16
    header = {i.name: i for i in frame.items if i.depth == 0 and i.raw}
    assert [(i.offset, i.name) for i in header.values()] == [
        (0, "body_length"), (4, "version"), (5, "frame_type"), (6, "flags"), (8, "request_id")]
    assert header["body_length"].raw == data[0:4].hex(" ")
    assert header["request_id"].raw == data[8:16].hex(" ")
    decoded = msgpack.unpackb(data[16:], raw=False)
    assert frame.body == expected_masked(decoded, args=ftype == 3)
    # Offsets: a map entry's offset is where its key's msgpack bytes start in the frame.
    entries = [i for i in frame.items if i.depth >= 1 and not i.name.startswith("[")]
    assert entries
    for item in entries:
        key = msgpack.packb(item.name)
        assert data[item.offset:item.offset + len(key)] == key, (item, data[item.offset:][:8])
    text = dump.render(frames)
    assert CARD not in text and "4811111111111114" not in repr(frame.body)
    assert f"{dump.type_name(ftype)} request_id={rid}" in text


def test_the_worked_request_field_by_field() -> None:
    frame = dump.dump(EXAMPLES["example-request"])[0]
    assert frame.type_name == "REQUEST" and frame.request_id == 1 and frame.body_length == 248
    body = frame.body
    assert body is not None
    assert body["op"] == "charge" and body["merchant_id"] == "M1"
    assert body["timestamp_ms"] == 1764547200000
    assert body["nonce"] == bytes(range(16)).hex()
    assert body["signature"] == "811fdf09…"
    assert body["args"] == {"order_id": "order-1001", "gross_amount": 150000,
                            "payment_type": "credit_card",
                            "card": {"number": "481111******1114", "exp_month": 12,
                                     "exp_year": 2030, "cvv": "***"}}
    by_name = {i.name: i for i in frame.items}
    assert by_name["args"].offset == 0x84 and by_name["args"].kind == "bin 8 (125 bytes)"
    assert by_name["timestamp_ms"].note == "2025-12-01T00:00:00.000Z"
    assert by_name["number"].note == "card number masked"
    text = dump.render([frame])
    assert '  0x00d1        number         fixstr             "481111******1114"  (card number ' \
        'masked)\n' in text
    assert '"123"' not in text and "811fdf09680a" not in text


def test_error_codes_and_flags_are_named() -> None:
    frame = dump.dump(EXAMPLES["example-error"])[0]
    assert frame.flags == 1 and frame.as_json()["flag_names"] == ["ERROR"]
    assert frame.body == {"code": 201, "name": "INVALID_FIELD",
                          "message": "args.gross_amount: must be 1..1000000000000000, got 0",
                          "field": "args.gross_amount"}
    code = next(i for i in frame.items if i.name == "code")
    assert code.note == "INVALID_FIELD" and code.offset == 0x11


def test_batch_request_masks_the_link_account() -> None:
    frame = dump.dump(EXAMPLES["batch-request"])[0]
    assert frame.body is not None
    ops = frame.body["args"]["ops"]
    assert [op["op"] for op in ops] == ["bank.authorize", "bank.refund"]
    assert ops[0]["args"]["account"] == "481111******1114"
    assert ops[1]["args"] == {"op_id": "t-0999:refund:1", "transaction_id": "t-0999",
                              "amount": 0}


@pytest.mark.parametrize("name", sorted(n for n in EXAMPLES if kind_of(n) == "body"))
def test_bare_bodies_decode_with_body_mode(name: str) -> None:
    frame = dump.dump_body(EXAMPLES[name])
    assert frame.problems == []
    assert frame.body == expected_masked(msgpack.unpackb(EXAMPLES[name], raw=False))


@pytest.mark.parametrize("name", sorted(n for n in EXAMPLES if kind_of(n) == "signing"))
def test_a_signing_input_is_reported_as_not_a_frame(name: str) -> None:
    frames = dump.dump(EXAMPLES[name])
    assert frames[-1].problems and not frames[-1].complete


def test_several_frames_in_a_row_and_a_partial_tail() -> None:
    stream = EXAMPLES["example-request"] + EXAMPLES["example-response"] + \
        EXAMPLES["example-error"]
    frames = dump.dump(stream)
    assert [(f.type_name, f.request_id, f.offset) for f in frames] == [
        ("REQUEST", 1, 0), ("RESPONSE", 1, 264), ("RESPONSE", 2, 264 + 413)]
    for cut in range(1, len(stream)):
        got = dump.dump(stream[:cut])
        complete = [f for f in got if f.complete]
        assert all(f.problems == [] for f in complete)
        if cut not in (264, 264 + 413):
            assert not got[-1].complete and got[-1].problems[0].startswith("TRUNCATED_FRAME")


def test_hostile_headers_are_reported() -> None:
    huge = bytes.fromhex("ffffffff 01 03 0000 0000000000000001".replace(" ", "")) + b"\x80"
    frame = dump.dump(huge)[-1]
    assert not frame.complete and frame.problems[-1].startswith("FRAME_TOO_LARGE")
    odd = struct.pack(">IBBHQ", 1, 7, 12, 0x8000, 0) + b"\x80"
    problems = dump.dump(odd)[0].problems
    assert [p.split(":")[0] for p in problems] == ["UNSUPPORTED_VERSION",
                                                   "UNKNOWN_FRAME_TYPE"]
    junk_body = struct.pack(">IBBHQ", 3, 1, 4, 0, 9) + b"\xc1\x00\x00"
    frame = dump.dump(junk_body)[0]
    assert frame.complete and frame.problems[0].startswith("MALFORMED_BODY")


def test_parse_hex_accepts_the_docs_hexdump_and_plain_hex() -> None:
    text = DOC.read_text()
    block = text.split("<!-- BEGIN GENERATED: example-error -->\n```\n")[1].split("```")[0]
    assert dump.parse_hex(block) == EXAMPLES["example-error"]
    assert dump.parse_hex("0x00 0x01\n0203:04") == b"\x00\x01\x02\x03\x04"
    with pytest.raises(ValueError):
        dump.parse_hex("00 0g")


def test_cli_hex_argument_file_and_stdin(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = EXAMPLES["example-request"]
    assert cli.main(["dump", data.hex()]) == 0
    out = capsys.readouterr().out
    assert "frame 1 at 0x0000: REQUEST request_id=1" in out and CARD not in out
    raw = tmp_path / "stream.bin"
    raw.write_bytes(data + EXAMPLES["example-response"])
    assert cli.main(["dump", "--file", str(raw), "--json"]) == 0
    assert '"frame_type": "RESPONSE"' in capsys.readouterr().out
    assert cli.main(["dump", "--body", EXAMPLES["example-args"].hex()]) == 0
    assert '"481111******1114"' in capsys.readouterr().out
    assert cli.main(["dump", data[:20].hex()]) == 1
    assert "! TRUNCATED_FRAME" in capsys.readouterr().out
    assert cli.main(["dump", "nothex"]) == 2
    for stdin in (data, data.hex(" ").encode()):  # raw bytes, then hex text: auto-detected
        run = subprocess.run([sys.executable, "-m", "gateway.cli", "dump"], input=stdin,
                             capture_output=True, cwd=ROOT, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        assert b"REQUEST request_id=1" in run.stdout and CARD.encode() not in run.stdout


def test_the_dump_shown_in_docs_is_what_the_command_prints(
        capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "docs" / "see-the-bytes.md").read_text()
    shown = text.split("(`paywire dump` of its hexdump):\n\n```\n")[1].split("```")[0]
    assert cli.main(["dump", EXAMPLES["example-error"].hex()]) == 0
    assert capsys.readouterr().out == shown


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    frames = dump.dump(data)
    dump.render(frames)
    [f.as_json() for f in frames]
    dump.render([dump.dump_body(data)])
    dump.summarize(3, 1, 0, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(0, 8))
def test_arbitrary_bodies_behind_valid_headers_never_raise(body: bytes, ftype: int) -> None:
    # Random bytes rarely pass a header; these always do, so the body reader is exercised.
    data = struct.pack(">IBBHQ", len(body), 1, ftype + 1, 0, 1 if ftype + 1 in (3, 4) else 0)
    frames = dump.dump(data + body)
    assert frames[0].complete
    dump.render(frames)
