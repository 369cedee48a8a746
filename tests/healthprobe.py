"""A plain HTTP/1.1 GET against a hub's health endpoint (gateway/health.py), as a load
balancer's probe sends it: one request per connection."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

PROBE_TIMEOUT_S = 10.0


async def probe(port: int, path: str = "/readyz", *, method: str = "GET",
                raw: bytes | None = None) -> tuple[int, dict[str, Any] | str]:
    """(status, JSON body or text); ``(0, reason)`` when nothing answers."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        return 0, repr(exc)
    try:
        writer.write(raw if raw is not None else
                     f"{method} {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        return 0, repr(exc)
    finally:
        writer.close()
    if not data:
        return 0, "closed without an answer"
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
