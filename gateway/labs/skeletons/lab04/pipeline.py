"""Lab 4: a client that pipelines requests on one connection (your work).

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
from protocol.frame import (
    HANDSHAKE_BODY_BYTES_MAX,
    Flags,  # noqa: F401  (run() reads ERROR and REPLAYED from it)
    Frame,
    FrameType,
    encode_frame,
)
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
        # Build the HELLO body (a dict: versions [1], role "merchant", identity, and
        # in_flight_max when a wish is given), send it as a HELLO frame with request id 0
        # (encode_frame + msgpack_body.pack), drain, then read frames with next_frame()
        # until the WELCOME: unpack its body, set self.decoder.body_bytes_max and
        # self.in_flight_max from it. Anything else than WELCOME: raise ServerClosed.
        raise NotImplementedError("handshake(): send HELLO, read WELCOME, keep its "
                                  "in_flight_max (docs/labs/04-pipelining.md, Step 2)")

    async def run(self, calls: list[Call]) -> list[Answer]:
        """Send every call on this connection, pipelined, and return their answers in the
        order of ``calls``.

        - each REQUEST gets a fresh non-zero ``request_id`` (never one still in flight, §4.6);
        - never more than ``self.in_flight_max`` requests outstanding (§3.4): send while
          there is room, then read a RESPONSE, which frees one slot;
        - every RESPONSE is matched to its call by ``request_id``; ``arrival`` records the
          order responses came in.
        """
        # A plan that works:
        #   pending: dict request_id -> index of its call; answers: a list of None
        #   loop until every call has its answer:
        #     while calls remain and len(pending) < self.in_flight_max:
        #         take the next request id, send self.request_frame(rid, op, args),
        #         remember it in pending, update self.peak_in_flight
        #     drain the writer, then read ONE frame with next_frame()
        #     a RESPONSE: pending.pop(frame.request_id) says which call it answers;
        #       build its Answer (ok from the ERROR flag, replayed from REPLAYED, body
        #       unpacked, arrival = how many answers arrived before it)
        # Wrap the read in asyncio.wait_for(..., ANSWER_TIMEOUT_S): never wait forever.
        raise NotImplementedError("run(): send while fewer than in_flight_max are "
                                  "outstanding, match each RESPONSE by request_id "
                                  "(docs/labs/04-pipelining.md, Step 3)")


def overtaken(answers: list[Answer]) -> list[int]:
    """The request ids of answers that arrived after an answer to a request sent later
    (the requests that were *overtaken*), in the order they were sent. ``answers`` are in
    the order the requests were sent."""
    # Answer.arrival says when each answer came; the list order says when it was sent.
    raise NotImplementedError("overtaken(): the request ids of answers that arrived after "
                              "an answer to a later request (docs/labs/04-pipelining.md, "
                              "Step 4)")


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
