"""A TLS connection that speaks frames by hand, for tests of misbehaving peers."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from gateway.client import client_ssl_context
from protocol import messages
from protocol.decoder import FrameDecoder
from protocol.errors import ErrorCode
from protocol.frame import Frame, FrameType
from tests.deploy import Deployment


class Raw:
    """A TLS connection that speaks frames by hand (and can misbehave)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(1 << 20)
        self.frames: list[Frame] = []

    @classmethod
    async def open(cls, dep: Deployment, merchant: str = "M1", *, tls: bool = True) -> Raw:
        ctx: ssl.SSLContext | None = client_ssl_context(dep.certs, merchant) if tls else None
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", dep.port, ssl=ctx, server_hostname="127.0.0.1" if tls else None)
        return cls(reader, writer)

    @classmethod
    async def open_bank(cls, dep: Deployment, bank: str = "bca", node: int = 0) -> Raw:
        """A connection to a bank node with the hub's certificate (the hub's side of a link)."""
        from gateway.tls import node_client_context

        return await cls.connect(dep.banks[bank][node].port,
                                 node_client_context(dep.certs, "hub", "hub"))

    async def hello_as_hub(self) -> dict[str, Any]:
        self.send(messages.encode_message(FrameType.HELLO, {
            "versions": [1], "role": "hub", "identity": "hub"}))
        welcome = await self.next_frame()
        assert welcome.type == FrameType.WELCOME
        return messages.decode_body(FrameType.WELCOME, welcome.body)

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext) -> Raw:
        """A TLS connection to any node (e.g. a bank node with a hub certificate)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname="127.0.0.1")
        return cls(reader, writer)

    async def hello(self, merchant: str = "M1") -> dict[str, Any]:
        self.send(messages.encode_message(FrameType.HELLO, {
            "versions": [1], "role": "merchant", "identity": merchant}))
        welcome = await self.next_frame()
        assert welcome.type == FrameType.WELCOME
        return messages.decode_body(FrameType.WELCOME, welcome.body)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def next_frame(self, timeout_s: float = 30.0) -> Frame:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), timeout_s)
            if not data:
                raise EOFError
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    async def error_then_close(self, timeout_s: float = 30.0) -> ErrorCode:
        """The documented outcome of a fatal error: an ERROR frame, then the end."""
        return (await self.error_body_then_close(timeout_s))[0]

    async def error_body_then_close(self, timeout_s: float = 5.0
                                    ) -> tuple[ErrorCode, dict[str, Any]]:
        """As ``error_then_close``, with the ERROR frame's whole body."""
        frame = await self.next_frame(timeout_s)
        assert frame.type == FrameType.ERROR, frame
        body = messages.decode_body(FrameType.ERROR, frame.body)
        assert await self.closed(timeout_s)
        return ErrorCode(body["code"]), body

    async def closed(self, timeout_s: float = 30.0) -> bool:
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout_s):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
        return True

    def close(self) -> None:
        self.writer.close()
