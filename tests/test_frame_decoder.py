"""Frame header and incremental decoder: splitting, batching, and hostile headers."""

from __future__ import annotations

import struct

import pytest

from protocol import body as bodycodec
from protocol.decoder import FrameDecoder
from protocol.errors import ErrorCode, FrameError
from protocol.frame import (
    HEADER,
    HEADER_BYTES,
    Flags,
    Frame,
    FrameType,
    encode,
    encode_frame,
)

LIMIT = 64 * 1024


def sample_frames() -> list[Frame]:
    return [
        Frame(FrameType.HELLO, 0, bodycodec.pack({"versions": [1], "role": "merchant",
                                                  "identity": "M1"})),
        Frame(FrameType.REQUEST, 1, bodycodec.pack({"op": "status", "x": "y" * 300})),
        Frame(FrameType.RESPONSE, 1, bodycodec.pack({"ok": True}), int(Flags.REPLAYED)),
        Frame(FrameType.RESPONSE, 2, bodycodec.pack({"code": 201}), int(Flags.ERROR)),
        Frame(FrameType.EVENT, 0, bodycodec.pack({"seq": 7})),
        Frame(FrameType.PING, 99, b""),
        Frame(FrameType.PONG, 99, bodycodec.pack({})),
        Frame(FrameType.GOAWAY, 0, bodycodec.pack({"last_request_id": 2**64 - 1})),
        Frame(FrameType.ERROR, 0, bodycodec.pack({"code": 100})),
        Frame(FrameType.WELCOME, 0, bodycodec.pack({"version": 1})),
        Frame(FrameType.REQUEST, 2**64 - 1, bodycodec.pack({"op": "status"})),
    ]


def test_header_layout_is_big_endian_16_bytes() -> None:
    raw = encode_frame(FrameType.REQUEST, 0x0102030405060708, b"\x80", int(Flags.ERROR))
    assert raw[:HEADER_BYTES] == bytes.fromhex("00000001" "01" "03" "0001" "0102030405060708")
    assert raw[HEADER_BYTES:] == b"\x80"


def test_every_frame_type_round_trips() -> None:
    frames = sample_frames()
    assert {f.type for f in frames} == set(FrameType)
    for frame in frames:
        dec = FrameDecoder(LIMIT)
        assert dec.feed(encode(frame)) == [frame]
        assert dec.buffered_bytes == 0


def test_split_at_every_byte_boundary_equals_one_read() -> None:
    frames = sample_frames()
    stream = b"".join(encode(f) for f in frames)
    assert FrameDecoder(LIMIT).feed(stream) == frames
    for cut in range(len(stream) + 1):
        dec = FrameDecoder(LIMIT)
        got = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert got == frames, cut
        dec.eof()


def test_one_byte_at_a_time() -> None:
    frames = sample_frames()
    stream = b"".join(encode(f) for f in frames)
    dec = FrameDecoder(LIMIT)
    got: list[Frame] = []
    for i in range(len(stream)):
        got += dec.feed(stream[i:i + 1])
    assert got == frames


def _header(length: int, version: int = 1, ftype: int = 3, flags: int = 0, rid: int = 1) -> bytes:
    return HEADER.pack(length, version, ftype, flags, rid)


def _error_of(data: bytes, limit: int = LIMIT) -> FrameError:
    dec = FrameDecoder(limit)
    with pytest.raises(FrameError) as info:
        dec.feed(data)
        dec.eof()
    return info.value


def test_hostile_length_rejected_before_buffering() -> None:
    dec = FrameDecoder(LIMIT)
    with pytest.raises(FrameError) as info:
        dec.feed(_header(0xFFFFFFFF))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert dec.buffered_bytes == 0
    # Poisoned: the stream position is lost, so every later call fails the same way.
    with pytest.raises(FrameError):
        dec.feed(b"\x00" * 100)


def test_length_one_above_limit_rejected_at_limit_accepted() -> None:
    assert _error_of(_header(LIMIT + 1)).code is ErrorCode.FRAME_TOO_LARGE
    ok = FrameDecoder(LIMIT).feed(_header(LIMIT) + b"\x00" * LIMIT)
    assert len(ok) == 1 and len(ok[0].body) == LIMIT


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (_header(0, version=2), ErrorCode.UNSUPPORTED_VERSION),
        (_header(0, version=0), ErrorCode.UNSUPPORTED_VERSION),
        (_header(0, ftype=0), ErrorCode.UNKNOWN_FRAME_TYPE),
        (_header(0, ftype=10), ErrorCode.UNKNOWN_FRAME_TYPE),
        (_header(0, ftype=255), ErrorCode.UNKNOWN_FRAME_TYPE),
        (_header(0, flags=0x0004), ErrorCode.RESERVED_FLAGS),
        (_header(0, flags=0x8000), ErrorCode.RESERVED_FLAGS),
        (_header(0, ftype=3, flags=0x0001), ErrorCode.RESERVED_FLAGS),  # ERROR only on RESPONSE
        (_header(0, ftype=6, flags=0x0002), ErrorCode.RESERVED_FLAGS),
        # request_id rules (docs/protocol.md §2.5), judged on the header alone: no body byte
        # of these frames is sent, and none is needed to refuse them.
        (_header(10, ftype=3, rid=0), ErrorCode.BAD_FRAME),  # REQUEST needs an id
        (_header(10, ftype=4, rid=0), ErrorCode.BAD_FRAME),  # RESPONSE too
        (_header(10, ftype=1, rid=4), ErrorCode.BAD_FRAME),  # HELLO carries 0
        (_header(10, ftype=8, rid=9), ErrorCode.BAD_FRAME),  # GOAWAY carries 0
        (_header(10)[:7], ErrorCode.TRUNCATED_FRAME),
        (_header(10) + b"abc", ErrorCode.TRUNCATED_FRAME),
    ],
)
def test_bad_headers_have_their_own_codes(data: bytes, code: ErrorCode) -> None:
    assert _error_of(data).code is code


def test_frames_before_an_error_are_kept() -> None:
    good = encode_frame(FrameType.PING, 5, b"")
    err = _error_of(good + good + _header(0, ftype=77))
    assert [f.request_id for f in err.frames_before] == [5, 5]  # type: ignore[attr-defined]


def test_buffer_bounded_by_limit_plus_one_read() -> None:
    dec = FrameDecoder(1024)
    frame = encode_frame(FrameType.REQUEST, 1, b"x" * 1024)
    for _ in range(50):
        dec.feed(frame[:700])
        assert dec.buffered_bytes <= 1024 + HEADER_BYTES
        dec.feed(frame[700:])
        assert dec.buffered_bytes == 0


def test_struct_format_matches_documented_widths() -> None:
    assert struct.calcsize(">IBBHQ") == HEADER_BYTES == 16
