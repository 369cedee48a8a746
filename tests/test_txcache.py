"""The hub's transaction cache: its bound, and the indexes the schedulers read (no I/O: the
ledger is only read on a miss, which these tests do not make)."""

from __future__ import annotations

from typing import Any, cast

from gateway.hub.txcache import TxCache
from gateway.ledger.base import Ledger
from gateway.transactions.model import Transaction

NOW = 1_700_000_000_000


def _tx(order: str, status: str = "pending", fraud: str = "accept", **kw: Any) -> Transaction:
    return Transaction(transaction_id=f"tx-{order}", merchant_id="M1", order_id=order,
                       gross_amount=10, currency="IDR", payment_type="bank_transfer",
                       status=status, fraud_status=fraud, request_hash=b"h" * 16,
                       created_ms=NOW, updated_ms=NOW, **kw)


def _cache(entries_max: int = 10) -> TxCache:
    return TxCache(cast(Ledger, None), entries_max, challenge_timeout_ms=5_000)


def test_bounded_least_recently_published_first_out() -> None:
    c = _cache(entries_max=2)
    for order in ("a", "b", "c"):
        c.put(_tx(order, "settlement"))
    assert list(c.cache) == [("M1", "b"), ("M1", "c")]
    assert set(c.by_txid) == {"tx-b", "tx-c"}
    c.put(_tx("b", "refund"))  # republished: most recent again
    c.put(_tx("d", "settlement"))
    assert list(c.cache) == [("M1", "b"), ("M1", "d")]
    assert c.get(("M1", "c")) is None and c[("M1", "b")].status == "refund"


def test_expiry_index_holds_settled_pending_payments_only() -> None:
    c = _cache()
    c.put(_tx("a", expiry_ms=NOW + 10))
    c.put(_tx("b", expiry_ms=NOW + 20, pending_op={"op": "bank.open_payment"}))
    c.put(_tx("c"))  # no expiry
    assert c.due_expiries(NOW + 100) == [("M1", "a")]
    assert c.due_expiries(NOW + 9) == []
    assert c.unresolved == {("M1", "b")}
    c.put(_tx("a", "settlement", expiry_ms=NOW + 10))  # paid: nothing to expire
    assert c.due_expiries(NOW + 100) == []
    c.put(_tx("b", expiry_ms=NOW + 20))  # resolved: now it can expire
    assert c.due_expiries(NOW + 100) == [("M1", "b")] and c.unresolved == set()
    c.drop_expiry(("M1", "b"))
    assert c.due_expiries(NOW + 100) == []


def test_challenge_index_holds_held_authorizations_until_their_deadline() -> None:
    c = _cache()
    c.put(_tx("a", "authorize", "challenge"))
    c.put(_tx("b", "authorize", "accept"))
    assert c.due_challenges(NOW + 4_999) == []
    assert c.due_challenges(NOW + 5_000) == [("M1", "a")]
    c.put(_tx("a", "deny", "deny"))
    assert c.due_challenges(NOW + 10_000) == []


def test_forget_drops_every_trace() -> None:
    c = _cache()
    tx = _tx("a", expiry_ms=NOW, pending_op={"op": "bank.open_payment"})
    c.put(tx)
    c.forget(tx)
    assert ("M1", "a") not in c and c.by_txid == {} and c.unresolved == set()
    assert c.due_expiries(NOW + 1) == []
