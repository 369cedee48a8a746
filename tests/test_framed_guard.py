"""The adapter's last line (issue 11, item 1): an exception escaping one frame's handling fails
that request (or, for another frame, the connection, with an ERROR frame) and is logged
briefly; answers gathered for earlier requests on the connection are still delivered.

The hub and the bank node have no known path left that raises (tests/test_hostile_peers.py,
tests/test_preauth_properties.py); this server raises on purpose, over a real socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from gateway.net import framed
from gateway.net.framed import FramedProtocol, FrameHandler
from protocol import body as bodycodec
from protocol import messages
from protocol.connection import HelloReceived, ServerConnection
from protocol.decoder import FrameDecoder
from protocol.errors import ErrorCode
from protocol.frame import Flags, Frame, FrameType, encode_frame

BOOM = 13  # the request id whose handling raises


class Fragile(FrameHandler):
    """A handler held by the one adapter, as the hub's and bank's are (no TLS here: the
    peer's identity is fixed)."""

    def __init__(self) -> None:
        conn = ServerConnection(role="merchant", body_bytes_max=1 << 16, in_flight_max=256,
                                heartbeat_interval_s=60.0)
        conn.peer_identity = "T1"
        self.net = FramedProtocol(self, conn)

    def on_hello(self, event: HelloReceived) -> None:
        if event.hello.body.get("client") == "boom":
            raise KeyError("a bug in the HELLO handler")
        self.net.send_welcome(server="fragile", session_id="s1")

    def frame_received(self, frame: Frame) -> None:
        if frame.request_id == BOOM:
            raise TypeError("a bug in the request handler")
        self.respond(frame.request_id, {"ok": frame.request_id})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(
        lambda: Fragile().net, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def frames(reader: asyncio.StreamReader, count: int) -> list[Frame]:
    decoder = FrameDecoder(1 << 16)
    got: list[Frame] = []
    while len(got) < count:
        data = await asyncio.wait_for(reader.read(65536), 5)
        if not data:
            break
        got += decoder.feed(data)
    return got


def request(rid: int) -> bytes:
    return encode_frame(FrameType.REQUEST, rid, bodycodec.pack({}))


def hello(client: str = "test") -> bytes:
    return messages.encode_message(FrameType.HELLO, {
        "versions": [1], "role": "merchant", "identity": "T1", "client": client})


async def test_a_request_whose_handling_raises_fails_alone(
        port: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framed, "_unexpected_tracebacks", 0)
    caplog.set_level(logging.INFO, "paywire.net")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rounds = 20
    # One write: answers to 1 and 2 are gathered in the same flush as the failure's.
    writer.write(hello() + request(1) + request(2) + request(BOOM) + request(3)
                 + b"".join(request(BOOM) for _ in range(rounds)) + request(4))
    got = await frames(reader, 6 + rounds)
    assert (got[0].type, got[0].request_id) == (FrameType.WELCOME, 0)
    got = got[1:]
    assert [(f.type, f.request_id) for f in got] == (
        [(FrameType.RESPONSE, r) for r in (1, 2, BOOM, 3)]
        + [(FrameType.RESPONSE, BOOM)] * rounds + [(FrameType.RESPONSE, 4)])
    for f in got:
        body = bodycodec.unpack(f.body)
        if f.request_id == BOOM:
            assert f.flags == Flags.ERROR and body["code"] == ErrorCode.INTERNAL
        else:
            assert f.flags == 0 and body == {"ok": f.request_id}
    writer.write(request(5))  # the connection is still usable
    (later,) = await frames(reader, 1)
    assert bodycodec.unpack(later.body) == {"ok": 5}
    # Logged briefly: one traceback for the process, then one line per connection.
    records = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is not None
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello() + request(BOOM) + request(BOOM) + request(1))
    assert [f.request_id for f in await frames(reader, 4)] == [0, BOOM, BOOM, 1]
    records = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(records) == 2 and records[1].exc_info is None  # a new connection: one line
    writer.close()


async def test_another_frame_whose_handling_raises_closes_with_an_error_frame(
        port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello("boom"))
    got = await frames(reader, 2)
    assert len(got) == 1 and got[0].type == FrameType.ERROR
    body = messages.decode_body(FrameType.ERROR, got[0].body)
    assert body["code"] == ErrorCode.INTERNAL and "HELLO" in body["message"]
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed
    writer.close()
