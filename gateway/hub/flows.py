"""Operations without a task: intent → bank → result → answer, driven by callbacks.

Why: a task per request that awaits three futures (intent commit, bank answer, result
commit) cost ~14 µs of CPU per charge on the project's machine (issue 12); the futures
themselves are needed, the task around them is not. A flow is one operation's state between
those futures: each future's done-callback runs the next step, in the same loop iteration as
every other operation whose future the same group commit (or the same batched bank answer)
resolved, so the next hop's writes are gathered too.

Two flows: ``ChargeFlow`` for a new charge, ``StepFlow`` for every later operation that
calls a bank (capture, cancel, expire, refund, approve, deny). Only the common case runs
here: nothing admitted earlier on the order is unfinished, its lock is free, the committed
transaction is in the cache and settled (for a step), and the first bank send finds a ready
node. An operation decided without the bank (a repeat, a refusal) is answered at once. Every
rule stays in one place: the plan, the decision, the intent, the result, the replay and the
settlement are the ``Runner`` and service methods the task path uses; when anything uncommon
happens (the order already on disk, a fraud denial, no node ready, a failed or unanswered
first send) the flow hands the rest to a task running those same methods, still holding the
order's lock and the bank slot, so nothing runs twice and the order's arrival order holds
(docs/protocol.md §4.5).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from gateway.hub.banklink import BankPool, FirstSend, note_answer
from gateway.hub.handler import Requester
from gateway.hub.runner import Answer, Runner, decided_now, repeated, unrecorded
from gateway.hub.txcache import Key
from gateway.transactions.decisions import BankCall, Decision, Refusal
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

    @property
    def runner(self) -> Runner: ...

    def request_hash(self, args: dict[str, Any]) -> bytes: ...

    def plan_charge(self, key: Key, args: dict[str, Any], received_us: int,
                    req_hash: bytes, *, sent_us: int | None = None) -> ChargePlan: ...

    def answered(self, key: Key, at_us: int) -> None: ...


def try_charge(requester: Requester, service: Planner, rid: int, key: Key,
               args: dict[str, Any], received_us: int, sent_us: int | None = None) -> bool:
    """Run a charge admitted by ``requester`` without a task if it is the common case (see
    the module docstring); ``False`` leaves it to the task path, with nothing done."""
    cached = service.runner.cache.get(key)
    if cached is not None:
        if cached.unresolved:
            return False
        # A repeat of an order this hub knows: answered now, exactly as the task would.
        _answer_now(requester, rid, lambda: repeated(cached, service.request_hash(args)))
        return True
    lock = service.runner.try_lock_now(key)
    if lock is None:
        return False
    ChargeFlow(requester, service, rid, key, lock).start(args, received_us, sent_us)
    return True


def try_step(requester: Requester, service: Planner, rid: int, key: Key,
             decide: Decider) -> bool:
    """Run a later operation on a cached, settled transaction without a task: answered at
    once when decided without the bank, else a ``StepFlow``; ``False`` leaves it to the
    task path (the transaction not cached, unresolved, or the lock taken), nothing done."""
    runner = service.runner
    tx = runner.cache.get(key)
    if tx is None or tx.unresolved:
        return False
    lock = runner.try_lock_now(key)
    if lock is None:
        return False
    try:
        decision = decide(tx)
    except BaseException:
        runner.unlock_now(key, lock)
        raise
    if not isinstance(decision, BankCall):
        runner.unlock_now(key, lock)
        _answer_now(requester, rid, lambda: decided_now(tx, decision))
        return True
    StepFlow(requester, service, rid, key, lock).start(tx, decision)
    return True


def _answer_now(requester: Requester, rid: int, answer: Callable[[], Answer]) -> None:
    """Send ``answer()`` (a repeat), or the refusal it raises."""
    try:
        result, replayed = answer()
    except PaywireError as exc:
        requester.respond_error(rid, exc)
        return
    requester.respond(rid, result, replayed)


class Decider(Protocol):
    def __call__(self, tx: Transaction) -> Decision: ...


class _Flow(abc.ABC):
    """One operation between its futures. Holds the order's lock (and, once its bank call is
    planned, the bank's slot) from start to answer, and ends exactly once."""

    __slots__ = ("_ended", "_first", "_pool", "_slot", "bank_args", "call", "key", "lock",
                 "requester", "rid", "runner", "service", "tx", "work")

    def __init__(self, requester: Requester, service: Planner, rid: int,
                 key: Key, lock: asyncio.Lock) -> None:
        self.requester = requester
        self.service = service
        self.runner = service.runner
        self.rid = rid
        self.key = key
        self.lock = lock
        self.tx: Transaction | None = None  # the committed state the operation started from
        self.call: BankCall | None = None
        self.work: Transaction | None = None  # the working copy the bank's answer changes
        self.bank_args: dict[str, Any] = {}
        self._pool: BankPool | None = None
        self._slot = False
        self._first: FirstSend | None = None
        self._ended = False

    def _begin(self) -> None:
        self.runner.admit(self.key)
        self.requester.request_started(self.rid)

    def _take_slot(self, tx: Transaction) -> None:
        assert tx.bank is not None
        self._pool = self.runner.pools[tx.bank]
        self._pool.take_slot()
        self._slot = True

    # --- the bank call and its answer (both flows) --------------------------------------------
    def _send(self) -> None:
        """The intent is durable and published: first send, or the task path if no node."""
        tx, work, call, pool = self.tx, self.work, self.call, self._pool
        assert tx is not None and work is not None and call is not None and pool is not None
        work.hops_us.setdefault("bank_sent", now_us())  # the charge's: see note_answer
        first = self._first = pool.send_first(call.op, self.bank_args)
        if first is None:
            # No node ready right now: the pool's own loop waits, retries or gives up.
            self._continue(self._after_call(self.runner._call_bank(work, call.op,
                                                                   self.bank_args)))
            return
        first.future.add_done_callback(self._bank_done)

    def _bank_done(self, fut: asyncio.Future[Any]) -> None:
        work, call, first = self.work, self.call, self._first
        assert work is not None and call is not None and first is not None
        try:
            result = BankPool.first_result(first)
            if result is None:
                exc: BaseException = (asyncio.CancelledError() if fut.cancelled()
                                      else fut.exception() or RuntimeError("no result"))
                self._continue(self._after_call(self.runner.call_bank_after_first(
                    work, call.op, self.bank_args, first, exc)))
                return
        except BaseException as exc:
            self._fail(exc)
            return
        note_answer(work.hops_us, result, now_us())
        try:
            commit, error = self._answered(result)
        except PaywireError as exc:  # the bank was asked: never "nothing happened"
            self._fail(unrecorded(exc))
            return
        except BaseException as exc:
            self._fail(exc)
            return

        def committed(done: asyncio.Future[int | None]) -> None:
            self._committed(done, error)

        commit.add_done_callback(committed)

    def _committed(self, fut: asyncio.Future[int | None], error: Refusal | None) -> None:
        work = self.work
        assert work is not None
        try:
            seq = fut.result()
        except PaywireError as exc:  # the writer failed or is gone: the outcome is unknown
            self._fail(unrecorded(exc))
            return
        except BaseException as exc:
            self._fail(exc)
            return
        try:
            self.runner.committed(work, seq)
            answer = self._answer_of(work, error)
        except BaseException as exc:  # the answer itself is a refusal (raised)
            self._fail(exc)
            return
        self._answer(answer)

    # --- what differs between the flows -------------------------------------------------------
    @abc.abstractmethod
    def _after_call(self, bank_call: Awaitable[dict[str, Any]]) -> Awaitable[Answer]:
        """The task path's rest of the operation, once its bank call is awaited there."""

    @abc.abstractmethod
    def _answered(self, result: dict[str, Any]
                  ) -> tuple[asyncio.Future[int | None], Refusal | None]:
        """Apply the bank's answer and start its commit; the refusal to answer with."""

    @abc.abstractmethod
    def _answer_of(self, work: Transaction, error: Refusal | None) -> Answer:
        """The committed operation's answer (a refusal is raised)."""

    # --- endings -----------------------------------------------------------------------------
    def _continue(self, rest: Awaitable[Answer]) -> None:
        """Hand the rest of the operation to a task (the uncommon case): it answers and ends
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
        try:
            self.requester.respond(self.rid, result, replayed)
            if not replayed:
                # Telemetry only, as on the task path: written with the next change.
                self.service.answered(self.key, now_us())
        finally:
            self._end()  # whatever sending raised: the order's lock is never left taken

    def _fail(self, exc: BaseException) -> None:
        try:
            if isinstance(exc, PaywireError):
                self.requester.respond_error(self.rid, exc)
            elif not isinstance(exc, asyncio.CancelledError):  # cancelled: no answer
                log.error("request %d failed", self.rid, exc_info=exc)
                self.requester.respond_error(self.rid, PaywireError(
                    "internal error", code=ErrorCode.INTERNAL))
        finally:
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


class ChargeFlow(_Flow):
    """A new charge: plan (fraud screen, route), intent inserted with the new record."""

    __slots__ = ("plan",)

    def start(self, args: dict[str, Any], received_us: int,
              sent_us: int | None = None) -> None:
        self._begin()
        try:
            plan = self.plan = self.service.plan_charge(
                self.key, args, received_us, self.service.request_hash(args), sent_us=sent_us)
            if plan.call is None:  # denied by the fraud screen
                self._continue(self.runner.record_denied(plan.tx))
                return
            self.tx, self.call = plan.tx, plan.call
            self._take_slot(plan.tx)
            self.runner.insert_intent(plan.tx, plan.call).add_done_callback(self._intent_done)
        except Exception as exc:
            self._fail(exc)

    def _intent_done(self, fut: asyncio.Future[Transaction | int | None]) -> None:
        plan = self.plan
        assert plan is not None and plan.call is not None
        try:
            stored = fut.result()
            if isinstance(stored, Transaction):
                self._continue(self.runner.charge_exists(self.key, stored,
                                                         plan.tx.request_hash))
                return
            self.work, self.bank_args = self.runner.intent_committed(plan.tx, plan.call,
                                                                     plan.card_args)
            self._send()
        except BaseException as exc:
            self._fail(exc)

    def _after_call(self, bank_call: Awaitable[dict[str, Any]]) -> Awaitable[Answer]:
        assert self.tx is not None and self.work is not None
        return self.runner.charge_after_call(self.tx, self.work, bank_call)

    def _answered(self, result: dict[str, Any]
                  ) -> tuple[asyncio.Future[int | None], Refusal | None]:
        assert self.work is not None
        return self.runner.charge_answered(self.work, result)

    def _answer_of(self, work: Transaction, error: Refusal | None) -> Answer:
        return self.runner.charge_answer(work, error)


class StepFlow(_Flow):
    """A later operation that calls the bank: the intent saved on a working copy."""

    __slots__ = ()

    def start(self, tx: Transaction, call: BankCall) -> None:
        self._begin()
        self.tx, self.call, self.bank_args = tx, call, call.args
        try:
            self._take_slot(tx)
            self.work, intent = self.runner.save_intent(tx, call)
            intent.add_done_callback(self._intent_done)
        except Exception as exc:
            self._fail(exc)

    def _intent_done(self, fut: asyncio.Future[int | None]) -> None:
        work = self.work
        assert work is not None
        try:
            fut.result()
            self.runner.step_intent_committed(work)
            self._send()
        except BaseException as exc:
            self._fail(exc)

    def _after_call(self, bank_call: Awaitable[dict[str, Any]]) -> Awaitable[Answer]:
        assert self.tx is not None and self.work is not None
        return self.runner.step_after_call(self.tx, self.work, bank_call)

    def _answered(self, result: dict[str, Any]
                  ) -> tuple[asyncio.Future[int | None], Refusal | None]:
        assert self.tx is not None and self.work is not None
        return self.runner.step_answered(self.tx, self.work, result)

    def _answer_of(self, work: Transaction, error: Refusal | None) -> Answer:
        return self.runner.step_answer(work, error)
