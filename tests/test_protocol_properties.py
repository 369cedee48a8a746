"""Property-based and fuzz-style tests of the decoder, bodies and validation."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import body as bodycodec
from protocol import messages
from protocol.decoder import FrameDecoder
from protocol.errors import ErrorCode, FrameError, PaywireError
from protocol.frame import (
    FLAGS_ALLOWED,
    HEADER,
    REQUEST_ID_NONZERO,
    Frame,
    FrameType,
    encode,
)
from protocol.operations import Operation, validate_args


def _request_ids(t: FrameType) -> st.SearchStrategy[int]:
    """The ids a frame of type ``t`` may carry (docs/protocol.md §2.5)."""
    nonzero = REQUEST_ID_NONZERO.get(t)
    return st.integers(0 if nonzero is None else int(nonzero), 0 if nonzero is False
                       else 2**64 - 1)


frames = st.sampled_from(list(FrameType)).flatmap(
    lambda t: st.builds(
        Frame,
        st.just(int(t)),
        _request_ids(t),
        st.binary(max_size=600),
        st.integers(0, FLAGS_ALLOWED[t]),
        st.just(1),
    )
)


@given(st.lists(frames, max_size=12), st.lists(st.integers(0, 10_000), max_size=8))
def test_any_frames_any_splits_round_trip(fs: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode(f) for f in fs)
    points = sorted({min(c, len(stream)) for c in cuts})
    dec = FrameDecoder(1024)
    got: list[Frame] = []
    prev = 0
    for p in [*points, len(stream)]:
        got += dec.feed(stream[prev:p])
        prev = p
    dec.eof()
    assert got == fs


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_random_bytes_only_raise_protocol_errors(chunks: list[bytes]) -> None:
    dec = FrameDecoder(256)
    try:
        for chunk in chunks:
            for frame in dec.feed(chunk):
                try:
                    messages.decode_body(frame.type, frame.body)
                except PaywireError:
                    pass
        dec.eof()
    except PaywireError:
        pass


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=40), st.binary(max_size=40),
)
bodies = st.dictionaries(
    st.text(max_size=12),
    st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                 | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=20),
    max_size=8,
)


@given(bodies)
def test_body_round_trip_within_limits(body: dict[str, Any]) -> None:
    try:
        assert bodycodec.unpack(bodycodec.pack(body)) == body
    except PaywireError as exc:
        assert "nesting" in exc.message


@given(bodies)
def test_validation_never_crashes_on_arbitrary_bodies(body: dict[str, Any]) -> None:
    for op in Operation:
        try:
            validate_args(op, body)
        except PaywireError:
            pass
    for ftype in FrameType:
        try:
            messages.decode_body(ftype, bodycodec.pack(body))
        except PaywireError:
            pass


def test_mutation_fuzz_of_valid_frames() -> None:
    """Flip, drop and insert bytes in valid streams (seeded, bounded) and feed the result."""
    rng = random.Random(1234)
    base = b"".join(
        messages.encode_message(FrameType.REQUEST, {
            "op": "charge", "merchant_id": "M1", "timestamp_ms": 1, "nonce": b"n" * 16,
            "signature": b"s" * 32,
            "args": messages.encode_args({"order_id": f"o{i}", "gross_amount": 10})},
            request_id=i)
        for i in range(5)
    )
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            op = rng.randint(0, 2)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos]
            else:
                data.insert(pos, rng.randrange(256))
        dec = FrameDecoder(4096)
        try:
            for frame in dec.feed(bytes(data)):
                try:
                    req = messages.decode_request(frame.request_id, frame.body)
                    validate_args(Operation.CHARGE, messages.decode_args(req.args_raw))
                except PaywireError:
                    pass
            dec.eof()
        except PaywireError:
            pass


@given(st.sampled_from(sorted(REQUEST_ID_NONZERO)), st.integers(1, 2**64 - 1),
       st.integers(0, 2**32 - 1))
def test_a_request_id_its_type_forbids_is_refused_on_the_header(
        t: int, rid: int, length: int) -> None:
    """§2.5, checked before any body byte is buffered: the header alone is refused, whatever
    length it announces (within the limit, so this is the check that fires)."""
    bad_rid = 0 if REQUEST_ID_NONZERO[t] else rid
    header = HEADER.pack(min(length, 1024), 1, t, 0, bad_rid)
    dec = FrameDecoder(1024)
    try:
        dec.feed(header)
    except FrameError as exc:
        assert exc.code is ErrorCode.BAD_FRAME
    else:
        raise AssertionError(f"type {t} with request_id {bad_rid} was accepted")
