"""The webhook receiver printed in the README works against what the hub really sends: it
uses ``construct_event`` and refuses forged, edited, stale, future and replayed posts."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.webhooks.payload import notification_body
from protocol.signing import signature_key, webhook_signature_header

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_receiver_app() -> web.Application:
    text = README.read_text()
    assert "construct_event" in text
    block = re.search(r"A complete receiver.*?```python\n(.*?)```", text, re.S)
    assert block is not None
    captured: dict[str, Any] = {}
    namespace: dict[str, Any] = {}
    code = block.group(1).replace("web.run_app(", "_capture(")
    namespace["_capture"] = lambda app, **_: captured.setdefault("app", app)
    exec(compile(code, "README.md", "exec"), namespace)
    return captured["app"]  # type: ignore[no-any-return]


async def test_readme_receiver_accepts_genuine_and_refuses_forged() -> None:
    key = "SB-Mid-server-demo-key"
    result = {"transaction_id": "t1", "order_id": "o1", "merchant_id": "M1",
              "status_code": "200", "status_message": "ok", "gross_amount": 150000,
              "currency": "IDR", "payment_type": "credit_card",
              "transaction_status": "capture", "fraud_status": "accept",
              "transaction_time": "2026-11-24 16:05:00.123"}
    body = notification_body(result, key, 7)
    runner = web.AppRunner(readme_receiver_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/paywire"
    try:
        async with aiohttp.ClientSession() as http:
            async def post(data: bytes, header: str) -> int:
                async with http.post(url, data=data,
                                     headers={"X-Paywire-Signature": header}) as resp:
                    return resp.status

            now = int(time.time())
            assert await post(body, webhook_signature_header(key.encode(), now, body)) == 200
            # A capture edited into a refund keeps a valid signature_key (it does not cover
            # transaction_status): only the HMAC over the exact body catches it.
            as_refund = body.replace(b'"transaction_status":"capture"',
                                     b'"transaction_status":"refund"')
            assert as_refund != body
            edited = json.loads(as_refund)
            assert edited["signature_key"] == signature_key(
                edited["order_id"], edited["status_code"], edited["gross_amount"], key)
            assert await post(as_refund, webhook_signature_header(key.encode(), now, body)) \
                == 401
            forged = body.replace(b"capture", b"settled")
            assert await post(forged, webhook_signature_header(key.encode(), now, body)) == 401
            assert await post(body, webhook_signature_header(b"wrong", now, body)) == 401
            stale = webhook_signature_header(key.encode(), now - 3600, body)
            assert await post(body, stale) == 401
            future = webhook_signature_header(key.encode(), now + 3600, body)
            assert await post(body, future) == 401
            # The genuine delivery posted again, header and all: a replay.
            assert await post(body, webhook_signature_header(key.encode(), now, body)) \
                == 401
            # The hub's own redelivery is signed anew: accepted (deduplicated by event_id).
            assert await post(body, webhook_signature_header(key.encode(), now + 1, body)) \
                == 200
    finally:
        await runner.cleanup()
