"""Lab 3 checks: your captures, and answers read from them.

The student captures their own charges three ways (docs/labs/03-capture.md): on the hub's
plaintext lab listener (``plaintext.pcapng``), on its TLS port (``tls.pcapng``) with the
client's TLS secrets written to ``sslkeys.log``. ``answers.toml`` holds what they read.

Nothing in the answers is trusted: every value is computed from the captures themselves,
two independent ways from the tools the student used:

- the plaintext capture is read with our own pcap reader (``gateway/labs/pcap.py``) and its
  streams decoded with ``protocol/`` (the hub's own frame decoder and body codec), not with
  the Wireshark dissector the student reads it with;
- the TLS records are parsed from the reassembled stream in Python (how many the client
  sent, what kind they look like without keys), and whether the order id is visible without
  the key log is decided by searching the capture file's raw bytes;
- what needs the keys (the decrypted frames, the record that carried the charge) and the
  names of the negotiated version and cipher suite come from tshark, with the key log and
  the dissector, as the student ran it.

tshark is required (the lab is about reading captures with it): without it the first check
fails and says how to install it. A failing check says where to read the value, never the
value itself: the point is to find it in one's own capture.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.labs.checks import LabContext, Result
from gateway.labs.pcap import Connection, read_capture

TITLE = "See your own traffic: frames in clear, then TLS, then decrypted with the key log"
FILES = ("answers.toml",)
NEEDS_SANDBOX = False

PLAINTEXT, TLS, KEYLOG = "plaintext.pcapng", "tls.pcapng", "sslkeys.log"
HANDOUT = "docs/labs/03-capture.md"
LUA = Path(__file__).resolve().parents[2] / "docs" / "wireshark" / "paywire.lua"
TSHARK_TIMEOUT_S = 120.0
KEYLOG_BYTES_MAX = 1024 * 1024
TLS_HANDSHAKE, TLS_APPLICATION_DATA = 22, 23
INSTALL = ("install it: Debian/Ubuntu `sudo apt-get install tshark`, Fedora `sudo dnf install "
           "wireshark-cli`, macOS `brew install wireshark` (the lab reads captures with it)")


def missing_tools(for_handout: bool = False) -> str | None:
    """Why this lab cannot run on this machine, or ``None``. The tests skip with this reason
    (CI installs tshark and runs as root, so there they run): the checks need tshark; the
    handout's commands also capture, which needs dumpcap and the right to capture."""
    if shutil.which("tshark") is None:
        return f"tshark is not installed; {INSTALL}"
    if for_handout:
        from gateway.labs.capture import capture_problem

        return capture_problem()
    return None


def check(ctx: LabContext) -> Iterator[Result]:
    tshark = shutil.which("tshark")
    yield Result("tshark is installed", tshark is not None,
                 "" if tshark else f"tshark is not on your PATH; {INSTALL}")
    if tshark is None:
        return
    if not LUA.is_file():
        yield Result("the Paywire dissector is there", False,
                     f"{LUA} is missing: run the check from a clone of the repository")
        return
    try:
        answers = tomllib.loads((ctx.work / "answers.toml").read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        yield Result("answers.toml is valid TOML", False,
                     f"{ctx.work / 'answers.toml'}: {exc}; a value is a number (1), text in "
                     "quotes (\"x\") or true/false")
        return
    yield Result("answers.toml is valid TOML", True)
    plain = _section(answers, "plaintext")
    tls = _section(answers, "tls")
    yield from _check_plaintext(ctx.work, plain)
    yield from _check_tls(ctx.work, tls, tshark)


def _section(answers: dict[str, Any], name: str) -> dict[str, Any]:
    value = answers.get(name)
    return value if isinstance(value, dict) else {}


# -- answers --------------------------------------------------------------------------------

class _Blank(Exception):
    """The student has not answered (or answered with the wrong kind of value)."""


def _int(answers: dict[str, Any], key: str) -> int:
    value = answers.get(key, "")
    if isinstance(value, bool):
        raise _Blank(f"{key} must be a number, not {value}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise _Blank(f"{key} is not answered yet (write a number, e.g. {key} = 42)"
                 if value in ("", None) else f"{key} = {value!r} is not a number")


def _text(answers: dict[str, Any], key: str) -> str:
    value = answers.get(key, "")
    if not isinstance(value, str | int) or isinstance(value, bool) or str(value).strip() == "":
        raise _Blank(f"{key} is not answered yet (write it in quotes, e.g. {key} = \"...\")")
    return str(value).strip()


def _bool(answers: dict[str, Any], key: str) -> bool:
    value = answers.get(key, "")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "no", "true", "false"):
        return value.strip().lower() in ("yes", "true")
    raise _Blank(f"{key} is not answered yet (write true or false, without quotes)")


