"""Webhooks through real processes and a real HTTP receiver that verifies every delivery."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import random
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.client import Card
from gateway.config import WebhookConfig
from gateway.ledger import ledger_tools
from gateway.webhooks.dispatcher import retry_delay_s
from protocol.signing import verify_webhook_signature
from tests.deploy import KEYS, RICH, deployment
from tests.receiver import Receiver
from tests.waiting import wait_until

FAST = WebhookConfig(time_scale=0.0002, poll_interval_s=0.02)


async def serve_posts(handler: Callable[[Any], Awaitable[Any]],
                      ssl_ctx: ssl.SSLContext | None = None) -> tuple[Any, str]:
    """An aiohttp server on an ephemeral loopback port answering every POST with
    ``handler``; returns its runner (the caller cleans it up) and its base URL."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"{'https' if ssl_ctx else 'http'}://127.0.0.1:{port}"


def card(i: int = 0) -> Card:
    return Card(RICH[i % len(RICH)], 12, 2030, "123")


def seq_of(event_id: str) -> int:
    return int(event_id.rsplit("_", 1)[1])


def test_retry_delays_grow_within_jittered_bands() -> None:
    cfg = WebhookConfig()
    rng = random.Random(3)
    steps = [0.0, *cfg.retry_schedule_s]
    for attempt in range(1, 6):
        got = [retry_delay_s(cfg, attempt, rng) for _ in range(200)]
        assert all(steps[attempt - 1] <= d <= steps[attempt] for d in got)
        assert len({round(d, 3) for d in got}) > 150  # jittered, not a fixed step


async def test_deliveries_are_signed_and_verifiable(tmp_path: Path) -> None:
    rx = await Receiver(KEYS, tmp_path / "rx-tls").start()
    try:
        with deployment(tmp_path, bca_nodes=1, webhook_urls={"M1": rx.url("M1")},
                        hub_overrides={"webhooks": rx.trusted(FAST)}) as dep:
            async with dep.client() as c:
                await c.charge("wh-card", 150_000, card=card())
                await c.refund("wh-card", "r1", 50_000)
                await c.charge("wh-va", 20_000, "bank_transfer", bank="bca")
            assert await rx.wait_for(lambda: len(rx.delivered()) >= 3)
    finally:
        await rx.stop()
    assert len(rx.deliveries) == 3  # every answer was 200: nothing is sent twice
    kinds = sorted((d.body["order_id"], d.body["transaction_status"]) for d in rx.delivered())
    assert kinds == [("wh-card", "capture"), ("wh-card", "partial_refund"),
                     ("wh-va", "pending")]
    for d in rx.delivered():
        assert d.hmac_ok and d.signature_key_ok
        assert d.body["gross_amount"].endswith(".00") and d.body["merchant_id"] == "M1"
    va = next(d for d in rx.delivered() if d.body["order_id"] == "wh-va")
    assert va.body["va_numbers"][0]["bank"] == "bca"
    card_note = next(d for d in rx.delivered() if d.body["transaction_status"] == "capture")
    assert card_note.body["masked_card"] == RICH[0][:6] + "******" + RICH[0][-4:]
    # Receiver-side replay protection: an altered body or an old timestamp fails.
    key = KEYS["M1"].encode()
    now = int(time.time())
    assert verify_webhook_signature(key, card_note.header, card_note.raw, now)
    assert not verify_webhook_signature(key, card_note.header, card_note.raw + b" ", now)
    assert not verify_webhook_signature(key, card_note.header,
                                        card_note.raw.replace(b"capture", b"settled"), now)
    assert not verify_webhook_signature(key, card_note.header, card_note.raw, now + 3600)
    # The Midtrans signature_key, by the published formula.
    b = card_note.body
    assert b["signature_key"] == hashlib.sha512(
        f"{b['order_id']}{b['status_code']}{b['gross_amount']}{KEYS['M1']}".encode()).hexdigest()


