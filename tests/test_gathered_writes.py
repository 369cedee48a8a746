"""The client library and the load generator gather their writes (issue 12, item 6).

Requests issued in one loop iteration leave in one socket write: one TLS record, where one
write per request would cost a record and a send system call each (DESIGN §8). Counted on
the wire, by a TCP relay between the client and a real hub that parses the TLS record
headers of what the client sends (the payload stays encrypted), so the check holds whatever
the client's internals look like.

The requests are ones the hub refuses at admission (a ``status`` without ``order_id``): it
answers them in the same step as it reads them, so each burst of requests comes back in one
record too and the load generator's workers all wake in one loop iteration. The hub's
heartbeat is slowed so that no PING/PONG adds a record during the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bench.loadgen import closed_loop
from gateway.client import RequestError, connect
from tests.deploy import KEYS, deployment

TLS_RECORD_HEADER_BYTES = 5
BURST = 32  # requests of ~250 bytes each: well within one 16 KiB TLS record
ROUNDS = 20


class RecordCounter:
    """Counts the TLS records a client sends through the relay."""

    def __init__(self) -> None:
        self.records = 0
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= TLS_RECORD_HEADER_BYTES:
            length = int.from_bytes(self._buffer[3:5], "big")
            if len(self._buffer) < TLS_RECORD_HEADER_BYTES + length:
                return
            self._buffer = self._buffer[TLS_RECORD_HEADER_BYTES + length:]
            self.records += 1


@contextlib.asynccontextmanager
async def relay(target_port: int, counter: RecordCounter) -> AsyncIterator[int]:
    """A TCP relay on an ephemeral port to ``target_port``; yields its port."""
    pumps: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   count: bool) -> None:
        try:
            while data := await reader.read(65536):
                if count:
                    counter.feed(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        pumps.add(asyncio.ensure_future(pump(reader, up_writer, True)))
        pumps.add(asyncio.ensure_future(pump(up_reader, writer, False)))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await server.wait_closed()


async def test_one_loop_iteration_of_requests_is_one_write(tmp_path: Path) -> None:
    with deployment(tmp_path, bca_nodes=1,
                    hub_overrides={"heartbeat_interval_s": 600.0}) as dep:
        counter = RecordCounter()
        async with relay(dep.port, counter) as port:
            client = await connect("127.0.0.1", port, merchant_id="M1",
                                   server_key=KEYS["M1"], certs_dir=dep.certs,
                                   reconnect=False).connect()
            try:
                after_handshake = counter.records
                answers = await asyncio.gather(*(client.request("status", {})
                                                 for _ in range(BURST)),
                                               return_exceptions=True)
                assert all(isinstance(a, RequestError) and a.field == "args.order_id"
                           for a in answers), answers[:2]
                sent = counter.records - after_handshake
                assert sent == 1, f"{BURST} requests of one iteration took {sent} records"

                # The load generator: each round's answers wake every worker in one
                # iteration, and their next requests leave together.
                before_load = counter.records

                async def op(seq: int) -> object:
                    return await client.request("status", {})

                result = await closed_loop(op, workers=BURST, requests=BURST * ROUNDS,
                                           duration_s=600.0)
                assert sum(result.errors.values()) == BURST * ROUNDS
                sent = counter.records - before_load
                assert sent == ROUNDS, f"{ROUNDS} rounds of {BURST} took {sent} records"
            finally:
                await client.close()
