"""The hub respects a bank node's WELCOME ``in_flight_max`` (docs/protocol.md §3.4, §10.4):
it never has more frames unanswered on one link than the node announced; calls past the
bound wait in the link (their timeouts running) and leave as soon as an answer frees a frame.

A bank node of our own (a real TLS server with the genuine ``bca-1`` certificate, on the
test's loop) announces ``in_flight_max`` 2 and holds its answers until the test releases
them, so the frames the hub has outstanding are exactly those the node has received."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import pki, tls
from gateway.hub.banklink import BankLink, BankPool
from gateway.transactions.model import now_ms
from protocol import banklink, messages
from protocol.decoder import FrameDecoder
from protocol.errors import PaywireError
from protocol.frame import FrameType
from tests.waiting import wait_until

WAIT_S = 30.0
IN_FLIGHT_MAX = 2


class HoldingNode:
    """Announces ``IN_FLIGHT_MAX``; records each REQUEST and answers it only on ``release``."""

    def __init__(self) -> None:
        self.held: list[int] = []  # request ids received, not answered yet
        self.received: list[int] = []
        self.most_held = 0
        self.writer: asyncio.StreamWriter | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        decoder = FrameDecoder(1 << 20)
        try:
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    if frame.type == FrameType.HELLO:
                        writer.write(messages.encode_message(FrameType.WELCOME, {
                            "version": 1, "server": "paywire-bank/bca-1",
                            "session_id": "holding", "body_bytes_max": 65536,
                            "in_flight_max": IN_FLIGHT_MAX,
                            "heartbeat_interval_ms": 3_600_000, "resume_token": b"",
                            "event_seq": 0, "server_time_ms": now_ms()}))
                    elif frame.type == FrameType.REQUEST:
                        self.received.append(frame.request_id)
                        self.held.append(frame.request_id)
                        self.most_held = max(self.most_held, len(self.held))
        except (ConnectionError, OSError, PaywireError):
            pass
        finally:
            writer.close()

    def release(self) -> None:
        """Answer the oldest held request (``ok``, as a capture is answered)."""
        assert self.writer is not None
        rid = self.held.pop(0)
        self.writer.write(messages.encode_response(rid, {"ok": True}))


@pytest.fixture
async def node_and_link(tmp_path: Path) -> AsyncIterator[tuple[HoldingNode, BankLink]]:
    certs = tmp_path / "certs"
    pki.init(certs, merchants=["M1"], banks=["bca-1"])
    node = HoldingNode()
    server = await asyncio.start_server(node.serve, "127.0.0.1", 0,
                                        ssl=tls.node_server_context(certs, "bank", "bca-1"))
    port = server.sockets[0].getsockname()[1]
    pool = BankPool("bca", [f"bca-1@127.0.0.1:{port}"], hub_id="hub", key=b"k" * 32,
                    ssl_ctx=tls.node_client_context(certs, "hub", "hub"),
                    on_bank_request=lambda link, frame: None, timeout_s=WAIT_S,
                    attempts_max=1)
    pool.start()
    try:
        assert await pool.wait_ready(WAIT_S), "the pool's link to the holding node"
        link = pool.nodes[0].link
        assert link is not None
        yield node, link
    finally:
        await pool.stop()
        server.close()
        if node.writer is not None:
            node.writer.transport.abort()


def capture(n: int) -> dict[str, Any]:
    return {"op_id": f"t-{n}:capture", "transaction_id": f"t-{n}", "amount": 1_000}


async def test_no_more_frames_in_flight_than_the_node_announced(
        node_and_link: tuple[HoldingNode, BankLink]) -> None:
    node, link = node_and_link
    futures = []
    for n in range(IN_FLIGHT_MAX):  # one frame each: the node has each before the next
        futures.append(link.call(banklink.CAPTURE, capture(n), WAIT_S))
        await wait_until(lambda n=n: len(node.received) == n + 1, f"frame {n + 1} at the node")
    futures.append(link.call(banklink.CAPTURE, capture(IN_FLIGHT_MAX), WAIT_S))
    await asyncio.sleep(0)  # a yield, not a wait: a send scheduled now has run by its end
    assert link.frames_sent == IN_FLIGHT_MAX, "a frame past the node's in_flight_max was sent"
    node.release()  # an answer frees a frame: the held call leaves
    await wait_until(lambda: len(node.received) == IN_FLIGHT_MAX + 1, "the held call's frame")
    while node.held:
        node.release()
    answers = await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    assert [a["ok"] for a in answers] == [True] * (IN_FLIGHT_MAX + 1)
    assert node.most_held <= IN_FLIGHT_MAX