async def test_503_three_times_then_delivered_then_dead_letter_and_redeliver(
        tmp_path: Path) -> None:
    rx = await Receiver(KEYS, tmp_path / "rx-tls").start()
    failures = {"first": 3}
    mode = {"M2": 503}

    async def m1(merchant: str, body: dict[str, Any], attempt: int) -> int:
        return 503 if attempt <= failures["first"] else 200

    async def m2(merchant: str, body: dict[str, Any], attempt: int) -> int:
        return mode["M2"]

    rx.behaviour.update(M1=m1, M2=m2)
    try:
        with deployment(tmp_path, bca_nodes=1, webhook_urls={"M1": rx.url("M1"),
                                                             "M2": rx.url("M2")},
                        hub_overrides={"webhooks": rx.trusted(FAST)}) as dep:
            async with dep.client("M1") as c1, dep.client("M2") as c2:
                await c1.charge("retry-1", 10_000, card=card(1))
                await c2.charge("dead-1", 10_000, card=card(2))
            assert await rx.wait_for(lambda: len(rx.delivered("M1")) == 1)
            tries = [d for d in rx.deliveries if d.merchant == "M1"]
            assert [d.attempt for d in tries] == [1, 2, 3, 4]
            assert [d.status for d in tries] == [503, 503, 503, 200]
            gaps = [b.arrived_s - a.arrived_s for a, b in itertools.pairwise(tries)]
            scale = FAST.time_scale
            bands = [(0.0, 120 * scale), (120 * scale, 600 * scale), (600 * scale, 1800 * scale)]
            # Poll interval and scheduling on a loaded machine, and up to a second more: a
            # retry is signed in a later second than the attempt before it. The lower bounds
            # are exact (a retry never comes early); the upper ones only catch an unscaled
            # schedule.
            slack_s = 10.0
            for gap, (low, high) in zip(gaps, bands, strict=True):
                assert low - 0.005 <= gap <= high + slack_s, (gaps, bands)
            # (That the schedule grows is the pure test above: compared here, two gaps of a
            # loaded machine's scheduling said nothing and failed once beside a CPU hog.)
            # Each attempt's signature has its own, later, timestamp: a receiver's replay
            # memory (``ReplayGuard``) never refuses the hub's own retry as a replay.
            stamps = [int(d.header.split(",")[0].removeprefix("t=")) for d in tries]
            assert all(a < b for a, b in itertools.pairwise(stamps)), stamps
            assert len({d.header for d in tries}) == len(tries)
            # M2 always answers 503: six attempts (one + five retries), then dead-lettered.
            assert await rx.wait_for(
                lambda: sum(1 for d in rx.deliveries if d.merchant == "M2") >= 6, 60)
            # Dead-lettered: the hub will not try again, so the count is final.
            await wait_until(lambda: dep.ledger_sql(
                "SELECT state FROM webhooks WHERE merchant_id = 'M2'") == [("dead",)],
                "M2's notification to be dead-lettered")
            assert sum(1 for d in rx.deliveries if d.merchant == "M2") == 6
            listed = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "webhooks", "list", "--ledger",
                 str(dep.workdir / "ledger.db"), "--state", "dead"],
                capture_output=True, text=True, check=True).stdout
            assert '"merchant_id": "M2"' in listed and '"attempts": 6' in listed
            mode["M2"] = 200
            subprocess.run([sys.executable, "-m", "gateway.cli", "webhooks", "redeliver",
                            "--ledger", str(dep.workdir / "ledger.db"), "--all-dead"],
                           check=True, capture_output=True)
            assert await rx.wait_for(lambda: len(rx.delivered("M2")) == 1)
    finally:
        await rx.stop()


