"""Frames annotated field by field, with byte offsets, secrets masked (``paywire dump``).

Pure and I/O-free: bytes in, a list of ``FrameDump`` out, and ``render`` for the text a
student reads next to ``docs/protocol.md``. The frame tracer (``gateway/net/trace.py``)
reuses ``masked`` and ``FrameSummary`` so a trace and a dump hide the same things.

A dump is a *reader's* view, not a receiver's: it never refuses a stream. Everything a
receiver would refuse (an unknown version or type, reserved flags, a request id the type
does not allow, a body that is not a msgpack map within the limits) is reported on the
frame as a problem naming the error code, and the dump goes on while the frame boundaries
can still be trusted (``body_length`` within the ceiling, all bytes present). It never
raises on any input: a hostile stream is a report, not a traceback (``tests/test_dump.py``
checks that with hypothesis).

Masking (the same in ``paywire dump`` and in traces):

* a run of 12 to 19 digits in a card field (``number``, the bank link's ``account``), or one
  that passes the Luhn check anywhere else (a message that quotes a card), is shown as the
  hub shows a card, first six and last four digits (``481111******1114``,
  ``protocol.operations.mask_card``);
* the value of a field named ``cvv`` or a key-like name (``server_key``, ``link_key``,
  ``key``, ``secret``, ``password``) is ``***``;
* a ``signature`` (the request HMAC) is shortened to its first 4 bytes, ``811fdf09…``:
  enough to tell two signatures apart in a lab, never enough to reuse;
* a ``bin`` that is not decoded (anything but a REQUEST's ``args``) is shown in full only up
  to 16 bytes (nonces, resume tokens), else its first 8 bytes and its length.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import ErrorCode
from protocol.frame import (
    BODY_BYTES_MAX_CEILING,
    FLAGS_ALLOWED,
    HEADER,
    HEADER_BYTES,
    REQUEST_ID_NONZERO,
    SUPPORTED_VERSIONS,
    Flags,
    FrameType,
)
from protocol.operations import mask_card

# A dump stops after this many frames (a capture file may hold millions; a reader wants the
# first screenfuls, and the output must stay bounded whatever the input).
FRAMES_MAX = 10_000
# Deeper nesting than the spec's 8 is reported, not followed (bounds the recursion).
DUMP_DEPTH_MAX = 16
# ``bin`` values up to this many bytes are shown whole (nonces are 8..32 bytes).
BIN_SHOWN_BYTES_MAX = 16
BIN_PREFIX_BYTES = 8
SIGNATURE_SHOWN_BYTES = 4
# Column widths of body lines in ``render`` (longer names and kinds push the rest right).
NAME_COLUMN = 20
KIND_COLUMN = 18
# Strings longer than this are cut in the text rendering (the structured value is whole).
STRING_SHOWN_CHARS_MAX = 200

MASKED = "***"
SECRET_KEYS = frozenset({"cvv", "server_key", "link_key", "key", "secret", "password"})
SHORTENED_KEYS = frozenset({"signature"})
_PAN = re.compile(r"(?<![0-9])[0-9]{12,19}(?![0-9])")
# Integer fields holding an error code, annotated with its name.
_CODE_KEYS = frozenset({"code"})
_EPOCH_MS_MIN = 10**12  # 2001-09-09: below it a ``*_ms`` value is a duration, not a time
_EPOCH_MS_MAX = 10**14


# Fields that hold a card number (merchant ``card.number``, the bank link's ``account``):
# masked whatever their digits; elsewhere only a run of digits that passes Luhn is.
CARD_KEYS = frozenset({"number", "account"})


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def mask_string(text: str, card_field: bool = False) -> str:
    """Every run of 12..19 digits that could be a card number masked like one: in a card
    field (``CARD_KEYS``) any such run, elsewhere (messages) those passing the Luhn check a
    card number must pass, so a limit like ``1000000000000000`` in an error stays legible."""
    return _PAN.sub(lambda m: mask_card(m.group(0)) if card_field or _luhn(m.group(0))
                    else m.group(0), text)


def _hex(data: bytes) -> str:
    return data.hex()


def mask_scalar(key: str | None, value: Any) -> tuple[Any, str]:
    """The value to show for ``key`` and a note saying what was hidden ("" when nothing)."""
    if key is not None and key in SECRET_KEYS:
        return MASKED, "masked"
    if isinstance(value, str):
        shown = mask_string(value, key is not None and key in CARD_KEYS)
        return shown, ("card number masked" if shown != value else "")
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        if key is not None and key in SHORTENED_KEYS:
            return _hex(data[:SIGNATURE_SHOWN_BYTES]) + "…", f"{len(data)} bytes, shortened"
        if len(data) <= BIN_SHOWN_BYTES_MAX:
            return _hex(data), ""
        return _hex(data[:BIN_PREFIX_BYTES]) + "…", f"{len(data)} bytes, shortened"
    return value, ""


def masked(obj: Any, key: str | None = None, depth: int = 0) -> Any:
    """A JSON-able copy of a decoded body with every secret masked (see the module doc);
    ``bytes`` become hex strings. Deeper than ``DUMP_DEPTH_MAX`` is replaced by ``"…"``."""
    if depth > DUMP_DEPTH_MAX:
        return "…"
    if isinstance(obj, dict):
        return {str(k): masked(v, str(k), depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [masked(v, key, depth + 1) for v in obj]
    return mask_scalar(key, obj)[0]


@dataclass(frozen=True, slots=True)
class Item:
    """One annotated line: a header field or a body entry.

    ``offset`` is the absolute position in the dumped bytes where the entry starts: for a
    header field its first byte, for a map entry the first byte of its **key**, for an array
    element the first byte of the element. ``depth`` is 0 for header fields and the body
    itself, 1 for the body's entries, and so on. ``kind`` is the msgpack format read
    (``fixstr``, ``uint 64``, ``map 6``, ``bin 8 (32 bytes)``...), or the header field's
    size. ``value`` is what it decodes to, masked; ``note`` says more (a frame type's name,
    an error code's name, a UTC time, what was masked)."""

    offset: int
    depth: int
    name: str
    kind: str
    value: Any
    note: str = ""
    raw: str = ""  # header fields only: their bytes in hex


@dataclass(slots=True)
class FrameDump:
    """One frame (or the incomplete rest of the stream). ``body`` is the decoded body with
    secrets masked, a REQUEST's ``args`` decoded in place; ``None`` when it could not be
    decoded. ``problems`` name what a receiver would refuse, each starting with the error
    code's name (``UNKNOWN_FRAME_TYPE: ...``)."""

    offset: int
    complete: bool
    body_length: int | None = None
    version: int | None = None
    frame_type: int | None = None
    flags: int | None = None
    request_id: int | None = None
    items: list[Item] = field(default_factory=list)
    body: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def type_name(self) -> str:
        return type_name(self.frame_type) if self.frame_type is not None else "?"

    def as_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "complete": self.complete,
                "body_length": self.body_length, "version": self.version,
                "frame_type": self.type_name, "flags": self.flags,
                "flag_names": flag_names(self.flags or 0), "request_id": self.request_id,
                "body": self.body, "problems": self.problems}


