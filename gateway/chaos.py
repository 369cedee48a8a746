"""``paywire chaos``: a TCP proxy that injects faults between any two nodes.

It forwards bytes untouched (TLS passes through: it cannot read or alter the content, only
delay, slice, starve, cut or swallow it), which is exactly what a network can do. Faults are
set per direction: ``up`` is client → server, ``down`` server → client. Switch them at run
time from Python (``proxy.set("down", drop_after_bytes=0)``) or over the control port:

    curl -X POST localhost:9001/faults -d '{"direction": "both", "latency_ms": 50}'
    curl -X POST localhost:9001/heal
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("paywire.chaos")

READ_BYTES_MAX = 64 * 1024
QUEUED_CHUNKS_MAX = 1024


@dataclass
class Faults:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_bytes_per_s: int = 0  # 0: unlimited
    slice_bytes_max: int = 0  # 0: forward reads whole; n: pieces of 1..n bytes
    drop_after_bytes: int = -1  # -1: never; n: cut the connection after n more bytes
    blackhole: bool = False  # swallow everything, keep the connection open
    reset: bool = False  # reset connections as soon as data flows this way


DIRECTIONS = ("up", "down")


class _Pipe:
    """One direction of one proxied connection, keeping byte order under every fault."""

    def __init__(self, proxy: ChaosProxy, direction: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, conn: _Conn) -> None:
        self.proxy = proxy
        self.direction = direction
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUED_CHUNKS_MAX)
        self.forwarded = 0

    @property
    def faults(self) -> Faults:
        return self.proxy.faults[self.direction]

    async def read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(READ_BYTES_MAX)
                if not data:
                    break
                f = self.faults
                if f.reset:
                    self.conn.reset()
                    return
                if f.blackhole:
                    self.proxy.swallowed[self.direction] += 1
                    continue
                delay_s = max(0.0, f.latency_ms + self.proxy.rng.uniform(
                    -f.jitter_ms, f.jitter_ms)) / 1000
                await self.queue.put((time.monotonic() + delay_s, data))
        except (ConnectionError, OSError):
            pass
        finally:
            await self.queue.put(None)

    async def write_loop(self) -> None:
        try:
            while True:
                item = await self.queue.get()
                if item is None:
                    break
                due, data = item
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                f = self.faults
                if f.drop_after_bytes >= 0:
                    room = f.drop_after_bytes - self.forwarded
                    if room <= len(data):
                        if room > 0:
                            self.writer.write(data[:room])
                            await self.writer.drain()
                        self.proxy.cuts += 1
                        self.conn.close()
                        return
                for piece in self._pieces(data, f.slice_bytes_max):
                    self.writer.write(piece)
                    await self.writer.drain()
                    self.forwarded += len(piece)
                    if f.bandwidth_bytes_per_s:
                        await asyncio.sleep(len(piece) / f.bandwidth_bytes_per_s)
        except (ConnectionError, OSError):
            pass
        finally:
            self.conn.half_close(self.writer)

    def _pieces(self, data: bytes, slice_max: int) -> list[bytes]:
        if slice_max <= 0:
            return [data]
        out, pos = [], 0
        while pos < len(data):
            n = self.proxy.rng.randint(1, slice_max)
            out.append(data[pos:pos + n])
            pos += n
        return out


class _Conn:
    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.closed = False

    def half_close(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()

    def close(self) -> None:
        self.closed = True
        for w in (self.client, self.server):
            with contextlib.suppress(OSError, RuntimeError):
                w.close()

    def reset(self) -> None:
        """Abort with RST (SO_LINGER 0), as a crashed peer or a middlebox would."""
        self.closed = True
        for w in (self.client, self.server):
            sock = w.get_extra_info("socket")
            with contextlib.suppress(OSError):
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()


class ChaosProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0, seed: int = 0) -> None:
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        self.rng = random.Random(seed)
        self.faults = {d: Faults() for d in DIRECTIONS}
        self.conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = listen_port
        self.accepted = 0
        # Connections cut by ``drop_after_bytes``: what a test waits on ("the answer was
        # cut") instead of sleeping.
        self.cuts = 0
        # Reads swallowed by ``blackhole``, per direction (``up``: what the client sent).
        self.swallowed = {d: 0 for d in DIRECTIONS}

    async def start(self) -> ChaosProxy:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def set(self, direction: str, **faults: Any) -> None:
        """Change faults now; ``direction`` is ``up``, ``down`` or ``both``."""
        for d in DIRECTIONS if direction == "both" else (direction,):
            self.faults[d] = dataclasses.replace(self.faults[d], **faults)

    def heal(self) -> None:
        self.faults = {d: Faults() for d in DIRECTIONS}

    def reset_all(self) -> None:
        for conn in list(self.conns):
            conn.reset()

    async def _accept(self, c_reader: asyncio.StreamReader,
                      c_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        for w in (c_writer, s_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(c_writer, s_writer)
        self.conns.add(conn)
        pipes = [_Pipe(self, "up", c_reader, s_writer, conn),
                 _Pipe(self, "down", s_reader, c_writer, conn)]
        tasks = [asyncio.ensure_future(coro) for p in pipes
                 for coro in (p.read_loop(), p.write_loop())]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)
            self.conns.discard(conn)
            conn.close()


async def serve_control(proxy: ChaosProxy, host: str, port: int) -> Any:
    """A small HTTP API for labs: GET/POST /faults, POST /heal, POST /reset."""
    from aiohttp import web

    async def get_faults(_: web.Request) -> web.Response:
        return web.json_response({d: dataclasses.asdict(f) for d, f in proxy.faults.items()})

    async def post_faults(request: web.Request) -> web.Response:
        body = await request.json()
        direction = body.pop("direction", "both")
        try:
            proxy.set(direction, **body)
        except (TypeError, KeyError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return await get_faults(request)

    async def heal(request: web.Request) -> web.Response:
        proxy.heal()
        return await get_faults(request)

    async def reset(_: web.Request) -> web.Response:
        proxy.reset_all()
        return web.json_response({"reset": True})

    app = web.Application()
    app.router.add_get("/faults", get_faults)
    app.router.add_post("/faults", post_faults)
    app.router.add_post("/heal", heal)
    app.router.add_post("/reset", reset)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def run_cli(listen: str, target: str, control: str | None, faults: dict[str, Any],
                  seed: int) -> None:
    lh, _, lp = listen.rpartition(":")
    th, _, tp = target.rpartition(":")
    proxy = await ChaosProxy(th, int(tp), listen_host=lh or "127.0.0.1", listen_port=int(lp),
                             seed=seed).start()
    if faults:
        proxy.set(faults.pop("direction", "both"), **faults)
    runner = None
    if control:
        ch, _, cp = control.rpartition(":")
        runner = await serve_control(proxy, ch or "127.0.0.1", int(cp))
    print(json.dumps({"listening": proxy.port, "target": target, "control": control}),
          flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.stop()
        if runner is not None:
            await runner.cleanup()
