"""The hub's cache of committed transactions, and the indexes the schedulers read.

Records are copy-on-write: a working copy is put here only after its commit, so a ``status``
never sees a state that is not on disk. Bounded (``cache_entries_max``, least recently
published first out): the ledger has every transaction, the cache only saves reads. The
unresolved, expiry and challenge indexes are kept with each ``put`` so the schedulers find
their work without scanning.

On a ledger other hubs write too (``Ledger.shared``) a cached copy may be stale: ``load``
then always reads the ledger (read-through), and the cache serves only the schedulers'
indexes and the state this hub has just committed under the order's lock (which, on a shared
ledger, is held across hubs: nobody else can have changed it meanwhile).
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.ledger.base import Ledger
from gateway.transactions.model import Transaction
from protocol.operations import FraudStatus
from protocol.operations import TransactionStatus as S

Key = tuple[str, str]  # (merchant_id, order_id)


class TxCache:
    def __init__(self, ledger: Ledger, entries_max: int, challenge_timeout_ms: int) -> None:
        self.ledger = ledger
        # Another hub may have changed any order. (No ledger: the cache alone, in tests.)
        self.read_through = ledger is not None and ledger.shared
        self.entries_max = entries_max
        self.challenge_timeout_ms = challenge_timeout_ms
        self.cache: OrderedDict[Key, Transaction] = OrderedDict()
        self.by_txid: dict[str, Key] = {}
        # Orders with a bank call whose answer is not recorded (the resolver's work).
        self.unresolved: set[Key] = set()
        self._expiries: dict[Key, int] = {}    # pending payments: expiry time, ms
        self._challenges: dict[Key, int] = {}  # held authorizations: review deadline, ms

    def get(self, key: Key) -> Transaction | None:
        """The committed transaction if cached; no ledger read."""
        return self.cache.get(key)

    def __contains__(self, key: Key) -> bool:
        return key in self.cache

    def __getitem__(self, key: Key) -> Transaction:
        return self.cache[key]

    def put(self, tx: Transaction) -> None:
        """Make a committed state visible, and index it for the schedulers."""
        key = (tx.merchant_id, tx.order_id)
        cache = self.cache
        cache[key] = tx
        cache.move_to_end(key)
        self.by_txid[tx.transaction_id] = key
        while len(cache) > self.entries_max:
            _, old = cache.popitem(last=False)
            self.by_txid.pop(old.transaction_id, None)
        unresolved = tx.pending_op is not None
        if unresolved:
            self.unresolved.add(key)
        else:
            self.unresolved.discard(key)
        if tx.status == S.PENDING and tx.expiry_ms is not None and not unresolved:
            self._expiries[key] = tx.expiry_ms
        else:
            self._expiries.pop(key, None)
        if tx.status == S.AUTHORIZE and tx.fraud_status == FraudStatus.CHALLENGE \
                and not unresolved:
            self._challenges[key] = tx.created_ms + self.challenge_timeout_ms
        else:
            self._challenges.pop(key, None)

    def forget(self, tx: Transaction) -> None:
        """Drop a transaction whose intent was deleted (nothing reached the bank)."""
        key = (tx.merchant_id, tx.order_id)
        self.cache.pop(key, None)
        self.by_txid.pop(tx.transaction_id, None)
        self.unresolved.discard(key)
        self._expiries.pop(key, None)

    async def load(self, key: Key) -> Transaction | None:
        """The committed transaction, read from the ledger (and cached) if not cached."""
        if self.read_through:
            return await self._read(key)
        tx = self.cache.get(key)
        if tx is not None:
            return tx
        tx = await self.ledger.get(*key)
        if tx is not None and key not in self.cache:
            self.put(tx)
        return self.cache.get(key, tx)

    async def _read(self, key: Key) -> Transaction | None:
        """The ledger's copy, which replaces the cached one (or drops it: another hub
        deleted an intent no bank saw)."""
        tx = await self.ledger.get(*key)
        if tx is None:
            stale = self.cache.get(key)
            if stale is not None:
                self.forget(stale)
            return None
        self.put(tx)
        return tx

    async def load_by_id(self, transaction_id: str) -> Transaction | None:
        key = self.by_txid.get(transaction_id)
        if key is not None:
            return await self.load(key)
        tx = await self.ledger.get_by_id(transaction_id)
        if tx is not None:
            return await self.load((tx.merchant_id, tx.order_id))
        return None

    # --- the schedulers' indexes ----------------------------------------------------------
    def due_expiries(self, now_ms: int) -> list[Key]:
        return [k for k, at in self._expiries.items() if at <= now_ms]

    def due_challenges(self, now_ms: int) -> list[Key]:
        return [k for k, at in self._challenges.items() if at <= now_ms]

    def drop_expiry(self, key: Key) -> None:
        self._expiries.pop(key, None)

    def drop_challenge(self, key: Key) -> None:
        self._challenges.pop(key, None)
