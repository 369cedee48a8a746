"""Hub CPU spent on requests that fail authentication, per KB a peer sends.

    python -m bench.preauth [--duration-s 3] [--connections 2] [--window 16]

Starts a hub (no bank: nothing here gets past the signature check) as a real process and
sends it, over mutual TLS, REQUEST frames whose signature is wrong: a hostile peer holding a
merchant certificate but not the merchant's server key. Each case runs for a bounded time
with ``window`` frames in flight per connection; every frame is answered (an error RESPONSE)
before the case ends, so all of the work it caused is counted. The hub's CPU comes from
``/proc/<pid>/stat`` (``bench/cpu.py``), so the figure includes TLS, framing and the answer:
the part that grows with what the peer sends before it is authenticated.

The cases are bodies that are cheap to send and were expensive to verify when the
signature covered a canonical re-encoding of the arguments (issue 11, item 3), beside an
ordinary small request and a flat large string as references.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpu import _TICKS_PER_S, cpu_ticks
from gateway import pki, secret_keys
from gateway.client import client_ssl_context
from gateway.config import HubConfig, MerchantConfig
from gateway.processes import NodeProcess
from protocol import body as bodycodec
from protocol import messages
from protocol.decoder import FrameDecoder
from protocol.frame import FrameType, encode_frame

MERCHANT = "preauth-merchant"
KEY = "preauth-server-key"
WRONG_SIGNATURE = b"\x00" * 32


def _empty_arrays() -> dict[str, Any]:
    # 250 x 250 empty arrays: each is one byte on the wire, within every per-collection limit.
    return {"order_id": "o", "a": [[[] for _ in range(250)] for _ in range(250)]}


def _small_ints() -> dict[str, Any]:
    return {"order_id": "o", "a": [[0] * 250 for _ in range(240)]}


def _many_maps() -> dict[str, Any]:
    # Maps whose keys arrive in reverse order, so a canonical encoding has to sort each one.
    return {"order_id": "o", "a": [{f"k{j:03d}": 0 for j in range(120, 0, -1)}
                                   for _ in range(60)]}


def _flat_string() -> dict[str, Any]:
    return {"order_id": "o", **{f"s{i}": "x" * 4000 for i in range(15)}}


def _ordinary() -> dict[str, Any]:
    return {"order_id": "order-1", "gross_amount": 10_000, "currency": "IDR",
            "payment_type": "credit_card", "card": {"number": "4811111111111114",
                                                    "exp_month": 12, "exp_year": 2030,
                                                    "cvv": "123"}}


CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "62,500 empty arrays": _empty_arrays,
    "60,000 small ints": _small_ints,
    "60 maps of 120 unsorted keys": _many_maps,
    "15 strings of 4,000 bytes": _flat_string,
    "ordinary charge (reference)": _ordinary,
}


def hostile_frame(request_id: int, args: dict[str, Any]) -> bytes:
    """A REQUEST with the current envelope and a signature that cannot verify."""
    return messages.encode_request(request_id, "charge", MERCHANT, int(time.time() * 1000),
                                   os.urandom(16), WRONG_SIGNATURE, bodycodec.pack(args))


@dataclass
class CaseResult:
    name: str
    frame_bytes: int
    frames: int
    cpu_s: float

    @property
    def us_per_kb(self) -> float:
        return self.cpu_s * 1e6 / max(self.frames * self.frame_bytes / 1024, 1e-9)

    @property
    def us_per_frame(self) -> float:
        return self.cpu_s * 1e6 / max(self.frames, 1)


async def _connection(port: int, ctx: ssl.SSLContext, frame_of: Callable[[int], bytes],
                      window: int, deadline: float) -> int:
    """Send frames with ``window`` in flight until the deadline; return how many were
    answered (every one is, before returning)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="127.0.0.1")
    decoder = FrameDecoder(1 << 20)
    writer.write(messages.encode_message(FrameType.HELLO, {
        "versions": [1], "role": "merchant", "identity": MERCHANT}))
    pending: list[Any] = []

    async def next_frame() -> Any:
        while not pending:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("hub closed the connection")
            pending.extend(decoder.feed(data))
        return pending.pop(0)

    welcome = await next_frame()
    assert welcome.type == FrameType.WELCOME, welcome
    sent = answered = 0
    rid = 0
    while True:
        while sent - answered < window and time.monotonic() < deadline:
            rid += 1
            writer.write(frame_of(rid))
            sent += 1
        if answered == sent:
            break
        await writer.drain()
        frame = await next_frame()
        if frame.type == FrameType.RESPONSE:
            answered += 1
        elif frame.type == FrameType.ERROR:
            raise ConnectionError(messages.decode_body(FrameType.ERROR, frame.body))
    writer.close()
    return answered


async def run_case(name: str, args: dict[str, Any], port: int, hub_pid: int,
                   ctx: ssl.SSLContext, opts: argparse.Namespace) -> CaseResult:
    frame = hostile_frame(1, args)
    body = frame[16:]

    def frame_of(rid: int) -> bytes:
        # The same body for every request of a case (the hub verifies each one anyway);
        # only the header's request id changes, so building frames costs this process little.
        return encode_frame(FrameType.REQUEST, rid, body)

    start = cpu_ticks(hub_pid)
    deadline = time.monotonic() + opts.duration_s
    counts = await asyncio.gather(*(_connection(port, ctx, frame_of, opts.window, deadline)
                                    for _ in range(opts.connections)))
    cpu_s = (cpu_ticks(hub_pid) - start) / _TICKS_PER_S
    return CaseResult(name, len(frame), sum(counts), cpu_s)


async def main_async(opts: argparse.Namespace) -> list[CaseResult]:
    workdir = Path(tempfile.mkdtemp(prefix="paywire-preauth-"))
    hub: NodeProcess | None = None
    ok = False
    try:
        certs = workdir / "certs"
        pki.init(certs, merchants=[MERCHANT], banks=[])
        secrets = workdir / "paywire-secrets.toml"  # no built-in key: the hub needs its own
        secret_keys.init(secrets)
        cfg = HubConfig(listen_port=0, certs_dir=certs, ledger_path=workdir / "ledger.db",
                        secrets_file=secrets,
                        merchants=[MerchantConfig(MERCHANT, KEY, rate_per_s=1e9,
                                                  rate_burst=10**9)])
        hub = NodeProcess("hub", cfg, workdir, "hub").start()
        port = hub.wait_ready()
        assert hub.proc is not None
        ctx = client_ssl_context(certs, MERCHANT)
        results = []
        for name, build in CASES.items():
            res = await run_case(name, build(), port, hub.proc.pid, ctx, opts)
            results.append(res)
            print(f"{name:32} {res.frame_bytes:>7,} B/frame {res.frames:>7,} frames "
                  f"{res.us_per_frame:>9.1f} us/frame {res.us_per_kb:>8.1f} us/KB", flush=True)
        ok = True
        return results
    finally:
        if hub is not None:
            hub.terminate()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} for inspection", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.preauth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=3.0, help="per case")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--window", type=int, default=16, help="frames in flight per connection")
    opts = parser.parse_args(argv)
    asyncio.run(main_async(opts))


if __name__ == "__main__":
    main()
