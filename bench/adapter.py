"""CPU per REQUEST frame through the connection adapter, without sockets.

    python -m bench.adapter [--batch 16] [--reads 20000]

One ``FramedProtocol`` holding a server ``Connection``, fed reads of ``batch`` REQUEST
frames (~200-byte bodies) by a fake transport; a handler answers each with a small result
and the answers of a read leave in one gathered write. This is the per-frame cost of the
adapter and the sans-I/O connection alone (decoding, the state table, the request-id and
GOAWAY checks, encoding and queueing the answer), the part the hub pays on every request
before its own work; TLS and the service are not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from gateway.net.framed import FramedProtocol, FrameHandler
from protocol import body as bodycodec
from protocol import messages
from protocol.connection import HelloReceived, ServerConnection
from protocol.frame import Frame, FrameType, encode_frame

RESULT = {"ok": True, "transaction_status": "capture", "order_id": "order-1"}
BODY = bodycodec.pack({"op": "charge", "merchant_id": "M1", "timestamp_ms": 1,
                       "nonce": b"n" * 16, "signature": b"s" * 32, "args": b"a" * 120})


class _Transport:
    """What the adapter calls on a transport; writes are counted, not sent."""

    def __init__(self) -> None:
        self.written_bytes = 0

    def write(self, data: bytes) -> None:
        self.written_bytes += len(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass


class _Answer(FrameHandler):
    def __init__(self) -> None:
        conn = ServerConnection(role="merchant", body_bytes_max=65536, in_flight_max=4096,
                                heartbeat_interval_s=60.0)
        conn.peer_identity = "M1"
        self.net = FramedProtocol(self, conn)

    def on_hello(self, event: HelloReceived) -> None:
        self.net.send_welcome(server="bench", session_id="s")

    def frame_received(self, frame: Frame) -> None:
        self.respond(frame.request_id, RESULT)


async def measure(batch: int, reads: int) -> float:
    """CPU µs per REQUEST frame."""
    proto = _Answer().net
    proto.connection_made(_Transport())  # type: ignore[arg-type]
    proto.data_received(messages.encode_message(FrameType.HELLO, {
        "versions": [1], "role": "merchant", "identity": "M1"}))
    proto.flush_now()
    rid = 1
    chunks = []
    for _ in range(reads):
        chunks.append(b"".join(encode_frame(FrameType.REQUEST, rid + i, BODY)
                               for i in range(batch)))
        rid += batch
    start_s = time.process_time()
    for data in chunks:
        proto.data_received(data)
        proto.flush_now()
    return (time.process_time() - start_s) / (reads * batch) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.adapter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="REQUEST frames per read")
    parser.add_argument("--reads", type=int, default=20_000)
    opts = parser.parse_args(argv)
    us = asyncio.run(measure(opts.batch, opts.reads))
    print(f"{us:.2f} us CPU per REQUEST frame (reads of {opts.batch}, answered, "
          "one gathered write per read)")


if __name__ == "__main__":
    main()
