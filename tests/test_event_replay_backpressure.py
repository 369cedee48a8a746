"""Issue 11 item 8: replaying events to a subscriber that does not read stays within the
per-connection buffer bound, and the subscriber still gets every seq exactly once, in order.

The hub runs in the test's process (on the bank-node processes of a real deployment), so the
test can observe its session's write buffer: gathered output plus the TLS transport's buffer,
the bytes the hub holds for that connection. The subscriber is a blocking TLS socket in a
worker thread with a small receive buffer, so the kernel soaks up little and the hub's own
buffering shows; it reads nothing until the test says so. Both event loops the project runs
on are covered (the hub process uses uvloop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gateway.client import Card, client_ssl_context, connect
from gateway.hub.server import Hub
from gateway.hub.session import MerchantSession
from protocol import body as bodycodec
from protocol import messages
from protocol.decoder import FrameDecoder
from protocol.frame import FrameType
from tests.deploy import KEYS, RICH, deployment
from tests.waiting import wait_until

EVENTS_STORED = 1000  # ~500 KB of EVENT frames: many times every allowance below
EVENTS_DURING_REPLAY = 20
BUFFER_BOUND_BYTES = 16 * 1024
SMALL_SOCKET_BUFFER_BYTES = 4096
# Below TLS the event loop's TCP transport keeps its own buffer, which the TLS transport's
# size does not include: at most its high-water mark (64 KiB in asyncio and uvloop) plus one
# write, which the bound limits. And the two kernels' socket buffers, set small here, hold a
# little more than their nominal size.
BELOW_TLS_BYTES_MAX = 64 * 1024 + BUFFER_BOUND_BYTES
KERNEL_BYTES_MAX = 64 * 1024
LARGE_SOCKET_BUFFER_BYTES = 1 << 20
WAIT_S = 60.0


def open_subscriber(port: int, certs: Path) -> ssl.SSLSocket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before connect, so the window the hub may fill stays small.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_SOCKET_BUFFER_BYTES)
    sock.settimeout(WAIT_S)
    sock.connect(("127.0.0.1", port))
    return client_ssl_context(certs, "M1").wrap_socket(sock, server_hostname="127.0.0.1")


def read_events(tls: ssl.SSLSocket, count: int) -> list[int]:
    """Read until ``count`` EVENT frames arrived; their seqs in arrival order."""
    decoder = FrameDecoder(1 << 20)
    seqs: list[int] = []
    while len(seqs) < count:
        data = tls.recv(65536)
        if not data:
            raise AssertionError(f"hub closed the stream after {len(seqs)} events")
        for frame in decoder.feed(data):
            if frame.type == FrameType.EVENT:
                seqs.append(messages.decode_body(FrameType.EVENT, frame.body)["seq"])
            else:
                assert frame.type in (FrameType.WELCOME, FrameType.PING), frame
    return seqs


async def scenario(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    with deployment(tmp_path, bca_nodes=1) as dep:
        assert dep.hub is not None and dep.hub_cfg is not None
        await loop.run_in_executor(None, dep.hub.terminate)
        cfg = dataclasses.replace(dep.hub_cfg, listen_port=0, heartbeat_interval_s=600.0,
                                  event_buffer_bytes_max=BUFFER_BOUND_BYTES)
        hub = Hub(cfg)
        await hub.start()
        tls: ssl.SSLSocket | None = None
        try:
            async with connect("127.0.0.1", hub.port, merchant_id="M1",
                               server_key=KEYS["M1"], certs_dir=dep.certs) as c:
                async def charge(i: int) -> None:
                    await c.charge(f"bp-{i}", 1_000 + i, card=Card(RICH[i % len(RICH)], 12,
                                                                   2030, "123"))

                for start in range(0, EVENTS_STORED, 50):
                    await asyncio.gather(*(charge(i) for i in range(start, start + 50)))
                assert hub.event_seq["M1"] == EVENTS_STORED

                tls = await loop.run_in_executor(None, open_subscriber, hub.port, dep.certs)
                await wait_until(lambda: any(s.cert_name == "M1" and s.merchant_id is None
                                        for s in hub.sessions), "the subscriber's session")
                session: MerchantSession = next(s for s in hub.sessions
                                                if s.merchant_id is None)
                assert session.transport is not None
                session.transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SOCKET_BUFFER_BYTES)
                hello = messages.encode_message(FrameType.HELLO, {
                    "versions": [1], "role": "merchant", "identity": "M1",
                    "subscribe_events": True, "events_since": 0})
                await loop.run_in_executor(None, tls.sendall, hello)

                def held() -> int:  # what the hub buffers for this connection now
                    if session.transport is None:
                        return 0
                    return session.event_buffered_bytes()

                samples: list[int] = []

                def stalled() -> bool:
                    samples.append(held())
                    return session.writing_paused or session.events_sent_seq >= EVENTS_STORED

                # The subscriber reads nothing: the hub fills what the kernel takes, then
                # its own buffer, and must stop there.
                await wait_until(stalled, "the hub to stop writing to the non-reader")
                # More events while the replay waits: committed, pushed later, in order.
                for i in range(EVENTS_STORED, EVENTS_STORED + EVENTS_DURING_REPLAY):
                    await charge(i)
                samples.append(held())
                # What the session and its TLS transport hold stays within the bound ...
                assert max(samples) <= BUFFER_BOUND_BYTES, max(samples)
                assert session.event_buffer_bytes_peak <= BUFFER_BOUND_BYTES
                # ... and everything it queued, of which the subscriber read nothing, fits in
                # that bound plus what lies below TLS: the history was not queued.
                sent_seq = session.events_sent_seq
                stored = await hub.ledger.events_after("M1", 0, sent_seq)
                queued = sum(len(hub.event_frame("M1", seq, bodycodec.unpack(data)))
                             for seq, data in stored)
                assert queued <= BUFFER_BOUND_BYTES + BELOW_TLS_BYTES_MAX + KERNEL_BYTES_MAX, \
                    (sent_seq, queued)
                assert session.replaying and sent_seq < EVENTS_STORED
                assert session.transport is not None and not session.transport.is_closing()

                # Now it reads: everything arrives, once each, in order, and then live ones.
                session.transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, LARGE_SOCKET_BUFFER_BYTES)
                replayed = EVENTS_STORED + EVENTS_DURING_REPLAY
                got = await loop.run_in_executor(None, read_events, tls, replayed)
                assert got == list(range(1, replayed + 1))
                await wait_until(lambda: not session.replaying, "the switch to live events")
                await charge(replayed)
                live = await loop.run_in_executor(None, read_events, tls, 1)
                assert live == [replayed + 1]
                assert session.event_buffer_bytes_peak <= BUFFER_BOUND_BYTES
        finally:
            if tls is not None:
                tls.close()
            await hub.stop()


def run(main: Callable[[], Coroutine[Any, Any, None]], loop_kind: str) -> None:
    if loop_kind == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_replay_to_a_non_reader_stays_within_the_buffer_bound_then_delivers_all(
        tmp_path: Path, loop_kind: str) -> None:
    run(lambda: scenario(tmp_path), loop_kind)