def _answer(name: str, read: Callable[[dict[str, Any], str], Any], key: str,
            section: dict[str, Any], actual: Any, where: str,
            same: Callable[[Any, Any], bool] | None = None) -> Result:
    """One answer compared with the value computed from the capture. ``where`` says where a
    student reads it; the computed value is never shown."""
    try:
        given = read(section, key)
    except _Blank as blank:
        return Result(name, False, f"{blank}. {where}")
    ok = same(given, actual) if same is not None else given == actual
    return Result(name, bool(ok), "" if ok else f"{key} = {_toml(given)} is not what your "
                  f"capture shows. {where}")


def _toml(value: Any) -> str:
    """A value as the student wrote it in answers.toml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else str(value)


# -- the plaintext capture ------------------------------------------------------------------

@dataclass
class _Frame:
    offset: int
    type: int
    flags: int
    request_id: int
    body_length: int
    body: dict[str, Any] | None
    args: dict[str, Any] | None = None


@dataclass
class _Stream:
    frames: list[_Frame] = field(default_factory=list)
    problem: str | None = None


def _frames(data: bytes) -> _Stream:
    """Every frame of one direction, decoded with the hub's own decoder and body codec."""
    from protocol import body as bodycodec
    from protocol import messages
    from protocol.decoder import FrameDecoder
    from protocol.frame import BODY_BYTES_MAX_CEILING, FrameType

    out = _Stream()
    try:
        frames = FrameDecoder(BODY_BYTES_MAX_CEILING).feed(data)
    except Exception as exc:  # a hostile or non-Paywire stream: a note, not a crash
        frames = list(getattr(exc, "frames_before", []))
        out.problem = f"the stream is not valid framing after {len(frames)} frames: {exc}"
    offset = 0
    for f in frames:
        entry = _Frame(offset, int(f.type), int(f.flags), f.request_id, len(f.body), None)
        try:
            if f.type == FrameType.REQUEST:
                request = messages.decode_request(f.request_id, f.body)
                entry.body = {"op": request.op, "merchant_id": request.merchant_id}
                entry.args = messages.decode_args(request.args_raw)
            else:
                entry.body = bodycodec.unpack(f.body)
        except Exception:  # a body the hub would refuse; the header still counts
            pass
        out.frames.append(entry)
        offset += 16 + len(f.body)
    return out


def _is_paywire(conn: Connection) -> bool:
    d = conn.to_server
    return len(d) >= 16 and d[4] == 1 and d[5] == 1  # version 1, HELLO


def _is_tls(conn: Connection) -> bool:
    d = conn.to_server
    return len(d) >= 3 and d[0] == TLS_HANDSHAKE and d[1] == 3


