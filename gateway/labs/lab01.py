"""Lab 1 — Framing and partial reads: the checks of the student's frame decoder.

The student writes ``decoder.py`` (``parse_header``, ``header_error``, an incremental
``Decoder``) from docs/protocol.md §2, and ``read_frames`` in ``hello.py`` (the recv loop).
The project's own decoder (``protocol/decoder.py``) is the oracle: every check compares the
student's frames and error code with what it gives for the same bytes. The spec's worked
examples are read from docs/protocol.md itself (its hex dumps), so the checks follow the spec.

Only the last check talks to the sandbox hub; the others run without one, so
``NEEDS_SANDBOX`` is false and that check says how to start it when none is running.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import socket
import sys
import threading
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from gateway.labs.checks import LabContext, Result
from protocol.decoder import FrameDecoder
from protocol.errors import ErrorCode, FrameError
from protocol.frame import (
    BODY_BYTES_MAX_CEILING,
    HANDSHAKE_BODY_BYTES_MAX,
    HEADER,
    HEADER_BYTES,
    Flags,
    FrameType,
    encode_frame,
)

TITLE = "Framing and partial reads: write the frame decoder"
FILES = ("decoder.py", "hello.py")
NEEDS_SANDBOX = False

SPEC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
HANDOUT = "docs/labs/01-framing.md"
SEED = 20261125  # fixed: a failure a student sees is the same on every run
RANDOM_CHUNKINGS = 300
FUZZ_CASES = 400
MEMORY_BYTES_MAX = 256 * 1024  # what a decoder may allocate for bytes it has not received
SOCKET_TIMEOUT_S = 20.0
HEX_LINE = re.compile(r"^[0-9a-f]{4}  ((?:[0-9a-f]{2} ?)+)$")

# One decoding's outcome, comparable: the frames as tuples and the error code (or None), or
# the exception the student's code raised.
Frames = list[tuple[int, int, int, bytes, int]]
Outcome = tuple[Frames, int | None] | str


def load_student(ctx: LabContext, relative: str) -> ModuleType:
    """``ctx.load_module``, registered in ``sys.modules`` while it runs: a ``dataclass`` in
    the student's file looks its module up there (a fresh name each time, so it never
    shadows a module of the project)."""
    path = ctx.work / relative
    name = f"labwork_{ctx.number:02d}_{path.stem}_{len(sys.modules)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def spec_frames(text: str) -> list[bytes]:
    """Every hex dump in the spec that is one whole frame (its header's body_length matches
    the dump): the worked REQUEST/RESPONSE of §9 and §10.2, whatever the spec holds."""
    found: list[bytes] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.strip().startswith("```"):
            if current is not None and current:
                data = bytes.fromhex(" ".join(current))
                if len(data) >= HEADER_BYTES:
                    length, version = HEADER.unpack_from(data)[:2]
                    if length + HEADER_BYTES == len(data) and version == 1:
                        found.append(data)
            current = [] if current is None else None
            continue
        if current is not None:
            match = HEX_LINE.match(line.rstrip())
            if match:
                current.append(match.group(1))
    return found


def oracle(stream: bytes, chunks: list[bytes] | None = None, *,
           body_bytes_max: int = HANDSHAKE_BODY_BYTES_MAX, eof: bool = False) -> Outcome:
    decoder = FrameDecoder(body_bytes_max)
    frames: Frames = []
    try:
        for chunk in chunks if chunks is not None else [stream]:
            frames += [(f.type, f.flags, f.request_id, f.body, f.version)
                       for f in decoder.feed(chunk)]
        if eof:
            decoder.eof()
    except FrameError as exc:
        frames += [(f.type, f.flags, f.request_id, f.body, f.version)  # type: ignore[attr-defined]
                   for f in exc.frames_before]
        return frames, int(exc.code)
    return frames, None


def student(module: ModuleType, stream: bytes, chunks: list[bytes] | None = None, *,
            body_bytes_max: int = HANDSHAKE_BODY_BYTES_MAX, eof: bool = False) -> Outcome:
    """The student's decoder on the same bytes; an exception is an outcome too (a string)."""
    try:
        decoder = module.Decoder(body_bytes_max)
        frames: Frames = []
        for chunk in chunks if chunks is not None else [stream]:
            frames += [(f.frame_type, f.flags, f.request_id, bytes(f.body), f.version)
                       for f in decoder.feed(chunk)]
        if eof:
            decoder.eof()
        error = decoder.error
        if isinstance(error, str) and error in ErrorCode.__members__:
            error = ErrorCode[error]  # a name instead of the member: the same answer
        return frames, None if error is None else int(error)
    except Exception as exc:  # the student's code may raise anything
        return f"raised {type(exc).__name__}: {exc}"


