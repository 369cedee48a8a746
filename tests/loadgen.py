"""A bounded charge load for fault tests: what each client was told, and what failed."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

from gateway.client import Card, Client, ConnectionLost, OutcomeUnknown, RequestError
from tests.deploy import RICH, Deployment, ack
from tests.waiting import wait_until


async def charge_load(dep: Deployment, count: int, seed: int, prefix: str, *,
                      clients: int = 4, addresses: list[tuple[str, int]] | None = None,
                      acks: list[dict[str, Any]] | None = None, spread_s: float = 0.0,
                      on_clients: Callable[[list[Client]], Any] | None = None,
                      **options: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """``count`` charges (80% captured, 20% authorized only) over ``clients`` pipelined
    connections. Returns (acks, errors); every charge ends in one or the other."""
    from gateway.client import connect
    from tests.deploy import KEYS

    rng = random.Random(seed)
    plan = [(f"{prefix}-{i}", rng.randrange(1, 500) * 1_000, rng.random() < 0.8)
            for i in range(count)]
    # hub_wait_s: these loads ride out a hub's restart, so a request may wait for a hub
    # longer than its own timeout (the default since issue 14 is to fail within it).
    opts: dict[str, Any] = {"timeout_s": 5.0, "reconnect_window_s": 60.0, "hub_wait_s": 60.0,
                            "retry_attempts_max": 30, **options}
    made: list[Client] = []
    for _ in range(clients):
        c = connect(addresses or [("127.0.0.1", dep.port)], merchant_id="M1",
                    server_key=KEYS["M1"], certs_dir=dep.certs, **opts)
        made.append(await c.connect())
    if on_clients is not None:
        on_clients(made)
    acks = [] if acks is None else acks  # the caller may watch it fill up
    errors: list[str] = []

    async def one(i: int) -> None:
        order, amount, capture = plan[i]
        if spread_s:
            # Pacing, not synchronisation: the load's shape (charges spread over spread_s).
            await asyncio.sleep(spread_s * i / count)
        try:
            tx = await made[i % clients].charge(order, amount, capture=capture,
                                                card=Card(RICH[i % len(RICH)], 12, 2030, "123"))
            acks.append(ack(tx))
        except (RequestError, OutcomeUnknown, ConnectionLost) as exc:
            errors.append(f"{order}: {exc!r}")

    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        for c in made:
            await c.close()
    return acks, errors


async def wait_resolved(dep: Deployment, timeout_s: float = 60.0) -> int:
    """Wait until the ledger has no unresolved bank call; return how many are left."""
    def left() -> int:
        return int(dep.ledger_sql("SELECT COUNT(*) FROM transactions WHERE unresolved=1")[0][0])

    with contextlib.suppress(AssertionError):
        await wait_until(lambda: left() == 0, "every bank call to be resolved",
                         timeout_s=timeout_s)
    return left()


async def assert_settled_and_clean(dep: Deployment, acks: list[dict[str, Any]],
                                   context: str = "") -> Any:
    """The end of every fault test: no bank call left unresolved, and the audit finds no
    lost or doubled charge and no money created. Returns the audit report."""
    assert await wait_resolved(dep) == 0, context
    report = dep.audit(acks)
    assert report.clean, f"{context}{report.findings[:10]}"
    return report