def _check_plaintext(work: Path, answers: dict[str, Any]) -> Iterator[Result]:
    from protocol.frame import FrameType

    path = work / PLAINTEXT
    name = f"{PLAINTEXT} holds a charge in clear"
    if not path.is_file():
        yield Result(name, False, f"{path} is not there: capture the plaintext listener first "
                     f"({HANDOUT}, step 2)")
        return
    cap = read_capture(path)
    conns = cap.connections()
    paywire = [c for c in conns if _is_paywire(c)]
    if not paywire:
        what = ("it holds TLS, not frames in clear: capture the port of $PAYWIRE_PLAINTEXT_HUB "
                "and run the client with --plaintext" if any(_is_tls(c) for c in conns) else
                f"no TCP connection in it starts with a HELLO frame ({cap.packets} packets, "
                f"{len(conns)} connections; {'; '.join(cap.notes) or 'a readable capture'})")
        yield Result(name, False, f"{path}: {what}. See {HANDOUT}, step 2")
        return
    charges: dict[str, tuple[Connection, _Stream, _Frame]] = {}
    for conn in paywire:
        stream = _frames(conn.to_server)
        for f in stream.frames:
            if f.type == FrameType.REQUEST and f.body and f.body.get("op") == "charge" \
                    and f.args and isinstance(f.args.get("order_id"), str):
                charges.setdefault(f.args["order_id"], (conn, stream, f))
    if not charges:
        yield Result(name, False, f"{path} holds {len(paywire)} Paywire connection(s) but no "
                     "charge REQUEST: capture while `paywire charge ... --plaintext` runs")
        return
    yield Result(name, True, f"charges: {', '.join(sorted(charges))}")
    if cap.notes:  # shown only when something is wrong, so a good capture has no extra line
        yield Result(f"{PLAINTEXT} is whole", False,
                     f"{'; '.join(cap.notes)}: capture again ({HANDOUT}, step 2)")

    prefix = "plaintext: "
    try:
        order_id = _text(answers, "order_id")
    except _Blank as blank:
        yield Result(prefix + "the order id of your charge", False,
                     f"{blank}: the order id you gave `paywire charge` in step 2")
        return
    if order_id not in charges:
        yield Result(prefix + "the order id of your charge", False,
                     f"order_id = {order_id!r} is not the order id of a charge REQUEST in "
                     f"{PLAINTEXT}: write the one you used in step 2 (the `order_id` line of "
                     "`paywire dump`)")
        return
    yield Result(prefix + "the order id of your charge", True)
    conn, stream, request = charges[order_id]
    replies = _frames(conn.to_client).frames
    welcome = next((f for f in replies if f.type == FrameType.WELCOME), None)
    response = next((f for f in replies if f.type == FrameType.RESPONSE
                     and f.request_id == request.request_id), None)
    dump = "the client's bytes through `paywire dump` (step 3)"
    yield _answer(prefix + "the request id of your charge REQUEST", _int, "charge_request_id",
                  answers, request.request_id,
                  f"Read the header's request_id (bytes 8-15) of the REQUEST in {dump}; "
                  "docs/protocol.md §2 (Frames)")
    yield _answer(prefix + "the body length of your charge REQUEST", _int,
                  "charge_body_length", answers, request.body_length,
                  f"Read body_length (header bytes 0-3) of the REQUEST in {dump}")
    yield _answer(prefix + "where your REQUEST starts in the client's stream", _int,
                  "charge_request_offset", answers, request.offset,
                  f"The `frame 2 at 0x...` line of {dump} gives it in hex; write it as a "
                  "decimal number (0x20 = 32). Which frame comes before it, and how long is it?")
    if welcome is None:
        yield Result(prefix + "the WELCOME frame", False,
                     f"{PLAINTEXT} has no WELCOME from the hub in that connection: was the "
                     "capture stopped too early? Capture again (step 2)")
    else:
        yield _answer(prefix + "the frame type of WELCOME", _int, "welcome_frame_type",
                      answers, welcome.type,
                      "Read byte 5 of the WELCOME's header in the dissector's tree (`tshark "
                      "... -V`, field `Frame type`) or in the table of docs/protocol.md §2")
        yield _answer(prefix + "the body length of WELCOME", _int, "welcome_body_length",
                      answers, welcome.body_length,
                      "Read `Body length` in the dissector's tree for the WELCOME (step 3)")
    status = (response.body or {}).get("transaction_status") if response else None
    status = status if isinstance(status, str) else None
    if status is None:
        yield Result(prefix + "the transaction status in the RESPONSE", False,
                     f"{PLAINTEXT} has no RESPONSE to your REQUEST with a transaction_status: "
                     "capture again, and let the command finish (step 2)")
    else:
        yield _answer(prefix + "the transaction status in the RESPONSE", _text,
                      "transaction_status", answers, status,
                      "Read `transaction_status` in the RESPONSE (the dissector's line for it "
                      "shows it)")
    card = (request.args or {}).get("card")
    number = card.get("number") if isinstance(card, dict) else None
    in_file = isinstance(number, str) and number.encode() in path.read_bytes()
    yield _answer(prefix + "is the card number in the capture file, in clear?", _bool,
                  "card_number_in_capture", answers, in_file,
                  f"Search the file's bytes: `grep -c <card number> labwork/lab03/{PLAINTEXT}` "
                  "(step 4); `paywire dump` masks it, the wire does not")
    if stream.problem:
        yield Result(prefix + "the client's stream is valid framing", False,
                     f"{stream.problem}; did two connections get mixed up?")