def type_name(frame_type: int) -> str:
    try:
        return FrameType(frame_type).name
    except ValueError:
        return f"UNKNOWN({frame_type})"


def flag_names(flags: int) -> list[str]:
    return [f.name for f in (Flags.ERROR, Flags.REPLAYED) if flags & f and f.name]


def _code_name(code: Any) -> str:
    if isinstance(code, int) and not isinstance(code, bool):
        try:
            return ErrorCode(code).name
        except ValueError:
            return "unknown code"
    return ""


def _time_note(key: str, value: Any) -> str:
    if key.endswith("_ms") and isinstance(value, int) and not isinstance(value, bool) \
            and _EPOCH_MS_MIN <= value < _EPOCH_MS_MAX:
        when = dt.datetime.fromtimestamp(value / 1000, dt.UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value % 1000:03d}Z"
    return ""


# --- a msgpack reader that keeps offsets ----------------------------------------------------
class _Malformed(Exception):
    """Internal: the body stops being msgpack at ``offset`` (never leaves this module)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


_FIXED: dict[int, tuple[str, str, int]] = {
    # type byte: (kind, struct format, size) for scalars of fixed size
    0xca: ("float 32", ">f", 4), 0xcb: ("float 64", ">d", 8),
    0xcc: ("uint 8", ">B", 1), 0xcd: ("uint 16", ">H", 2),
    0xce: ("uint 32", ">I", 4), 0xcf: ("uint 64", ">Q", 8),
    0xd0: ("int 8", ">b", 1), 0xd1: ("int 16", ">h", 2),
    0xd2: ("int 32", ">i", 4), 0xd3: ("int 64", ">q", 8),
}
_LENGTHS: dict[int, tuple[str, str, int]] = {
    # type byte: (family, length format, length size) for str/bin/array/map/ext
    0xc4: ("bin 8", ">B", 1), 0xc5: ("bin 16", ">H", 2), 0xc6: ("bin 32", ">I", 4),
    0xc7: ("ext 8", ">B", 1), 0xc8: ("ext 16", ">H", 2), 0xc9: ("ext 32", ">I", 4),
    0xd9: ("str 8", ">B", 1), 0xda: ("str 16", ">H", 2), 0xdb: ("str 32", ">I", 4),
    0xdc: ("array 16", ">H", 2), 0xdd: ("array 32", ">I", 4),
    0xde: ("map 16", ">H", 2), 0xdf: ("map 32", ">I", 4),
}


class _Reader:
    """Reads msgpack from ``data[pos:end]``, appending one ``Item`` per entry. Offsets are
    reported as ``base + position`` (``base`` is where ``data`` starts in the stream)."""

    def __init__(self, data: bytes, base: int, items: list[Item], problems: list[str],
                 decode_args: bool) -> None:
        self.data = data
        self.base = base
        self.items = items
        self.problems = problems
        self.decode_args = decode_args

    def _take(self, pos: int, size: int, end: int, what: str) -> int:
        if pos + size > end:
            raise _Malformed(f"{what} needs {size} bytes, {end - pos} left", self.base + pos)
        return pos + size

    def _length(self, b: int, pos: int, end: int) -> tuple[str, int, int]:
        """(kind, length, position after the length field) for a length-prefixed type."""
        if 0xa0 <= b <= 0xbf:
            return "fixstr", b & 0x1f, pos + 1
        if 0x90 <= b <= 0x9f:
            return "fixarray", b & 0x0f, pos + 1
        if 0x80 <= b <= 0x8f:
            return "fixmap", b & 0x0f, pos + 1
        family, fmt, size = _LENGTHS[b]
        after = self._take(pos + 1, size, end, family)
        (length,) = struct.unpack_from(fmt, self.data, pos + 1)
        return family, int(length), after

    def value(self, pos: int, end: int, depth: int, key: str | None,
              entry_offset: int, name: str) -> tuple[Any, int]:
        """Read the value at ``pos``; emit its item(s); return (masked value, next pos)."""
        if depth > DUMP_DEPTH_MAX:
            raise _Malformed(f"nesting deeper than {DUMP_DEPTH_MAX}", self.base + pos)
        self._take(pos, 1, end, "a value")
        data = self.data
        b = data[pos]
        if b <= 0x7f or b >= 0xe0:
            v = b if b <= 0x7f else b - 0x100
            return self._scalar(entry_offset, depth, name, key, "fixint", v), pos + 1
        if b in (0xc0, 0xc2, 0xc3):
            v2: Any = {0xc0: None, 0xc2: False, 0xc3: True}[b]
            return self._scalar(entry_offset, depth, name, key,
                                {0xc0: "nil", 0xc2: "false", 0xc3: "true"}[b], v2), pos + 1
        if b in _FIXED:
            kind, fmt, size = _FIXED[b]
            after = self._take(pos + 1, size, end, kind)
            (v3,) = struct.unpack_from(fmt, data, pos + 1)
            if kind.startswith("float"):
                self.problems.append(f"MALFORMED_BODY: float at offset {self.base + pos:#06x} "
                                     "(floats are not allowed)")
            return self._scalar(entry_offset, depth, name, key, kind, v3), after
        if 0xd4 <= b <= 0xd8 or b in (0xc7, 0xc8, 0xc9):
            if b >= 0xd4:
                size, after = 1 << (b - 0xd4), pos + 1
            else:
                _, size, after = self._length(b, pos, end)
            after = self._take(after, 1 + size, end, "ext")
            self.problems.append(f"MALFORMED_BODY: extension type at offset "
                                 f"{self.base + pos:#06x} (not allowed)")
            return self._scalar(entry_offset, depth, name, key, f"ext ({size} bytes)",
                                f"<ext {size} bytes>"), after
        if b == 0xc1:
            raise _Malformed("0xc1 is never used in msgpack", self.base + pos)
        kind, length, start = self._length(b, pos, end)
        if kind in ("fixstr", "str 8", "str 16", "str 32"):
            stop = self._take(start, length, end, kind)
            try:
                text = data[start:stop].decode("utf-8")
            except UnicodeDecodeError:
                raise _Malformed("string is not UTF-8", self.base + start) from None
            return self._scalar(entry_offset, depth, name, key, kind, text), stop
        if kind.startswith("bin"):
            stop = self._take(start, length, end, kind)
            raw = data[start:stop]
            if key == "args" and self.decode_args and depth == 1:
                return self._args(entry_offset, depth, name, kind, raw, start), stop
            return self._scalar(entry_offset, depth, name, key, f"{kind} ({length} bytes)",
                                raw), stop
        if "array" in kind:
            # Every element takes at least one byte: a count beyond the bytes left is a lie
            # the loop below would otherwise spin on.
            if length > end - start:
                raise _Malformed(f"{kind} claims {length} items, {end - start} bytes left",
                                 self.base + pos)
            self.items.append(Item(entry_offset, depth, name, f"{kind} of {length}", None))
            out: list[Any] = []
            p = start
            for i in range(length):
                v4, p = self.value(p, end, depth + 1, key, self.base + p, f"[{i}]")
                out.append(v4)
            return out, p
        # a map
        if 2 * length > end - start:
            raise _Malformed(f"{kind} claims {length} entries, {end - start} bytes left",
                             self.base + pos)
        self.items.append(Item(entry_offset, depth, name, f"{kind} of {length}", None))
        return self.map_entries(start, end, depth + 1, length)

    def map_entries(self, pos: int, end: int, depth: int, count: int) -> tuple[Any, int]:
        out: dict[str, Any] = {}
        for _ in range(count):
            key_offset = self.base + pos
            self._take(pos, 1, end, "a key")
            b = self.data[pos]
            if not (0xa0 <= b <= 0xbf or b in (0xd9, 0xda, 0xdb)):
                raise _Malformed("map key is not a string", key_offset)
            kind, length, start = self._length(b, pos, end)
            stop = self._take(start, length, end, kind)
            try:
                key = self.data[start:stop].decode("utf-8")
            except UnicodeDecodeError:
                raise _Malformed("key is not UTF-8", key_offset) from None
            if key in out:
                self.problems.append(f"MALFORMED_BODY: key {key!r} twice in one map "
                                     f"(offset {key_offset:#06x})")
            out[key], pos = self.value(stop, end, depth, key, key_offset, key)
        return out, pos

    def _scalar(self, offset: int, depth: int, name: str, key: str | None, kind: str,
                value: Any) -> Any:
        shown, note = mask_scalar(key, value)
        notes = [n for n in (note, _code_name(value) if key in _CODE_KEYS else "",
                             _time_note(key or "", value)) if n]
        self.items.append(Item(offset, depth, name, kind, shown, "; ".join(notes)))
        return shown

    def _args(self, offset: int, depth: int, name: str, kind: str, raw: bytes,
              start: int) -> Any:
        """A REQUEST's ``args``: a ``bin`` holding its own msgpack map (§4.1), decoded in
        place with offsets into the stream; left as a shortened ``bin`` if it is not one."""
        index = len(self.items)
        self.items.append(Item(offset, depth, name, f"{kind} ({len(raw)} bytes)", None,
                               "the signed args bytes, decoded"))
        inner = _Reader(self.data, self.base, self.items, self.problems, False)
        try:
            b = raw[0] if raw else -1
            if not (0x80 <= b <= 0x8f or b in (0xde, 0xdf)):
                raise _Malformed("args is not a msgpack map", self.base + start)
            _, length, first = inner._length(b, start, start + len(raw))
            if 2 * length > len(raw):
                raise _Malformed(f"args map claims {length} entries", self.base + start)
            value, stop = inner.map_entries(first, start + len(raw), depth + 1, length)
            if stop != start + len(raw):
                self.problems.append(f"MALFORMED_BODY: {start + len(raw) - stop} bytes after "
                                     "the args map")
            return value
        except _Malformed as exc:
            del self.items[index + 1:]
            self.problems.append(f"MALFORMED_BODY: args at offset {exc.offset:#06x}: "
                                 f"{exc.message}")
            shown, note = mask_scalar("args", raw)
            self.items[index] = Item(offset, depth, name, f"{kind} ({len(raw)} bytes)", shown,
                                     "not a msgpack map" + (f"; {note}" if note else ""))
            return shown


# --- frames ---------------------------------------------------------------------------------
def _header_items(offset: int, raw: bytes, length: int, version: int, ftype: int, flags: int,
                  rid: int) -> list[Item]:
    names = flag_names(flags)
    return [
        Item(offset, 0, "body_length", "4 bytes", length, f"{length} bytes of body",
             raw[0:4].hex(" ")),
        Item(offset + 4, 0, "version", "1 byte", version, "", raw[4:5].hex(" ")),
        Item(offset + 5, 0, "frame_type", "1 byte", ftype, type_name(ftype), raw[5:6].hex(" ")),
        Item(offset + 6, 0, "flags", "2 bytes", f"0x{flags:04x}",
             "|".join(names) if names else "none", raw[6:8].hex(" ")),
        Item(offset + 8, 0, "request_id", "8 bytes", rid, "", raw[8:16].hex(" ")),
    ]


def _header_problems(version: int, ftype: int, flags: int, rid: int) -> list[str]:
    """What a receiver checks on a header (§2.1, §2.5), in its order."""
    out = []
    if version not in SUPPORTED_VERSIONS:
        out.append(f"UNSUPPORTED_VERSION: version {version}")
    allowed = FLAGS_ALLOWED.get(ftype)
    if allowed is None:
        out.append(f"UNKNOWN_FRAME_TYPE: frame type {ftype}")
    elif flags & ~allowed:
        out.append(f"RESERVED_FLAGS: flags 0x{flags:04x} on {type_name(ftype)}")
    nonzero = REQUEST_ID_NONZERO.get(ftype)
    if nonzero is not None and (rid != 0) is not nonzero:
        out.append(f"BAD_FRAME: request_id {rid} is not allowed on {type_name(ftype)}")
    return out


def _body(frame: FrameDump, data: bytes, start: int, length: int) -> None:
    """Decode one body at ``data[start:start+length]`` into ``frame`` (never raises)."""
    ftype = frame.frame_type
    if length == 0:
        if ftype not in (FrameType.PING, FrameType.PONG):
            frame.problems.append("MALFORMED_BODY: empty body (a body is a msgpack map)")
        frame.items.append(Item(start, 0, "body", "0 bytes", None, "empty"))
        return
    end = start + length
    reader = _Reader(data, 0, frame.items, frame.problems,
                     decode_args=ftype == FrameType.REQUEST)
    b = data[start]
    index = len(frame.items)
    try:
        if not (0x80 <= b <= 0x8f or b in (0xde, 0xdf)):
            raise _Malformed("the body is not a msgpack map", start)
        kind, count, first = reader._length(b, start, end)
        if 2 * count > end - first:
            raise _Malformed(f"{kind} claims {count} entries, {end - first} bytes left", start)
        frame.items.append(Item(start, 0, "body", f"{kind} of {count}", None,
                                f"{length} bytes"))
        value, stop = reader.map_entries(first, end, 1, count)
        if stop != end:
            frame.problems.append(f"MALFORMED_BODY: {end - stop} bytes after the body map "
                                  f"(offset {stop:#06x})")
        frame.body = value
    except _Malformed as exc:
        frame.problems.append(f"MALFORMED_BODY: at offset {exc.offset:#06x}: {exc.message}")
        del frame.items[index:]
        shown, note = mask_scalar(None, data[start:end])
        frame.items.append(Item(start, 0, "body", f"{length} bytes", shown,
                                "not decoded" + (f"; {note}" if note else "")))
    except RecursionError:  # DUMP_DEPTH_MAX keeps it far away; never a traceback anyway
        frame.problems.append("MALFORMED_BODY: nested too deep")
        del frame.items[index:]


def dump(data: bytes, frames_max: int = FRAMES_MAX) -> list[FrameDump]:
    """Every frame in ``data`` (a stream of frames as sent on one connection, one direction),
    in order. The last entry is ``complete=False`` when the stream ends inside a frame, or
    when a header's ``body_length`` is above the 4 MiB ceiling (nothing after it can be
    framed). Never raises."""
    data = bytes(data)
    out: list[FrameDump] = []
    pos = 0
    total = len(data)
    while pos < total and len(out) < frames_max:
        frame = FrameDump(offset=pos, complete=False)
        out.append(frame)
        if total - pos < HEADER_BYTES:
            frame.problems.append(f"TRUNCATED_FRAME: {total - pos} of {HEADER_BYTES} header "
                                  "bytes")
            frame.items.append(Item(pos, 0, "header", f"{total - pos} bytes", "", "incomplete",
                                    data[pos:].hex(" ")))
            return out
        length, version, ftype, flags, rid = HEADER.unpack_from(data, pos)
        frame.body_length, frame.version, frame.frame_type = length, version, ftype
        frame.flags, frame.request_id = flags, rid
        frame.items.extend(_header_items(pos, data[pos:pos + HEADER_BYTES], length, version,
                                         ftype, flags, rid))
        frame.problems.extend(_header_problems(version, ftype, flags, rid))
        start = pos + HEADER_BYTES
        if length > BODY_BYTES_MAX_CEILING:
            frame.problems.append(f"FRAME_TOO_LARGE: body_length {length} is above any "
                                  f"limit ({BODY_BYTES_MAX_CEILING}); the rest is not framed")
            return out
        if start + length > total:
            frame.problems.append(f"TRUNCATED_FRAME: body has {total - start} of {length} "
                                  "bytes")
            return out
        frame.complete = True
        _body(frame, data, start, length)
        pos = start + length
    if pos < total:
        out.append(FrameDump(offset=pos, complete=False,
                             problems=[f"dump stopped after {frames_max} frames; "
                                       f"{total - pos} bytes not shown"]))
    return out


# --- input and output -----------------------------------------------------------------------
_HEX_TOKEN = re.compile(r"^(0x)?[0-9a-fA-F]+$")
# A hexdump row: an offset of 4..8 hex digits, two or more spaces, then byte columns.
_HEXDUMP_ROW = re.compile(r"^\s*[0-9a-fA-F]{4,8}:?\s{2,}((?:[0-9a-fA-F]{2}\s*)+)$")


def parse_hex(text: str) -> bytes:
    """Bytes from hex text: plain (``0000 00f8 01...``), spaced, with ``0x`` prefixes or
    colons, or a hexdump as in ``docs/protocol.md`` (a row that starts with 4..8 hex digits,
    then two spaces, then two-digit byte columns: the first column is an offset, skipped).
    Raises ``ValueError`` naming the first token that is not hex."""
    out = bytearray()
    for line in text.splitlines():
        row = _HEXDUMP_ROW.match(line)
        if row is not None:
            line = row.group(1)  # drop the offset column
        tokens = line.replace(":", " ").replace(",", " ").split()
        for token in tokens:
            if not _HEX_TOKEN.match(token):
                raise ValueError(f"not hex: {token[:20]!r}")
            digits = token[2:] if token.lower().startswith("0x") else token
            if len(digits) % 2:
                raise ValueError(f"odd number of hex digits in {token[:20]!r}")
            out += bytes.fromhex(digits)
    return bytes(out)


def looks_like_hex(data: bytes) -> bool:
    """Stdin is read as hex text if it is ASCII and holds only hex digits, whitespace,
    ``0x``, ``:`` and ``,`` (raw frames always hold a byte outside that set: the version
    byte 0x01)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return False
    return bool(text.strip()) and all(c in "0123456789abcdefABCDEFxX:, \t\r\n" for c in text)


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        if len(text) > STRING_SHOWN_CHARS_MAX:
            text = text[:STRING_SHOWN_CHARS_MAX] + "…"
        return text
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(frames: list[FrameDump]) -> str:
    """The text of ``paywire dump``. One block per frame::

        frame 1 at 0x0000: REQUEST request_id=1 flags=0x0000 body_length=248
          0x0000  body_length   00 00 00 f8                248  (248 bytes of body)
          ...
          0x0011    op                 fixstr             "charge"

    Header lines: offset, field name, the bytes, the value and a note in parentheses; body
    lines: offset, the name indented two spaces per depth, msgpack format, value (masked;
    strings JSON-quoted, ``bin`` as hex) and a note in parentheses. Problems follow
    the frame as ``  ! CODE: message``."""
    lines: list[str] = []
    for n, frame in enumerate(frames, 1):
        if frame.frame_type is None and frame.complete:
            head = f"body of {frame.body_length} bytes"
        elif frame.frame_type is None:
            head = f"frame {n} at {frame.offset:#06x}: incomplete"
        else:
            head = (f"frame {n} at {frame.offset:#06x}: {frame.type_name} "
                    f"request_id={frame.request_id} flags=0x{frame.flags or 0:04x} "
                    f"body_length={frame.body_length}")
            if not frame.complete:
                head += " (incomplete)"
        lines.append(head)
        for item in frame.items:
            note = f"  ({item.note})" if item.note else ""
            if item.raw:
                lines.append(f"  {item.offset:#06x}  {item.name:<12}  {item.raw:<24}  "
                             f"{item.value}{note}")
            else:
                name = "  " * item.depth + item.name
                tail = "  ".join(p for p in (_shown(item.value), note.strip()) if p)
                line = f"  {item.offset:#06x}  {name:<{NAME_COLUMN}} {item.kind:<{KIND_COLUMN}} "
                lines.append((line + tail).rstrip())
        for problem in frame.problems:
            lines.append(f"  ! {problem}")
    return "\n".join(lines) + ("\n" if lines else "")