async def test_sigkill_with_pending_notifications_then_all_delivered_in_order(
        tmp_path: Path) -> None:
    rx = await Receiver(KEYS, tmp_path / "rx-tls").start()
    up = {"ok": False}

    async def flaky(merchant: str, body: dict[str, Any], attempt: int) -> int:
        return 200 if up["ok"] else 503

    rx.behaviour["M1"] = flaky
    slow_retries = WebhookConfig(time_scale=0.001, poll_interval_s=0.02)
    try:
        with deployment(tmp_path, bca_nodes=1, webhook_urls={"M1": rx.url("M1")},
                        hub_overrides={"webhooks": rx.trusted(slow_retries)}) as dep:
            async with dep.client() as c:
                for i in range(8):
                    oid = f"kill-{i}"
                    await c.charge(oid, 40_000, card=card(i), capture=False)
                    await c.capture(oid)
                    await c.refund(oid, "r1", 10_000)
                    await c.refund(oid, "r2")
            expected = dep.ledger_sql("SELECT COUNT(*) FROM events WHERE merchant_id='M1'")[0][0]
            assert expected == 8 * 4
            assert dep.hub is not None
            dep.hub.kill()
            up["ok"] = True
            dep.start_hub()
            assert await rx.wait_for(lambda: len({d.event_id for d in rx.delivered()})
                                     == expected, 60)
    finally:
        await rx.stop()
    first_success: dict[str, Any] = {}
    for d in rx.delivered():
        first_success.setdefault(d.event_id, d)
    by_tx: dict[str, list[Any]] = {}
    for d in sorted(first_success.values(), key=lambda d: d.arrived_s):
        by_tx.setdefault(d.body["order_id"], []).append(d)
    for oid, notes in by_tx.items():
        assert [n.body["transaction_status"] for n in notes] == \
            ["authorize", "capture", "partial_refund", "refund"], oid
        assert [seq_of(n.event_id) for n in notes] == sorted(seq_of(n.event_id) for n in notes)


async def test_slow_receiver_of_one_merchant_does_not_delay_another(tmp_path: Path) -> None:
    rx = await Receiver(KEYS, tmp_path / "rx-tls").start()
    release = asyncio.Event()

    async def stuck(merchant: str, body: dict[str, Any], attempt: int) -> int:
        await asyncio.wait_for(release.wait(), 300)
        return 200

    rx.behaviour["M1"] = stuck
    try:
        with deployment(tmp_path, bca_nodes=1, webhook_urls={"M1": rx.url("M1"),
                                                             "M2": rx.url("M2")},
                        hub_overrides={"webhooks": rx.trusted(FAST)}) as dep:
            async with dep.client("M1") as c1, dep.client("M2") as c2:
                for i in range(12):  # more than M1's 8 delivery slots
                    await c1.charge(f"slow-{i}", 1_000, card=card(i))
                for i in range(5):
                    await c2.charge(f"fast-{i}", 1_000, card=card(i))
            # M2's notifications all arrive while every M1 delivery is still stuck.
            assert await rx.wait_for(lambda: len(rx.delivered("M2")) == 5, 60)
            assert rx.delivered("M1") == []
            release.set()
            assert await rx.wait_for(lambda: len(rx.delivered("M1")) == 12, 60)
            # Every notification is marked delivered: nothing more will be sent.
            await wait_until(lambda: dep.ledger_sql(
                "SELECT COUNT(*) FROM webhooks WHERE state != 'delivered'") == [(0,)],
                "every notification to be marked delivered")
            assert len(rx.deliveries) == 17  # all answered 200 eventually: no duplicates
    finally:
        release.set()
        await rx.stop()


async def test_4xx_and_every_3xx_get_a_few_attempts_and_no_redirect_is_followed(
        tmp_path: Path) -> None:
    """Issue 11 item 7: an HTTPS receiver answering 307 to ``http://`` must not get the body
    and its signature re-posted in clear; no redirect is followed, even one staying on HTTPS;
    a 3xx is a failed attempt (few retries, like a 4xx), then dead-lettered."""
    from aiohttp import web

    rx = await Receiver(KEYS, tmp_path / "rx-tls").start()
    seen: list[str] = []
    in_clear: list[str] = []

    async def cleartext(request: web.Request) -> web.StreamResponse:
        in_clear.append(request.path)
        return web.Response(status=200)

    plain_runner, plain = await serve_posts(cleartext)

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        if request.path == "/gone":
            return web.Response(status=404)
        if request.path == "/to-clear":
            return web.Response(status=307, headers={"Location": plain + "/stolen"})
        if request.path == "/moved":
            return web.Response(status=308, headers={"Location": "/final"})
        if request.path == "/old":
            return web.Response(status=301, headers={"Location": "/final"})
        return web.Response(status=200)

    runner, base = await serve_posts(handler, rx.ssl_ctx)
    attempts_max = FAST.client_error_attempts_max
    try:
        for path in ("/gone", "/to-clear", "/moved", "/old"):
            seen.clear()
            with deployment(tmp_path / path.strip("/"), bca_nodes=1,
                            webhook_urls={"M1": base + path},
                            hub_overrides={"webhooks": rx.trusted(FAST)}) as dep:
                async with dep.client() as c:
                    await c.charge("redirect-1", 1_000, card=card(0))
                rows = await wait_until(lambda: [r for r in dep.ledger_sql(
                    "SELECT state, attempts, last_error FROM webhooks") if r[0] != "pending"],
                    "the notification to be delivered or dead-lettered")
            assert rows[0][:2] == ("dead", attempts_max), (path, rows)
            assert seen == [path] * attempts_max, (path, seen)
            if path != "/gone":
                assert "redirect not followed" in rows[0][2], rows
        assert in_clear == []  # nothing ever reached the plain-HTTP receiver
    finally:
        await runner.cleanup()
        await plain_runner.cleanup()
        await rx.stop()


