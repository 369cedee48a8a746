"""``paywire sandbox load``: charges through the running sandbox, to watch failover (lab 6).

A few client connections (``--connections``), each sending one charge at a time with the
sandbox's approved card until ``--charges`` are answered: a closed loop, so that a hub
killed at any moment has charges in flight. Every client knows one address,
``PAYWIRE_HUB`` — HAProxy's in the scale-out sandbox — and each connection reports which
hub it reached (the ``server`` of the hub's WELCOME, ``paywire-hub/<node_id>``).

``--kill HUB --after N`` does what a student does by hand with ``kill -9`` from another
terminal, at a moment chosen so that the experiment always shows something: after N
answers, and only while at least one charge is in flight on a connection to that hub.

The client library's INFO lines (reconnect, resend, failover, unknown outcome) are printed
as they happen, prefixed ``client:``; at the end one line counts the answers by hub.
``--acks FILE`` writes what each charge was answered, for ``paywire audit --acks``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.cliout import EXIT_USAGE, CliError

CHARGE_AMOUNT_IDR = 10_000
CHARGES_MAX = 10_000
CONNECTIONS_MAX = 64
# A charge rides out a dead hub: the client reconnects (to HAProxy again) and resends it.
CHARGE_TIMEOUT_S = 60.0
RECONNECT_WINDOW_S = 60.0
CARD = ("4811111111111114", 12, 2030, "123")  # the sandbox's approved card (bca)


class _Echo(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        print(f"  client: {record.getMessage()}", flush=True)


def cmd_load(directory: Path, ns: argparse.Namespace) -> int:
    from gateway.sandbox_scaleout import _load

    if not 1 <= ns.charges <= CHARGES_MAX:
        raise CliError(EXIT_USAGE, f"--charges must be 1..{CHARGES_MAX}")
    if not 1 <= ns.connections <= CONNECTIONS_MAX:
        raise CliError(EXIT_USAGE, f"--connections must be 1..{CONNECTIONS_MAX}")
    info = _load(directory)
    victim: dict[str, Any] | None = None
    if ns.kill is not None:
        hubs = {h["name"]: h for h in info.get("hubs", [])}
        if ns.kill not in hubs:
            raise CliError(EXIT_USAGE, f"--kill {ns.kill!r}: not a hub of this sandbox "
                                       f"({', '.join(hubs) or 'not a scale-out sandbox'})")
        if not 0 <= ns.after < ns.charges:
            raise CliError(EXIT_USAGE, "--after must be 0 up to --charges - 1")
        victim = hubs[ns.kill]
    return asyncio.run(_run(info, ns.charges, ns.connections, victim, ns.after,
                            Path(ns.acks) if ns.acks else None))


async def _run(info: dict[str, Any], charges: int, connections: int,
               victim: dict[str, Any] | None, after: int, acks_path: Path | None) -> int:
    from gateway.client import Card, connect

    env = info["env"]
    host, _, port = env["PAYWIRE_HUB"].rpartition(":")
    client_log = logging.getLogger("paywire.client")
    echo = _Echo()
    client_log.addHandler(echo)
    level, propagate = client_log.level, client_log.propagate
    client_log.setLevel(logging.INFO)
    client_log.propagate = False
    prefix = f"load-{secrets.token_hex(3)}"
    clients = [connect(host, int(port), merchant_id=env["PAYWIRE_MERCHANT"],
                       server_key=env["PAYWIRE_SERVER_KEY"], certs_dir=env["PAYWIRE_CERTS"],
                       reconnect_window_s=RECONNECT_WINDOW_S, hub_wait_s=RECONNECT_WINDOW_S,
                       timeout_s=CHARGE_TIMEOUT_S) for _ in range(connections)]
    card = Card(*CARD)
    answered: list[dict[str, Any]] = []
    by_hub: Counter[str] = Counter()
    moved = 0
    errors: list[str] = []
    in_flight: Counter[str] = Counter()  # by the hub of the connection it was sent on
    killed = asyncio.Event()
    next_order = iter(range(1, charges + 1))

    def hub_of(client: Any) -> str:
        return str(client.welcome.get("server", "?")).removeprefix("paywire-hub/")

    def maybe_kill() -> None:
        if victim is None or killed.is_set() or len(answered) < after:
            return
        if in_flight[victim["name"]] == 0:
            return  # wait for a moment with a charge in flight on it
        killed.set()
        print(f"after {len(answered)} answers: kill -9 {victim['name']} (pid {victim['pid']}),"
              f" {in_flight[victim['name']]} charge(s) in flight on it", flush=True)
        try:
            os.kill(int(victim["pid"]), signal.SIGKILL)
        except ProcessLookupError:
            print(f"  ({victim['name']} was not running)", flush=True)

    async def worker(client: Any) -> None:
        nonlocal moved
        for i in next_order:
            order_id = f"{prefix}-{i}"
            sent_to = hub_of(client)
            in_flight[sent_to] += 1
            maybe_kill()
            try:
                tx = await client.charge(order_id, CHARGE_AMOUNT_IDR, card=card)
            except Exception as exc:  # reported and counted: the load goes on
                errors.append(f"{order_id}: {type(exc).__name__}: {exc}")
                print(f"  {order_id}: NOT ANSWERED: {type(exc).__name__}: {exc}", flush=True)
                continue
            finally:
                in_flight[sent_to] -= 1
            got_from = hub_of(client)
            by_hub[got_from] += 1
            if got_from != sent_to:
                moved += 1
                print(f"  {order_id}: sent to {sent_to}, answered by {got_from} "
                      f"({tx.transaction_status}{', replayed' if tx.replayed else ''})",
                      flush=True)
            answered.append({"merchant_id": env["PAYWIRE_MERCHANT"], "order_id": order_id,
                             "transaction_id": tx.transaction_id,
                             "transaction_status": tx.transaction_status})
            maybe_kill()

    try:
        for c in clients:
            await c.connect()
        spread = Counter(hub_of(c) for c in clients)
        print(f"load: {charges} charges of {CHARGE_AMOUNT_IDR} IDR over {connections} "
              f"connections to {env['PAYWIRE_HUB']} ("
              + ", ".join(f"{n} on {h}" for h, n in sorted(spread.items())) + ")", flush=True)
        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        for c in clients:
            await c.close()
        client_log.removeHandler(echo)
        client_log.setLevel(level)
        client_log.propagate = propagate
    statuses = Counter(a["transaction_status"] for a in answered)
    print(f"answered {len(answered)}/{charges} ("
          + ", ".join(f"{s} {n}" for s, n in sorted(statuses.items())) + "); by hub: "
          + ", ".join(f"{h} {n}" for h, n in sorted(by_hub.items()))
          + f"; {moved} answered by another hub than the one they were sent to; "
          f"{len(errors)} not answered", flush=True)
    if acks_path is not None:
        acks_path.write_text("".join(json.dumps(a) + "\n" for a in answered))
        print(f"acks: {acks_path} ({len(answered)} lines)")
    if victim is not None and not killed.is_set():
        print(f"load: {victim['name']} was not killed: no charge was in flight on it after "
              f"{after} answers (all connections on the other hub?)", file=sys.stderr)
        return 1
    return 0 if not errors else 1
