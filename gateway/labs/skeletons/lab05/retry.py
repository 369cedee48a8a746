"""Lab 5: a charge that survives cut connections and black holes (your work).

``charge_reliably`` charges one order through a connection that may fail in every way a
network can: cut before the request reaches the hub, cut after the hub did the work but
before its answer came back, swallowed in either direction (a black hole: no answer, no
error, only silence), or refused at connect. It never charges twice: every retry carries
the **same order id**, which the hub uses as the idempotency key (docs/protocol.md §5,
§5.3), and an answer that may have been lost is asked for with ``status`` before anything
is sent again.

Try it through the chaos proxy (docs/labs/05-retries.md)::

    python labwork/lab05/retry.py --orders 8 --seed 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.client import (
    Card,
    Client,
    ConnectionLost,
    NotFound,
    OutcomeUnknown,
    PaywireError,
    RequestError,
    TransactionResult,
)

ATTEMPTS_MAX = 6  # connections opened for one order, at most
BACKOFF_BASE_S = 0.05  # the first retry waits up to this long
BACKOFF_CAP_S = 1.0  # no wait is longer than this
CLOSE_TIMEOUT_S = 5.0

OpenClient = Callable[[], Awaitable[Client]]
# What charge_reliably catches or opens with, imported for you.
YOU_WILL_NEED = (ConnectionLost, NotFound, OutcomeUnknown, RequestError, ssl.SSLError)


@dataclass
class Step:
    """One thing ``charge_reliably`` did: ``op`` is ``connect``, ``charge`` or ``status``;
    ``result`` what came of it (a transaction status, ``replayed``, or what failed)."""

    op: str
    result: str


@dataclass
class ChargeReport:
    """What happened to one order: its final transaction (``None`` if it stayed unknown
    after ``ATTEMPTS_MAX`` connections) and every step on the way."""

    order_id: str
    transaction: TransactionResult | None = None
    steps: list[Step] = field(default_factory=list)

    @property
    def connections(self) -> int:
        return sum(1 for s in self.steps if s.op == "connect")


def backoff_s(attempt: int, rng: random.Random) -> float:
    """How long to wait before retry number ``attempt`` (1 = the first retry): "full
    jitter", a uniform draw from ``[0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)]``,
    so that many clients cut at the same moment do not all come back at the same moment."""
    # Draw from ``rng`` (rng.uniform), not from the module-level random functions: the
    # check gives you a seeded rng and expects your waits to come from it.
    raise NotImplementedError("backoff_s(): full jitter, uniform in [0, min(cap, base * "
                              "2**attempt)] (docs/labs/05-retries.md, Step 3)")


async def _close(client: Client) -> None:
    try:
        await asyncio.wait_for(client.close(), CLOSE_TIMEOUT_S)
    except (TimeoutError, OSError, PaywireError):
        pass  # it is being thrown away: nothing more to learn from it


async def charge_reliably(open_client: OpenClient, order_id: str, amount: int, card: Card,
                          rng: random.Random) -> ChargeReport:
    """Charge ``order_id`` once, whatever the network does.

    ``open_client()`` returns a new connected :class:`Client` that does not retry by itself
    (one attempt per call, a request timeout, no reconnect): a cut connection raises
    ``ConnectionLost``, a request without an answer in time ``OutcomeUnknown``; opening may
    raise ``OSError``, ``TimeoutError``, ``ssl.SSLError`` or ``ConnectionLost``.
    """
    # A plan that works (docs/labs/05-retries.md, Step 4):
    #   report = ChargeReport(order_id)
    #   for attempt in range(ATTEMPTS_MAX):
    #     after the first attempt, sleep backoff_s(attempt, rng)
    #     open a new client (it may fail: note a Step("connect", ...) and go round again)
    #     if an earlier attempt ended without an answer in time: ask client.status(order_id)
    #       NotFound -> the hub never got the charge; anything else -> that is the answer
    #     send client.charge(order_id, amount, card=card): the SAME order id every time
    #     ConnectionLost: sending the same charge again is safe (REPLAYED if it was done)
    #     OutcomeUnknown: no answer in time; ask status on the next connection
    #       (ConnectionLost is a kind of OutcomeUnknown: catch it first)
    #     RequestError that is not retryable (exc.code.is_retryable): stop
    #     always close the client (_close), whatever happened
    #   record every step in report.steps; report.transaction = the final transaction
    # Never invent a new order id: that is a new charge, and the customer pays twice.
    raise NotImplementedError("charge_reliably(): retry on a new connection with the same "
                              "order id, bounded by ATTEMPTS_MAX, with backoff_s between "
                              "attempts (docs/labs/05-retries.md, Step 4)")


# --- a demonstration: your function through a chaos proxy ------------------------------------
FAULTS = {
    "clean": {},
    "cut request": {"direction": "up", "drop_after_bytes": 0},
    "cut answer": {"direction": "down", "drop_after_bytes": 0},
    "black hole up": {"direction": "up", "blackhole": True},
    "black hole down": {"direction": "down", "blackhole": True},
    "sliced answer": {"direction": "down", "slice_bytes_max": 3},
}


async def demo(orders: int, seed: int, hub: str | None, acks_path: Path) -> int:
    """Charge ``orders`` orders through an in-process chaos proxy that gives each order's
    first connection a fault (seeded), and print what ``charge_reliably`` did."""
    from gateway.chaos import ChaosProxy
    from gateway.client import connect

    target = hub or os.environ["PAYWIRE_HUB"]
    host, _, port = target.rpartition(":")
    merchant, key = os.environ["PAYWIRE_MERCHANT"], os.environ["PAYWIRE_SERVER_KEY"]
    certs = Path(os.environ["PAYWIRE_CERTS"])
    card = Card(os.environ.get("LAB_CARD", "4811111111111114"), 12, 2030, "123")
    proxy = await ChaosProxy(host, int(port), seed=seed).start()
    rng = random.Random(seed)
    kinds = list(FAULTS)
    run = f"lab5-{os.getpid()}-{time.time_ns() % 10**6:06d}"
    acks = []
    try:
        for i in range(orders):
            fault = kinds[(i + seed) % len(kinds)]
            opened = 0

            async def open_client(fault: str = fault) -> Client:
                nonlocal opened
                opened += 1
                proxy.heal()
                client = await connect("127.0.0.1", proxy.port, merchant_id=merchant,
                                       server_key=key, certs_dir=certs, reconnect=False,
                                       retry_attempts_max=1, resolve_unknown=False,
                                       timeout_s=5.0, connect_timeout_s=5.0).connect()
                if opened == 1 and FAULTS[fault]:
                    spec = dict(FAULTS[fault])
                    proxy.set(str(spec.pop("direction")), **spec)
                return client

            order = f"{run}-{i}"
            report = await charge_reliably(open_client, order, 20_000 + i, card, rng)
            tx = report.transaction
            print(f"{order}  fault: {fault:<16} -> "
                  + ", ".join(f"{s.op} {s.result}" for s in report.steps
                              if s.op != "connect" or s.result != "ok")
                  + f"  [{report.connections} connections]")
            if tx is not None:
                acks.append({"merchant_id": merchant, "order_id": order,
                             "transaction_id": tx.transaction_id,
                             "transaction_status": tx.transaction_status})
    finally:
        proxy.heal()
        await proxy.stop()
    acks_path.write_text("".join(json.dumps(a) + "\n" for a in acks))
    print(f"{len(acks)} of {orders} orders answered; cuts {proxy.cuts}, swallowed reads "
          f"{proxy.swallowed}; acknowledgements in {acks_path}")
    return 0 if len(acks) == orders else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hub", help="HOST:PORT to send through (default: $PAYWIRE_HUB)")
    parser.add_argument("--acks", default="lab05-acks.jsonl",
                        help="where to write what the hub acknowledged (for paywire audit)")
    ns = parser.parse_args()
    if "PAYWIRE_MERCHANT" not in os.environ:
        print("set the sandbox's environment first: source sandbox/sandbox.env",
              file=sys.stderr)
        return 2
    return asyncio.run(demo(ns.orders, ns.seed, ns.hub, Path(ns.acks)))


if __name__ == "__main__":
    sys.exit(main())