def show(outcome: Outcome) -> str:
    if isinstance(outcome, str):
        return outcome
    frames, error = outcome
    names = [f"{_type_name(f[0])}(request_id={f[2]}, flags={f[1]}, {len(f[3])} body bytes)"
             for f in frames]
    code = "no error" if error is None else f"error {_code_name(error)}"
    return f"{len(frames)} frame(s) [{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}]" \
           f", {code}"


def _type_name(value: int) -> str:
    return FrameType(value).name if value in FrameType._value2member_map_ else str(value)


def _code_name(value: int) -> str:
    return ErrorCode(value).name if value in ErrorCode._value2member_map_ else str(value)


def _frame(ftype: FrameType, request_id: int, body: bytes, flags: int = 0) -> bytes:
    return encode_frame(ftype, request_id, body, flags)


def _stream(vectors: list[bytes]) -> bytes:
    """A stream of several frames: the spec's examples, an empty-bodied PING and a
    replayed error RESPONSE between them."""
    ping = _frame(FrameType.PING, 0, b"")
    replayed = _frame(FrameType.RESPONSE, 9, b"\x80", int(Flags.ERROR | Flags.REPLAYED))
    return b"".join([vectors[0], ping, *vectors[1:], replayed, ping])


def _compare(name: str, module: ModuleType, stream: bytes, chunkings: Iterator[list[bytes]],
             where: str, **kw: Any) -> Result:
    want = oracle(stream, **kw)
    tried = 0
    for chunks in chunkings:
        tried += 1
        got = student(module, stream, chunks, **kw)
        if got != want:
            sizes = [str(len(c)) for c in chunks]
            shown = ", ".join(sizes if len(sizes) <= 12 else [*sizes[:12], "..."])
            return Result(name, False,
                          f"fed {len(stream)} bytes in pieces of [{shown}] bytes\n"
                          f"expected: {show(want)}\nyour decoder: {show(got)}\n{where}")
    return Result(name, True, f"{tried} ways of feeding the same {len(stream)} bytes")


def _header(length: int, version: int, ftype: int, flags: int, request_id: int) -> bytes:
    return HEADER.pack(length, version, ftype, flags, request_id)


# (what it is, header bytes, body limit): the oracle says what each must be refused with.
def _hostile_headers() -> list[tuple[str, bytes, int]]:
    limit = HANDSHAKE_BODY_BYTES_MAX
    return [
        ("version 0", _header(10, 0, 3, 0, 1), limit),
        ("version 2", _header(10, 2, 3, 0, 1), limit),
        ("frame type 0", _header(10, 1, 0, 0, 1), limit),
        ("frame type 10", _header(10, 1, 10, 0, 1), limit),
        ("frame type 255", _header(10, 1, 255, 0, 0), limit),
        ("REQUEST with flag 0x0001", _header(10, 1, 3, 1, 1), limit),
        ("RESPONSE with flag 0x0004", _header(10, 1, 4, 4, 1), limit),
        ("PING with flag 0x8000", _header(0, 1, 6, 0x8000, 0), limit),
        ("body_length one over the limit", _header(limit + 1, 1, 3, 0, 1), limit),
        ("body_length 0xFFFFFFFF", _header(0xFFFFFFFF, 1, 4, 0, 1), limit),
        ("REQUEST with request_id 0", _header(10, 1, 3, 0, 0), limit),
        ("HELLO with request_id 5", _header(10, 1, 1, 0, 5), limit),
        ("ERROR with request_id 1", _header(10, 1, 9, 0, 1), limit),
        ("bad version and a huge length (order: version first)",
         _header(0xFFFFFFFF, 7, 3, 0, 1), limit),
        ("unknown type and reserved flags (order: type first)", _header(10, 1, 12, 0xFF, 1),
         limit),
        ("reserved flags and a huge length (order: flags first)",
         _header(0xFFFFFFFF, 1, 5, 2, 0), limit),
        ("a huge length and request_id 0 on a REQUEST (order: length first)",
         _header(0xFFFFFFFF, 1, 3, 0, 0), limit),
    ]


