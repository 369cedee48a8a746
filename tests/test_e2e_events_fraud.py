"""Pushed events with resume, and fraud screening end to end."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.client import Card, Event, RequestError, TransactionResult
from gateway.config import FraudConfig, VelocityRule
from protocol.errors import ErrorCode
from tests.deploy import RICH, Deployment, deployment
from tests.waiting import wait_until


def card(i: int) -> Card:
    return Card(RICH[i % len(RICH)], 12, 2030, "123")


def subscribed(stream: object) -> bool:
    """The stream's connection has its WELCOME, so the hub has registered the subscription
    (it does so in the same step as it sends WELCOME)."""
    frame = getattr(stream, "ag_frame", None)
    sub = frame.f_locals.get("sub") if frame is not None else None
    return bool(sub is not None and sub.welcome)


async def take(stream: object, n: int, timeout_s: float = 60.0) -> list[Event]:
    out: list[Event] = []

    async def run() -> None:
        async for event in stream:  # type: ignore[attr-defined]
            out.append(event)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), timeout_s)
    return out


async def test_events_resume_after_disconnect_with_no_gap_and_no_duplicate(
        tmp_path: Path) -> None:
    with deployment(tmp_path, bca_nodes=1) as dep:
        async with dep.client() as c:
            stream = c.events(since=0)
            await c.charge("ev-0", 1_000, card=card(0))
            first = await take(stream, 1)
            await stream.aclose()  # the subscriber goes away ...
            for i in range(1, 6):  # ... while transactions continue
                await c.charge(f"ev-{i}", 1_000 + i, card=card(i), capture=False)
                await c.capture(f"ev-{i}")
            last = first[-1].seq
            resumed = c.events(since=last)
            missed = await take(resumed, 10)
            await c.charge("ev-live", 7_000, card=card(9))
            live = await take(resumed, 1)
            await resumed.aclose()
    seqs = [e.seq for e in first + missed + live]
    assert seqs == list(range(1, 13))
    assert [(e.transaction.order_id, e.transaction.transaction_status) for e in missed] == [
        (f"ev-{i}", s) for i in range(1, 6) for s in ("authorize", "capture")]
    assert live[0].transaction.order_id == "ev-live"


async def test_events_from_now_and_cli_tail(tmp_path: Path) -> None:
    with deployment(tmp_path, bca_nodes=1) as dep:
        async with dep.client() as c:
            await c.charge("old", 1_000, card=card(0))
            stream = c.events()  # from now on: the old event is not replayed
            task = asyncio.ensure_future(take(stream, 1))
            await wait_until(lambda: subscribed(stream), "the event subscription")
            await c.charge("new", 2_000, card=card(1))
            (event,) = await task
            await stream.aclose()
        assert event.transaction.order_id == "new" and event.seq == 2
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "events", "--since", "0", "--count", "2",
            "--hub", f"127.0.0.1:{dep.port}", "--merchant", "M1", "--server-key", "sk-M1-test",
            "--certs", str(dep.certs), stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert [line.count('"seq"') for line in out.decode().splitlines()] == [1, 1]
        assert '"order_id": "old"' in out.decode() and '"order_id": "new"' in out.decode()


async def test_on_subscribed_says_from_which_seq_before_the_first_event(
        tmp_path: Path) -> None:
    """The reconcile order after ``ResumeExpired`` (subscribe, then ask status) needs to
    know when the stream is subscribed: ``on_subscribed`` is called with WELCOME's
    ``event_seq`` once the hub has registered the subscription, and again on a resume."""
    with deployment(tmp_path, bca_nodes=1) as dep:
        async with dep.client() as c:
            await c.charge("before", 1_000, card=card(0))
            seen: list[int] = []
            stream = c.events(on_subscribed=seen.append)
            task = asyncio.ensure_future(take(stream, 1))
            await wait_until(lambda: seen, "the subscription")
            assert seen == [1]  # one event (the charge above) was recorded before it
            # Nothing more is needed to be sure the next change arrives as an event.
            await c.charge("after", 2_000, card=card(1))
            (event,) = await task
            await stream.aclose()
        assert event.seq == 2 and event.transaction.order_id == "after"


FRAUD = FraudConfig(challenge_above={"IDR": 5_000_000}, deny_above={"IDR": 50_000_000},
                    velocity=[VelocityRule("email", 3600.0, 2, "deny")],
                    block_ips=["6.6.6.6"], bin_countries={"4811": "ID"},
                    challenge_timeout_s=1.0)


@pytest.fixture(scope="module")
def fraud_dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("fraud"), bca_nodes=1,
                    hub_overrides={"fraud": FRAUD}) as d:
        yield d


async def test_challenge_then_approve_captures(fraud_dep: Deployment) -> None:
    dep = fraud_dep
    before = await dep.balance("bca", RICH[1])
    async with dep.client() as c:
        tx = await c.charge("fr-approve", 6_000_000, card=card(1))
        assert (tx.transaction_status, tx.fraud_status) == ("authorize", "challenge")
        assert tx.fraud_reasons == ("amount_above:5000000",)
        with pytest.raises(RequestError) as info:
            await c.capture("fr-approve")  # held for review: only approve/deny
        assert info.value.code is ErrorCode.INVALID_TRANSITION
        tx = await c.approve("fr-approve")
        assert (tx.transaction_status, tx.fraud_status) == ("capture", "accept")
    assert await dep.balance("bca", RICH[1]) == (before[0] - 6_000_000, before[1])


async def test_challenge_then_deny_voids(fraud_dep: Deployment) -> None:
    dep = fraud_dep
    before = await dep.balance("bca", RICH[2])
    async with dep.client() as c:
        await c.charge("fr-deny", 7_000_000, card=card(2))
        assert await dep.balance("bca", RICH[2]) == (before[0], before[1] + 7_000_000)
        tx = await c.deny("fr-deny")
        assert (tx.transaction_status, tx.fraud_status) == ("deny", "deny")
    assert await dep.balance("bca", RICH[2]) == before


async def test_unreviewed_challenge_is_denied_after_the_timeout(fraud_dep: Deployment) -> None:
    dep = fraud_dep
    before = await dep.balance("bca", RICH[3])
    async with dep.client() as c:
        await c.charge("fr-timeout", 8_000_000, card=card(3))

        async def denied() -> TransactionResult | None:
            tx = await c.status("fr-timeout")
            return tx if tx.transaction_status == "deny" else None

        tx = await wait_until(denied, "the unreviewed challenge to be denied")
    assert (tx.transaction_status, tx.fraud_status) == ("deny", "deny")
    assert "review_timeout" in tx.fraud_reasons
    assert await dep.balance("bca", RICH[3]) == before


async def test_deny_never_reaches_a_bank(fraud_dep: Deployment) -> None:
    dep = fraud_dep
    async with dep.client() as c:
        big = await c.charge("fr-big", 60_000_000, card=card(4))
        ip = await c.charge("fr-ip", 1_000, card=card(5), customer={"ip": "6.6.6.6"})
        ok = await c.charge("fr-ok", 1_000, card=card(5), customer={"ip": "1.2.3.4",
                                                                     "country": "ID"})
        mismatch = await c.charge("fr-country", 1_000, card=card(6),
                                  customer={"country": "SG"})
    assert (big.transaction_status, big.fraud_status) == ("deny", "deny")
    assert big.fraud_reasons == ("amount_above:50000000",)
    assert ip.transaction_status == "deny" and ip.fraud_reasons == ("blocked_ip:6.6.6.6",)
    assert (ok.transaction_status, ok.fraud_status, ok.fraud_reasons) == \
        ("capture", "accept", ())
    assert mismatch.fraud_status == "challenge"
    assert mismatch.fraud_reasons == ("country_mismatch:card=ID,customer=SG",)
    for denied in (big, ip):
        assert dep.bank_sql("bca", "SELECT COUNT(*) FROM ops WHERE op_id LIKE ?",
                            (denied.transaction_id + "%",))[0][0] == 0


async def test_velocity_survives_a_hub_restart(fraud_dep: Deployment) -> None:
    dep = fraud_dep
    who = {"email": "velocity@shop.example"}
    async with dep.client() as c:
        assert (await c.charge("vel-1", 1_000, card=card(7), customer=who)).fraud_status \
            == "accept"
        assert (await c.charge("vel-2", 1_000, card=card(8), customer=who)).fraud_status \
            == "accept"
    assert dep.hub is not None
    dep.hub.kill()
    dep.start_hub()
    async with dep.client() as c:
        third = await c.charge("vel-3", 1_000, card=card(9), customer=who)
    assert (third.transaction_status, third.fraud_reasons) == \
        ("deny", ("velocity:email:2/3600s",))
