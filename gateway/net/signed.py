"""Building signed REQUEST frames and correlating their RESPONSEs (client side of any link)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from gateway.transactions.model import now_ms, now_us
from protocol import body as bodycodec
from protocol import messages, signing
from protocol.errors import ErrorCode, PaywireError, RemoteError, RequestTimeout
from protocol.frame import Flags, Frame


def build_request(key: bytes, identity: str, request_id: int, op: str,
                  args: dict[str, Any], *, stamp_sent: bool = False) -> bytes:
    """A REQUEST frame signed now, with a fresh 16-byte nonce; ``args`` are packed once and
    those exact bytes are both signed and sent. ``stamp_sent``: carry ``sent_us`` (the
    merchant client does, for the hop timeline; the bank link has no use for it)."""
    ts = now_ms()
    nonce = os.urandom(16)
    args_raw = messages.encode_args(args)
    sig = signing.sign_request(key, identity, request_id, op, ts, nonce, args_raw)
    return messages.encode_request(request_id, op, identity, ts, nonce, sig, args_raw,
                                   now_us() if stamp_sent else None)


def verified_request(key: bytes, frame: Frame) -> messages.Request:
    """The REQUEST envelope of a bank-link frame once its signature verifies under ``key``
    (``BAD_SIGNATURE`` otherwise). The signature covers the exact args bytes, so nothing of
    ``args`` is unpacked before this returns: the caller decodes them only then."""
    req = messages.decode_request(frame.request_id, frame.body)
    if not signing.verify_request(key, req.signature, req.merchant_id, frame.request_id,
                                  req.op, req.timestamp_ms, req.nonce, req.args_raw):
        raise PaywireError("bad link signature", code=ErrorCode.BAD_SIGNATURE)
    return req


# The flag bits as plain ints: ``int & IntFlag`` runs enum code in Python (two calls and an
# enum construction per response, measured in the load generator's profile).
_ERROR = int(Flags.ERROR)
_REPLAYED = int(Flags.REPLAYED)


class Correlator:
    """Request ids and the futures waiting for their RESPONSE, with per-request timeouts."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_forget: Callable[[int], None] | None = None) -> None:
        self.loop = loop
        # Told the id of a request whose waiter gives up without its RESPONSE (timeout,
        # forget, lost link): the connection stops expecting it (``forget_request``).
        self.on_forget = on_forget
        self.next_id = 1
        self.waiting: dict[int, tuple[asyncio.Future[dict[str, Any]],
                                      asyncio.TimerHandle | None]] = {}

    def new(self, timeout_s: float | None) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        rid = self.next_id
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        handle = None
        if timeout_s is not None:
            handle = self.loop.call_later(timeout_s, self._expire, rid, timeout_s)
        self.waiting[rid] = (fut, handle)
        return rid, fut

    def _expire(self, rid: int, timeout_s: float) -> None:
        entry = self.waiting.pop(rid, None)
        if entry is not None and self.on_forget is not None:
            self.on_forget(rid)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(RequestTimeout(f"no response within {timeout_s} s"))

    def forget(self, rid: int) -> None:
        entry = self.waiting.pop(rid, None)
        if entry is not None and self.on_forget is not None:
            self.on_forget(rid)
        if entry is not None and entry[1] is not None:
            entry[1].cancel()

    def resolve(self, frame: Frame) -> bool:
        """Match a RESPONSE to its waiter. False if nobody waits (late or unknown id)."""
        entry = self.waiting.pop(frame.request_id, None)
        if entry is None:
            return False
        fut, handle = entry
        if handle is not None:
            handle.cancel()
        if fut.done():
            return False
        try:
            body = bodycodec.unpack(frame.body)
        except PaywireError as exc:
            fut.set_exception(exc)
            return True
        if frame.flags & _ERROR:
            fut.set_exception(RemoteError.from_body(body))
        else:
            if frame.flags & _REPLAYED:
                body["_replayed"] = True
            fut.set_result(body)
        return True

    def fail_all(self, exc: BaseException) -> None:
        waiting, self.waiting = self.waiting, {}
        if self.on_forget is not None:
            for rid in waiting:
                self.on_forget(rid)
        for fut, handle in waiting.values():
            if handle is not None:
                handle.cancel()
            if not fut.done():
                fut.set_exception(exc)