def _good_headers() -> list[tuple[str, bytes, int]]:
    limit = HANDSHAKE_BODY_BYTES_MAX
    return [
        ("REQUEST, body exactly at the limit", _header(limit, 1, 3, 0, 1), limit),
        ("RESPONSE with ERROR|REPLAYED flags", _header(3, 1, 4, 3, 2**64 - 1), limit),
        ("PING with any request_id", _header(0, 1, 6, 0, 77), limit),
        ("PONG with request_id 0", _header(0, 1, 7, 0, 0), limit),
        ("WELCOME under a raised limit", _header(70_000, 1, 2, 0, 0), 4 * 1024 * 1024),
    ]


# Every check, in the order they run: one that is skipped because an earlier one failed is
# still reported (as not run), so the total a student sees is the same on every run.
CHECK_NAMES = (
    "decoder.py imports and is your own (docs/protocol.md §2)",
    "parse_header reads the spec's headers (§2)",
    "header_error refuses what §2.1 and §2.5 refuse, in the spec's order",
    "the spec's worked examples decode whole (§9, §10.2)",
    "a frame with an empty body comes out as soon as its header is in",
    "several frames in one feed (coalesced writes)",
    "every split of a multi-frame stream into two pieces",
    "one byte at a time",
    "random pieces (empty feeds included)",
    "hostile headers are refused at once, with the frames before them (§2.1)",
    "a huge declared length costs only the bytes that arrived",
    "a stream that ends inside a frame is TRUNCATED_FRAME (§2.4)",
    "damaged streams: the same verdict as the project's decoder, no exception",
    "buffered bytes stay bounded over a long stream",
    "hello.py: read_frames gathers a frame sent in many pieces",
    "hello.py: read_frames stops when the peer closes mid-frame",
    "your decoder reads the sandbox hub's WELCOME",
)
NOT_RUN = "not run: fix the earlier check first (its FAIL above says what to change)"


def check(ctx: LabContext) -> Iterator[Result]:
    """The checks in :data:`CHECK_NAMES`' order, each reported once: those an earlier
    failure skipped are FAILs that say so."""
    pending = list(CHECK_NAMES)

    def skipped_until(name: str | None) -> Iterator[Result]:
        while pending and pending[0] != name:
            yield Result(pending.pop(0), False, NOT_RUN)
        if pending:
            pending.pop(0)

    try:
        for result in _checks(ctx):
            if result.name in pending:
                yield from skipped_until(result.name)
            yield result
    except Exception as exc:  # the student's code, raising where no check expected it
        tail = "".join(traceback.format_exception(exc)[-3:])
        yield Result("the checks ran to the end", False,
                     f"your code raised {type(exc).__name__}: {exc}\n{tail}")
    yield from skipped_until(None)


def _checks(ctx: LabContext) -> Iterator[Result]:
    vectors = spec_frames(SPEC.read_text())
    if len(vectors) < 2:
        yield Result("the spec's worked examples were found", False,
                     f"expected the hex dumps of §9 in {SPEC}; found {len(vectors)} frames")
        return
    yield from _check_decoder(ctx, vectors)