async def test_plain_http_url_queued_by_an_older_configuration_is_not_sent(
        tmp_path: Path) -> None:
    """A row written while plain HTTP was allowed (lab opt-in) is refused at delivery once
    the opt-in is off: dead-lettered without a request."""
    from aiohttp import web

    got: list[str] = []

    async def cleartext(request: web.Request) -> web.StreamResponse:
        got.append(request.path)
        return web.Response(status=503)

    runner, base = await serve_posts(cleartext)
    url = base + "/hook"
    # Real-time retry delays: the 503 leaves the row pending for a while, untouched.
    lab = dataclasses.replace(FAST, time_scale=1.0, allow_plain_http_loopback=True)
    try:
        with deployment(tmp_path, bca_nodes=1, webhook_urls={"M1": url},
                        hub_overrides={"webhooks": lab}) as dep:
            async with dep.client() as c:
                await c.charge("lab-1", 1_000, card=card(0))
            # The lab receiver got it (and answered 503: still pending).
            await wait_until(lambda: got, "the plain-HTTP lab receiver to get the notification")
            assert got == ["/hook"]
            assert dep.hub is not None and dep.hub_cfg is not None
            dep.hub.terminate()
            # Restart with the opt-in off. The merchant's URL is no longer accepted at load,
            # so the merchant now has an HTTPS URL; the queued row still names the old one.
            dep.hub_cfg.webhooks = FAST
            dep.hub_cfg.merchants[0].webhook_url = "https://127.0.0.1:9/unused"
            # Due now, as an operator would queue it.
            assert ledger_tools(dep.workdir / "ledger.db").redeliver([1]) == 1
            dep.start_hub()
            rows = await wait_until(lambda: [r for r in dep.ledger_sql(
                "SELECT state, last_error FROM webhooks") if r[0] == "dead"],
                "the queued plain-HTTP notification to be dead-lettered")
        assert rows[0][0] == "dead" and "plain HTTP" in rows[0][1], rows
        assert got == ["/hook"]  # nothing more was sent in clear
    finally:
        await runner.cleanup()


async def test_a_notification_of_a_merchant_no_longer_configured_is_not_sent(
        tmp_path: Path) -> None:
    """A row queued for a merchant the configuration has dropped since (hub restarted) has
    no key to be signed with: nothing is sent, and the row stays pending with the reason and
    its attempts untouched (on a shared ledger another hub may know the merchant, or this
    one after a reload); never signed with an empty key, never given up."""
    from aiohttp import web

    got: list[str] = []

    async def unavailable(request: web.Request) -> web.StreamResponse:
        got.append(request.path)
        return web.Response(status=503)

    runner, base = await serve_posts(unavailable)
    # Real-time retry delays: the 503 leaves the row pending for a while, untouched.
    lab = dataclasses.replace(FAST, time_scale=1.0, allow_plain_http_loopback=True)
    try:
        with deployment(tmp_path, bca_nodes=1, webhook_urls={"M2": base + "/m2"},
                        hub_overrides={"webhooks": lab}) as dep:
            async with dep.client("M2") as c:
                await c.charge("gone-1", 1_000, card=card(0))
            await wait_until(lambda: got, "the receiver to get the notification")
            assert dep.hub is not None and dep.hub_cfg is not None
            dep.hub.terminate()
            dep.hub_cfg.merchants = [m for m in dep.hub_cfg.merchants if m.id != "M2"]
            assert ledger_tools(dep.workdir / "ledger.db").redeliver([1]) == 1  # due now
            dep.start_hub()
            attempts_before = dep.ledger_sql("SELECT attempts FROM webhooks")[0][0]
            rows = await wait_until(lambda: [r for r in dep.ledger_sql(
                "SELECT state, last_error, attempts FROM webhooks")
                if r[1] and "is not in this hub's configuration" in r[1]],
                "the hub to look at the removed merchant's notification")
        assert rows[0][0] == "pending" and rows[0][2] == attempts_before, rows
        assert got == ["/m2"]  # nothing was sent after the merchant left
    finally:
        await runner.cleanup()


