"""The runner: intent → bank → result → answer, one order at a time, in admission order.

Rules it keeps (DESIGN §4):

* Every bank call is preceded by a durable *intent* (``pending_op`` on the record) and
  followed by a durable result, so recovery always knows what may have happened.
* The client is answered only after the result is committed.
* Operations on one order run one at a time, in admission order (a lock per order; on a
  shared ledger also held in the database, across hubs: ``_OrderLock``). A
  session admits each request synchronously as it decodes it (``admit``); a ``status``
  admitted while earlier operations on its order are unfinished queues behind them on the
  same lock, so it reflects all of them (docs/protocol.md §4.5).
* An unanswered bank call is never guessed: inquiry first, then reversal, else the
  transaction stays unresolved (``OUTCOME_UNKNOWN``) until the resolver settles it.

What to call and what an answer means is decided in ``gateway.transactions.decisions``;
this module only does the I/O around those decisions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, cast

from gateway.hub.banklink import BankPool, FirstSend, note_answer
from gateway.hub.notifications import Notifier
from gateway.hub.txcache import Key, TxCache
from gateway.ledger.base import Ledger, SharedLedger
from gateway.stats import HopStats
from gateway.transactions import decisions
from gateway.transactions.decisions import BankCall, Refusal
from gateway.transactions.model import Transaction, now_ms, now_us
from protocol import banklink
from protocol.errors import (
    BankUnavailable,
    ErrorCode,
    NotFound,
    OutcomeUnknown,
    PaywireError,
    error_from_code,
)
from protocol.errors import DuplicateOrder as Conflict

__all__ = ["Answer", "Conflict", "NotFound", "Runner", "clone", "decided_now", "refused",
           "repeated", "unrecorded"]

log = logging.getLogger("paywire.runner")

Answer = tuple[dict[str, Any], bool]  # (result map, replayed?)


def refused(refusal: Refusal) -> PaywireError:
    """The exception that carries a decision's refusal to the session's answer: the class
    of its code (``protocol.errors``' registry)."""
    return error_from_code(refusal.code, refusal.message, refusal.field)


def repeated(stored: Transaction, request_hash: bytes) -> Answer:
    """The answer to a charge whose order exists (settled): the first charge's answer,
    replayed, or the refusal (different content, outcome not known yet), raised."""
    answer = decisions.repeat_charge(stored, request_hash)
    if isinstance(answer, Refusal):
        raise refused(answer)
    return answer, True


def decided_now(tx: Transaction, decision: decisions.Decision) -> Answer:
    """The answer to an operation decided without the bank: its repeat (the effect is
    there already) or its refusal, raised. A ``BankCall`` is not for here."""
    assert not isinstance(decision, BankCall)
    if isinstance(decision, Refusal):
        raise refused(decision)
    return tx.to_result(), True


def unrecorded(exc: PaywireError) -> PaywireError:
    """What to answer when the bank has been asked (and may have acted) but its answer could
    not be recorded (the ledger's queue full, the writer gone, an answer the table refuses):
    OUTCOME_UNKNOWN, never the error itself, whose code (QUEUE_FULL, SHUTTING_DOWN) would
    tell the merchant that nothing happened. The intent stays on disk and is settled."""
    if isinstance(exc, OutcomeUnknown):
        return exc
    return OutcomeUnknown(f"the bank was asked but its answer could not be recorded "
                          f"({exc.code.name}: {exc.message}); the operation may have taken "
                          f"effect: ask with status, or repeat the same request")


def clone(tx: Transaction) -> Transaction:
    """A working copy whose lists and dicts can change without touching the published one."""
    new = tx.copy()
    new.refunds = [dict(r) for r in tx.refunds]
    new.fraud_reasons = list(tx.fraud_reasons)
    new.hops_us = dict(tx.hops_us)
    return new


class Runner:
    def __init__(self, ledger: Ledger, pools: dict[str, BankPool], cache: TxCache,
                 notifier: Notifier) -> None:
        self.ledger = ledger
        self.pools = pools
        self.cache = cache
        self.notifier = notifier
        self._locks: dict[Key, asyncio.Lock] = {}
        # A ledger other hubs write too: each order's lock is also taken there, across hubs
        # (``_OrderLock``); ``None`` (SQLite) costs nothing.
        self.shared = cast(SharedLedger, ledger) if ledger.shared else None
        # Requests admitted per order and not finished yet (see ``admit``).
        self._admitted: dict[Key, int] = {}
        # The charges' per-hop latencies for /metrics (timed when the answer is sent).
        self.hops = HopStats()

    # --- admission order ------------------------------------------------------------------
    def lock(self, key: Key) -> _OrderLock:
        return _OrderLock(self._locks, key, self.shared)

    def try_lock_now(self, key: Key) -> asyncio.Lock | None:
        """The order's lock taken without waiting, or ``None`` if it is held or awaited:
        lets a callback-driven operation (``gateway.hub.flows``) hold the same lock the tasks take.
        ``Lock.acquire`` completes without suspending when the lock is free and nobody
        waits; it is driven here by hand for that case only."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        elif lock.locked() or getattr(lock, "_waiters", None):
            return None
        acquiring = lock.acquire()
        try:
            acquiring.send(None)
        except StopIteration:
            return lock
        acquiring.close()  # it would have waited: not the case this is for
        return None

    def unlock_now(self, key: Key, lock: asyncio.Lock) -> None:
        """Release a lock taken by ``try_lock_now`` (dropped when nobody waits for it)."""
        _release(self._locks, key, lock)

    def busy(self, key: Key) -> bool:
        """Whether an operation admitted earlier on this order has not finished yet."""
        return key in self._admitted

    def admit(self, key: Key) -> bool:
        """Count one request on ``key``, in the order the sessions decode them; return whether
        earlier ones are unfinished (then a ``status`` must wait for them). Each admitted
        request runs as a task whose first step takes the order's lock, tasks start in
        creation order and ``asyncio.Lock`` is FIFO: the lock order is the admission order.
        The caller pairs it with exactly one ``finished``."""
        n = self._admitted.get(key, 0)
        self._admitted[key] = n + 1
        return n > 0

    def finished(self, key: Key) -> None:
        n = self._admitted.get(key, 0) - 1
        if n > 0:
            self._admitted[key] = n
        else:
            self._admitted.pop(key, None)

    # --- committing -------------------------------------------------------------------------
    def publish(self, tx: Transaction, seq: int | None = None) -> None:
        """Make a committed state visible; with ``seq``, tell the listeners (events, webhooks)."""
        self.cache.put(tx)
        if seq is not None:
            self.notifier.changed(tx, seq)

    async def commit(self, tx: Transaction, previous_status: str | None) -> None:
        """Store the working copy; a status change writes its notifications in the same
        commit (transactional outbox). Then publish it."""
        self.committed(tx, await self.commit_start(tx, previous_status))

    def commit_start(self, tx: Transaction, previous_status: str | None,
                     shown: dict[str, Any] | None = None) -> asyncio.Future[int | None]:
        """``commit``'s write, resolved by the group commit with the event's seq. ``shown``:
        the merchant's view of ``tx`` in this state, if already built (see ``Notifier``)."""
        changed = previous_status != tx.status and not tx.unresolved
        return self.ledger.save(tx, self.notifier.notification(tx, shown) if changed else None)

    def committed(self, tx: Transaction, seq: int | None) -> None:
        """``commit``'s end, once the write is durable: publish (and notify)."""
        tx.hops_us.setdefault("committed", now_us())  # the charge's hops: later ones keep them
        self.publish(tx, seq)

    # --- the charge ---------------------------------------------------------------------------
    async def replay_charge(self, key: Key, stored: Transaction, request_hash: bytes) -> Answer:
        """A charge whose order exists: settle an unanswered first call, then answer as the
        first charge was answered (or refuse)."""
        if stored.unresolved:
            await self.resolve(stored)
            stored = self.cache[key]
        return repeated(stored, request_hash)

    async def charge(self, key: Key, tx: Transaction, call: BankCall,
                     card_args: dict[str, Any] | None) -> Answer:
        """Record the new transaction with its intent, call the bank, commit the answer.
        (``gateway.hub.flows`` runs the same steps without a task.)"""
        assert tx.bank is not None
        with self.pools[tx.bank].slot():
            stored = await self.insert_intent(tx, call)
            if isinstance(stored, Transaction):
                return await self.charge_exists(key, stored, tx.request_hash)
            work, args = self.intent_committed(tx, call, card_args)
            return await self.charge_after_call(tx, work, self._call_bank(work, call.op, args))

    def insert_intent(self, tx: Transaction, call: BankCall
                      ) -> asyncio.Future[Transaction | int | None]:
        """Write the new transaction with its intent: resolves to the stored transaction if
        the order exists on disk (nothing written)."""
        tx.pending_op = call.intent()
        return self.ledger.insert_new(tx)

    async def charge_exists(self, key: Key, stored: Transaction, request_hash: bytes
                            ) -> Answer:
        """The order exists on disk but had left the cache: answer as for a repeat."""
        self.publish(stored)
        return await self.replay_charge(key, stored, request_hash)

    def intent_committed(self, tx: Transaction, call: BankCall,
                         card_args: dict[str, Any] | None
                         ) -> tuple[Transaction, dict[str, Any]]:
        """The intent is durable: publish it; return the working copy the bank's answer will
        change, and the bank call's arguments."""
        tx.hops_us["intent_committed"] = now_us()
        self.publish(tx)
        args = call.args
        if card_args is not None:
            # Card details go to the issuer only; the intent on disk holds none of them.
            args = {**args, **card_args}
        return clone(tx), args

    async def charge_after_call(self, tx: Transaction, work: Transaction,
                                bank_call: Awaitable[dict[str, Any]]) -> Answer:
        """Await the charge's bank call, then record and answer its result."""
        try:
            result = await bank_call
        except BankUnavailable:
            # Provably nothing reached the bank: forget the intent so the merchant may
            # retry the same order id once the bank is back.
            await self.ledger.delete(tx)
            self.cache.forget(tx)
            raise
        try:
            commit, error = self.charge_answered(work, result)
            seq = await commit
        except PaywireError as exc:
            raise unrecorded(exc) from None
        self.committed(work, seq)
        return self.charge_answer(work, error)

    def charge_answered(self, work: Transaction, result: dict[str, Any]
                        ) -> tuple[asyncio.Future[int | None], Refusal | None]:
        """Apply the bank's answer to the working copy and start its commit (the first
        resolved state is news even if "pending"); the refusal to answer with, if any."""
        effect = decisions.effect_of_answer(work, result, now_ms())
        decisions.apply_effect(work, effect)
        # The charge's op is a defining one: apply_effect has just built the answer a repeat
        # gets (charge_result) from this state; the event and webhook show the same map
        # without the hop times, so it is not built a second time.
        answer = work.charge_result
        shown = None if answer is None else {k: v for k, v in answer.items() if k != "hops_us"}
        return self.commit_start(work, None, shown), effect.error

    def charge_answer(self, work: Transaction, error: Refusal | None) -> Answer:
        """The committed charge's answer (or its refusal, raised)."""
        if error is not None:
            raise refused(error)
        assert work.charge_result is not None
        self.hops.await_answer((work.merchant_id, work.order_id), work.hops_us)
        return work.charge_result, False

    async def record_denied(self, tx: Transaction) -> Answer:
        """A charge the fraud screen denied: record it and answer; no bank ever sees it."""
        tx.charge_result = tx.to_result()
        stored = await self.ledger.insert_new(tx, self.notifier.notification(tx))
        if isinstance(stored, Transaction):
            # The order exists on disk but had left the cache: a repeat, answered from what
            # is stored (OUTCOME_UNKNOWN while its first bank call is unanswered).
            self.publish(stored)
            return repeated(stored, tx.request_hash)
        tx.hops_us["committed"] = now_us()
        self.publish(tx, stored)
        self.hops.await_answer((tx.merchant_id, tx.order_id), tx.hops_us)
        return tx.charge_result, False

    # --- later operations -----------------------------------------------------------------------
    async def step(self, tx: Transaction, call: BankCall) -> Answer:
        """Intent, bank call, result: the shape of every operation after the charge.
        (``gateway.hub.flows`` runs the same steps without a task.)"""
        assert tx.bank is not None
        with self.pools[tx.bank].slot():
            work, intent = self.save_intent(tx, call)
            await intent
            self.step_intent_committed(work)
            return await self.step_after_call(tx, work,
                                              self._call_bank(work, call.op, call.args))

    def save_intent(self, tx: Transaction, call: BankCall
                    ) -> tuple[Transaction, asyncio.Future[int | None]]:
        """The working copy with the operation's intent, and its write."""
        work = clone(tx)
        work.pending_op = call.intent()
        return work, self.ledger.save(work)

    def step_intent_committed(self, work: Transaction) -> None:
        """The intent is durable: publish it (a copy: the working one changes on)."""
        self.publish(clone(work))

    async def step_after_call(self, tx: Transaction, work: Transaction,
                              bank_call: Awaitable[dict[str, Any]]) -> Answer:
        """Await the operation's bank call, then record and answer its result."""
        result = await bank_call
        try:
            commit, error = self.step_answered(tx, work, result)
            seq = await commit
        except PaywireError as exc:
            raise unrecorded(exc) from None
        self.committed(work, seq)
        return self.step_answer(work, error)

    def step_answered(self, tx: Transaction, work: Transaction, result: dict[str, Any]
                      ) -> tuple[asyncio.Future[int | None], Refusal | None]:
        """Apply the bank's answer to the working copy and start its commit (news if the
        status changed from ``tx``'s); the refusal to answer with, if any."""
        effect = decisions.effect_of_answer(work, result, now_ms())
        decisions.apply_effect(work, effect)
        return self.commit_start(work, tx.status), effect.error

    @staticmethod
    def step_answer(work: Transaction, error: Refusal | None) -> Answer:
        if error is not None:
            raise refused(error)
        return work.to_result(), False

    async def paid(self, tx: Transaction, paid_ms: int) -> None:
        """A customer's payment reported by the bank (the order's lock is held)."""
        effect = decisions.payment_effect(tx, paid_ms)
        if effect is None:
            return
        work = clone(tx)
        decisions.apply_effect(work, effect)
        await self.commit(work, tx.status)

    # --- bank calls and unknown outcomes ----------------------------------------------------------
    async def _call_bank(self, tx: Transaction, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send one bank op whose intent is already durable. Unknown outcomes are settled here
        when the bank can be reached; otherwise ``OutcomeUnknown`` leaves the intent on disk."""
        assert tx.bank is not None
        tx.hops_us.setdefault("bank_sent", now_us())
        try:
            result = await self.pools[tx.bank].call(op, args)
        except OutcomeUnknown:
            result = await self._settle_unknown(tx)
        note_answer(tx.hops_us, result, now_us())
        return result

    async def call_bank_after_first(self, tx: Transaction, op: str, args: dict[str, Any],
                                    first: FirstSend, exc: BaseException) -> dict[str, Any]:
        """``_call_bank`` for a call whose first send (``BankPool.send_first``) failed with
        ``exc``: the pool's remaining attempts, then the same settlement."""
        assert tx.bank is not None
        try:
            result = await self.pools[tx.bank].call_after_first(first, exc, op, args)
        except OutcomeUnknown:
            result = await self._settle_unknown(tx)
        note_answer(tx.hops_us, result, now_us())
        return result

    async def _settle_unknown(self, tx: Transaction) -> dict[str, Any]:
        """The intent's op may or may not have happened: find out, or make sure it did not."""
        assert tx.pending_op is not None and tx.bank is not None
        pool = self.pools[tx.bank]
        plan = decisions.unknown_outcome(tx)
        # One call budget for the whole settlement (inquiry and reversal share it), so an
        # operation is answered within 2 budgets of its first send (docs/protocol.md §5.3).
        deadline_s = pool.deadline()
        try:
            if isinstance(plan, decisions.Resend):
                return await pool.call(plan.call.op, plan.call.args, deadline_s)
            found = await pool.call(plan.inquiry.op, plan.inquiry.args, deadline_s)
            if found["found"]:
                result: dict[str, Any] = found["result"]
                defect = banklink.answer_defect(tx.pending_op["op"], result)
                if defect is None:
                    return result
                # The bank did something under that op id, but what it stored cannot be
                # read (docs/protocol.md §10.4): undo it, as for an op it never saw.
                log.warning("%s of %s: the bank's stored answer is unreadable (%s); "
                            "reversing it", tx.pending_op["op"], tx.transaction_id, defect)
            await pool.call(plan.reversal.op, plan.reversal.args, deadline_s)
            return decisions.reversed_answer()
        except (BankUnavailable, OutcomeUnknown) as exc:
            raise OutcomeUnknown(f"bank {tx.bank} unreachable while settling "
                                 f"{tx.pending_op['op']}: {exc.message}") from None

    async def resolve(self, tx: Transaction) -> None:
        """Settle an unresolved intent (recovery, or a request touching such an order)."""
        work = clone(tx)
        assert work.pending_op is not None
        defining = work.pending_op["op"] in decisions.DEFINING_OPS
        result = await self._settle_unknown(work)
        decisions.apply_effect(work, decisions.effect_of_answer(work, result, now_ms()))
        await self.commit(work, None if defining else tx.status)

    async def resolve_key(self, key: Key) -> None:
        async with self.lock(key):
            tx = await self.cache.load(key)
            if tx is not None and tx.unresolved:
                await self.resolve(tx)


# How long an operation waits for an order another hub is working on (a shared ledger): more
# than that hub's longest hold, one operation with its bank settlement (two call budgets).
ORDER_LOCK_WAIT_S = 60.0


class _OrderLock:
    """An asyncio.Lock per order key, created on first use and dropped when idle; on a shared
    ledger, also the order's lock in the database, so operations on one order run one at a
    time across every hub (taken after the local one: a hub asks the database once per
    order at a time, and its own requests keep their admission order)."""

    __slots__ = ("_key", "_lock", "_locks", "_shared")

    def __init__(self, locks: dict[Key, asyncio.Lock], key: Key,
                 shared: SharedLedger | None = None) -> None:
        self._locks = locks
        self._key = key
        self._shared = shared
        lock = locks.get(key)
        if lock is None:
            lock = locks[key] = asyncio.Lock()
        self._lock = lock

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        if self._shared is None:
            return
        try:
            got = await self._shared.lock_order(*self._key, ORDER_LOCK_WAIT_S)
        except BaseException:
            _release(self._locks, self._key, self._lock)
            raise
        if not got:
            _release(self._locks, self._key, self._lock)
            raise PaywireError(f"order {self._key[1]!r} is busy on another hub for more than "
                               f"{ORDER_LOCK_WAIT_S:g} s; retry", code=ErrorCode.TIMEOUT)

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._shared is not None:
                await self._shared.unlock_order(*self._key)
        except PaywireError:
            # The lock connection failed: the ledger has died and the hub is stopping; the
            # order's lock went with the session. The operation's own outcome stands.
            pass
        finally:
            _release(self._locks, self._key, self._lock)


def _release(locks: dict[Key, asyncio.Lock], key: Key, lock: asyncio.Lock) -> None:
    lock.release()
    if not lock.locked() and locks.get(key) is lock:
        waiters = getattr(lock, "_waiters", None)
        if not waiters:
            del locks[key]