def _check_decoder(ctx: LabContext, vectors: list[bytes]) -> Iterator[Result]:
    # 1. the file imports and is the student's own
    name = "decoder.py imports and is your own (docs/protocol.md §2)"
    source = (ctx.work / "decoder.py").read_text(errors="replace")
    if re.search(r"^\s*(from|import)\s+protocol\.(decoder|frame)\b"
                 r"|^\s*from\s+protocol\s+import\s+.*\b(decoder|frame)\b|\bFrameDecoder\b",
                 source, re.MULTILINE):
        yield Result(name, False, "decoder.py uses protocol.decoder / protocol.frame: write the "
                     "decoder yourself from docs/protocol.md §2 (only protocol.errors' "
                     "ErrorCode names are given)")
        return
    try:
        module = load_student(ctx, "decoder.py")
        missing = [n for n in ("Decoder", "parse_header", "header_error") if
                   not hasattr(module, n)]
    except Exception as exc:
        yield Result(name, False, f"importing decoder.py raised {type(exc).__name__}: {exc}; "
                     f"start again from `paywire lab start 1` if you removed something")
        return
    if missing:
        yield Result(name, False, f"decoder.py lacks {', '.join(missing)} (the skeleton has "
                     "them: keep their names and signatures)")
        return
    yield Result(name, True)

    yield _check_parse_header(module, vectors)
    yield _check_header_error(module)
    yield from _check_whole_frames(module, vectors)
    stream = _stream(vectors)
    where = f"see {HANDOUT} (Background: a byte stream, not messages) and §2.1"
    yield _compare("every split of a multi-frame stream into two pieces", module, stream,
                   ([stream[:i], stream[i:]] for i in range(len(stream) + 1)), where)
    yield _compare("one byte at a time", module, stream,
                   iter([[stream[i:i + 1] for i in range(len(stream))]]), where)
    rng = random.Random(SEED)
    yield _compare("random pieces (empty feeds included)", module, stream,
                   (_random_chunks(rng, stream) for _ in range(RANDOM_CHUNKINGS)), where)
    yield _check_hostile(module, vectors)
    yield _check_huge_length(module)
    yield _check_truncated(module, vectors)
    yield _check_fuzz(module, vectors, rng)
    yield _check_bounded(module, rng)
    yield from _check_hello(ctx, module, vectors)


def _random_chunks(rng: random.Random, stream: bytes) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(stream):
        size = rng.choice((0, 1, 2, 3, 7, 15, 16, 17, 40, 200, 1000))
        chunks.append(stream[pos:pos + size])
        pos += size
    return chunks


def _call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # the student's code may raise anything
        return f"raised {type(exc).__name__}: {exc}"


def _check_parse_header(module: ModuleType, vectors: list[bytes]) -> Result:
    name = "parse_header reads the spec's headers (§2)"
    headers = [v[:HEADER_BYTES] for v in vectors]
    headers.append(_header(0xFFFFFFFE, 1, 4, 0x0003, 2**64 - 2))  # every byte of every field
    headers.append(_header(0x01020304, 1, 6, 0, 0x0102030405060708))
    for header in headers:
        want = HEADER.unpack(header)

        def parse(h: bytes = header) -> tuple[Any, ...]:
            return tuple(module.parse_header(h))

        got = _call(parse)
        if got != want:
            return Result(name, False,
                          f"for header bytes {header.hex(' ')}\nexpected (body_length, "
                          f"version, frame_type, flags, request_id) = {want}\ngot {got}\n"
                          "see §2's table: sizes 4, 1, 1, 2, 8 bytes, big-endian")
    return Result(name, True)


def _check_header_error(module: ModuleType) -> Result:
    name = "header_error refuses what §2.1 and §2.5 refuse, in the spec's order"
    for what, header, limit in [*_good_headers(), *_hostile_headers()]:
        want = oracle(header, body_bytes_max=limit)
        assert not isinstance(want, str)
        expected = want[1]

        def ask(h: bytes = header, lim: int = limit) -> Any:
            return module.header_error(module.parse_header(h), lim)

        got = _call(ask)
        ok = got == expected if expected is not None else got is None
        if not ok:
            return Result(name, False,
                          f"header {what} ({header.hex(' ')}, limit {limit}):\n"
                          f"expected {_code_name(expected) if expected else 'None (accepted)'}"
                          f", got {got!r}\nsee §2.1 (the four checks, in order) and §2.5")
    return Result(name, True)


def _check_whole_frames(module: ModuleType, vectors: list[bytes]) -> Iterator[Result]:
    name = "the spec's worked examples decode whole (§9, §10.2)"
    for i, vector in enumerate(vectors):
        want, got = oracle(vector), student(module, vector)
        if got != want:
            yield Result(name, False, f"worked example {i + 1} of {len(vectors)} "
                         f"({len(vector)} bytes, starting {vector[:16].hex(' ')}):\n"
                         f"expected {show(want)}\nyour decoder: {show(got)}")
            return
    yield Result(name, True, f"{len(vectors)} frames from docs/protocol.md")
    empty = _frame(FrameType.PING, 3, b"")
    name = "a frame with an empty body comes out as soon as its header is in"
    got, want = student(module, empty), oracle(empty)
    yield Result(name, got == want, f"16 bytes {empty.hex(' ')}: expected {show(want)}, "
                 f"your decoder: {show(got)}")
    stream = _stream(vectors)
    want, got = oracle(stream), student(module, stream)
    yield Result("several frames in one feed (coalesced writes)", got == want,
                 f"one feed of {len(stream)} bytes holding {len(want[0])} frames:\n"
                 f"expected {show(want)}\nyour decoder: {show(got)}\n"
                 "keep cutting frames out while a whole one is buffered")


