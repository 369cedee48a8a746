"""A hub's health and readiness endpoint: a tiny HTTP/1.x server a load balancer probes.

    GET /healthz  200 while the process runs and its event loop answers (liveness)
    GET /readyz   200 only once recovery has run, the ledger is open and the merchant
                  listener accepts; 503 before, and from the moment shutdown starts
                  (GOAWAY, drain), so a balancer stops sending new connections first

It listens on its own port (``health_listen``), in plain HTTP: a probe carries nothing
secret and answers only a state word, the node id and the pid. Bind it to an address only
the balancer reaches. Other paths can be added with ``add_route`` (``/metrics``): each is a
function returning a ``Reply``, called on the loop, which must not block; or returning an
awaitable of one (a scrape that first counts the outbox off the loop), which must end
within ``ROUTE_TIMEOUT_S``.

The hub and each bank node serve one (gateway/bank/node.py: ``health_listen`` in a bank
node's config too).

Not aiohttp: the hub never imports the HTTP server stack for three fixed answers, and every
limit (head size, read deadline, connections) is here, named, and small. One request per
connection (``Connection: close``), which is what HAProxy's ``option httpchk`` and
``curl`` do anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger("paywire.health")

REQUEST_HEAD_BYTES_MAX = 8 * 1024  # request line + headers; a probe sends ~100 bytes
READ_TIMEOUT_S = 5.0  # a peer that has not sent its head by then is dropped
CONNECTIONS_MAX = 64  # probes at once; more are closed unanswered (a balancer retries)
WRITE_TIMEOUT_S = 5.0
ROUTE_TIMEOUT_S = 10.0  # an awaitable route's answer; past it, 503


class Phase(Enum):
    """Where the hub is in its life, as a balancer must see it. Only READY takes traffic."""

    STARTING = "starting"  # opening the ledger, connecting to the banks
    RECOVERING = "recovering"  # settling unanswered bank calls before serving
    READY = "ready"
    DRAINING = "draining"  # SIGTERM: GOAWAY sent, finishing in-flight requests
    STOPPED = "stopped"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


Route = Callable[[], Reply | Awaitable[Reply]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class HealthState:
    """What the endpoint reports; the hub (or bank node) moves ``phase`` along, nothing
    else writes it. A bank node has no recovery: STARTING until its books are open and its
    listener accepts, then READY."""

    def __init__(self, node_id: str,
                 details: Callable[[], dict[str, object]] | None = None) -> None:
        self.node_id = node_id
        self.phase = Phase.STARTING
        # A few live figures for an operator's curl (the hub: open merchant sessions).
        self.details = details

    def _json(self, status: int, **fields: object) -> Reply:
        body = {"status": self.phase.value, "node_id": self.node_id, "pid": os.getpid(),
                **fields}
        return Reply(status, json.dumps(body).encode() + b"\n")

    def healthz(self) -> Reply:
        # Answering at all proves the loop turns: this runs on it.
        return self._json(200, alive=True, **(self.details() if self.details else {}))

    def readyz(self) -> Reply:
        ready = self.phase is Phase.READY
        return self._json(200 if ready else 503, ready=ready)


class HealthServer:
    """The HTTP listener. Each hub process has its own (``paywire hub --workers N`` gives
    worker i the port ``health_listen`` + i: gateway/hub/workers.py), so a probe is always
    about one process."""

    def __init__(self, state: HealthState, host: str, port: int) -> None:
        self.state = state
        self.host = host
        self.port = port
        self.routes: dict[str, Route] = {"/healthz": state.healthz, "/readyz": state.readyz}
        self._server: asyncio.Server | None = None
        self._connections = 0

    def add_route(self, path: str, route: Route) -> None:
        self.routes[path] = route

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True,
            limit=REQUEST_HEAD_BYTES_MAX)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health endpoint on http://%s:%d (/healthz, /readyz)", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), WRITE_TIMEOUT_S)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= CONNECTIONS_MAX:
            writer.close()
            return
        self._connections += 1
        try:
            reply = await self._answer(reader)
            if reply is not None:
                writer.write(_http(reply))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (OSError, TimeoutError):
            pass  # the prober went away or stalled: nothing to tell it
        finally:
            self._connections -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> Reply | None:
        """The reply to one request, or ``None`` when the peer gave up before its head."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            return _plain(431, "request head too large")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None  # a TCP-only check (connect, close): no request to answer
            head = exc.partial + b"\r\n\r\n"
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _plain(400, "expected: GET /readyz HTTP/1.1")
        method, target, _ = parts
        route = self.routes.get(target.split("?", 1)[0])
        if route is None:
            return _plain(404, f"no such path; try {', '.join(sorted(self.routes))}")
        if method not in ("GET", "HEAD"):
            return _plain(405, "GET or HEAD only")
        answer = route()
        if isinstance(answer, Reply):
            reply = answer
        else:
            try:
                reply = await asyncio.wait_for(answer, ROUTE_TIMEOUT_S)
            except TimeoutError:
                return _plain(503, f"no answer within {ROUTE_TIMEOUT_S:g} s")
        return Reply(reply.status, b"", reply.content_type) if method == "HEAD" else reply


def _plain(status: int, text: str) -> Reply:
    return Reply(status, text.encode() + b"\n", "text/plain; charset=utf-8")


def _http(reply: Reply) -> bytes:
    head = (f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}\r\n"
            f"Content-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + reply.body


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) of the health listener; ``ValueError`` else."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
