"""A new charge without a task: intent → bank → result → answer, driven by callbacks.

Why: a task per charge that awaits three futures (intent commit, bank answer, result commit)
cost ~14 µs of CPU per charge on the project's machine (issue 12); the futures themselves
are needed, the task around them is not. A ``ChargeFlow`` is the charge's state between
those futures: each future's done-callback runs the next step, in the same loop iteration
as every other charge whose future the same group commit (or the same batched bank answer)
resolved, so the next hop's writes are gathered too.

Only the common case runs here: a new order on which nothing admitted earlier is unfinished,
whose lock is free, and whose first bank send finds a ready node. Every rule stays in one
place: the plan, the intent, the result, the replay and the settlement are the ``Runner``
and ``TransactionService`` methods the task path uses; when anything uncommon happens (the
order already on disk, a fraud denial, no node ready, a failed or unanswered first send) the
flow hands the rest to a task running those same methods, still holding the order's lock
and the bank slot, so nothing runs twice and the order's arrival order holds (§4.5).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, NamedTuple, Protocol

from gateway.hub.banklink import BankPool, FirstSend
from gateway.hub.handler import Requester
from gateway.hub.runner import Answer, Runner, refused
from gateway.hub.txcache import Key
from gateway.transactions import decisions
from gateway.transactions.decisions import BankCall, Refusal
from gateway.transactions.model import Transaction, now_us
from protocol.errors import ErrorCode, PaywireError

log = logging.getLogger("paywire.service")


class ChargePlan(NamedTuple):
    """A new charge as decided before anything is written (the service's ``plan_charge``)."""

    tx: Transaction  # the record: pending, or deny when the screen denied it
    call: BankCall | None  # the bank call; None: denied by the fraud screen, no bank call
    card_args: dict[str, Any] | None  # card details, for the issuer only


class Planner(Protocol):
    """What a flow needs of the transaction service besides the runner."""

    runner: Runner

    def request_hash(self, args: dict[str, Any]) -> bytes: ...

    def plan_charge(self, key: Key, args: dict[str, Any], received_us: int,
                    req_hash: bytes) -> ChargePlan: ...

    def answered(self, key: Key, at_us: int) -> None: ...


def try_start(requester: Requester, service: Planner, rid: int, key: Key,
              args: dict[str, Any], received_us: int) -> bool:
    """Run a charge admitted by ``requester`` without a task if it is the common case (see
    the module docstring); ``False`` leaves it to the task path, with nothing done."""
    cached = service.runner.cache.get(key)
    if cached is not None:
        if cached.unresolved:
            return False
        # A repeat of an order this hub knows: answered now, exactly as the task would.
        answer = decisions.repeat_charge(cached, service.request_hash(args))
        if isinstance(answer, Refusal):
            requester.respond_error(rid, refused(answer))
        else:
            requester.respond(rid, answer, True)
        return True
    lock = service.runner.try_lock_now(key)
    if lock is None:
        return False
    ChargeFlow(requester, service, rid, key, lock).start(args, received_us)
    return True


class ChargeFlow:
    """One charge between its futures. Holds the order's lock from start to answer."""

    __slots__ = ("_ended", "_first", "_pool", "_slot", "bank_args", "key", "lock", "plan",
                 "requester", "rid", "runner", "service", "work")

    def __init__(self, requester: Requester, service: Planner, rid: int,
                 key: Key, lock: asyncio.Lock) -> None:
        self.requester = requester
        self.service = service
        self.runner = service.runner
        self.rid = rid
        self.key = key
        self.lock = lock
        self.plan: ChargePlan | None = None
        self.work: Transaction | None = None
        self.bank_args: dict[str, Any] = {}
        self._pool: BankPool | None = None
        self._slot = False
        self._first: FirstSend | None = None
        self._ended = False

    # --- the steps ---------------------------------------------------------------------------
    def start(self, args: dict[str, Any], received_us: int) -> None:
        runner = self.runner
        runner.admit(self.key)
        self.requester.request_started(self.rid)
        try:
            plan = self.plan = self.service.plan_charge(
                self.key, args, received_us, self.service.request_hash(args))
            if plan.call is None:  # denied by the fraud screen
                self._continue(runner.record_denied(plan.tx))
                return
            tx = plan.tx
            assert tx.bank is not None
            self._pool = runner.pools[tx.bank]
            self._pool.take_slot()
            self._slot = True
            runner.insert_intent(tx, plan.call).add_done_callback(self._intent_done)
        except Exception as exc:
            self._fail(exc)

    def _intent_done(self, fut: asyncio.Future[Transaction | int | None]) -> None:
        plan = self.plan
        assert plan is not None and plan.call is not None and self._pool is not None
        try:
            stored = fut.result()
            if isinstance(stored, Transaction):
                self._continue(self.runner.charge_exists(self.key, stored,
                                                         plan.tx.request_hash))
                return
            work, self.bank_args = self.runner.intent_committed(plan.tx, plan.call,
                                                                plan.card_args)
            self.work = work
            work.hops_us["bank_sent"] = now_us()
            first = self._first = self._pool.send_first(plan.call.op, self.bank_args)
            if first is None:
                # No node ready right now: the pool's own loop waits, retries or gives up.
                self._continue(self.runner.charge_after_call(
                    plan.tx, work, self.runner._call_bank(work, plan.call.op, self.bank_args)))
                return
            first.future.add_done_callback(self._bank_done)
        except BaseException as exc:
            self._fail(exc)

    def _bank_done(self, fut: asyncio.Future[Any]) -> None:
        plan, work, first = self.plan, self.work, self._first
        assert plan is not None and plan.call is not None
        assert work is not None and first is not None
        try:
            result = BankPool.first_result(first)
            if result is None:
                exc: BaseException = (asyncio.CancelledError() if fut.cancelled()
                                      else fut.exception() or RuntimeError("no result"))
                self._continue(self.runner.charge_after_call(
                    plan.tx, work, self.runner.call_bank_after_first(
                        work, plan.call.op, self.bank_args, first, exc)))
                return
            work.hops_us["bank_answered"] = now_us()
            commit, error = self.runner.charge_answered(work, result)

            def committed(done: asyncio.Future[int | None]) -> None:
                self._committed(done, error)

            commit.add_done_callback(committed)
        except BaseException as exc:
            self._fail(exc)

    def _committed(self, fut: asyncio.Future[int | None], error: Refusal | None) -> None:
        work = self.work
        assert work is not None
        try:
            self.runner.committed(work, fut.result())
            self._answer(self.runner.charge_answer(work, error))
        except BaseException as exc:
            self._fail(exc)

    # --- endings -----------------------------------------------------------------------------
    def _continue(self, rest: Awaitable[Answer]) -> None:
        """Hand the rest of the charge to a task (the uncommon case): it answers and ends
        the flow when done, still under the order's lock."""
        async def run() -> None:
            try:
                answer = await rest
            except Exception as exc:
                self._fail(exc)
                return
            except BaseException:
                self._end()  # cancelled (the hub is stopping): no answer, as on the task path
                raise
            self._answer(answer)

        self.requester.track(asyncio.get_running_loop().create_task(run()))

    def _answer(self, answer: Answer) -> None:
        result, replayed = answer
        self.requester.respond(self.rid, result, replayed)
        if not replayed:
            # Telemetry only, as on the task path: written with the transaction's next change.
            self.service.answered(self.key, now_us())
        self._end()

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, PaywireError):
            self.requester.respond_error(self.rid, exc)
        elif not isinstance(exc, asyncio.CancelledError):  # cancelled: stopping, no answer
            log.error("charge %d failed", self.rid, exc_info=exc)
            self.requester.respond_error(self.rid, PaywireError("internal error",
                                                                code=ErrorCode.INTERNAL))
        self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._slot and self._pool is not None:
            self._slot = False
            self._pool.release_slot()
        self.runner.unlock_now(self.key, self.lock)
        self.runner.finished(self.key)
        self.requester.request_finished(self.rid)
