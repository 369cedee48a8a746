"""Frame tracing: one log line per frame sent or received, secrets masked (teaching labs).

Turned on for a whole process by ``PAYWIRE_TRACE=1`` (or ``paywire hub|bank|charge ...
--trace``), for one client by ``connect(..., trace=True)``. Lines go to the logger
``paywire.trace`` at INFO; with ``PAYWIRE_TRACE_FILE=PATH`` (or ``--trace-file PATH``) they
are appended to that file instead, one plain line each::

    2026-11-25T21:30:00.123Z send peer=127.0.0.1:7400 REQUEST rid=1 len=248 flags=0x0000 \
body={"op": "charge", ..., "args": {"card": {"number": "481111******1114", "cvv": "***"}}}

Fields, in order: UTC time (file only; the logger adds its own), ``send`` or ``recv``,
``peer=HOST:PORT`` (the other end of the connection), the frame type, ``rid=`` request id,
``len=`` body length in bytes, ``flags=`` as hex (with ``+ERROR``/``+REPLAYED`` when set),
then ``body=`` the decoded body as JSON with a REQUEST's ``args`` decoded in place, masked
as ``paywire dump`` masks (``protocol/dump.py``: card numbers, CVV, keys, signatures), cut at
``TRACE_BODY_CHARS_MAX`` characters; a body that does not decode is ``problem=...`` instead.

The hook is in ``FramedProtocol`` (``gateway/net/framed.py``), on the bytes of each read
and of each write, so the hub's merchant sessions, its bank links, bank nodes and the client
are all traced by the same code, ERROR frames, PINGs and PONGs included. Off, it costs one
``is not None`` test per read and per write (no per-frame work).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from typing import Any

from protocol.dump import summarize
from protocol.frame import BODY_BYTES_MAX_CEILING, HEADER, HEADER_BYTES, Flags

log = logging.getLogger("paywire.trace")

TRACE_ENV = "PAYWIRE_TRACE"
TRACE_FILE_ENV = "PAYWIRE_TRACE_FILE"
# A trace line carries at most this much body JSON (a 4 MiB body would be a useless line).
TRACE_BODY_CHARS_MAX = 4096

_lock = threading.Lock()
_enabled = os.environ.get(TRACE_ENV, "") not in ("", "0")
_file: str | None = os.environ.get(TRACE_FILE_ENV) or None
_handler: logging.Handler | None = None


class _TraceFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z " + \
            record.getMessage()


def configure(enabled: bool, file: str | None = None) -> None:
    """Turn process-wide tracing on or off; ``file`` appends the lines there (and only
    there). Connections opened afterwards follow it; open ones keep what they started
    with."""
    global _enabled, _file
    with _lock:
        _enabled = enabled
        if file is not None:
            _file = file
    if enabled:
        _install()


def enabled() -> bool:
    """Process-wide default, from ``PAYWIRE_TRACE`` or ``configure``."""
    return _enabled


def _install() -> None:
    """The logger at INFO (so traces show whatever the root level is), and the file handler
    when a file is named; done once."""
    global _handler
    with _lock:
        log.setLevel(logging.INFO)
        if _file is None or _handler is not None:
            return
        handler = logging.FileHandler(_file, encoding="utf-8")
        handler.setFormatter(_TraceFormatter())
        log.addHandler(handler)
        log.propagate = False
        _handler = handler


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return str(peer)


def _flags_text(flags: int) -> str:
    names = "".join(f"+{f.name}" for f in (Flags.ERROR, Flags.REPLAYED) if flags & f)
    return f"0x{flags:04x}{names}"


class _Splitter:
    """Cuts one direction of a stream into frames, from the header's length alone (the
    connection judges them; the tracer only reports). A length above the ceiling ends the
    tracing of that direction: nothing after it can be framed."""

    __slots__ = ("broken", "buf")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.broken = False

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        if self.broken:
            return []
        self.buf += data
        out = []
        pos = 0
        buf = self.buf
        while len(buf) - pos >= HEADER_BYTES:
            length, _version, ftype, flags, rid = HEADER.unpack_from(buf, pos)
            if length > BODY_BYTES_MAX_CEILING:
                self.broken = True
                out.append((ftype, rid, flags, b""))
                break
            end = pos + HEADER_BYTES + length
            if end > len(buf):
                break
            out.append((ftype, rid, flags, bytes(buf[pos + HEADER_BYTES:end])))
            pos = end
        del buf[:pos]
        return out


class FrameTracer:
    """The tracer of one connection (``FramedProtocol`` holds one when tracing is on)."""

    __slots__ = ("_in", "_out", "peer")

    def __init__(self, peer: Any) -> None:
        _install()
        self.peer = _peer_text(peer)
        self._in = _Splitter()
        self._out = _Splitter()

    def received(self, data: bytes) -> None:
        self._trace("recv", self._in, data)

    def sent(self, data: bytes) -> None:
        self._trace("send", self._out, data)

    def _trace(self, direction: str, splitter: _Splitter, data: bytes) -> None:
        try:
            for ftype, rid, flags, body in splitter.feed(data):
                log.info("%s", self.line(direction, ftype, rid, flags, body,
                                         splitter.broken))
        except Exception as exc:
            # Tracing must never break the connection it watches (it runs before the
            # adapter's own guards in data_received): stop tracing this direction instead.
            splitter.broken = True
            log.warning("trace of %s stopped: %s", self.peer, exc)

    def line(self, direction: str, ftype: int, rid: int, flags: int, body: bytes,
             unframed: bool = False) -> str:
        head = f"{direction} peer={self.peer}"
        if unframed:
            return f"{head} frame_type={ftype} rid={rid} problem=\"body_length above " \
                   f"{BODY_BYTES_MAX_CEILING}: no more frames traced\""
        s = summarize(ftype, rid, flags, body)
        head += f" {s.type_name} rid={rid} len={s.body_length} flags={_flags_text(flags)}"
        if s.body is None and s.problem is None:
            return f"{head} body=(empty)"  # a PING/PONG may carry no body at all
        if s.body is None:
            return f"{head} problem={json.dumps(s.problem or 'no body', ensure_ascii=False)}"
        text = json.dumps(s.body, ensure_ascii=False)
        if len(text) > TRACE_BODY_CHARS_MAX:
            text = text[:TRACE_BODY_CHARS_MAX] + "…"
        return f"{head} body={text}"