def dump_body(data: bytes) -> FrameDump:
    """A bare msgpack body (no header), e.g. the ``args`` bytes of the spec's worked
    examples (``paywire dump --body``); offsets count from its first byte. Never raises."""
    data = bytes(data)
    frame = FrameDump(offset=0, complete=True, body_length=len(data))
    if not data:
        frame.problems.append("MALFORMED_BODY: empty body (a body is a msgpack map)")
        return frame
    _body(frame, data, 0, len(data))
    return frame


@dataclass(frozen=True, slots=True)
class FrameSummary:
    """What a trace line says about one frame: type, request id, body length, flags and the
    decoded body, masked (``None`` if it does not decode), and any problem."""

    type_name: str
    request_id: int
    body_length: int
    flags: int
    body: dict[str, Any] | None
    problem: str | None


def summarize(frame_type: int, request_id: int, flags: int, body: bytes) -> FrameSummary:
    """One frame, for the tracer: decoded and masked like ``dump`` (never raises)."""
    raw = HEADER.pack(len(body), 1, frame_type if 0 <= frame_type <= 255 else 0,
                      flags & 0xffff, request_id & 0xffff_ffff_ffff_ffff) + body
    frames = dump(raw, 1)
    dumped = frames[0] if frames else None
    problems = [p for p in (dumped.problems if dumped else [])
                if not p.startswith(("UNSUPPORTED_VERSION", "BAD_FRAME"))]
    return FrameSummary(type_name(frame_type), request_id, len(body), flags,
                        dumped.body if dumped else None, problems[0] if problems else None)
