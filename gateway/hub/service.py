"""The transaction service: what each operation does to a transaction and to the bank.

Rules this module keeps (DESIGN §4):

* Every bank call is preceded by a durable *intent* (``pending_op`` on the record) and
  followed by a durable result, so recovery always knows what may have happened.
* The client is answered only after the result is committed.
* Operations on one order run one at a time, in admission order (a lock per order). A
  session admits each request synchronously as it decodes it (``admit``); a ``status``
  admitted while earlier operations on its order are unfinished queues behind them on the
  same lock, so it reflects all of them (docs/protocol.md §4.5).
* Records are copy-on-write: the working copy is published to the cache only after its
  commit, so a concurrent ``status`` never sees a state that is not on disk.
* An unanswered bank call is never guessed: inquiry first, then reversal, else the
  transaction stays unresolved (``OUTCOME_UNKNOWN``) until the resolver settles it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from gateway.config import HubConfig
from gateway.fraud import FraudEngine, Screening
from gateway.hub.banklink import BankPool, FirstSend
from gateway.hub.routing import Router
from gateway.ledger.base import Ledger, Notification
from gateway.transactions import states
from gateway.transactions.model import Transaction, card_brand, now_ms, now_us, time_ordered_id
from gateway.webhooks.payload import notification_body_parts
from protocol import banklink
from protocol import body as bodycodec
from protocol.errors import (
    BankUnavailable,
    BodyError,
    ErrorCode,
    NotFound,
    OutcomeUnknown,
    PaywireError,
)
from protocol.errors import DuplicateOrder as Conflict
from protocol.operations import (
    EXPIRY_S_MAX,
    FraudStatus,
    Operation,
    PaymentType,
    mask_card,
)
from protocol.operations import TransactionStatus as S
from protocol.signing import hmac_sha256

log = logging.getLogger("paywire.service")

# Refunds one transaction may have. Its result lists them all, in every status answer and
# event: without a bound, a merchant's many tiny refunds would grow that result past any
# body limit a client can negotiate (and past the 256 items of a collection, protocol §2.2).
# 100 refunds of the longest reason and key stay within the default 64 KiB body.
REFUNDS_PER_TRANSACTION_MAX = 100

Key = tuple[str, str]
# Called after a committed status change with the transaction and its event sequence number.
ChangeListener = Callable[[Transaction, int], None]


class ChargePlan(NamedTuple):
    """A new charge as decided before anything is written (``plan_charge``)."""

    tx: Transaction  # the record, status pending (or deny when ``denied``)
    op: str  # the bank operation: authorize or open_payment
    bank_args: dict[str, Any]  # what the intent records (no card details)
    card_args: dict[str, Any] | None  # card details, for the issuer only
    req_hash: bytes
    number: str | None  # the card number, if a card
    denied: bool  # denied by the fraud screen: recorded and answered, no bank call


# Bank operations whose outcome defines the transaction: after a timeout they are settled by
# inquiry then reversal, never re-sent (the hub does not keep card numbers to re-send).
_DEFINING_OPS = frozenset({banklink.AUTHORIZE, banklink.OPEN_PAYMENT})


def clone(tx: Transaction) -> Transaction:
    """A working copy whose lists and dicts can change without touching the published one."""
    new = tx.copy()
    new.refunds = [dict(r) for r in tx.refunds]
    new.fraud_reasons = list(tx.fraud_reasons)
    new.hops_us = dict(tx.hops_us)
    return new


class TransactionService:
    def __init__(self, cfg: HubConfig, ledger: Ledger, pools: dict[str, BankPool],
                 router: Router, fraud: FraudEngine, idempotency_key: bytes) -> None:
        self.cfg = cfg
        self.fraud = fraud
        self.merchants = {m.id: m for m in cfg.merchants}
        self.currencies = frozenset(cfg.currencies)
        self.ledger = ledger
        self.pools = pools
        self.router = router
        self.hash_key = idempotency_key  # its own secret: never the link or fingerprint key
        self.cache: OrderedDict[Key, Transaction] = OrderedDict()
        self.by_txid: dict[str, Key] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        # Requests admitted per order and not finished yet (see ``admit``).
        self._admitted: dict[Key, int] = {}
        self._expiries: dict[Key, int] = {}
        self._challenges: dict[Key, int] = {}
        self.listeners: list[ChangeListener] = []
        self.unresolved: set[Key] = set()

    # --- cache -----------------------------------------------------------------------------
    def publish(self, tx: Transaction, seq: int | None = None) -> None:
        """Make a committed state visible; with ``seq``, tell listeners (events, webhooks)."""
        key = (tx.merchant_id, tx.order_id)
        self.cache[key] = tx
        self.cache.move_to_end(key)
        self.by_txid[tx.transaction_id] = key
        while len(self.cache) > self.cfg.cache_entries_max:
            _, old = self.cache.popitem(last=False)
            self.by_txid.pop(old.transaction_id, None)
        if tx.unresolved:
            self.unresolved.add(key)
        else:
            self.unresolved.discard(key)
        if tx.status == S.PENDING and tx.expiry_ms is not None and not tx.unresolved:
            self._expiries[key] = tx.expiry_ms
        else:
            self._expiries.pop(key, None)
        if tx.status == S.AUTHORIZE and tx.fraud_status == FraudStatus.CHALLENGE \
                and not tx.unresolved:
            self._challenges[key] = tx.created_ms + int(self.cfg.fraud.challenge_timeout_s * 1000)
        else:
            self._challenges.pop(key, None)
        if seq is not None:
            for listener in self.listeners:
                # The change is committed: a listener's failure must not become the
                # answer of the request that made it (the money has moved) nor keep the
                # other listeners from hearing of it. Events and webhooks are in the
                # outbox anyway, and a subscriber resumes with events_since.
                try:
                    listener(tx, seq)
                except Exception:
                    log.exception("change listener failed for %s (seq %d); the change "
                                  "stands", tx.transaction_id, seq)

    async def load(self, key: Key) -> Transaction | None:
        tx = self.cache.get(key)
        if tx is not None:
            return tx
        tx = await self.ledger.get(*key)
        if tx is not None and key not in self.cache:
            self.publish(tx)
        return self.cache.get(key, tx)

    async def load_by_id(self, transaction_id: str) -> Transaction | None:
        key = self.by_txid.get(transaction_id)
        if key is not None:
            return await self.load(key)
        tx = await self.ledger.get_by_id(transaction_id)
        if tx is not None:
            return await self.load((tx.merchant_id, tx.order_id))
        return None

    def lock(self, key: Key) -> _OrderLock:
        return _OrderLock(self._locks, key)

    def try_lock_now(self, key: Key) -> asyncio.Lock | None:
        """The order's lock taken without waiting, or ``None`` if it is held or awaited:
        lets a callback-driven operation hold the same lock the tasks take. ``Lock.acquire``
        completes without suspending when the lock is free and nobody waits; it is driven
        here by hand for that case only."""
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

    # --- admission order ----------------------------------------------------------------------
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

    # --- the entry point -------------------------------------------------------------------
    async def execute(self, merchant_id: str, op: Operation, args: dict[str, Any],
                      received_us: int, *, after_earlier: bool = False
                      ) -> tuple[dict[str, Any], bool]:
        """Run one validated operation; return (result map, replayed?). ``after_earlier``:
        a ``status`` admitted behind unfinished operations on its order waits for them."""
        key = (merchant_id, args["order_id"])
        if op is Operation.STATUS:
            if after_earlier:
                async with self.lock(key):
                    return await self._status(key, args)
            return await self._status(key, args)
        async with self.lock(key):
            if op is Operation.CHARGE:
                return await self._charge(key, args, received_us)
            tx = await self.load(key)
            if tx is None:
                raise NotFound(f"no transaction for order {args['order_id']!r}")
            if tx.unresolved:
                await self._resolve(tx)
                tx = self.cache[key]
            handler = _HANDLERS[op]
            result: tuple[dict[str, Any], bool] = await handler(self, tx, args)
            return result

    async def _status(self, key: Key, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        tx = await self.load(key)
        if tx is None:
            raise NotFound(f"no transaction for order {args['order_id']!r}")
        if tx.pending_op is not None and tx.pending_op["op"] in _DEFINING_OPS:
            # Only the intent is on disk: "pending" would be a guess. Say so instead.
            raise OutcomeUnknown("the bank has not answered this charge yet; ask again")
        return tx.to_result(), False

    # --- charge ----------------------------------------------------------------------------
    def request_hash(self, args: dict[str, Any]) -> bytes:
        """Fingerprint of a charge for idempotency; keyed, and without the CVV, because a
        plain hash of a card number can be reversed by trying every number of a BIN."""
        material = dict(args)
        if "card" in material:
            material["card"] = {k: v for k, v in material["card"].items() if k != "cvv"}
        return hmac_sha256(self.hash_key, bodycodec.canonical(material))[:16]

    def _replay(self, tx: Transaction, req_hash: bytes) -> tuple[dict[str, Any], bool]:
        if not hmac.compare_digest(tx.request_hash, req_hash):
            raise Conflict(f"order {tx.order_id!r} exists with different content",
                           field="args.order_id")
        if tx.unresolved or tx.charge_result is None:
            raise OutcomeUnknown("the bank's answer for this order is not known yet; "
                                 "retry later")
        return tx.charge_result, True

    async def _charge(self, key: Key, args: dict[str, Any], received_us: int,
                      plan: ChargePlan | None = None) -> tuple[dict[str, Any], bool]:
        """A charge in a task: the general case (``ChargeFlow`` runs the common one without
        a task). ``plan``: already made by ``plan_charge`` for this request (its fraud
        screen has counted the charge in the velocity windows, so it is never made twice)."""
        if plan is None:
            req_hash = self.request_hash(args)
            existing = await self.load(key) if key in self.cache else None
            if existing is not None:
                if existing.unresolved:
                    await self._resolve(existing)
                    existing = self.cache[key]
                return self._replay(existing, req_hash)
            plan = self.plan_charge(key, args, received_us, req_hash)
        tx = plan.tx
        if plan.denied:
            return await self._deny_by_screen(key, tx, plan.number, plan.req_hash)
        assert tx.bank is not None
        with self.pools[tx.bank].slot():
            return await self._charge_at_bank(key, tx, plan.op, plan.bank_args,
                                              plan.card_args, plan.req_hash)

    def plan_charge(self, key: Key, args: dict[str, Any], received_us: int,
                    req_hash: bytes) -> ChargePlan:
        """Everything about a new charge decided before anything is written: the record,
        the fraud verdict (counted in the velocity windows now), the route and the bank
        operation. Synchronous, so the pipeline can make it without a task; raises the
        request's error (e.g. a currency this hub does not accept)."""
        if args["currency"] not in self.currencies:
            raise BodyError(f"args.currency: {args['currency']!r} is not a currency this hub "
                            f"accepts ({', '.join(self.cfg.currencies)})",
                            code=ErrorCode.INVALID_FIELD, field="args.currency")
        ptype = args["payment_type"]
        txid = time_ordered_id()
        created = now_ms()
        tx = Transaction(
            transaction_id=txid, merchant_id=key[0], order_id=key[1],
            gross_amount=args["gross_amount"], currency=args["currency"], payment_type=ptype,
            status=S.PENDING.value, fraud_status=FraudStatus.ACCEPT.value,
            request_hash=req_hash, created_ms=created, updated_ms=created,
            capture_requested=args["capture"], customer=args.get("customer"),
        )
        tx.hops_us["received"] = received_us
        customer = args.get("customer") or {}
        number = args["card"]["number"] if ptype == PaymentType.CREDIT_CARD else None
        verdict = self.fraud.screen(Screening(
            key[0], tx.gross_amount, tx.currency, number, customer.get("email"),
            customer.get("ip"), customer.get("country")), created / 1000)
        tx.fraud_reasons = verdict.reasons
        tx.card_fingerprint = verdict.card_fingerprint
        if verdict.status is FraudStatus.DENY:
            return ChargePlan(tx, "", {}, None, req_hash, number, True)
        bank_args: dict[str, Any]
        if number is not None:
            tx.bank = self.router.for_card(number)
            tx.masked_card = mask_card(number)
            tx.card_brand = card_brand(number)
            if verdict.status is FraudStatus.CHALLENGE:
                # Held for review: authorize only; approve captures, deny voids.
                tx.fraud_status = FraudStatus.CHALLENGE.value
                tx.capture_requested = False
            op = banklink.AUTHORIZE
            bank_args = {"op_id": f"{txid}:authorize", "transaction_id": txid,
                         "amount": tx.gross_amount, "currency": tx.currency,
                         "capture": tx.capture_requested}
        else:
            if ptype == PaymentType.BANK_TRANSFER:
                tx.bank = self.router.for_virtual_account(args["bank"])
                kind = "va"
            else:
                tx.provider = args["provider"]
                tx.bank = self.router.for_ewallet(args["provider"])
                kind = "ewallet"
            expiry_s = min(args.get("expiry_s") or self.cfg.pending_expiry_default_s,
                           EXPIRY_S_MAX)
            tx.expiry_ms = created + expiry_s * 1000
            op = banklink.OPEN_PAYMENT
            bank_args = {"op_id": f"{txid}:open", "transaction_id": txid, "kind": kind,
                         "amount": tx.gross_amount, "currency": tx.currency,
                         "expiry_ms": tx.expiry_ms, "merchant_id": tx.merchant_id}
        card_args = None if number is None else {
            "account": number, "exp_month": args["card"]["exp_month"],
            "exp_year": args["card"]["exp_year"]}
        return ChargePlan(tx, op, bank_args, card_args, req_hash, number, False)

    async def _charge_at_bank(self, key: Key, tx: Transaction, op: str,
                              bank_args: dict[str, Any], card_args: dict[str, Any] | None,
                              req_hash: bytes) -> tuple[dict[str, Any], bool]:
        tx.pending_op = {"op": op, "op_id": bank_args["op_id"], "args": bank_args}
        stored = await self.ledger.insert_new(tx)
        if isinstance(stored, Transaction):
            return await self.charge_exists(key, stored, req_hash)
        work, bank_args = self.intent_committed(tx, bank_args, card_args)
        return await self.charge_after_call(tx, work, self._call_bank(work, op, bank_args))

    async def charge_exists(self, key: Key, stored: Transaction, req_hash: bytes
                            ) -> tuple[dict[str, Any], bool]:
        """The order exists on disk but had left the cache: answer as for a repeat."""
        self.publish(stored)
        if stored.unresolved:
            await self._resolve(stored)
            stored = self.cache[key]
        return self._replay(stored, req_hash)

    def intent_committed(self, tx: Transaction, bank_args: dict[str, Any],
                         card_args: dict[str, Any] | None
                         ) -> tuple[Transaction, dict[str, Any]]:
        """The charge's intent is durable: publish it; return the working copy the bank's
        answer will change and the bank call's arguments."""
        tx.hops_us["intent_committed"] = now_us()
        self.publish(tx)
        if card_args is not None:
            # Card details go to the issuer only; the intent on disk holds none of them.
            bank_args = {**bank_args, **card_args}
        return clone(tx), bank_args

    async def charge_after_call(self, tx: Transaction, work: Transaction,
                                bank_call: Awaitable[dict[str, Any]]
                                ) -> tuple[dict[str, Any], bool]:
        """Await the charge's bank call, then record and answer its result."""
        try:
            result = await bank_call
        except BankUnavailable:
            # Provably nothing reached the bank: forget the intent so the merchant may retry
            # the same order id once the bank is back.
            await self.ledger.delete(tx)
            self._forget(tx)
            raise
        err = self._apply(work, result)
        await self._commit(work, None)  # the first resolved state is news even if "pending"
        if err is not None:
            raise err
        assert work.charge_result is not None
        return work.charge_result, False

    async def _deny_by_screen(self, key: Key, tx: Transaction, number: str | None,
                              req_hash: bytes) -> tuple[dict[str, Any], bool]:
        """The fraud screen said deny: record it and answer; no bank ever sees it."""
        if number is not None:
            tx.masked_card = mask_card(number)
            tx.card_brand = card_brand(number)
        tx.fraud_status = FraudStatus.DENY.value
        tx.decline_reason = "denied by fraud screening"
        tx.set_status(S.DENY)
        tx.charge_result = tx.to_result()
        stored = await self.ledger.insert_new(tx, self._notification(tx))
        if isinstance(stored, Transaction):
            self.publish(stored)
            return self._replay(stored, req_hash)
        tx.hops_us["committed"] = now_us()
        self.publish(tx, stored)
        return tx.charge_result, False

    # --- bank calls and their results ---------------------------------------------------------
    async def _call_bank(self, tx: Transaction, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send one bank op whose intent is already durable. Unknown outcomes are settled here
        when the bank can be reached; otherwise ``OutcomeUnknown`` leaves the intent on disk."""
        assert tx.bank is not None
        tx.hops_us["bank_sent"] = now_us()
        try:
            result = await self.pools[tx.bank].call(op, args)
        except OutcomeUnknown:
            result = await self._settle_unknown(tx)
        tx.hops_us["bank_answered"] = now_us()
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
        tx.hops_us["bank_answered"] = now_us()
        return result

    async def _settle_unknown(self, tx: Transaction) -> dict[str, Any]:
        """The intent's op may or may not have happened: find out, or make sure it did not."""
        pending = tx.pending_op
        assert pending is not None and tx.bank is not None
        pool = self.pools[tx.bank]
        op, op_id = pending["op"], pending["op_id"]
        # One call budget for the whole settlement (inquiry and reversal share it), so an
        # operation is answered within 2 budgets of its first send (docs/protocol.md §5.3).
        deadline_s = pool.deadline()
        try:
            if op not in _DEFINING_OPS:
                # forward: same op id again
                return await pool.call(op, pending["args"], deadline_s)
            found = await pool.call(banklink.INQUIRY, {"op_id": op_id}, deadline_s)
            if found["found"]:
                result: dict[str, Any] = found["result"]
                return result
            await pool.call(banklink.REVERSE, {"op_id": f"{op_id}:reverse",
                                               "transaction_id": tx.transaction_id,
                                               "target_op_id": op_id}, deadline_s)
            return {"approved": False, "ok": False, "reversed": True,
                    "reason": "the bank did not answer in time; the request was reversed"}
        except (BankUnavailable, OutcomeUnknown) as exc:
            raise OutcomeUnknown(f"bank {tx.bank} unreachable while settling {op}: "
                                 f"{exc.message}") from None

    def _apply(self, tx: Transaction, result: dict[str, Any]) -> PaywireError | None:
        """Apply a bank answer to the working copy named by its ``pending_op``."""
        pending = tx.pending_op
        assert pending is not None
        op, args = pending["op"], pending["args"]
        tx.pending_op = None
        err: PaywireError | None = None
        if result.get("reversed"):
            tx.decline_reason = result.get("reason")
            if op in _DEFINING_OPS:
                tx.set_status(S.FAILURE)
        elif op == banklink.AUTHORIZE:
            if result["approved"]:
                if result["captured"]:
                    tx.captured_amount = tx.gross_amount
                    tx.set_status(S.CAPTURE)
                else:
                    tx.set_status(S.AUTHORIZE)
            else:
                tx.decline_reason = result.get("reason")
                tx.set_status(S.DENY)
        elif op == banklink.OPEN_PAYMENT:
            if result.get("ok"):
                tx.va_number = result["number"]
                tx.updated_ms = now_ms()
            else:
                tx.decline_reason = result.get("reason")
                tx.set_status(S.FAILURE)
        elif op == banklink.CAPTURE:
            if result.get("ok"):
                tx.captured_amount = args["amount"]
                tx.set_status(S.CAPTURE)
                if pending.get("fraud_review"):
                    tx.fraud_status = FraudStatus.ACCEPT.value
            else:
                err = states.InvalidTransition(f"bank refused capture: {result.get('reason')}")
        elif op == banklink.VOID:
            if result.get("ok"):
                if pending.get("fraud_review"):
                    tx.fraud_status = FraudStatus.DENY.value
                    tx.set_status(S.DENY)
                else:
                    tx.set_status(S.CANCEL)
            else:
                err = states.InvalidTransition(f"bank refused void: {result.get('reason')}")
        elif op == banklink.REFUND:
            if result.get("ok"):
                tx.refunds.append({"refund_key": pending["refund_key"], "amount": args["amount"],
                                   "time_ms": now_ms(), "reason": pending.get("reason")})
                tx.refunded_amount += args["amount"]
                tx.set_status(S.REFUND if tx.refunded_amount >= tx.captured_amount
                              else S.PARTIAL_REFUND)
            else:
                err = states.InvalidTransition(f"bank refused refund: {result.get('reason')}")
        elif op == banklink.CLOSE_PAYMENT:
            if result.get("closed"):
                tx.set_status(S.EXPIRE if args["reason"] == "expire" else S.CANCEL)
            elif result.get("paid"):
                self._settle(tx, result.get("paid_ms") or now_ms())
                err = states.InvalidTransition("the customer has already paid; "
                                               "the transaction is settled")
        if op in _DEFINING_OPS:
            tx.charge_result = tx.to_result()
        return err

    def _settle(self, tx: Transaction, paid_ms: int) -> None:
        tx.captured_amount = tx.gross_amount
        tx.set_status(S.SETTLEMENT)
        tx.settlement_ms = paid_ms

    def _notification(self, tx: Transaction) -> Notification:
        """Event data and webhook body, built here: the ledger stores bytes, and only the
        hub holds the merchants' server keys."""
        merchant = self.merchants.get(tx.merchant_id)
        result = tx.to_result(with_hops=False)
        url = merchant.webhook_url if merchant else None
        head, tail = (notification_body_parts(result, merchant.server_key)
                      if merchant and url else (b"", b""))
        return Notification(bodycodec.pack(result), url, head, tail)

    async def _commit(self, tx: Transaction, previous_status: str | None) -> None:
        """Store the working copy; a status change writes its notifications in the same
        commit (transactional outbox). Then publish it."""
        self.committed(tx, await self.commit_start(tx, previous_status))

    def commit_start(self, tx: Transaction, previous_status: str | None
                     ) -> asyncio.Future[int | None]:
        """``_commit``'s write, resolved by the group commit with the event's seq."""
        changed = previous_status != tx.status and not tx.unresolved
        return self.ledger.save(tx, self._notification(tx) if changed else None)

    def committed(self, tx: Transaction, seq: int | None) -> None:
        """``_commit``'s end, once the write is durable: publish (and notify)."""
        tx.hops_us["committed"] = now_us()
        self.publish(tx, seq)

    async def _run_step(self, tx: Transaction, op: str, args: dict[str, Any],
                        **extra: Any) -> tuple[dict[str, Any], bool]:
        """Intent, bank call, result: the shape of every operation after the charge."""
        assert tx.bank is not None
        with self.pools[tx.bank].slot():
            return await self._step_at_bank(tx, op, args, **extra)

    async def _step_at_bank(self, tx: Transaction, op: str, args: dict[str, Any],
                            **extra: Any) -> tuple[dict[str, Any], bool]:
        work = clone(tx)
        work.pending_op = {"op": op, "op_id": args["op_id"], "args": args, **extra}
        await self.ledger.save(work)
        self.publish(clone(work))
        result = await self._call_bank(work, op, args)
        err = self._apply(work, result)
        await self._commit(work, tx.status)
        if err is not None:
            raise err
        return work.to_result(), False

    async def _resolve(self, tx: Transaction) -> None:
        """Settle an unresolved intent (recovery, or a request touching such an order)."""
        work = clone(tx)
        assert work.pending_op is not None
        defining = work.pending_op["op"] in _DEFINING_OPS
        result = await self._settle_unknown(work)
        self._apply(work, result)
        await self._commit(work, None if defining else tx.status)

    def _forget(self, tx: Transaction) -> None:
        key = (tx.merchant_id, tx.order_id)
        self.cache.pop(key, None)
        self.by_txid.pop(tx.transaction_id, None)
        self.unresolved.discard(key)
        self._expiries.pop(key, None)

    # --- the other operations ---------------------------------------------------------------
    async def _capture(self, tx: Transaction, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        amount = args.get("gross_amount") or tx.gross_amount
        if tx.status == S.CAPTURE and tx.captured_amount == amount:
            return tx.to_result(), True
        if tx.fraud_status == FraudStatus.CHALLENGE:
            raise states.InvalidTransition("transaction is held for fraud review; "
                                           "use approve or deny")
        states.check(S(tx.status), S.CAPTURE, "capture")
        if tx.payment_type != PaymentType.CREDIT_CARD or tx.status != S.AUTHORIZE:
            raise states.InvalidTransition("only an authorized card transaction can be "
                                           "captured")
        if amount > tx.gross_amount:
            raise PaywireError("capture amount exceeds the authorized amount",
                               code=ErrorCode.INVALID_FIELD, field="args.gross_amount")
        return await self._run_step(tx, banklink.CAPTURE, {
            "op_id": f"{tx.transaction_id}:capture", "transaction_id": tx.transaction_id,
            "amount": amount})

    async def _cancel(self, tx: Transaction, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if tx.status == S.CANCEL:
            return tx.to_result(), True
        states.check(S(tx.status), S.CANCEL, "cancel")
        if tx.status == S.AUTHORIZE:
            return await self._run_step(tx, banklink.VOID, {
                "op_id": f"{tx.transaction_id}:void", "transaction_id": tx.transaction_id})
        return await self._run_step(tx, banklink.CLOSE_PAYMENT, {
            "op_id": f"{tx.transaction_id}:close", "transaction_id": tx.transaction_id,
            "reason": "cancel"})

    async def _expire(self, tx: Transaction, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if tx.status == S.EXPIRE:
            return tx.to_result(), True
        states.check(S(tx.status), S.EXPIRE, "expire")
        return await self._run_step(tx, banklink.CLOSE_PAYMENT, {
            "op_id": f"{tx.transaction_id}:close", "transaction_id": tx.transaction_id,
            "reason": "expire"})

    async def _refund(self, tx: Transaction, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        key = args["refund_key"]
        for r in tx.refunds:
            if r["refund_key"] == key:
                if "amount" in args and args["amount"] != r["amount"]:
                    raise Conflict(f"refund key {key!r} was used for another amount",
                                   field="args.refund_key")
                return tx.to_result(), True
        states.check(S(tx.status), S.PARTIAL_REFUND, "refund")
        if len(tx.refunds) >= REFUNDS_PER_TRANSACTION_MAX:
            raise PaywireError(f"the transaction already has {len(tx.refunds)} refunds, the "
                               f"most one may have; refund the rest in one",
                               code=ErrorCode.TOO_MANY_REFUNDS, field="args.refund_key")
        remaining = tx.captured_amount - tx.refunded_amount
        amount = args.get("amount", remaining)
        if amount > remaining or amount <= 0:
            raise PaywireError(f"refund of {amount} exceeds the refundable {remaining}",
                               code=ErrorCode.REFUND_EXCEEDS_CAPTURED, field="args.amount")
        return await self._run_step(tx, banklink.REFUND, {
            "op_id": f"{tx.transaction_id}:refund:{key}", "transaction_id": tx.transaction_id,
            "amount": amount}, refund_key=key, reason=args.get("reason"))

    async def _approve(self, tx: Transaction, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if tx.fraud_status == FraudStatus.ACCEPT and tx.fraud_reasons and \
                tx.status == S.CAPTURE:
            return tx.to_result(), True
        if tx.fraud_status != FraudStatus.CHALLENGE or tx.status != S.AUTHORIZE:
            raise states.InvalidTransition("only a transaction held for fraud review "
                                           "(challenge) can be approved")
        return await self._run_step(tx, banklink.CAPTURE, {
            "op_id": f"{tx.transaction_id}:capture", "transaction_id": tx.transaction_id,
            "amount": tx.gross_amount}, fraud_review=True)

    async def _deny(self, tx: Transaction, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if tx.fraud_status == FraudStatus.DENY and tx.status == S.DENY:
            return tx.to_result(), True
        if tx.fraud_status != FraudStatus.CHALLENGE or tx.status != S.AUTHORIZE:
            raise states.InvalidTransition("only a transaction held for fraud review "
                                           "(challenge) can be denied")
        return await self._run_step(tx, banklink.VOID, {
            "op_id": f"{tx.transaction_id}:void", "transaction_id": tx.transaction_id},
            fraud_review=True)

    # --- events from banks and timers ---------------------------------------------------------
    async def on_payment(self, note: dict[str, Any], from_bank: str) -> None:
        """A bank reports that a customer paid. Idempotent: a repeat changes nothing.

        Only the bank the transaction was routed to may settle it: the link it came on is
        to a node the hub dialled for ``from_bank`` (and whose certificate is a bank's), but
        every bank shares the link key, so a node of another bank could otherwise settle any
        pending payment. Such a report is logged and acknowledged, like one for an unknown
        transaction, so the sender stops repeating it."""
        tx = await self.load_by_id(note["transaction_id"])
        if tx is None:
            log.error("payment notification for unknown transaction %s", note["transaction_id"])
            return
        if tx.bank != from_bank:
            log.error("payment notification from bank %s for transaction %s of bank %s: ignored",
                      from_bank, note["transaction_id"], tx.bank)
            return
        key = (tx.merchant_id, tx.order_id)
        async with self.lock(key):
            tx = self.cache.get(key) or tx
            if tx.unresolved:
                await self._resolve(tx)
                tx = self.cache[key]
            if tx.status != S.PENDING:
                return
            work = clone(tx)
            self._settle(work, note["paid_ms"])
            await self._commit(work, tx.status)

    def due_expiries(self, now: int) -> list[Key]:
        return [k for k, at in self._expiries.items() if at <= now]

    def due_challenges(self, now: int) -> list[Key]:
        return [k for k, at in self._challenges.items() if at <= now]

    async def deny_unreviewed(self, key: Key) -> None:
        """A challenge nobody reviewed in time is denied (the authorization is voided)."""
        try:
            async with self.lock(key):
                tx = await self.load(key)
                if tx is None or tx.fraud_status != FraudStatus.CHALLENGE or tx.unresolved:
                    self._challenges.pop(key, None)
                    return
                work = clone(tx)
                work.fraud_reasons.append("review_timeout")
                await self._deny(work, {})
        except PaywireError as exc:
            log.info("challenge timeout of %s: %s", key, exc.message)

    async def expire_due(self, key: Key) -> None:
        try:
            async with self.lock(key):
                tx = await self.load(key)
                if tx is None or tx.status != S.PENDING or tx.unresolved:
                    self._expiries.pop(key, None)
                    return
                await self._expire(tx, {})
        except PaywireError as exc:
            log.info("expiry of %s: %s", key, exc.message)

    async def resolve_key(self, key: Key) -> None:
        async with self.lock(key):
            tx = await self.load(key)
            if tx is not None and tx.unresolved:
                await self._resolve(tx)


class _OrderLock:
    """An asyncio.Lock per order key, created on first use and dropped when idle."""

    __slots__ = ("_key", "_lock", "_locks")

    def __init__(self, locks: dict[Key, asyncio.Lock], key: Key) -> None:
        self._locks = locks
        self._key = key
        lock = locks.get(key)
        if lock is None:
            lock = locks[key] = asyncio.Lock()
        self._lock = lock

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        _release(self._locks, self._key, self._lock)


def _release(locks: dict[Key, asyncio.Lock], key: Key, lock: asyncio.Lock) -> None:
    lock.release()
    if not lock.locked() and locks.get(key) is lock:
        waiters = getattr(lock, "_waiters", None)
        if not waiters:
            del locks[key]


Handler = Callable[[TransactionService, Transaction, dict[str, Any]],
                   Any]
_HANDLERS: dict[Operation, Handler] = {
    Operation.CAPTURE: TransactionService._capture,
    Operation.CANCEL: TransactionService._cancel,
    Operation.EXPIRE: TransactionService._expire,
    Operation.REFUND: TransactionService._refund,
    Operation.APPROVE: TransactionService._approve,
    Operation.DENY: TransactionService._deny,
}
