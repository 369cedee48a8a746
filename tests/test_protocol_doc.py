"""docs/protocol.md is normative: its generated parts equal the code, and its recipes work."""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from pathlib import Path
from typing import Any

from protocol import docgen, messages, signing
from protocol.decoder import FrameDecoder
from protocol.frame import FrameType

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def test_generated_sections_match_the_code() -> None:
    text = DOC.read_text()
    in_doc = docgen.sections_in(text)
    rendered = docgen.render()
    assert set(in_doc) == set(rendered), set(in_doc) ^ set(rendered)
    for name, body in rendered.items():
        assert in_doc[name] == body, f"section {name} is stale: run python -m protocol.docgen"


def _hex_block(name: str) -> bytes:
    block = docgen.sections_in(DOC.read_text())[name]
    lines = [ln for ln in block.splitlines() if re.match(r"^[0-9a-f]{4}  ", ln)]
    return bytes.fromhex("".join(ln[6:] for ln in lines))


def _canon(v: Any) -> bytes:
    """msgpack canonical form written from section 4.3 alone (no msgpack library)."""
    if v is None:
        return b"\xc0"
    if v is True or v is False:
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        assert v >= 0
        if v < 0x80:
            return bytes([v])
        for tag, fmt, top in ((0xCC, ">B", 2**8), (0xCD, ">H", 2**16), (0xCE, ">I", 2**32),
                              (0xCF, ">Q", 2**64)):
            if v < top:
                return bytes([tag]) + struct.pack(fmt, v)
    if isinstance(v, str):
        raw = v.encode()
        if len(raw) < 32:
            return bytes([0xA0 | len(raw)]) + raw
        return b"\xd9" + bytes([len(raw)]) + raw
    if isinstance(v, bytes):
        if len(v) < 0x100:
            return b"\xc4" + bytes([len(v)]) + v
        return b"\xc5" + struct.pack(">H", len(v)) + v
    if isinstance(v, list):
        assert len(v) < 16
        return bytes([0x90 | len(v)]) + b"".join(_canon(x) for x in v)
    if isinstance(v, dict):
        assert len(v) < 16
        keys = sorted(v, key=lambda k: k.encode())
        return bytes([0x80 | len(v)]) + b"".join(_canon(k) + _canon(v[k]) for k in keys)
    raise TypeError(v)


def test_signing_recipe_reimplemented_from_the_spec() -> None:
    # The args bytes as the doc shows them (any valid msgpack map; these are the sender's),
    # then the signing input built from section 4.3 alone: tag, then a 6-element array of
    # the scalars in shortest form and args as a bin holding those exact bytes.
    args_raw = _hex_block("example-args")
    assert messages.decode_args(args_raw) == docgen.EXAMPLE_ARGS
    by_spec = b"paywire-request-v2\x00" + _canon(
        ["M1", docgen.EXAMPLE_REQUEST_ID, "charge", docgen.EXAMPLE_TIMESTAMP_MS,
         docgen.EXAMPLE_NONCE, args_raw])
    assert by_spec == _hex_block("example-signing-input")
    mac = hmac.new(docgen.EXAMPLE_KEY, by_spec, hashlib.sha256).hexdigest()
    assert f"`{mac}`" == docgen.sections_in(DOC.read_text())["example-signature"]


def test_worked_example_frames_decode_and_verify() -> None:
    raw = _hex_block("example-request")
    assert raw == docgen.example_request()
    header = struct.unpack(">IBBHQ", raw[:16])
    assert header == (len(raw) - 16, 1, 3, 0, 1)
    assert f"`00 00 00 {len(raw) - 16:02x}` (body of {len(raw) - 16} bytes)" in DOC.read_text()
    (frame,) = FrameDecoder(65536).feed(raw)
    req = messages.decode_request(frame.request_id, frame.body)
    assert signing.verify_request(docgen.EXAMPLE_KEY, req.signature, req.merchant_id,
                                  req.request_id, req.op, req.timestamp_ms, req.nonce,
                                  req.args_raw)
    resp = _hex_block("example-response")
    (rframe,) = FrameDecoder(65536).feed(resp)
    assert (rframe.type, rframe.request_id, rframe.flags) == (FrameType.RESPONSE, 1, 0)
    assert messages.bodycodec.unpack(rframe.body) == docgen.EXAMPLE_RESULT


def test_example_result_is_a_valid_transaction() -> None:
    from protocol.operations import TRANSACTION

    assert TRANSACTION.check(docgen.EXAMPLE_RESULT, "") == docgen.EXAMPLE_RESULT
