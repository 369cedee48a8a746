"""The ceiling: a minimal uvloop TLS echo of Paywire-sized frames.

The server answers every request frame with a response frame of Paywire's response size;
``plain`` writes once per response (the ceiling the targets use), ``gathered`` writes the
responses of one read at once (the absolute limit). The client is callback-driven (no task
per request) so it measures the server, not itself.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ssl
import time
from pathlib import Path

from bench.histogram import Histogram
from protocol.decoder import FrameDecoder
from protocol.frame import FrameType, encode_frame

REQUEST_BODY_BYTES = 250  # a signed charge request body, as the worked example
RESPONSE_BODY_BYTES = 420  # a transaction result body


class EchoServer(asyncio.Protocol):
    def __init__(self, gathered: bool) -> None:
        self.gathered = gathered
        self.decoder = FrameDecoder(1 << 20)
        self.response_body = b"r" * RESPONSE_BODY_BYTES
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        frames = self.decoder.feed(data)
        out = [encode_frame(FrameType.RESPONSE, f.request_id, self.response_body)
               for f in frames]
        if self.gathered:
            self.transport.write(b"".join(out))
        else:
            for chunk in out:
                self.transport.write(chunk)


class EchoClient(asyncio.Protocol):
    """Keeps ``window`` requests in flight until ``stop_at``; records each round trip."""

    def __init__(self, window: int, stop_at: float, hist: Histogram,
                 done: asyncio.Future[None]) -> None:
        self.window = window
        self.stop_at = stop_at
        self.hist = hist
        self.done = done
        self.decoder = FrameDecoder(1 << 20)
        self.body = b"q" * REQUEST_BODY_BYTES
        self.sent: dict[int, float] = {}
        self.next_id = 1
        self.completed = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send(self.window)

    def _send(self, n: int) -> None:
        assert self.transport is not None
        now = time.perf_counter()
        out = []
        for _ in range(n):
            rid = self.next_id
            self.next_id += 1
            self.sent[rid] = now
            out.append(encode_frame(FrameType.REQUEST, rid, self.body))
        self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        frames = self.decoder.feed(data)
        for f in frames:
            self.hist.record((now - self.sent.pop(f.request_id)) * 1e6)
        self.completed += len(frames)
        if now < self.stop_at:
            self._send(len(frames))
        elif not self.sent and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def serve(certs: Path, gathered: bool, port_file: Path) -> None:
    from gateway import tls

    ctx = tls.node_server_context(certs, "hub", "hub")
    server = await asyncio.get_running_loop().create_server(
        lambda: EchoServer(gathered), "127.0.0.1", 0, ssl=ctx)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    await asyncio.Event().wait()


async def run_client(port: int, ctx: ssl.SSLContext, connections: int, window: int,
                     duration_s: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    hist = Histogram()
    stop_at = time.perf_counter() + duration_s
    protos = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(
            functools.partial(EchoClient, window, stop_at, hist, done), "127.0.0.1", port,
            ssl=ctx, server_hostname="127.0.0.1")
        protos.append(proto)
    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(p.done for p in protos)), duration_s + 30)
    elapsed = time.perf_counter() - start
    total = sum(p.completed for p in protos)
    for p in protos:
        if p.transport is not None:
            p.transport.close()
    return {"ok": total, "duration_s": round(elapsed, 3),
            "throughput_per_s": round(total / elapsed, 1), "latency_ms": hist.summary_ms(),
            "histogram": hist.to_dict(), "errors": {}}


def main() -> None:
    import uvloop

    p = argparse.ArgumentParser()
    p.add_argument("--certs", required=True)
    p.add_argument("--gathered", action="store_true")
    p.add_argument("--port-file", required=True)
    ns = p.parse_args()
    uvloop.run(serve(Path(ns.certs), ns.gathered, Path(ns.port_file)))


if __name__ == "__main__":
    main()