# -- the TLS capture ------------------------------------------------------------------------

def _records(data: bytes) -> list[tuple[int, int]]:
    """(outer content type, length) of every TLS record in one direction's bytes."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos + 5 <= len(data) and len(out) < 100_000:
        ctype, length = data[pos], int.from_bytes(data[pos + 3:pos + 5], "big")
        if pos + 5 + length > len(data):
            break
        out.append((ctype, length))
        pos += 5 + length
    return out


def _tshark(tshark: str, *args: str) -> tuple[str, str | None]:
    """tshark's output, or why it failed."""
    try:
        run = subprocess.run([tshark, "-n", *args], capture_output=True,
                             timeout=TSHARK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", f"tshark could not run: {exc}"
    text = run.stdout.decode("utf-8", "replace")
    err = run.stderr.decode("utf-8", "replace")
    if "Lua Error" in text or "Lua Error" in err:
        return text, f"the dissector failed in tshark: {err.strip()[-400:]}"
    if run.returncode != 0:
        return text, f"tshark exited with {run.returncode}: {err.strip()[-400:]}"
    return text, None


def _same_version(given: str, actual: tuple[str, str]) -> bool:
    name, code = actual
    g = re.sub(r"[\s_v]", "", given.lower())
    return g in (re.sub(r"[\s_v]", "", name.lower()), code.lower(),
                 name.lower().replace("tls", "").strip())


def _same_suite(given: str, actual: tuple[str, str]) -> bool:
    name, code = actual
    return given.strip().upper() == name.upper() or given.strip().lower() == code.lower()


def _check_tls(work: Path, answers: dict[str, Any], tshark: str) -> Iterator[Result]:
    path = work / TLS
    name = f"{TLS} holds a TLS connection to the hub"
    if not path.is_file():
        yield Result(name, False, f"{path} is not there: capture the hub's TLS port "
                     f"($PAYWIRE_HUB) while you charge, with SSLKEYLOGFILE set ({HANDOUT}, "
                     "step 5)")
        return
    cap = read_capture(path)
    conns = cap.connections()
    tls_conns = [c for c in conns if _is_tls(c)]
    if not tls_conns:
        what = ("it holds frames in clear: that is the plaintext listener; capture the port of "
                "$PAYWIRE_HUB, without --plaintext" if any(_is_paywire(c) for c in conns)
                else f"no connection in it starts with a TLS handshake ({cap.packets} packets)")
        yield Result(name, False, f"{path}: {what}. See {HANDOUT}, step 5")
        return
    yield Result(name, True)
    if cap.notes:
        yield Result(f"{TLS} is whole", False,
                     f"{'; '.join(cap.notes)}: capture again ({HANDOUT}, step 5)")
    prefix = "tls: "
    try:
        order_id = _text(answers, "order_id")
    except _Blank as blank:
        yield Result(prefix + "the order id of your charge over TLS", False,
                     f"{blank}: the order id you gave `paywire charge` in step 5")
        return
    raw = path.read_bytes()
    hidden = order_id.encode() not in raw
    yield Result(prefix + "the order id is not in the TLS capture's bytes", hidden,
                 "" if hidden else f"{order_id!r} is in {TLS} in clear: that charge went "
                 "over the plaintext listener; capture the TLS port and charge again (step 5)")
    yield _answer(prefix + "is the order id visible in the capture without the key log?",
                  _bool, "order_id_visible_without_keylog", answers, not hidden,
                  f"Search the file's bytes: `grep -c {order_id} labwork/lab03/{TLS}` (step 6)")

    # Without the keys: what the client sent, as record types on the wire.
    ours = tls_conns[-1]
    records = _records(ours.to_server)
    app_data = sum(1 for ctype, _ in records if ctype == TLS_APPLICATION_DATA)
    yield _answer(prefix + "how many Application Data records the client sent", _int,
                  "client_application_data_records", answers, app_data,
                  "Count the records tshark calls `Application Data` in the packets from the "
                  "client's port to the hub's, without the key log (step 6; a packet may "
                  "hold several). Only one connection should be in the capture"
                  + ("" if len(tls_conns) == 1 else f": yours has {len(tls_conns)}, the last "
                     "one is used"))

    # The handshake, by tshark's names.
    text, problem = _tshark(tshark, "-r", str(path), "-Y", "tls.handshake.type == 2", "-V")
    suite = re.search(r"Cipher Suite: (\S+) \((0x[0-9a-fA-F]{4})\)", text)
    version = re.search(r"Supported Version: (TLS [0-9.]+) \((0x[0-9a-fA-F]{4})\)", text)
    if problem or suite is None or version is None:
        yield Result(prefix + "the ServerHello is in the capture", False,
                     problem or f"no ServerHello in {TLS}: start the capture before the "
                     "client connects (step 5)")
    else:
        yield _answer(prefix + "the TLS version negotiated", _text, "tls_version", answers,
                      (version.group(1), version.group(2)),
                      "Read `Supported Version` in the ServerHello (step 6); the record "
                      "header's version says something else: why?", _same_version)
        yield _answer(prefix + "the cipher suite negotiated", _text, "cipher_suite", answers,
                      (suite.group(1), suite.group(2)),
                      "Read `Cipher Suite` in the ServerHello (step 6)", _same_suite)

    # With the keys: the decrypted frames.
    keylog = work / KEYLOG
    if not keylog.is_file() or not _looks_like_keylog(keylog):
        yield Result(prefix + f"{KEYLOG} holds TLS secrets", False,
                     f"{keylog} is missing or holds no TLS 1.3 secrets: set SSLKEYLOGFILE to "
                     "it for the client you capture (step 5)")
        return
    text, problem = _tshark(
        tshark, "-r", str(path), "-X", f"lua_script:{LUA}", "-o", f"tls.keylog_file:{keylog}",
        "-Y", f'paywire.op == "charge" && paywire.order_id == "{_quoted(order_id)}"',
        "-T", "fields", "-E", "separator=/t", "-e", "tls.record.length",
        "-e", "tls.record.content_type", "-e", "paywire.length", "-e", "paywire.type_name")
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    found = [r for r in rows if len(r) == 4 and "REQUEST" in r[3].split(",")]
    if problem or not found:
        yield Result(prefix + "the key log decrypts your charge", False,
                     problem or f"with {KEYLOG} and the dissector, tshark shows no charge "
                     f"REQUEST with order id {order_id!r} in {TLS}: was SSLKEYLOGFILE set for "
                     "that same run, and is it the order id you charged there? (step 7)")
        return
    yield Result(prefix + "the key log decrypts your charge", True)
    yield _answer(prefix + "is the order id visible with the key log?", _bool,
                  "order_id_visible_with_keylog", answers, True,
                  f"Run tshark with -o tls.keylog_file:labwork/lab03/{KEYLOG} and the "
                  "dissector (step 7)")
    lengths: set[int] = set()
    overheads: set[int] = set()
    for record_lengths, content_types, frame_lengths, _ in found:
        frames = [int(x) for x in frame_lengths.split(",") if x.isdigit()]
        for rl, ct in zip(record_lengths.split(","), content_types.split(","), strict=False):
            if ct == str(TLS_APPLICATION_DATA) and rl.isdigit():
                lengths.add(int(rl))
                overheads.update(int(rl) - 16 - f for f in frames)
    yield _answer(prefix + "the length of the record that carried your charge", _int,
                  "charge_record_length", answers, lengths,
                  "Read the `Length` of the TLS record in the packet whose Paywire line is "
                  "your charge REQUEST (step 7, `-V` on that packet)",
                  lambda given, actual: given in actual)
    yield _answer(prefix + "the bytes TLS adds to one frame", _int, "tls_overhead_bytes",
                  answers, overheads,
                  "The record's length minus the whole frame's (16-byte header + body_length "
                  "of the REQUEST): what are those bytes? (question 5)",
                  lambda given, actual: given in actual)


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _looks_like_keylog(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(KEYLOG_BYTES_MAX)
    return b"CLIENT_TRAFFIC_SECRET_0 " in head or b"CLIENT_RANDOM " in head
