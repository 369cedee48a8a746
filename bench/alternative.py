"""The alternative: the same business path behind an HTTPS + JSON API, as gateways offer.

Each request: TLS (server certificate), HTTP/1.1 keep-alive, a JSON body, an HMAC over the
body and headers checked against the merchant key with a timestamp window and nonce check,
the same argument validation, and the hub's own transaction service (idempotent ledger
write with group commit, call to a bank node over the bank link, committed result). Only
the merchant-facing protocol differs from Paywire's.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import ssl
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import tls
from gateway.config import HubConfig, load
from gateway.hub.server import Hub
from gateway.transactions.model import now_us
from protocol.errors import ErrorCode, PaywireError
from protocol.operations import parse_operation, validate_args
from protocol.signing import hmac_sha256


def sign(key: bytes, merchant: str, ts_ms: int, nonce: str, op: str, body: bytes) -> str:
    # The same HMAC code as Paywire's signatures, so only the protocol differs.
    return hmac_sha256(key, f"{merchant}\n{ts_ms}\n{nonce}\n{op}\n".encode() + body).hex()


_HTTP_STATUS = {ErrorCode.NOT_FOUND: 404, ErrorCode.DUPLICATE_ORDER: 409,
                ErrorCode.RATE_LIMITED: 429, ErrorCode.BAD_SIGNATURE: 401,
                ErrorCode.UNAUTHENTICATED: 401, ErrorCode.STALE_TIMESTAMP: 401,
                ErrorCode.REPLAYED: 401, ErrorCode.BANK_UNAVAILABLE: 503,
                ErrorCode.OUTCOME_UNKNOWN: 503, ErrorCode.INTERNAL: 500}


class HttpGateway:
    def __init__(self, cfg: HubConfig) -> None:
        self.hub = Hub(cfg)
        self.keys = {m.id: m.server_key.encode() for m in cfg.merchants}
        self.nonces: set[str] = set()

    async def start(self) -> None:
        await self.hub.ledger.start()
        for pool in self.hub.pools.values():
            pool.start()
        await asyncio.gather(*(p.wait_ready(5.0) for p in self.hub.pools.values()))

    async def handle(self, request: web.Request) -> web.Response:
        received = now_us()
        body = await request.read()
        try:
            merchant = request.headers["X-Merchant-Id"]
            ts_ms = int(request.headers["X-Timestamp"])
            nonce = request.headers["X-Nonce"]
            op_name = request.match_info["op"]
            key = self.keys.get(merchant)
            if key is None:
                raise PaywireError("unknown merchant", code=ErrorCode.UNAUTHENTICATED)
            if abs(time.time() * 1000 - ts_ms) > 300_000:
                raise PaywireError("stale timestamp", code=ErrorCode.STALE_TIMESTAMP)
            expected = sign(key, merchant, ts_ms, nonce, op_name, body)
            if not hmac.compare_digest(expected, request.headers.get("X-Signature", "")):
                raise PaywireError("bad signature", code=ErrorCode.BAD_SIGNATURE)
            if nonce in self.nonces:
                raise PaywireError("replayed", code=ErrorCode.REPLAYED)
            self.nonces.add(nonce)
            op = parse_operation(op_name)
            args = validate_args(op, json.loads(body))
            result, _ = await self.hub.service.execute(merchant, op, args, received)
            return web.json_response(result)
        except PaywireError as exc:
            return web.json_response(exc.to_body(), status=_HTTP_STATUS.get(exc.code, 400))
        except (KeyError, ValueError) as exc:
            return web.json_response({"code": 200, "message": str(exc)}, status=400)


async def serve(config: Path, port_file: Path) -> None:
    cfg = load(HubConfig, config)
    gw = HttpGateway(cfg)
    await gw.start()
    app = web.Application()
    app.router.add_post("/v2/{op}", gw.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = tls.node_server_context(cfg.certs_dir, "hub", cfg.node_id)
    ctx.verify_mode = ssl.CERT_NONE  # server TLS + signed requests, like HTTPS APIs
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx, backlog=1024)
    await site.start()
    port_file.write_text(str(site._server.sockets[0].getsockname()[1]))  # type: ignore[union-attr]
    await asyncio.Event().wait()


class HttpClient:
    """Keep-alive pooled HTTPS client for the alternative, one operation per call."""

    def __init__(self, port: int, merchant: str, key: str, certs: Path,
                 connections: int) -> None:
        import aiohttp

        ctx = tls.client_context(certs / "ca.crt")
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, ssl=ctx))
        self.url = f"https://127.0.0.1:{port}/v2/"
        self.merchant = merchant
        self.key = key.encode()

    async def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(args, separators=(",", ":")).encode()
        ts = int(time.time() * 1000)
        nonce = os.urandom(12).hex()
        headers = {"Content-Type": "application/json", "X-Merchant-Id": self.merchant,
                   "X-Timestamp": str(ts), "X-Nonce": nonce,
                   "X-Signature": sign(self.key, self.merchant, ts, nonce, op, body)}
        async with self.session.post(self.url + op, data=body, headers=headers) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise PaywireError(data.get("message", "error"),
                                   code=ErrorCode(data.get("code", 900)))
            return data

    async def close(self) -> None:
        await self.session.close()


def main() -> None:
    import uvloop

    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--port-file", required=True)
    ns = p.parse_args()
    uvloop.run(serve(Path(ns.config), Path(ns.port_file)))


if __name__ == "__main__":
    main()
