"""Lab 4: a client that pipelines requests on one connection (reference solution).

Run it against the sandbox (its environment set, ``source sandbox/sandbox.env``)::

    python labwork/lab04/pipeline.py

It opens one TLS connection, sends HELLO, reads WELCOME, then sends a batch of REQUEST
frames without waiting for each answer (at most WELCOME's ``in_flight_max`` outstanding),
and matches every RESPONSE to its REQUEST by ``request_id`` (docs/protocol.md §4, §4.6).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import body as msgpack_body
from protocol.decoder import FrameDecoder
from protocol.frame import HANDSHAKE_BODY_BYTES_MAX, Flags, Frame, FrameType, encode_frame
from protocol.messages import encode_args, encode_request
from protocol.signing import sign_request

READ_BYTES_MAX = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 60.0  # for one RESPONSE: a bank call under load takes well under this


@dataclass
class Call:
    """One operation to send: ``op`` (``charge``, ``status``, ...) and its ``args``."""

    op: str
    args: dict[str, Any]


@dataclass
class Answer:
    """The RESPONSE to one :class:`Call`.

    ``arrival`` is the position in which this RESPONSE arrived among the batch's responses
    (0 = first); ``ok`` is False when the ERROR flag was set (``body`` is then the error
    body: ``code``, ``name``, ``message``); ``replayed`` is the REPLAYED flag.
    """

    request_id: int
    call: Call
    ok: bool
    replayed: bool
    body: dict[str, Any]
    arrival: int


class ServerClosed(Exception):
    """The hub sent an ERROR frame or closed the connection."""


@dataclass
class Pipeline:
    """One merchant connection, driven frame by frame."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    merchant_id: str
    server_key: bytes
    decoder: FrameDecoder = field(
        default_factory=lambda: FrameDecoder(HANDSHAKE_BODY_BYTES_MAX))
    in_flight_max: int = 0  # from WELCOME
    next_request_id: int = 1
    peak_in_flight: int = 0  # the most requests ever outstanding at once
    _frames: list[Frame] = field(default_factory=list)

    # --- given: frames in and out -----------------------------------------------------------
    @classmethod
    async def open(cls, host: str, port: int, *, merchant_id: str, server_key: str,
                   ssl_context: ssl.SSLContext, in_flight_wish: int | None = None
                   ) -> Pipeline:
        """Connect with TLS, then :meth:`handshake` (HELLO out, WELCOME in)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl_context, server_hostname=host),
            CONNECT_TIMEOUT_S)
        self = cls(reader, writer, merchant_id, server_key.encode())
        try:
            await self.handshake(in_flight_wish)
        except BaseException:
            writer.close()  # a connection that never got its WELCOME is of no use
            raise
        return self

    def send(self, frame: bytes) -> None:
        self.writer.write(frame)

    def request_frame(self, request_id: int, op: str, args: dict[str, Any]) -> bytes:
        """A signed REQUEST frame (§4.1, §4.3): fresh nonce, the args bytes signed as sent."""
        timestamp_ms = time.time_ns() // 1_000_000
        nonce = os.urandom(16)
        args_raw = encode_args(args)
        signature = sign_request(self.server_key, self.merchant_id, request_id, op,
                                 timestamp_ms, nonce, args_raw)
        return encode_request(request_id, op, self.merchant_id, timestamp_ms, nonce,
                              signature, args_raw)

    async def next_frame(self) -> Frame:
        """The next frame from the hub that is not a PING (a PING is answered with a PONG
        echoing its request id, §8). An ERROR frame or the end of the stream raises
        :class:`ServerClosed`."""
        while True:
            while self._frames:
                frame = self._frames.pop(0)
                if frame.type == FrameType.PING:
                    self.send(encode_frame(FrameType.PONG, frame.request_id, b"\x80"))
                    continue
                if frame.type == FrameType.ERROR:
                    raise ServerClosed(f"ERROR frame: {msgpack_body.unpack(frame.body)}")
                return frame
            data = await self.reader.read(READ_BYTES_MAX)
            if not data:
                raise ServerClosed("the hub closed the connection")
            self._frames.extend(self.decoder.feed(data))

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass

    # --- the student's part ------------------------------------------------------------------
    async def handshake(self, in_flight_wish: int | None) -> None:
        """Send HELLO (§3.1), asking for ``in_flight_wish`` requests in flight when given;
        read WELCOME (§3.2) and keep what it negotiated: ``in_flight_max`` here, and
        ``body_bytes_max`` in the decoder (the limits bind from now on, §2.3)."""
        hello: dict[str, Any] = {"versions": [1], "role": "merchant",
                                 "identity": self.merchant_id}
        if in_flight_wish is not None:
            hello["in_flight_max"] = in_flight_wish
        self.send(encode_frame(FrameType.HELLO, 0, msgpack_body.pack(hello)))
        await self.writer.drain()
        frame = await asyncio.wait_for(self.next_frame(), CONNECT_TIMEOUT_S)
        if frame.type != FrameType.WELCOME:
            raise ServerClosed(f"expected WELCOME, got frame type {frame.type}")
        welcome = msgpack_body.unpack(frame.body)
        self.decoder.body_bytes_max = welcome["body_bytes_max"]
        self.in_flight_max = welcome["in_flight_max"]

    async def run(self, calls: list[Call]) -> list[Answer]:
        """Send every call on this connection, pipelined, and return their answers in the
        order of ``calls``.

        - each REQUEST gets a fresh non-zero ``request_id`` (never one still in flight, §4.6);
        - never more than ``self.in_flight_max`` requests outstanding (§3.4): send while
          there is room, then read a RESPONSE, which frees one slot;
        - every RESPONSE is matched to its call by ``request_id``; ``arrival`` records the
          order responses came in.
        """
        pending: dict[int, int] = {}  # request_id -> index in calls
        answers: list[Answer | None] = [None] * len(calls)
        sent = arrived = 0
        while arrived < len(calls):
            while sent < len(calls) and len(pending) < self.in_flight_max:
                rid = self.next_request_id
                self.next_request_id += 1
                call = calls[sent]
                self.send(self.request_frame(rid, call.op, call.args))
                pending[rid] = sent
                sent += 1
                self.peak_in_flight = max(self.peak_in_flight, len(pending))
            await self.writer.drain()
            frame = await asyncio.wait_for(self.next_frame(), ANSWER_TIMEOUT_S)
            if frame.type != FrameType.RESPONSE:
                continue  # an EVENT (we did not subscribe) or a GOAWAY: nothing to match
            index = pending.pop(frame.request_id, None)
            if index is None:
                raise ServerClosed(f"a RESPONSE for request id {frame.request_id}, which "
                                   "is not outstanding")
            answers[index] = Answer(frame.request_id, calls[index],
                                    ok=not frame.flags & Flags.ERROR,
                                    replayed=bool(frame.flags & Flags.REPLAYED),
                                    body=msgpack_body.unpack(frame.body), arrival=arrived)
            arrived += 1
        return [a for a in answers if a is not None]


def overtaken(answers: list[Answer]) -> list[int]:
    """The request ids of answers that arrived after an answer to a request sent later
    (the requests that were *overtaken*), in the order they were sent. ``answers`` are in
    the order the requests were sent."""
    out = []
    for i, a in enumerate(answers):
        if any(b.arrival < a.arrival for b in answers[i + 1:]):
            out.append(a.request_id)
    return out


def describe(answer: Answer) -> str:
    """One line for the table ``main`` prints."""
    if answer.ok:
        what = f"{answer.body.get('transaction_status')}"
        if answer.replayed:
            what += " (replayed)"
    else:
        what = f"error {answer.body.get('name')} ({answer.body.get('code')})"
    return (f"{answer.request_id:>4}  {answer.arrival:>7}  {answer.call.op:<8} "
            f"{answer.call.args.get('order_id', ''):<24} {what}")


async def main() -> int:
    from gateway.tls import node_client_context

    if "PAYWIRE_HUB" not in os.environ:
        print("set the sandbox's environment first: source sandbox/sandbox.env",
              file=sys.stderr)
        return 2
    host, _, port = os.environ["PAYWIRE_HUB"].rpartition(":")
    merchant = os.environ["PAYWIRE_MERCHANT"]
    ctx = node_client_context(Path(os.environ["PAYWIRE_CERTS"]), "merchant", merchant)
    card = {"number": os.environ.get("LAB_CARD", "4811111111111114"), "exp_month": 12,
            "exp_year": 2030, "cvv": "123"}
    run = f"lab4-{os.getpid()}-{time.time_ns() % 10**6:06d}"
    conn = await Pipeline.open(host, int(port), merchant_id=merchant,
                               server_key=os.environ["PAYWIRE_SERVER_KEY"],
                               ssl_context=ctx, in_flight_wish=8)
    try:
        print(f"WELCOME: in_flight_max={conn.in_flight_max}")
        old = f"{run}-old"
        await conn.run([Call("charge", {"order_id": old, "gross_amount": 10_000,
                                        "payment_type": "credit_card", "card": card})])
        order = f"{run}-new"
        calls = [
            Call("charge", {"order_id": order, "gross_amount": 25_000, "capture": False,
                            "payment_type": "credit_card", "card": card}),
            Call("status", {"order_id": old}),
            Call("capture", {"order_id": order}),
            Call("status", {"order_id": f"{run}-nowhere"}),
            Call("refund", {"order_id": order, "refund_key": f"{order}-r1",
                            "amount": 5_000}),
            Call("status", {"order_id": order}),
        ]
        answers = await conn.run(calls)
        print("  rid  arrival  op       order_id                 answer")
        for a in answers:
            print(describe(a))
        print(f"overtaken: {overtaken(answers)}")
        print(f"peak in flight: {conn.peak_in_flight} (limit {conn.in_flight_max})")
    finally:
        await conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