def _check_hostile(module: ModuleType, vectors: list[bytes]) -> Result:
    """A bad header is refused on its 16 bytes (no body byte sent): the frames before it
    come out, then the error; later feeds give nothing and keep nothing."""
    name = "hostile headers are refused at once, with the frames before them (§2.1)"
    # 64 KiB of good frames after the bad header: nothing after it may come out or be kept.
    after_bytes = _frame(FrameType.PING, 0, b"") * 4096
    for what, header, limit in _hostile_headers():
        stream = vectors[0] + header
        want = oracle(stream, body_bytes_max=limit)
        got = student(module, stream, body_bytes_max=limit)
        if got == want:
            got = student(module, stream, [vectors[0] + header[:7], header[7:]],
                          body_bytes_max=limit)
        if got != want:
            return Result(name, False, f"a good frame, then a header with {what}, and no "
                          f"body bytes:\nexpected {show(want)}\nyour decoder: {show(got)}\n"
                          + _hostile_hint(want, got))

        def after(h: bytes = header, lim: int = limit) -> Any:
            decoder = module.Decoder(lim)
            decoder.feed(h)
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                out = [decoder.feed(after_bytes) for _ in range(4)]
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            return out, grown, decoder.error

        result = _call(after)
        if isinstance(result, str) or any(result[0]) or result[1] > MEMORY_BYTES_MAX:
            seen = result if isinstance(result, str) else \
                f"{result[0][:1]!r:.200}, {result[1]} bytes kept"
            return Result(name, False, f"after refusing a header with {what}, 4 feeds of 64 "
                          f"KiB of PING frames: expected [] each and nothing kept (the stream "
                          f"position is lost after a bad header); got {seen}")
    return Result(name, True, f"{len(_hostile_headers())} hostile headers")


def _hostile_hint(want: Outcome, got: Outcome) -> str:
    """What to change, for the way the student's answer to a hostile header differs."""
    if isinstance(got, str):
        return ("never raise on what a peer sends: set decoder.error to the ErrorCode and "
                "return the frames decoded before the bad header (§2.1)")
    assert not isinstance(want, str)
    if got[1] is None:
        return "decide on the 16 header bytes alone; do not wait for the body"
    if got[0] != want[0]:
        return ("the frames before the bad header are good: return them from the same feed, "
                "then set decoder.error (do not drop them)")
    return (f"the right code is {_code_name(want[1] or 0)}: apply §2.1's checks in the "
            "spec's order (header_error)")


def _check_huge_length(module: ModuleType) -> Result:
    """A length within a large limit, with few bytes behind it, costs what arrived."""
    name = "a huge declared length costs only the bytes that arrived"
    limit = BODY_BYTES_MAX_CEILING
    header = _header(limit, 1, 4, 0, 1)

    def run() -> Any:
        decoder = module.Decoder(limit)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            frames = decoder.feed(header + b"\x80" * 100)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return frames, peak - before, decoder.error

    got = _call(run)
    if isinstance(got, str):
        return Result(name, False, f"a header announcing {limit} bytes and 100 body bytes: "
                      f"your decoder {got}")
    frames, grown, error = got
    if frames or error is not None:
        return Result(name, False, f"a header announcing {limit} bytes (the limit) and 100 "
                      f"body bytes: expected no frame and no error yet (the body is still "
                      f"coming), got {len(frames)} frame(s), error {error!r}")
    if grown > MEMORY_BYTES_MAX:
        return Result(name, False, f"a header announcing {limit} bytes and 100 body bytes "
                      f"made your decoder allocate {grown} bytes: keep what arrived, do not "
                      "reserve the announced length (a peer could announce it on every "
                      "connection and send nothing)")
    return Result(name, True, f"{grown} bytes allocated")


