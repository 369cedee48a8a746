"""A real HTTPS webhook receiver for tests: verifies every delivery as a merchant would.

It serves a certificate from its own throwaway CA (not the deployment's), as a merchant's
endpoint would; the hub trusts that CA through ``webhooks.ca_file``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config import WebhookConfig
from protocol.signing import verify_webhook_signature


def receiver_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A new CA and a server certificate for 127.0.0.1/localhost signed by it, written to
    ``directory``: the server context, and the CA file a client must trust."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Webhook receiver test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "receiver")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = (directory / "ca.crt", directory / "receiver.crt",
                                    directory / "receiver.key")
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx, ca_file

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
    def __init__(self, keys: dict[str, str], tls_dir: Path) -> None:
        self.keys = keys
        self.ssl_ctx, self.ca_file = receiver_tls(tls_dir)
        self.deliveries: list[Delivery] = []
        self.behaviour: dict[str, Behaviour] = {}
        self.arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, merchant: str) -> str:
        return f"https://127.0.0.1:{self.port}/hooks/{merchant}"

    def trusted(self, hooks: WebhookConfig) -> WebhookConfig:
        """``hooks`` with this receiver's CA trusted."""
        return dataclasses.replace(hooks, ca_file=self.ca_file)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks/{merchant}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_ctx)
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
