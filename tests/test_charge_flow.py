"""The common charge runs without a task (gateway/hub/charge_flow.py); the others keep one.

The hub runs in this process (bank nodes are processes), so the test can see every task the
hub's request handling creates: a task factory counts those whose coroutine is defined in the
session, the service or the charge flow.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any

import uvloop

from gateway.client import Card, RequestError, connect
from gateway.hub.server import Hub
from protocol.errors import ErrorCode
from tests.deploy import KEYS, POOR, RICH, deployment

CHARGES = 64
HUB_FILES = ("gateway/hub/session.py", "gateway/hub/service.py",
             "gateway/hub/charge_flow.py")


def count_hub_tasks(loop: asyncio.AbstractEventLoop, seen: list[str]) -> None:
    def factory(loop: asyncio.AbstractEventLoop,
                coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
                **kwargs: Any) -> asyncio.Task[Any]:
        code = getattr(coro, "cr_code", None)
        if code is not None and code.co_filename.endswith(HUB_FILES):
            seen.append(code.co_qualname)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)  # type: ignore[arg-type]


async def scenario(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    with deployment(tmp_path, bca_nodes=1) as dep:
        assert dep.hub is not None and dep.hub_cfg is not None
        await loop.run_in_executor(None, dep.hub.terminate)
        hub = Hub(dataclasses.replace(dep.hub_cfg, listen_port=0))
        await hub.start()
        try:
            async with connect("127.0.0.1", hub.port, merchant_id="M1",
                               server_key=KEYS["M1"], certs_dir=dep.certs,
                               in_flight_max=CHARGES) as c:
                tasks: list[str] = []
                count_hub_tasks(loop, tasks)

                def card(i: int) -> Card:
                    return Card(RICH[i % len(RICH)], 12, 2030, "123")

                # New orders, all in flight at once: no task for any of them.
                results = await asyncio.gather(*(c.charge(f"flow-{i}", 1_000 + i, card=card(i))
                                                 for i in range(CHARGES)))
                assert [r.transaction_status for r in results] == ["capture"] * CHARGES
                assert tasks == [], tasks
                # A declined charge and a repeat of a known order: no task either, and the
                # repeat is the stored answer, replayed.
                declined = await c.charge("flow-poor", 5_000, card=Card(POOR, 12, 2030, "123"))
                assert declined.transaction_status == "deny"
                again = await c.charge("flow-0", 1_000, card=card(0))
                assert again.replayed and again.transaction_id == results[0].transaction_id
                try:
                    await c.charge("flow-0", 2_000, card=card(0))
                except RequestError as exc:
                    assert exc.code is ErrorCode.DUPLICATE_ORDER
                else:
                    raise AssertionError("a different charge under a used order id passed")
                assert tasks == [], tasks
                # Operations queued behind a charge on the same order keep the task path,
                # in arrival order: the capture waits for the authorization it captures.
                auth, captured = await asyncio.gather(
                    c.charge("flow-auth", 7_000, card=card(1), capture=False),
                    c.capture("flow-auth"))
                assert auth.transaction_status == "authorize"
                assert captured.transaction_status == "capture"
                assert tasks, "the capture behind the charge ran without its task"
        finally:
            loop.set_task_factory(None)
            await hub.stop()


def test_new_charges_and_replays_run_without_a_task(tmp_path: Path) -> None:
    uvloop.run(scenario(tmp_path))
