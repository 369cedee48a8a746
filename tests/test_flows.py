"""The common operations run without a task (gateway/hub/flows.py); the others keep one.

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

import pytest
import uvloop

from gateway.client import Card, RequestError, connect
from gateway.hub.server import Hub
from protocol.errors import ErrorCode
from tests.deploy import KEYS, POOR, RICH, Deployment, deployment
from tests.waiting import wait_until

CHARGES = 64
HUB_FILES = ("gateway/hub/session.py", "gateway/hub/service.py", "gateway/hub/runner.py",
             "gateway/hub/flows.py", "gateway/hub/pipeline.py")


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
                # Later operations on settled, cached transactions: no task either, whether
                # they call the bank (capture, refund, cancel) or are answered at once
                # (a repeated refund key, a refusal).
                auths = await asyncio.gather(*(
                    c.charge(f"step-{i}", 3_000 + i, card=card(i), capture=False)
                    for i in range(16)))
                assert {a.transaction_status for a in auths} == {"authorize"}
                steps = await asyncio.gather(
                    *(c.capture(f"step-{i}") for i in range(8)),
                    *(c.cancel(f"step-{i}") for i in range(8, 16)),
                    *(c.refund(f"flow-{i}", "r1", amount=100) for i in range(8)))
                assert [s.transaction_status for s in steps] == \
                    ["capture"] * 8 + ["cancel"] * 8 + ["partial_refund"] * 8
                assert [s.refunded_amount for s in steps[16:]] == [100] * 8
                again = await c.refund("flow-0", "r1", amount=100)
                assert again.replayed and again.refunded_amount == 100
                try:
                    await c.cancel("step-0")  # captured: nothing to void
                except RequestError as exc:
                    assert exc.code is ErrorCode.INVALID_TRANSITION
                else:
                    raise AssertionError("a captured transaction was cancelled")
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


def test_common_operations_run_without_a_task(tmp_path: Path) -> None:
    uvloop.run(scenario(tmp_path))


async def unrecorded_scenario(tmp_path: Path, capture: bool) -> None:
    """The bank answers but the ledger refuses the result's write (its queue bound, set to 0
    while the bank holds the call): the merchant hears OUTCOME_UNKNOWN — never QUEUE_FULL,
    which says nothing happened — and the intent on disk is settled to what the bank did."""
    from gateway.client import OutcomeUnknown

    loop = asyncio.get_running_loop()
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        assert dep.hub is not None and dep.hub_cfg is not None
        await loop.run_in_executor(None, dep.hub.terminate)
        hub = Hub(dataclasses.replace(dep.hub_cfg, listen_port=0, recovery_interval_s=0.2))
        await hub.start()
        try:
            # One attempt: the client would otherwise repeat the request (OUTCOME_UNKNOWN is
            # retryable) while the ledger still refuses writes; the first answer is the point.
            async with connect("127.0.0.1", hub.port, merchant_id="M1",
                               server_key=KEYS["M1"], certs_dir=dep.certs,
                               retry_attempts_max=1) as c:
                card = Card(RICH[0], 12, 2030, "123")
                if capture:
                    await c.charge("unrec", 4_000, card=card, capture=False)
                op = "bank.capture" if capture else "bank.authorize"
                before = (await dep.stats("bca"))["received"].get(op, 0)
                await dep.admin("bca", "admin.faults", {"latency_ms": 300})
                pending = asyncio.ensure_future(
                    c.capture("unrec") if capture else c.charge("unrec", 4_000, card=card))

                async def at_the_bank() -> bool:
                    return (await dep.stats("bca"))["received"].get(op, 0) > before

                await wait_until(at_the_bank, "the bank call to arrive")
                writer = hub.ledger.writer
                bound, writer.queue_writes_max = writer.queue_writes_max, 0
                try:
                    with pytest.raises(OutcomeUnknown) as info:
                        await pending
                finally:
                    writer.queue_writes_max = bound
                assert info.value.code is ErrorCode.OUTCOME_UNKNOWN
                assert "could not be recorded" in str(info.value)
                await dep.admin("bca", "admin.faults", {"latency_ms": 0})

                async def settled() -> bool:
                    # Until then: OUTCOME_UNKNOWN for the charge, the committed "authorize"
                    # for the capture (its intent is not news until settled).
                    try:
                        return (await c.status("unrec")).transaction_status == "capture"
                    except RequestError:
                        return False

                await wait_until(settled, "the intent to be settled as the bank did it")
                assert hub.ledger.writer.queued == 0
        finally:
            await hub.stop()
    finally:
        dep.stop()


@pytest.mark.parametrize("capture", [False, True], ids=["charge", "capture"])
def test_a_result_the_ledger_cannot_record_is_outcome_unknown(tmp_path: Path,
                                                             capture: bool) -> None:
    uvloop.run(unrecorded_scenario(tmp_path, capture))