def _check_truncated(module: ModuleType, vectors: list[bytes]) -> Result:
    name = "a stream that ends inside a frame is TRUNCATED_FRAME (§2.4)"
    frame = vectors[0]
    for cut in (0, 1, 15, 16, 17, len(frame) - 1, len(frame), len(frame) + 5):
        stream = frame + frame[:max(0, cut - len(frame))] if cut > len(frame) else frame[:cut]
        want = oracle(stream, eof=True)
        got = student(module, stream, eof=True)
        if got != want:
            return Result(name, False, f"{len(stream)} bytes ({cut} of a {len(frame)}-byte "
                          f"frame), then eof(): expected {show(want)}, your decoder: "
                          f"{show(got)}\nat a frame boundary eof() is no error")
    return Result(name, True)


def _mutate(rng: random.Random, vectors: list[bytes]) -> bytes:
    stream = bytearray(b"".join(rng.sample(vectors, k=min(len(vectors), rng.randint(1, 3)))))
    for _ in range(rng.randint(1, 3)):
        # Mostly header bytes of the first frames (where decisions are made), sometimes any.
        at = rng.randrange(HEADER_BYTES) if rng.random() < 0.7 else rng.randrange(len(stream))
        stream[at] = rng.randrange(256)
    return bytes(stream[:rng.randint(HEADER_BYTES, len(stream))])


def _check_fuzz(module: ModuleType, vectors: list[bytes], rng: random.Random) -> Result:
    name = "damaged streams: the same verdict as the project's decoder, no exception"
    for case in range(FUZZ_CASES):
        stream = _mutate(rng, vectors)
        chunks = _random_chunks(rng, stream)
        eof = rng.random() < 0.5
        want = oracle(stream, chunks, eof=eof)
        got = student(module, stream, chunks, eof=eof)
        if got != want:
            return Result(name, False, f"damaged stream {case + 1} ({len(stream)} bytes, "
                          f"starting {stream[:16].hex(' ')}), fed in {len(chunks)} pieces"
                          f"{', then eof()' if eof else ''}:\nexpected {show(want)}\n"
                          f"your decoder: {show(got)}")
    return Result(name, True, f"{FUZZ_CASES} damaged streams")


def _check_bounded(module: ModuleType, rng: random.Random) -> Result:
    name = "buffered bytes stay bounded over a long stream"
    limit = 4096
    frames = [_frame(FrameType.EVENT, 0, os.urandom(rng.randint(0, limit))) for _ in range(200)]
    stream = b"".join(frames)
    chunks = _random_chunks(rng, stream)

    def run() -> str | None:
        decoder = module.Decoder(limit)
        count = 0
        for chunk in chunks:
            count += len(decoder.feed(chunk))
            held = decoder.buffered_bytes
            if held > HEADER_BYTES + limit + len(chunk):
                return (f"after a feed of {len(chunk)} bytes your decoder holds {held} "
                        f"bytes: more than one header + one body limit ({limit}) + that feed "
                        "(drop each frame's bytes once it is cut out)")
        if count != len(frames):
            return f"expected {len(frames)} frames, got {count}"
        return None

    problem = _call(run)
    return Result(name, problem is None, problem or "")


def _check_hello(ctx: LabContext, module: ModuleType, vectors: list[bytes]
                 ) -> Iterator[Result]:
    """``read_frames`` in hello.py: the recv loop, on a local socket pair, then on the hub."""
    name = "hello.py: read_frames gathers a frame sent in many pieces"
    sys.modules["decoder"] = module  # hello.py imports decoder.py as "decoder"
    sys.path.insert(0, str(ctx.work))
    try:
        hello = load_student(ctx, "hello.py")
        read_frames = hello.read_frames
    except Exception as exc:
        yield Result(name, False, f"importing hello.py raised {type(exc).__name__}: {exc}")
        return
    frame = vectors[-1]

    def pair_run(payload: bytes, close: bool) -> Any:
        ours, theirs = socket.socketpair()
        ours.settimeout(SOCKET_TIMEOUT_S)

        def send() -> None:
            for i in range(len(payload)):
                theirs.sendall(payload[i:i + 1])
            if close:
                theirs.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            decoder = module.Decoder()
            frames, calls = read_frames(ours, decoder)
            got = [(f.frame_type, f.flags, f.request_id, bytes(f.body), f.version)
                   for f in frames]
            return got, calls, decoder.error
        finally:
            sender.join(SOCKET_TIMEOUT_S)
            ours.close()
            theirs.close()

    want = oracle(frame)
    assert not isinstance(want, str)
    got = _call(lambda: pair_run(frame, False))
    if isinstance(got, str) or got[0] != want[0]:
        yield Result(name, False, f"a {len(frame)}-byte frame sent one byte per send(): "
                     f"expected read_frames to return it; got "
                     f"{got if isinstance(got, str) else show((got[0], got[2]))}\n"
                     "keep calling recv until the decoder returns a frame")
        return
    yield Result(name, True, f"{got[1]} recv calls for {len(frame)} bytes")
    name = "hello.py: read_frames stops when the peer closes mid-frame"
    got = _call(lambda: pair_run(frame[:40], True))
    ok = not isinstance(got, str) and got[0] == [] and got[2] == ErrorCode.TRUNCATED_FRAME
    yield Result(name, ok, f"40 bytes of a frame, then the peer closed: expected no frame and "
                 f"decoder.error TRUNCATED_FRAME, got "
                 f"{got if isinstance(got, str) else (show((got[0], got[2])))}\n"
                 "recv returns b'' when the peer has closed: call decoder.eof() and stop")
    yield _check_hub(ctx, module, read_frames)


