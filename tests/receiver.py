"""A real HTTP webhook receiver for tests: verifies every delivery as a merchant would."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from protocol.signing import verify_webhook_signature

Behaviour = Callable[[str, dict[str, Any], int], Awaitable[int]]


@dataclass
class Delivery:
    merchant: str
    event_id: str
    body: dict[str, Any]
    raw: bytes
    header: str
    attempt: int
    arrived_s: float
    status: int
    hmac_ok: bool
    signature_key_ok: bool


async def always_ok(merchant: str, body: dict[str, Any], attempt: int) -> int:
    return 200


class Receiver:
    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys
        self.deliveries: list[Delivery] = []
        self.behaviour: dict[str, Behaviour] = {}
        self.arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, merchant: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{merchant}"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks/{merchant}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        merchant = request.match_info["merchant"]
        raw = await request.read()
        body = json.loads(raw)
        header = request.headers.get("X-Paywire-Signature", "")
        key = self.keys[merchant]
        hmac_ok = verify_webhook_signature(key.encode(), header, raw, int(time.time()))
        by_hand = hashlib.sha512((body["order_id"] + body["status_code"] + body["gross_amount"]
                                  + key).encode()).hexdigest()
        attempt = int(request.headers.get("X-Paywire-Attempt", "0"))
        status = await self.behaviour.get(merchant, always_ok)(merchant, body, attempt)
        async with self.arrived:
            self.deliveries.append(Delivery(merchant, body["event_id"], body, raw, header,
                                            attempt, time.monotonic(), status, hmac_ok,
                                            body["signature_key"] == by_hand))
            self.arrived.notify_all()
        return web.Response(status=status)

    def delivered(self, merchant: str | None = None) -> list[Delivery]:
        return [d for d in self.deliveries if 200 <= d.status < 300
                and (merchant is None or d.merchant == merchant)]

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 60.0) -> bool:
        async with self.arrived:
            try:
                await asyncio.wait_for(self.arrived.wait_for(predicate), timeout_s)
            except TimeoutError:
                return predicate()
        return True
