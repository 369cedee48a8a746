"""Closing is bounded (docs/protocol.md §2.4): after the adapter closes a connection, a peer
that never completes the TLS close (gone, or behind a black hole) holds it at most
``CLOSE_GRACE_S``; then the TCP connection is dropped.

Before this bound, asyncio's own (30 s) applied: a bank link declared dead by its heartbeat
stayed neither up nor reconnecting that long. Here the peer is a real TLS client that
stops reading after its first bytes, so it never answers the adapter's ``close_notify``.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from pathlib import Path

import pytest

from gateway.net.framed import CLOSE_GRACE_S, FramedProtocol, FrameHandler
from gateway.tls import node_client_context, node_server_context
from protocol.connection import ServerConnection
from tests.waiting import wait_until


class Server(FrameHandler):
    def __init__(self, opened: list[FramedProtocol]) -> None:
        conn = ServerConnection(role="merchant", body_bytes_max=1 << 16, in_flight_max=16,
                                heartbeat_interval_s=60.0)
        self.net = FramedProtocol(self, conn)
        opened.append(self.net)


async def test_a_peer_that_never_completes_the_close_is_dropped_after_the_grace(
        certs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="paywire")
    loop = asyncio.get_running_loop()
    opened: list[FramedProtocol] = []
    server = await loop.create_server(lambda: Server(opened).net, "127.0.0.1", 0,
                                      ssl=node_server_context(certs_dir, "hub", "hub"))
    port = server.sockets[0].getsockname()[1]
    writer = None
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=node_client_context(certs_dir, "merchant", "M1"),
            server_hostname="127.0.0.1")
        # Not a frame: the server sends an ERROR frame and closes; this peer has
        # stopped reading by then, so the server's close_notify is never answered.
        typing.cast(asyncio.Transport, writer.transport).pause_reading()
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        await writer.drain()
        await wait_until(lambda: opened, "the connection")
        net = opened[0]
        await wait_until(lambda: net.closed.done(), "the server to let the connection go",
                         timeout_s=CLOSE_GRACE_S + 60)
        # It went by the bound, not by asyncio's 30 s (which would not log this line).
        assert any("its close did not end within" in r.getMessage() for r in caplog.records)
    finally:
        if writer is not None:
            writer.transport.abort()
        server.close()
        await server.wait_closed()
