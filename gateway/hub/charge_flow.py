"""A new charge without a task: intent → bank → result → answer, driven by callbacks.

Why: a task per charge that awaits three futures (intent commit, bank answer, result commit)
cost ~14 µs of CPU per charge on the project's machine (issue 12); the futures themselves
are needed, the task around them is not. A ``ChargeFlow`` is the charge's state between
those futures: each future's done-callback runs the next step, in the same loop iteration
as every other charge whose future the same group commit (or the same batched bank answer)
resolved, so the next hop's writes are gathered too.

Only the common case runs here: a new order on which nothing admitted earlier is unfinished,
whose lock is free, and whose first bank send finds a ready node. Every rule stays in one
place: the plan, the intent, the result, the replay and the settlement are the
``TransactionService`` methods the task path uses; when anything uncommon happens (the
order already on disk, a fraud denial, no node ready, a failed or unanswered first send) the
flow hands the rest to a task running those same methods, still holding the order's lock
and the bank slot, so nothing runs twice and the order's arrival order holds (§4.5).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Protocol

from gateway.hub.banklink import BankPool, FirstSend
from gateway.hub.service import ChargePlan, Key, TransactionService
from gateway.transactions.model import Transaction, now_us
from protocol.errors import ErrorCode, PaywireError

log = logging.getLogger("paywire.service")

Answer = tuple[dict[str, Any], bool]


class Requester(Protocol):
    """What a flow needs of the connection its charge came on (a merchant session)."""

    def respond(self, request_id: int, result: dict[str, Any], replayed: bool = False) -> None:
        ...

    def respond_error(self, request_id: int, exc: PaywireError) -> None: ...

    def request_started(self, rid: int) -> None: ...

    def request_finished(self, rid: int) -> None: ...

    def track(self, task: asyncio.Task[None]) -> None: ...


def try_start(session: Requester, service: TransactionService, rid: int, key: Key,
              args: dict[str, Any], received_us: int) -> bool:
    """Run a charge admitted by ``session`` without a task if it is the common case (see the
    module docstring); ``False`` leaves it to the task path, with nothing done."""
    cached = service.cache.get(key)
    if cached is not None:
        if cached.unresolved:
            return False
        # A repeat of an order this hub knows: answered now, exactly as the task would.
        req_hash = service.request_hash(args)
        try:
            result, replayed = service._replay(cached, req_hash)
        except PaywireError as exc:
            session.respond_error(rid, exc)
            return True
        session.respond(rid, result, replayed)
        return True
    lock = service.try_lock_now(key)
    if lock is None:
        return False
    flow = ChargeFlow(session, service, rid, key, lock)
    flow.start(args, received_us)
    return True


class ChargeFlow:
    """One charge between its futures. Holds the order's lock from start to answer."""

    __slots__ = ("_ended", "_first", "_pool", "_slot", "bank_args", "key", "lock", "plan",
                 "rid", "service", "session", "work")

    def __init__(self, session: Requester, service: TransactionService, rid: int,
                 key: Key, lock: asyncio.Lock) -> None:
        self.session = session
        self.service = service
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
        service = self.service
        service.admit(self.key)
        self.session.request_started(self.rid)
        try:
            plan = self.plan = service.plan_charge(self.key, args, received_us,
                                                   service.request_hash(args))
            if plan.denied:
                self._continue(service._deny_by_screen(self.key, plan.tx, plan.number,
                                                       plan.req_hash))
                return
            tx = plan.tx
            assert tx.bank is not None
            self._pool = service.pools[tx.bank]
            self._pool.take_slot()
            self._slot = True
            tx.pending_op = {"op": plan.op, "op_id": plan.bank_args["op_id"],
                             "args": plan.bank_args}
            service.ledger.insert_new(tx).add_done_callback(self._intent_done)
        except Exception as exc:
            self._fail(exc)

    def _intent_done(self, fut: asyncio.Future[Transaction | int | None]) -> None:
        plan = self.plan
        assert plan is not None and self._pool is not None
        try:
            stored = fut.result()
            if isinstance(stored, Transaction):
                self._continue(self.service.charge_exists(self.key, stored, plan.req_hash))
                return
            self.work, self.bank_args = self.service.intent_committed(plan.tx, plan.bank_args,
                                                                      plan.card_args)
            self.work.hops_us["bank_sent"] = now_us()
            first = self._first = self._pool.send_first(plan.op, self.bank_args)
            if first is None:
                # No node ready right now: the pool's own loop waits, retries or gives up.
                self._continue(self.service.charge_after_call(
                    plan.tx, self.work,
                    self.service._call_bank(self.work, plan.op, self.bank_args)))
                return
            first.future.add_done_callback(self._bank_done)
        except BaseException as exc:
            self._fail(exc)

    def _bank_done(self, fut: asyncio.Future[Any]) -> None:
        plan, work, first = self.plan, self.work, self._first
        assert plan is not None and work is not None and first is not None
        try:
            result = BankPool.first_result(first)
            if result is None:
                exc: BaseException = (asyncio.CancelledError() if fut.cancelled()
                                      else fut.exception() or RuntimeError("no result"))
                self._continue(self.service.charge_after_call(
                    plan.tx, work, self.service.call_bank_after_first(
                        work, plan.op, self.bank_args, first, exc)))
                return
            work.hops_us["bank_answered"] = now_us()
            err = self.service._apply(work, result)
            commit = self.service.commit_start(work, None)  # first resolved state: news

            def committed(done: asyncio.Future[int | None]) -> None:
                self._committed(done, err)

            commit.add_done_callback(committed)
        except BaseException as exc:
            self._fail(exc)

    def _committed(self, fut: asyncio.Future[int | None], err: PaywireError | None) -> None:
        work = self.work
        assert work is not None
        try:
            self.service.committed(work, fut.result())
            if err is not None:
                raise err
            assert work.charge_result is not None
            self._answer((work.charge_result, False))
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

        self.session.track(asyncio.get_running_loop().create_task(run()))

    def _answer(self, answer: Answer) -> None:
        result, replayed = answer
        self.session.respond(self.rid, result, replayed)
        if not replayed:
            # Telemetry only, as on the task path: written with the transaction's next change.
            tx = self.service.cache.get(self.key)
            if tx is not None:
                tx.hops_us.setdefault("answered", now_us())
        self._end()

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, PaywireError):
            self.session.respond_error(self.rid, exc)
        elif not isinstance(exc, asyncio.CancelledError):  # cancelled: stopping, no answer
            log.error("charge %d failed", self.rid, exc_info=exc)
            self.session.respond_error(self.rid, PaywireError("internal error",
                                                              code=ErrorCode.INTERNAL))
        self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._slot and self._pool is not None:
            self._slot = False
            self._pool.release_slot()
        self.service.unlock_now(self.key, self.lock)
        self.service.finished(self.key)
        self.session.request_finished(self.rid)
