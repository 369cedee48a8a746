"""The merchant features of issue 15 end to end, through real processes: status by
transaction id, metadata on charges (result, status, webhook, event) and its limits, a
per-transaction notification URL, and the blocking ``SyncClient`` with ``events()``."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.client import (
    Card,
    InvalidRequestError,
    NotFound,
    SyncClient,
    TransactionStatus,
)
from gateway.client.webhooks import construct_event
from gateway.config import WebhookConfig
from protocol.errors import ErrorCode
from protocol.operations import (
    METADATA_BYTES_MAX,
    METADATA_KEY_CHARS_MAX,
    METADATA_KEYS_MAX,
    METADATA_VALUE_CHARS_MAX,
    Operation,
    validate_args,
)
from tests.deploy import KEYS, RICH, Deployment, deployment
from tests.receiver import Receiver

FAST = WebhookConfig(time_scale=0.0002, poll_interval_s=0.02)
CACHE_ENTRIES = 2  # small, so a status by transaction id also takes the ledger path
_orders = itertools.count(1)


def card(i: int = 0) -> Card:
    return Card(RICH[i % len(RICH)], 12, 2030, "123")


def order(prefix: str) -> str:
    return f"{prefix}-{next(_orders)}"


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("merchant"), bca_nodes=1,
                    hub_overrides={"cache_entries_max": CACHE_ENTRIES}) as d:
        yield d


async def test_status_by_transaction_id(dep: Deployment) -> None:
    first = order("by-id")
    async with dep.client() as c, dep.client("M2") as other:
        tx = await c.charge(first, 10_000, card=card(1))
        # Cached: answered like a status by order id.
        by_id = await c.status(transaction_id=tx.transaction_id)
        assert (by_id.order_id, by_id.transaction_id) == (first, tx.transaction_id)
        assert by_id.transaction_status is TransactionStatus.CAPTURE
        # Another merchant's transaction id is NOT_FOUND, exactly like an unknown one.
        with pytest.raises(NotFound) as theirs:
            await other.status(transaction_id=tx.transaction_id)
        with pytest.raises(NotFound) as unknown:
            await other.status(transaction_id="0000-not-issued")
        assert theirs.value.code is unknown.value.code is ErrorCode.NOT_FOUND
        # Pushed out of the hub's cache by later charges: read from the ledger.
        for i in range(CACHE_ENTRIES + 1):
            await c.charge(order("by-id-filler"), 1_000 + i, card=card(2))
        assert (await c.status(transaction_id=tx.transaction_id)).order_id == first
        with pytest.raises(NotFound):
            await other.status(transaction_id=tx.transaction_id)
        # A later operation is visible through either id.
        await c.refund(first, "r-1", 4_000)
        after = await c.status(transaction_id=tx.transaction_id)
        assert after.transaction_status == "partial_refund" and after.refunded_amount == 4_000
        # The wire rule: exactly one of the two ids.
        for args in ({}, {"order_id": first, "transaction_id": tx.transaction_id}):
            with pytest.raises(InvalidRequestError) as both:
                await c.request("status", args)
            assert both.value.code is ErrorCode.INVALID_FIELD
        with pytest.raises(ValueError):
            await c.status(first, transaction_id=tx.transaction_id)


async def test_metadata_is_stored_and_returned(dep: Deployment) -> None:
    oid = order("meta")
    metadata = {"cart": "c-42", "customer_ref": "ünï \"q\"", "empty": ""}
    async with dep.client() as c:
        tx = await c.charge(oid, 20_000, card=card(3), metadata=metadata)
        assert tx.metadata == metadata
        assert (await c.status(oid)).metadata == metadata
        # Part of the charge's content: a retry must carry the same metadata.
        assert (await c.charge(oid, 20_000, card=card(3), metadata=metadata)).replayed
        with pytest.raises(Exception) as changed:
            await c.charge(oid, 20_000, card=card(3), metadata={"cart": "other"})
        assert getattr(changed.value, "code", None) is ErrorCode.DUPLICATE_ORDER
        # An empty map is no metadata.
        plain = await c.charge(order("meta-none"), 5_000, card=card(3), metadata={})
        assert plain.metadata == {}


async def test_metadata_beyond_its_limits_is_refused_and_records_nothing(
        dep: Deployment) -> None:
    too_many = {f"k{i}": "v" for i in range(METADATA_KEYS_MAX + 1)}
    cases: list[tuple[Any, str]] = [
        (too_many, "args.metadata"),
        ({"k" * (METADATA_KEY_CHARS_MAX + 1): "v"}, "args.metadata"),
        ({"": "v"}, "args.metadata"),
        ({"bad key": "v"}, "args.metadata"),
        ({"k": "v" * (METADATA_VALUE_CHARS_MAX + 1)}, "args.metadata.k"),
        ({"k": 7}, "args.metadata.k"),
        ({"k": {"nested": "map"}}, "args.metadata.k"),
        (["not", "a", "map"], "args.metadata"),
        # Each value within its characters, but together beyond the bytes bound.
        ({f"k{i}": "é" * METADATA_VALUE_CHARS_MAX for i in range(METADATA_KEYS_MAX)},
         "args.metadata"),
    ]
    async with dep.client() as c:
        for metadata, field in cases:
            oid = order("meta-limit")
            with pytest.raises(InvalidRequestError) as info:
                await c.request("charge", {"order_id": oid, "gross_amount": 1_000,
                                           "payment_type": "bank_transfer", "bank": "bca",
                                           "metadata": metadata})
            err = info.value
            assert err.code is ErrorCode.INVALID_FIELD and err.field == field, err
            with pytest.raises(NotFound):
                await c.status(oid)
        # At the limits exactly: accepted.
        most = {f"{i:0{METADATA_KEY_CHARS_MAX}d}": "v" * METADATA_VALUE_CHARS_MAX
                for i in range(METADATA_KEYS_MAX)}
        tx = await c.charge(order("meta-max"), 1_000, "bank_transfer", bank="bca",
                            metadata=most)
        assert tx.metadata == most
        assert sum(len(k) + len(v) for k, v in most.items()) <= METADATA_BYTES_MAX


async def test_a_notification_url_must_follow_the_webhook_rules(dep: Deployment) -> None:
    async with dep.client() as c:
        for url in ("http://127.0.0.1:9/hooks",       # plain HTTP, no lab opt-in here
                    "http://shop.example/hooks", "ftp://shop.example/x"):
            oid = order("url")
            with pytest.raises(InvalidRequestError) as info:
                await c.charge(oid, 1_000, card=card(4), notification_url=url)
            assert info.value.code is ErrorCode.INVALID_FIELD
            assert info.value.field == "args.notification_url"
            with pytest.raises(NotFound):
                await c.status(oid)


def test_sync_client_has_the_methods_and_a_blocking_event_iterator(dep: Deployment) -> None:
    oid = order("sync")
    with SyncClient("127.0.0.1", dep.port, merchant_id="M1", server_key=KEYS["M1"],
                    certs_dir=dep.certs) as c:
        tx = c.charge(oid, 7_000, card=card(5), capture=False, metadata={"via": "sync"})
        assert tx.transaction_status is TransactionStatus.AUTHORIZE
        assert c.status(transaction_id=tx.transaction_id).order_id == oid
        assert c.capture(oid).transaction_status == "capture"
        with pytest.raises(NotFound):
            c.status(order("sync-missing"))
        seen: list[tuple[str, str]] = []
        for event in c.events(since=0):
            if event.transaction.order_id == oid:
                seen.append((event.transaction.transaction_status, event.transaction
                             .metadata["via"]))
                if len(seen) == 2:
                    break
        assert seen == [("authorize", "sync"), ("capture", "sync")]
        # The client is still usable after leaving the event loop.
        assert c.status(oid).captured_amount == 7_000


async def test_metadata_and_notification_url_reach_webhooks_and_events(
        tmp_path: Path) -> None:
    """Metadata round trip: charge → status → webhook body → event; and a charge's
    ``notification_url`` gets that transaction's webhooks instead of the merchant's URL."""
    keys = {**KEYS, "M1-override": KEYS["M1"]}
    rx = await Receiver(keys, tmp_path / "rx-tls").start()
    try:
        with deployment(tmp_path, bca_nodes=1, webhook_urls={"M1": rx.url("M1")},
                        hub_overrides={"webhooks": rx.trusted(FAST)}) as hooked:
            async with hooked.client() as c:
                since = int(c.welcome["event_seq"])
                meta = {"cart": "c-7", "event_id": ""}  # a key named like the body's own
                plain = await c.charge("wh-plain", 11_000, card=card(6), metadata=meta)
                routed = await c.charge("wh-routed", 12_000, card=card(7),
                                        notification_url=rx.url("M1-override"))
                await c.refund("wh-routed", "r-1", 2_000)
                assert (await c.status("wh-plain")).metadata == meta
                assert await rx.wait_for(lambda: len(rx.delivered()) >= 3)
                events = []
                async for event in c.events(since=since):
                    events.append(event)
                    if len(events) == 3:
                        break
    finally:
        await rx.stop()
    by_target = sorted((d.merchant, d.body["order_id"], d.body["transaction_status"])
                       for d in rx.delivered())
    assert by_target == [("M1", "wh-plain", "capture"),
                         ("M1-override", "wh-routed", "capture"),
                         ("M1-override", "wh-routed", "partial_refund")]
    for d in rx.delivered():
        n = construct_event(d.raw, {"X-Paywire-Signature": d.header}, KEYS["M1"],
                            tolerance_s=3600)
        assert n.transaction_id == {"wh-plain": plain, "wh-routed": routed}[
            n.order_id].transaction_id
        assert n.metadata == (meta if n.order_id == "wh-plain" else {})
        assert n.event_id == d.event_id and n.event_id.startswith("evt_M1_")
    assert [(e.transaction.order_id, e.transaction.metadata) for e in events] == [
        ("wh-plain", meta), ("wh-routed", {}), ("wh-routed", {})]


def test_the_readme_client_example_runs_as_written(dep: Deployment, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"### Typed results, metadata, status by transaction id, the blocking "
                      r"client\n.*?```python\n(.*?)```", readme, re.S)
    assert block is not None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PAYWIRE_HUB": f"127.0.0.1:{dep.port}", "PAYWIRE_MERCHANT": "M1",
           "PAYWIRE_SERVER_KEY": KEYS["M1"], "PAYWIRE_CERTS": str(dep.certs)}
    done = subprocess.run([sys.executable, "-c", block.group(1)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True c-42", "expire", "pending c-42"]


def test_the_largest_result_with_metadata_fits_the_default_body_limit() -> None:
    """The metadata bounds leave room: a transaction with the most refunds (longest keys
    and reasons) and the most metadata still has a result a client can read."""
    from gateway.config import HubConfig
    from gateway.transactions.decisions import REFUNDS_PER_TRANSACTION_MAX
    from gateway.transactions.model import Transaction
    from protocol import body as bodycodec

    keys = METADATA_KEYS_MAX
    per_value = min(METADATA_VALUE_CHARS_MAX,
                    METADATA_BYTES_MAX // keys - METADATA_KEY_CHARS_MAX)
    metadata = {f"{i:0{METADATA_KEY_CHARS_MAX}d}": "v" * per_value for i in range(keys)}
    assert validate_args(Operation.CHARGE, {
        "order_id": "o", "gross_amount": 1, "payment_type": "bank_transfer", "bank": "bca",
        "metadata": metadata})["metadata"] == metadata
    tx = Transaction(
        transaction_id="0" * 36, merchant_id="M" * 64, order_id="o" * 64,
        gross_amount=10**15, currency="IDR", payment_type="credit_card", status="capture",
        fraud_status="accept", request_hash=b"h" * 16, created_ms=1, updated_ms=2,
        masked_card="481111******1114", card_brand="visa", bank="b" * 32,
        captured_amount=10**15, refunded_amount=10**14, metadata=metadata,
        refunds=[{"refund_key": f"{i:064d}", "amount": 10**12, "time_ms": 1,
                  "reason": "r" * 255} for i in range(REFUNDS_PER_TRANSACTION_MAX)],
        fraud_reasons=["x" * 128] * 32, decline_reason="d" * 255)
    assert len(bodycodec.pack(tx.to_result())) <= HubConfig().body_bytes_max