async def test_https_delivery_verifies_the_receiver_certificate(tmp_path: Path) -> None:
    from aiohttp import web

    from gateway import pki, tls

    receiver_pki = tmp_path / "receiver-pki"
    pki.init(receiver_pki, merchants=[], banks=[])
    got: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(status=200)

    ctx = tls.server_context(receiver_pki / "hub-hub.crt", receiver_pki / "hub-hub.key",
                             receiver_pki / "ca.crt", require_client_cert=False)
    runner, base = await serve_posts(handler, ctx)
    url = base.replace("127.0.0.1", "localhost") + "/hook"  # the name its certificate has
    try:
        for trusted in (False, True):
            hooks = WebhookConfig(time_scale=0.0002, poll_interval_s=0.02,
                                  ca_file=receiver_pki / "ca.crt" if trusted else None)
            with deployment(tmp_path / f"dep-{trusted}", bca_nodes=1,
                            webhook_urls={"M1": url}, hub_overrides={"webhooks": hooks}) as dep:
                async with dep.client() as c:
                    await c.charge("tls-hook", 1_000, card=card(0))
                rows = await wait_until(lambda: [r for r in dep.ledger_sql(
                    "SELECT state, attempts, last_error FROM webhooks")
                    if r[0] == "delivered" or r[1] >= 2],
                    "the notification to be delivered or retried")
            if trusted:
                assert rows[0][0] == "delivered" and len(got) == 1
            else:  # an unknown CA is a failed delivery, retried, never sent in clear
                assert rows[0][0] == "pending" and rows[0][1] >= 2 and not got
                assert "Certificate" in (rows[0][2] or "") or "SSL" in (rows[0][2] or "")
    finally:
        await runner.cleanup()


async def test_a_receiver_answer_body_that_never_ends_does_not_hold_the_delivery(
        tmp_path: Path) -> None:
    """Spec §13.2: the status decides; a body not announced with a small Content-Length is
    not read. A receiver that answers 200 and then streams its body for ever has the
    notification delivered at once, not timed out and retried (the body was read whole)."""
    from aiohttp import web

    rx = await Receiver(KEYS, tmp_path / "rx-tls").start()  # for its TLS files only
    await rx.stop()
    posts: list[str] = []
    done = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        posts.append(request.path)
        resp = web.StreamResponse(status=200)  # chunked: no Content-Length
        await resp.prepare(request)
        try:
            while not done.is_set():
                await resp.write(b"x" * 4096)
                # Pacing of the stream, not synchronisation: a chunk every 50 ms until the
                # test ends (or the hub closes the connection).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.05)
        except ConnectionError:
            pass
        return resp

    runner, base = await serve_posts(endless, rx.ssl_ctx)
    try:
        with deployment(tmp_path, bca_nodes=1, webhook_urls={"M1": base + "/endless"},
                        hub_overrides={"webhooks": rx.trusted(FAST)}) as dep:
            async with dep.client() as c:
                await c.charge("endless-1", 1_000, card=card(0))
            rows = await wait_until(lambda: [r for r in dep.ledger_sql(
                "SELECT state, attempts FROM webhooks") if r[0] != "pending"],
                "the notification to be delivered", timeout_s=60.0)
            assert rows == [("delivered", 1)]
            assert posts == ["/endless"]
    finally:
        done.set()
        await runner.cleanup()
