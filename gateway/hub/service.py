"""The transaction service: the hub's request handler, a facade over small collaborators.

* ``gateway.transactions.decisions``: what each operation does (pure);
* ``gateway.hub.runner.Runner``: order locks and admission, intent → bank → result → answer;
* ``gateway.hub.txcache.TxCache``: committed transactions and the schedulers' indexes;
* ``gateway.hub.notifications.Notifier``: outbox rows and change listeners;
* ``gateway.hub.schedulers.Schedulers`` (wired by the hub): expiry, challenge timeout,
  resolver.

Sessions see it as a ``gateway.hub.handler.RequestHandler`` only.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.config import HubConfig, webhook_url_problem
from gateway.fraud import FraudEngine, Screening
from gateway.hub import flows
from gateway.hub.banklink import BankPool
from gateway.hub.flows import ChargePlan
from gateway.hub.handler import Requester
from gateway.hub.notifications import ChangeListener, Notifier
from gateway.hub.routing import Router
from gateway.hub.runner import Answer, Conflict, NotFound, Runner, decided_now, refused
from gateway.hub.txcache import Key, TxCache
from gateway.ledger.base import Ledger
from gateway.transactions import decisions
from gateway.transactions.decisions import REFUNDS_PER_TRANSACTION_MAX, BankCall
from gateway.transactions.model import Transaction, card_brand, now_ms, time_ordered_id
from protocol import body as bodycodec
from protocol.errors import BodyError, ErrorCode, OutcomeUnknown, PaywireError
from protocol.lifecycle import Event
from protocol.operations import EXPIRY_S_MAX, FraudStatus, Operation, PaymentType, mask_card
from protocol.operations import TransactionStatus as S
from protocol.signing import hmac_sha256

__all__ = [
    "REFUNDS_PER_TRANSACTION_MAX",
    "ChangeListener",
    "ChargePlan",
    "Conflict",
    "NotFound",
    "OutcomeUnknown",
    "TransactionService",
]

log = logging.getLogger("paywire.service")


class TransactionService:
    def __init__(self, cfg: HubConfig, ledger: Ledger, pools: dict[str, BankPool],
                 router: Router, fraud: FraudEngine, idempotency_key: bytes) -> None:
        self.cfg = cfg
        self.fraud = fraud
        self.currencies = frozenset(cfg.currencies)
        self.ledger = ledger
        self.router = router
        self.hash_key = idempotency_key  # its own secret: never the link or fingerprint key
        self.txs = TxCache(ledger, cfg.cache_entries_max,
                           int(cfg.fraud.challenge_timeout_s * 1000))
        self.notifier = Notifier({m.id: m for m in cfg.merchants})
        self.runner = Runner(ledger, pools, self.txs, self.notifier)
        # Other hubs write the ledger too: every operation takes the task path (order lock
        # across hubs, then a fresh read), never the cache-only fast paths.
        self.shared = ledger.shared
        # Shared: the charges counted in this hub's fraud windows, by transaction id, so
        # those read back from the ledger (``gateway.hub.multihub.Rescanner``) count once.
        self.fraud_counted: dict[str, int] | None = {} if self.shared else None

    @property
    def listeners(self) -> list[ChangeListener]:
        return self.notifier.listeners

    @property
    def unresolved(self) -> set[Key]:
        return self.txs.unresolved

    def publish(self, tx: Transaction) -> None:
        """Make a committed state (read back at start-up) visible and scheduled."""
        self.runner.publish(tx)

    # --- RequestHandler -------------------------------------------------------------------
    def busy(self, key: Key) -> bool:
        return self.runner.busy(key)

    def admit(self, key: Key) -> bool:
        return self.runner.admit(key)

    def finished(self, key: Key) -> None:
        self.runner.finished(key)

    def status_now(self, key: Key) -> dict[str, Any] | None:
        """The ``status`` answer if it needs no waiting: nothing admitted earlier on the
        order is unfinished, and the committed transaction is cached and settled."""
        if self.shared or self.runner.busy(key):
            return None
        tx = self.txs.get(key)
        if tx is None or tx.pending_op is not None:
            return None
        return tx.to_result()

    def order_of(self, merchant_id: str, transaction_id: str) -> str | None:
        """The order id of one of ``merchant_id``'s transactions if the cache knows it (a
        ``status`` by transaction id then runs as one by order id); no ledger read."""
        key = self.txs.by_txid.get(transaction_id)
        return key[1] if key is not None and key[0] == merchant_id else None

    def answered(self, key: Key, at_us: int) -> None:
        """Telemetry only: kept in memory (``status`` shows it) and written with the
        transaction's next change; not worth a commit of its own."""
        tx = self.txs.get(key)
        if tx is not None:
            tx.hops_us.setdefault("answered", at_us)
        self.runner.hops.answered(key, at_us)  # the charge's hop latencies, for /metrics

    def start(self, requester: Requester, rid: int, op: Operation, key: Key,
              args: dict[str, Any], received_us: int, *, sent_us: int | None = None
              ) -> bool:
        if self.shared or self.runner.busy(key):
            return False
        if op is Operation.CHARGE:
            return flows.try_charge(requester, self, rid, key, args, received_us, sent_us)
        if op is Operation.STATUS:
            return False  # ``status_now`` is its fast path; behind others it waits (a task)
        return flows.try_step(requester, self, rid, key, lambda tx: _decide(op, tx, args))

    async def execute(self, merchant_id: str, op: Operation, args: dict[str, Any],
                      received_us: int, *, after_earlier: bool = False,
                      sent_us: int | None = None) -> Answer:
        """Run one validated operation; return (result map, replayed?). ``after_earlier``:
        a ``status`` admitted behind unfinished operations on its order waits for them."""
        if op is Operation.STATUS and "order_id" not in args:
            # By transaction id, not cached (``order_of``): found in the ledger, it is a
            # status of its order, waiting for what is unfinished on it now. Another
            # merchant's transaction is NOT_FOUND, exactly like an id nobody issued.
            found = await self.txs.load_by_id(args["transaction_id"])
            if found is None or found.merchant_id != merchant_id:
                raise NotFound(f"no transaction {args['transaction_id']!r}")
            args = {"order_id": found.order_id}
            after_earlier = self.runner.busy((merchant_id, found.order_id))
        key = (merchant_id, args["order_id"])
        if op is Operation.STATUS:
            if after_earlier:
                async with self.runner.lock(key):
                    return await self._status(key, args)
            return await self._status(key, args)
        async with self.runner.lock(key):
            if op is Operation.CHARGE:
                return await self._charge(key, args, received_us, sent_us=sent_us)
            tx = await self.txs.load(key)
            if tx is None:
                raise NotFound(f"no transaction for order {args['order_id']!r}")
            if tx.unresolved:
                await self.runner.resolve(tx)
                tx = self.txs[key]
            return await self._decided(tx, _decide(op, tx, args))

    async def _status(self, key: Key, args: dict[str, Any]) -> Answer:
        tx = await self.txs.load(key)
        if tx is None:
            raise NotFound(f"no transaction for order {args['order_id']!r}")
        unknown = decisions.status_unknown(tx)
        if unknown is not None:
            raise refused(unknown)
        return tx.to_result(), False

    async def _decided(self, tx: Transaction, decision: decisions.Decision) -> Answer:
        if isinstance(decision, BankCall):
            return await self.runner.step(tx, decision)
        return decided_now(tx, decision)

    # --- charge ------------------------------------------------------------------------------
    def request_hash(self, args: dict[str, Any]) -> bytes:
        """Fingerprint of a charge for idempotency; keyed, and without the CVV, because a
        plain hash of a card number can be reversed by trying every number of a BIN."""
        material = dict(args)
        if "card" in material:
            material["card"] = {k: v for k, v in material["card"].items() if k != "cvv"}
        return hmac_sha256(self.hash_key, bodycodec.canonical(material))[:16]

    async def _charge(self, key: Key, args: dict[str, Any], received_us: int,
                      plan: ChargePlan | None = None, *, sent_us: int | None = None
                      ) -> Answer:
        """A charge in a task: the general case (``gateway.hub.flows`` runs the common
        one without a task). ``plan``: already made by ``plan_charge`` for this request (its
        fraud screen counted the charge in the velocity windows: never made twice)."""
        if plan is None:
            req_hash = self.request_hash(args)
            # Shared ledger: read under the order's lock across hubs, so of two hubs given
            # the same order, the second finds the first's and answers it as a replay.
            existing = await self.txs.load(key) if self.shared else self.txs.get(key)
            if existing is not None:
                return await self.runner.replay_charge(key, existing, req_hash)
            plan = self.plan_charge(key, args, received_us, req_hash, sent_us=sent_us)
        if plan.call is None:
            return await self.runner.record_denied(plan.tx)
        return await self.runner.charge(key, plan.tx, plan.call, plan.card_args)

    def plan_charge(self, key: Key, args: dict[str, Any], received_us: int,
                    req_hash: bytes, *, sent_us: int | None = None) -> ChargePlan:
        """Everything about a new charge decided before anything is written: the record, the
        fraud verdict (counted in the velocity windows now), the route and the bank call.
        Synchronous, so a charge can be planned without a task; raises the request's error
        (e.g. a currency this hub does not accept)."""
        if args["currency"] not in self.currencies:
            raise BodyError(f"args.currency: {args['currency']!r} is not a currency this hub "
                            f"accepts ({', '.join(self.cfg.currencies)})",
                            code=ErrorCode.INVALID_FIELD, field="args.currency")
        ptype = args["payment_type"]
        created = now_ms()
        tx = Transaction(
            transaction_id=time_ordered_id(created), merchant_id=key[0], order_id=key[1],
            gross_amount=args["gross_amount"], currency=args["currency"], payment_type=ptype,
            status=S.PENDING.value, fraud_status=FraudStatus.ACCEPT.value,
            request_hash=req_hash, created_ms=created, updated_ms=created,
            capture_requested=args["capture"], customer=args.get("customer"),
            metadata=args.get("metadata") or None,
            notification_url=self._notification_url(args),
        )
        tx.hops_us["received"] = received_us
        if sent_us is not None:  # the client's clock, for display only (``paywire trace``)
            tx.hops_us["client_sent"] = sent_us
        customer = args.get("customer") or {}
        number = args["card"]["number"] if ptype == PaymentType.CREDIT_CARD else None
        verdict = self.fraud.screen(Screening(
            key[0], tx.gross_amount, tx.currency, number, customer.get("email"),
            customer.get("ip"), customer.get("country")), created / 1000)
        tx.fraud_reasons = verdict.reasons
        if self.fraud_counted is not None:
            self.fraud_counted[tx.transaction_id] = created
        if number is not None:
            tx.card_fingerprint = verdict.card_fingerprint
            tx.masked_card = mask_card(number)
            tx.card_brand = card_brand(number)
        screened = decisions.screen_event(verdict.status, number is not None)
        if screened is Event.SCREEN_DENIED:
            tx.decline_reason = "denied by fraud screening"
            tx.apply_event(screened)
            return ChargePlan(tx, None, None)
        card_args: dict[str, Any] | None = None
        if number is not None:
            tx.bank = self.router.for_card(number)
            if screened is Event.SCREEN_CHALLENGED:
                # Held for review: authorize only; approve captures, deny voids.
                tx.apply_event(screened)
                tx.capture_requested = False
            card_args = {"account": number, "exp_month": args["card"]["exp_month"],
                         "exp_year": args["card"]["exp_year"]}
        else:
            if ptype == PaymentType.BANK_TRANSFER:
                tx.bank = self.router.for_virtual_account(args["bank"])
            else:
                tx.provider = args["provider"]
                tx.bank = self.router.for_ewallet(args["provider"])
            expiry_s = min(args.get("expiry_s") or self.cfg.pending_expiry_default_s,
                           EXPIRY_S_MAX)
            tx.expiry_ms = created + expiry_s * 1000
        return ChargePlan(tx, decisions.charge_call(tx), card_args)

    def _notification_url(self, args: dict[str, Any]) -> str | None:
        """The charge's own webhook URL, held to the same rules as a merchant's
        (``webhook_url_problem``): refused before anything is recorded."""
        url: str | None = args.get("notification_url")
        if url is None:
            return None
        problem = webhook_url_problem(url, self.cfg.webhooks.allow_plain_http_loopback)
        if problem is not None:
            raise BodyError(f"args.notification_url: {problem}", code=ErrorCode.INVALID_FIELD,
                            field="args.notification_url")
        return url

    # --- events from banks and timers ---------------------------------------------------------
    async def on_payment(self, note: dict[str, Any], from_bank: str) -> None:
        """A bank reports that a customer paid. Idempotent: a repeat changes nothing.

        Only the bank the transaction was routed to may settle it: the link it came on is
        to a node the hub dialled for ``from_bank`` (and whose certificate is a bank's), but
        every bank shares the link key, so a node of another bank could otherwise settle any
        pending payment. Such a report is logged and acknowledged, like one for an unknown
        transaction, so the sender stops repeating it."""
        tx = await self.txs.load_by_id(note["transaction_id"])
        if tx is None:
            log.error("payment notification for unknown transaction %s", note["transaction_id"])
            return
        if tx.bank != from_bank:
            log.error("payment notification from bank %s for transaction %s of bank %s: ignored",
                      from_bank, note["transaction_id"], tx.bank)
            return
        key = (tx.merchant_id, tx.order_id)
        async with self.runner.lock(key):
            tx = (await self.txs.load(key) if self.shared else self.txs.get(key)) or tx
            if tx.unresolved:
                await self.runner.resolve(tx)
                tx = self.txs[key]
            await self.runner.paid(tx, note["paid_ms"])

    def due_expiries(self, now: int) -> list[Key]:
        return self.txs.due_expiries(now)

    def due_challenges(self, now: int) -> list[Key]:
        return self.txs.due_challenges(now)

    async def deny_unreviewed(self, key: Key) -> None:
        """A challenge nobody reviewed in time is denied (the authorization is voided)."""
        try:
            async with self.runner.lock(key):
                tx = await self.txs.load(key)
                if tx is None or tx.fraud_status != FraudStatus.CHALLENGE or tx.unresolved:
                    self.txs.drop_challenge(key)
                    return
                work = tx.copy()
                work.fraud_reasons = [*tx.fraud_reasons, "review_timeout"]
                await self._decided(work, decisions.deny(work))
        except PaywireError as exc:
            log.info("challenge timeout of %s: %s", key, exc.message)

    async def expire_due(self, key: Key) -> None:
        try:
            async with self.runner.lock(key):
                tx = await self.txs.load(key)
                if tx is None or tx.status != S.PENDING or tx.unresolved:
                    self.txs.drop_expiry(key)
                    return
                await self._decided(tx, decisions.expire(tx))
        except PaywireError as exc:
            log.info("expiry of %s: %s", key, exc.message)

    async def resolve_key(self, key: Key) -> None:
        await self.runner.resolve_key(key)


def _decide(op: Operation, tx: Transaction, args: dict[str, Any]) -> decisions.Decision:
    """The pure decision for one operation on a committed, settled transaction."""
    if op is Operation.CAPTURE:
        return decisions.capture(tx, args.get("gross_amount"))
    if op is Operation.CANCEL:
        return decisions.cancel(tx)
    if op is Operation.EXPIRE:
        return decisions.expire(tx)
    if op is Operation.REFUND:
        return decisions.refund(tx, args["refund_key"], args.get("amount"), args.get("reason"))
    if op is Operation.APPROVE:
        return decisions.approve(tx)
    if op is Operation.DENY:
        return decisions.deny(tx)
    raise AssertionError(f"no decision for operation {op.value}")

