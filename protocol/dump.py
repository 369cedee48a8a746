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

Masking (the same in ``paywire dump`` and in traces; ``docs/see-the-bytes.md`` for readers).
A field's *name* is read by its words, case-insensitive (``serverKey``, ``Server-Key`` and
``server_key`` are all ``server key``; ``key_kind``):

* **card fields** (``number``, ``account``, ``card``, ``pan`` and the usual spellings of a
  card number, ``CARD_NAMES``): whatever the value's type. A string is stripped of spaces
  and dashes and, if 12..19 digits remain, shown as the hub shows a card, first six and
  last four digits (``481111******1114``, ``protocol.operations.mask_card``); otherwise any
  12..19 digits in it are (an e-wallet reference ``EW00000123456789`` keeps its ``EW``). An
  integer of 12+ digits, a ``bin`` spelling a card number in ASCII, likewise; any other
  ``bin`` (packed digits read as the number in hex), a float, an integer past 19 digits:
  ``***``. A bank link's ``number`` may be a VA number, masked there like a card. What
  is nested under a card field is read as a card field too (``_child_kind``);
* **everywhere else**, every string value *and every map key* is scanned for a card
  number: 12..19 digits, alone or in groups of 3+ digits joined by single spaces or dashes
  (``4811 1111 1111 1114``, ``4811-1111-1111-1114``), the longest stretch of whole groups
  from the left that passes the Luhn check and does not start with 0 (no card does). Luhn
  keeps ``1000000000000000`` in an error message legible; a VA number (``va_number``) is
  shown unless it happens to pass it (one in ten). Map keys are masked without the Luhn
  check (field names hold no digits; the bank admin's maps are keyed by account number),
  and two keys that mask alike are both kept (``481100******0000~2``). The hex of a
  ``bin`` is scanned too (packed digits). Integers outside card fields are not:
  amounts and ``*_ms`` times are 13..16 digits;
* **secrets**, shown as ``***`` whatever their type, and everything nested under them: a
  name with the word ``key``, ``auth``, ``authorization``, ``token``, ``pin``, ``pass``,
  ``pwd``, ``otp``..., or ``key``, ``secret``, ``password``, ``passwd``, ``token``,
  ``credential`` anywhere in it (``api_key``, ``apiKey``, ``serverKey``, ``client_secret``,
  ``resume_token``); card verification values ``cvv``, ``cvv2``, ``cvc``, ``cvc2``,
  ``cvn``, ``csc``, ``cid``. Kept visible on purpose (``VISIBLE_NAMES``): ``refund_key``
  (the merchant's idempotency key of a refund: an id it chose, like ``order_id``),
  ``idempotency_key`` (an id by that name; the hub's secret of that name never travels) and
  ``auth_code`` (the bank's approval code, printed on the receipt). ``resume_token`` is
  masked although §3.3 reserves it (it restores nothing today): by its name it is a
  credential, and hiding 16 random bytes costs a reader nothing;
* **MACs**: ``signature``, ``sig``, ``mac``, ``hmac`` (``bad_mac``...) are shortened to their
  first 4 bytes as hex, or first 8 characters of a string (``811fdf09…``): enough to tell
  two signatures apart in a lab, never enough to reuse; one shorter than 8 bytes / 16
  characters, or of another type, is ``***``;
* a ``bin`` that is not decoded (anything but a REQUEST's ``args``) is shown in full only up
  to 16 bytes (nonces), else its first 8 bytes and its length.

Masking never raises, whatever a body holds (``masked`` takes any nested Python value).
"""

from __future__ import annotations

import datetime as dt
import enum
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
# A signature sent as text (hex) is shown by this many characters (the same 4 bytes).
SIGNATURE_SHOWN_CHARS = 8
# Column widths of body lines in ``render`` (longer names and kinds push the rest right).
NAME_COLUMN = 20
KIND_COLUMN = 18
# Strings longer than this are cut in the text rendering (the structured value is whole).
STRING_SHOWN_CHARS_MAX = 200

MASKED = "***"
# Plain ``bin`` values and those under a shortened name: see ``_mask_bytes``.
_RUN = re.compile(r"(?<![0-9])[0-9]{3,19}(?:[ -][0-9]{3,19})*(?![0-9])")
_SEPARATORS = re.compile(r"[ -]")
_CARD_DIGITS = re.compile(r"[0-9]{12,19}")
PAN_DIGITS_MIN = 12
PAN_DIGITS_MAX = 19
# Integer fields holding an error code, annotated with its name.
_CODE_KEYS = frozenset({"code"})
_EPOCH_MS_MIN = 10**12  # 2001-09-09: below it a ``*_ms`` value is a duration, not a time
_EPOCH_MS_MAX = 10**14


class KeyKind(enum.IntEnum):
    """What a field's name says about its value, weakest first (see ``key_kind``)."""

    PLAIN = 0
    CARD = 1  # a card number whatever its type
    SHORTENED = 2  # a MAC: a prefix is shown, to tell two apart
    SECRET = 3  # nothing is shown, nor anything nested under it


# Names are compared by their words, lower case: ``serverKey``, ``Server-Key`` and
# ``server_key`` are all ``server key`` (``_words``).
# Card fields: merchant ``card.number``, the bank link's ``account``, a whole ``card`` given
# as a string, and the usual names of a primary account number.
CARD_NAMES = frozenset({"number", "account", "card", "pan", "cardnumber", "cardno",
                        "cardnum", "ccnumber", "accountnumber", "primaryaccountnumber"})
CARD_WORDS = frozenset({"pan"})
# Card verification values.
CVV_WORDS = frozenset({"cvv", "cvv2", "cvc", "cvc2", "cvn", "cvn2", "csc", "cid"})
# MACs: shown by a prefix only.
SHORTENED_WORDS = frozenset({"signature", "sig", "mac", "hmac"})
# Secrets by a whole word...
# (Not ``session``: WELCOME's ``session_id`` is a random id to find a connection in the
# hub's log, no credential.)
SECRET_WORDS = frozenset({"key", "keys", "auth", "authorization", "pin", "pwd", "pass",
                          "otp", "token", "tokens", "bearer", "cookie"})
# ... or anywhere in the name run together (``serverkey``, ``apikey``, ``clientsecret``).
SECRET_PARTS = ("key", "secret", "password", "passwd", "passphrase", "token", "credential")
# Names that match a secret pattern but are not secrets, kept visible on purpose:
# ``refund_key`` is the idempotency key of a refund, chosen by the merchant (an id, like
# ``order_id``); ``idempotency_key`` likewise names an id (the hub's secret of that name is
# never sent in a frame); ``auth_code`` is the bank's approval code, printed on the
# customer's receipt (a result, not a credential).
VISIBLE_NAMES = frozenset({"refundkey", "idempotencykey", "authcode"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Key names seen, their kinds (bounded: a hostile stream sends any number of names).
_KIND_CACHE: dict[str, KeyKind] = {}
KIND_CACHE_ENTRIES_MAX = 4096


def _words(name: str) -> list[str]:
    """``serverKey`` -> [server, key]; ``api_key`` -> [api, key]; ``CVV2`` -> [cvv2]."""
    words = [w.lower() for w in _WORD.findall(name)]
    out: list[str] = []
    for w in words:  # keep a number glued to the word before it (cvv2, cvc2)
        if w.isdigit() and out and not out[-1].isdigit():
            out[-1] += w
        else:
            out.append(w)
    return out


def key_kind(key: str | None) -> KeyKind:
    """The masking a field's name calls for, case-insensitive (module doc)."""
    if key is None:
        return KeyKind.PLAIN
    kind = _KIND_CACHE.get(key)
    if kind is None:
        kind = _key_kind(key)
        if len(_KIND_CACHE) >= KIND_CACHE_ENTRIES_MAX:
            _KIND_CACHE.clear()
        _KIND_CACHE[key] = kind
    return kind


def _key_kind(key: str) -> KeyKind:
    words = _words(key)
    joined = "".join(words)
    if joined in VISIBLE_NAMES:
        return KeyKind.PLAIN
    if CVV_WORDS & set(words) or joined in CVV_WORDS:
        return KeyKind.SECRET
    if SECRET_WORDS & set(words) or any(part in joined for part in SECRET_PARTS):
        return KeyKind.SECRET
    if SHORTENED_WORDS & set(words) or joined.endswith(("signature", "hmac")):
        return KeyKind.SHORTENED
    if joined in CARD_NAMES or CARD_WORDS & set(words):
        return KeyKind.CARD
    return KeyKind.PLAIN


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Luhn's value of each digit in an even position from the right, and in an odd one.
_LUHN_PLAIN = {str(d): d for d in range(10)}
_LUHN_DOUBLED = {str(d): (2 * d - 9 if d > 4 else 2 * d) for d in range(10)}


def _luhn_sums(digits: str) -> tuple[list[int], list[int]]:
    """Prefix sums making the Luhn check of any stretch ``digits[s:e]`` O(1): ``sums[p]``
    weighs digits at even indexes plain and odd ones doubled (``p = 0``), or the reverse
    (``p = 1``); a stretch ending at ``e`` has its last digit plain, so uses
    ``sums[(e - 1) % 2]``. Keeps a long run of digit groups linear to scan."""
    even = [0]
    odd = [0]
    for k, ch in enumerate(digits):
        plain, doubled = _LUHN_PLAIN[ch], _LUHN_DOUBLED[ch]
        even.append(even[-1] + (plain if k % 2 == 0 else doubled))
        odd.append(odd[-1] + (doubled if k % 2 == 0 else plain))
    return even, odd


def _mask_run(run: str, card_field: bool) -> str:
    """One run of digit groups (``4811 1111 1111 1114``, ``12 4811...``): every stretch of
    whole groups holding 12..19 digits that passes Luhn and does not start with 0 (no card
    number does; ``0000 0000 0000`` passes Luhn) is replaced by the card's mask, longest
    first from the leftmost group. In a card field, any such stretch."""
    if len(run) <= PAN_DIGITS_MAX and run.isdigit():  # one group: the common case
        if len(run) >= PAN_DIGITS_MIN and (card_field or (run[0] != "0" and _luhn(run))):
            return mask_card(run)
        return run
    groups = _SEPARATORS.split(run)
    seps = _SEPARATORS.findall(run)
    digits = "".join(groups)
    ends: list[int] = []
    for g in groups:
        ends.append((ends[-1] if ends else 0) + len(g))
    sums = None if card_field else _luhn_sums(digits)
    out: list[str] = []
    i = 0
    while i < len(groups):
        first = ends[i] - len(groups[i])
        best = -1
        for j in range(i, len(groups)):
            size = ends[j] - first
            if size > PAN_DIGITS_MAX:
                break
            if size < PAN_DIGITS_MIN:
                continue
            if sums is None:
                best = j
            elif digits[first] != "0":
                table = sums[(ends[j] - 1) % 2]
                if (table[ends[j]] - table[first]) % 10 == 0:
                    best = j
        if best < 0:
            out.append(groups[i])
            if i < len(seps):
                out.append(seps[i])
            i += 1
            continue
        out.append(mask_card(digits[first:ends[best]]))
        if best < len(seps):
            out.append(seps[best])
        i = best + 1
    return "".join(out)


def mask_string(text: str, card_field: bool = False) -> str:
    """Every card number in ``text`` masked: 12..19 digits, alone or in groups of 3+
    digits joined by single spaces or dashes (``4811 1111 1111 1114``), that pass the Luhn
    check a card number must pass (so a limit like ``1000000000000000`` in an error stays
    legible); in a card field any such digits, Luhn or not."""
    if card_field:
        bare = _SEPARATORS.sub("", text)
        if _CARD_DIGITS.fullmatch(bare):
            return mask_card(bare)
    if len(text) < PAN_DIGITS_MIN:
        return text
    return _RUN.sub(lambda m: _mask_run(m.group(0), card_field), text)


def mask_key(key: str) -> str:
    """A map key as shown: any 12..19 digits in it masked, Luhn or not, as in a card field.
    Field names never hold digits; the maps keyed by data are the bank admin's, keyed by
    account (card) number (``bank-admin balances``), and an account of a bank's config
    need not pass Luhn."""
    return mask_string(key, card_field=True)


def _hex(data: bytes) -> str:
    return data.hex()


def _digits_of_bytes(data: bytes) -> str | None:
    """The card number a ``bin`` spells in ASCII (``b"4811 1111 1111 1114"``), if it does."""
    if len(data) > 2 * PAN_DIGITS_MAX:
        return None
    try:
        bare = _SEPARATORS.sub("", data.decode("ascii"))
    except UnicodeDecodeError:
        return None
    return bare if _CARD_DIGITS.fullmatch(bare) else None


def _mask_bytes(kind: KeyKind, data: bytes) -> tuple[str, str]:
    if kind is KeyKind.SHORTENED:
        if len(data) < 2 * SIGNATURE_SHOWN_BYTES:
            return MASKED, f"{len(data)} bytes, masked"
        return _hex(data[:SIGNATURE_SHOWN_BYTES]) + "…", f"{len(data)} bytes, shortened"
    digits = _digits_of_bytes(data)
    if digits is not None and (kind is KeyKind.CARD or _luhn(digits)):
        return mask_card(digits), "card number masked"
    if kind is KeyKind.CARD:
        # Not ASCII digits: maybe packed (BCD), whose hex *is* the number. Never shown.
        return MASKED, f"{len(data)} bytes, masked"
    if len(data) <= BIN_SHOWN_BYTES_MAX:
        shown, note = _hex(data), ""
    else:
        shown = _hex(data[:BIN_PREFIX_BYTES]) + "…"
        note = f"{len(data)} bytes, shortened"
    # The hex of BCD-packed digits reads as the digits: masked like any text.
    hidden = mask_string(shown)
    if hidden != shown:
        return hidden, "card number masked" + (f"; {note}" if note else "")
    return shown, note


def mask_value(kind: KeyKind, value: Any) -> tuple[Any, str]:
    """A scalar as shown in a field of ``kind``, and a note saying what was hidden ("" when
    nothing). Never raises, whatever ``value`` is."""
    if kind is KeyKind.SECRET:
        return MASKED, "masked"
    if value is None or isinstance(value, bool):
        return value, ""
    if isinstance(value, str):
        if kind is KeyKind.SHORTENED:
            if len(value) < 2 * SIGNATURE_SHOWN_CHARS:
                return MASKED, "masked"
            return value[:SIGNATURE_SHOWN_CHARS] + "…", f"{len(value)} chars, shortened"
        shown = mask_string(value, kind is KeyKind.CARD)
        return shown, ("card number masked" if shown != value else "")
    if isinstance(value, bytes | bytearray | memoryview):
        return _mask_bytes(kind, bytes(value))
    if isinstance(value, int):
        if kind is KeyKind.SHORTENED:
            return MASKED, "masked"
        if kind is KeyKind.CARD and abs(value) >= 10 ** (PAN_DIGITS_MIN - 1):
            if abs(value) >= 10 ** PAN_DIGITS_MAX:
                return MASKED, "masked"
            return mask_card(str(abs(value))), "card number masked"
        return value, ""
    if kind is not KeyKind.PLAIN:
        return MASKED, "masked"  # a float or anything else where a card or MAC belongs
    return value, ""


def mask_scalar(key: str | None, value: Any) -> tuple[Any, str]:
    """The value to show for ``key`` and a note saying what was hidden ("" when nothing)."""
    return mask_value(key_kind(key), value)


def _child_kind(parent: KeyKind, key: str | None) -> KeyKind:
    """The kind of a field inside a container of kind ``parent``: everything under a
    secret is secret, everything under a card field is card (``{"card": {"pan": ...}}``,
    ``{"number": {"x": ...}}``) unless its own name says more; a MAC's children are what
    their own names say."""
    inherited = parent if parent in (KeyKind.CARD, KeyKind.SECRET) else KeyKind.PLAIN
    return max(inherited, key_kind(key))


def _shown_key(key: Any) -> str:
    if isinstance(key, bytes | bytearray):
        key = bytes(key).decode("utf-8", "replace")
    elif not isinstance(key, str):
        try:
            key = str(key)
        except Exception:  # an int too long for str(), an object whose __str__ fails
            key = f"<{type(key).__name__}>"
    return mask_key(key)


def masked(obj: Any, key: str | None = None, depth: int = 0,
           kind: KeyKind | None = None) -> Any:
    """A JSON-able copy of a decoded body with every secret masked (see the module doc);
    ``bytes`` become hex strings, keys strings (card numbers in them masked; two keys that
    mask alike get ``~2``, ``~3``... so no entry is lost). Deeper than ``DUMP_DEPTH_MAX`` is
    replaced by ``"…"``. Never raises, whatever ``obj`` holds."""
    if kind is None:
        kind = key_kind(key)
    if depth > DUMP_DEPTH_MAX:
        return "…"
    if isinstance(obj, dict):
        if kind is KeyKind.SECRET:
            return MASKED
        out: dict[str, Any] = {}
        for k, v in obj.items():
            name = k if isinstance(k, str) else None
            shown = _shown_key(k)
            if shown in out:
                n = 2
                while f"{shown}~{n}" in out:
                    n += 1
                shown = f"{shown}~{n}"
            out[shown] = masked(v, name, depth + 1, _child_kind(kind, name))
        return out
    if isinstance(obj, list | tuple | set | frozenset):
        if kind is KeyKind.SECRET:
            return MASKED
        return [masked(v, key, depth + 1, kind) for v in obj]
    return mask_value(kind, obj)[0]


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
        # The kind of the container being read (``_child_kind``): under a secret name all
        # of it is masked, under a card field every value is read as a card field's.
        self.inherited = KeyKind.PLAIN

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
            saved = self.inherited
            self.inherited = _child_kind(saved, key)
            hide = self.inherited is KeyKind.SECRET
            try:
                for i in range(length):
                    v4, p = self.value(p, end, depth + 1, key, self.base + p, f"[{i}]")
                    out.append(v4)
            finally:
                self.inherited = saved
            return (MASKED if hide else out), p
        # a map
        if 2 * length > end - start:
            raise _Malformed(f"{kind} claims {length} entries, {end - start} bytes left",
                             self.base + pos)
        self.items.append(Item(entry_offset, depth, name, f"{kind} of {length}", None))
        saved = self.inherited
        self.inherited = _child_kind(saved, key)
        hide = self.inherited is KeyKind.SECRET
        try:
            entries, p = self.map_entries(start, end, depth + 1, length)
        finally:
            self.inherited = saved
        return (MASKED if hide else entries), p

    def map_entries(self, pos: int, end: int, depth: int, count: int) -> tuple[Any, int]:
        out: dict[str, Any] = {}
        seen: set[str] = set()
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
            shown = mask_key(key)
            if shown in out:
                if key in seen:
                    self.problems.append(f"MALFORMED_BODY: key {shown!r} twice in one map "
                                         f"(offset {key_offset:#06x})")
                n = 2  # two card numbers masked alike: both entries kept
                while f"{shown}~{n}" in out:
                    n += 1
                shown = f"{shown}~{n}"
            seen.add(key)
            out[shown], pos = self.value(stop, end, depth, key, key_offset, shown)
        return out, pos

    def _scalar(self, offset: int, depth: int, name: str, key: str | None, kind: str,
                value: Any) -> Any:
        shown, note = mask_value(_child_kind(self.inherited, key), value)
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