def _check_hub(ctx: LabContext, module: ModuleType, read_frames: Any) -> Result:
    name = "your decoder reads the sandbox hub's WELCOME"
    if ctx.sandbox is None:
        return Result(name, False, "no running sandbox: start `paywire sandbox` in another "
                      f"terminal and run the check again (see {HANDOUT}, Steps)")
    from gateway import pki, tls
    from protocol import messages
    from protocol.errors import PaywireError

    env = ctx.sandbox.env
    host, _, port = env.get("PAYWIRE_HUB", "").rpartition(":")
    merchant = env.get("PAYWIRE_MERCHANT", "")
    certs = Path(env.get("PAYWIRE_CERTS", ""))
    mine = pki.cert_paths(certs, "merchant", merchant)
    # Two stages with their own messages: reaching the hub (the check's code: a failure is
    # the sandbox's) and reading its answer (the student's read_frames and decoder: a
    # ValueError or a socket timeout there is theirs, not a sandbox that is down).
    try:
        context = tls.client_context(certs / pki.CA_FILE, mine.cert, mine.key)
        raw = socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_S)
    except (OSError, ValueError) as exc:
        return Result(name, False, f"could not reach the hub at {host}:{port} as {merchant} "
                      f"with {certs}: {exc}; is the sandbox running?")
    with raw:
        try:
            sock = context.wrap_socket(raw, server_hostname=host)
            sock.sendall(messages.encode_message(FrameType.HELLO, {
                "versions": [1], "role": "merchant", "identity": merchant,
                "client": "lab01-check"}))
        except (OSError, ValueError) as exc:
            return Result(name, False, f"could not reach the hub at {host}:{port} as "
                          f"{merchant} with {certs}: {exc}; is the sandbox running?")
        with sock:
            try:
                decoder = module.Decoder()
                frames, calls = read_frames(sock, decoder)
            except TimeoutError as exc:
                return Result(name, False, f"the hub sent its WELCOME, but your read_frames "
                              f"was still waiting after {SOCKET_TIMEOUT_S:g} s ({exc}): "
                              "return as soon as the decoder has given a frame; do not wait "
                              "for the hub to close the connection")
            except Exception as exc:  # the student's read_frames or decoder
                tail = "".join(traceback.format_exception(exc)[-2:]).strip()
                return Result(name, False, f"your read_frames (or decoder) raised "
                              f"{type(exc).__name__}: {exc} while reading the hub's WELCOME"
                              f"\n{tail}")
    if not frames or frames[0].frame_type != FrameType.WELCOME:
        return Result(name, False, f"expected a WELCOME frame; got {frames[:1]!r:.300} "
                      f"(decoder error {decoder.error!r})")
    try:
        body = messages.decode_body(FrameType.WELCOME, bytes(frames[0].body))
    except PaywireError as exc:
        return Result(name, False, f"the WELCOME's body bytes your decoder returned are not "
                      f"a valid WELCOME body: {exc}; cut the body at body_length bytes")
    return Result(name, True, f"WELCOME from {body['server']} in {calls} recv call(s)")
