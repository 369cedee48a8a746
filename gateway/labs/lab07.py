"""Lab 7's checks: the student's webhook receiver (``labwork/lab07/receiver.py``).

Two levels, in the order a student fixes them:

- **verify** and **Inbox**, called directly: notifications built by the project's own
  payload code (``notification_body``) and signed by its own signer
  (``webhook_signature_header``) are the oracle, then changed one fault at a time (body,
  header, timestamp, key, ``signature_key``, hostile bytes) with the verdict each must get.
- **End to end**: the student's receiver is served on an ephemeral port and the hub's real
  :class:`~gateway.webhooks.dispatcher.WebhookDispatcher` delivers to it, from an in-memory
  outbox that records every attempt. The dispatcher signs, retries after a 500 on its
  schedule (shortened to fractions of a second here) and dead-letters a refused one, exactly
  as it does in the hub; nothing about it is imitated. Forged and replayed requests are
  POSTed directly, as an attacker would.

``python -m gateway.labs.lab07`` runs the same delivery against the student's receiver and
prints every attempt (the handout's "Watch the hub retry").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import aiohttp
from aiohttp import web

from gateway.config import WebhookConfig
from gateway.labs.checks import LabContext, Result
from gateway.ledger.base import Ledger, Webhook, event_id
from gateway.webhooks.dispatcher import WebhookDispatcher
from gateway.webhooks.payload import EVENT_ID_HEADER, SIGNATURE_HEADER, notification_body
from protocol.signing import webhook_signature_header

TITLE = "Webhooks: a receiver that verifies signatures, survives retries and refuses replays"
FILES = ("receiver.py",)
NEEDS_SANDBOX = False  # the hub's dispatcher runs inside the check, against your receiver

HANDOUT = "docs/labs/07-webhooks.md"
DELIVERY_S_MAX = 30.0  # every outbox row settled (delivered or dead) within this
HTTP_TIMEOUT_S = 10.0  # one direct POST to the student's receiver
# The hub's schedule is minutes; the same dispatcher with a schedule of fractions of a second
# retries while the check watches.
LAB_WEBHOOKS = WebhookConfig(retry_schedule_s=[0.3, 0.6, 1.0], poll_interval_s=0.05,
                             client_error_attempts_max=1, timeout_s=HTTP_TIMEOUT_S,
                             allow_plain_http_loopback=True)


# --- notifications, built and signed by the project's own code ------------------------------

def transaction(order_id: str, merchant: str, status: str = "capture") -> dict[str, Any]:
    """A card capture's transaction, the fields ``notification_body`` reads."""
    return {"transaction_id": f"tx-{order_id}", "order_id": order_id, "merchant_id": merchant,
            "status_code": "200", "status_message": "Success, card transaction is captured",
            "gross_amount": 150_000, "currency": "IDR", "payment_type": "credit_card",
            "transaction_status": status, "fraud_status": "accept",
            "transaction_time": "2026-11-25 10:00:00.000", "masked_card": "481111******1114",
            "bank": "bca"}


@dataclass
class Notification:
    merchant: str
    key: str
    seq: int
    body: bytes

    @property
    def event(self) -> str:
        return event_id(self.merchant, self.seq)

    def header(self, t: int | None = None, key: str | None = None) -> str:
        return webhook_signature_header((key or self.key).encode(),
                                        int(time.time()) if t is None else t, self.body)


def new_notification(merchant: str, key: str, seq: int, *, body_key: str | None = None,
                     status: str = "capture", order: str | None = None) -> Notification:
    order = order or f"lab07-{secrets.token_hex(4)}-{seq}"
    body = notification_body(transaction(order, merchant, status), body_key or key, seq)
    return Notification(merchant, key, seq, body)


# --- calling the student's code without letting it crash the check ---------------------------

def _call(fn: Callable[[], Any]) -> tuple[Any, str | None]:
    try:
        return fn(), None
    except NotImplementedError as exc:
        return None, f"not written yet: {exc}"
    except Exception as exc:  # the student's code may raise anything
        return None, f"raised {type(exc).__name__}: {exc}"


def check_verify(mod: ModuleType) -> Iterator[Result]:
    merchant, key = "M-lab07", "SB-lab07-" + secrets.token_hex(8)
    n = new_notification(merchant, key, 1)
    now = int(time.time())
    ok, bad_mac, stale, malformed, bad_sig = (
        getattr(mod, name, f"<{name} missing>") for name in
        ("OK", "BAD_MAC", "STALE", "MALFORMED", "BAD_SIGNATURE_KEY"))

    def cases(title: str, where: str,
              rows: list[tuple[str, bytes, str, str, int]]) -> Result:
        problems = []
        for label, raw, header, wanted, at in rows:
            def one(r: bytes = raw, h: str = header, t: int = at) -> Any:
                return mod.verify(r, h, key, t)

            got, error = _call(one)
            if error is not None:
                problems.append(f"{label}: expected {wanted!r}, but verify {error}")
                break  # the other cases would say the same
            if got != wanted:
                problems.append(f"{label}: expected {wanted!r}, got {got!r}")
        detail = ("\n".join(problems) + f"\nsee {HANDOUT} ({where})") if problems else ""
        return Result(title, not problems, detail)

    yield cases("verify accepts a genuine notification", "Background: the signature", [
        ("a notification signed just now", n.body, n.header(now), ok, now),
        ("signed 200 s ago (inside the 300 s tolerance)", n.body, n.header(now - 200), ok, now),
        ("signed 200 s ahead (clocks differ; inside the tolerance)", n.body,
         n.header(now + 200), ok, now)])
    as_refund = n.body.replace(b'"transaction_status":"capture"',
                               b'"transaction_status":"refund"')
    yield cases("verify refuses a tampered body (HMAC over the exact bytes)",
                "Background: why signature_key is not enough", [
        ("capture edited into refund (signature_key still valid)", as_refund, n.header(now),
         bad_mac, now),
        ("one byte appended", n.body + b" ", n.header(now), bad_mac, now),
        ("amount changed", n.body.replace(b"150000.00", b"15000.00"), n.header(now), bad_mac,
         now)])
    header = n.header(now)
    mac = header.split("v1=", 1)[1]
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    yield cases("verify refuses a tampered header", "Background: the signature", [
        ("v1 with its last hex digit changed", n.body, f"t={now},v1={flipped}", bad_mac, now),
        ("t moved by one second (v1 no longer covers it)", n.body, f"t={now - 1},v1={mac}",
         bad_mac, now),
        ("no header at all", n.body, "", malformed, now),
        ("v1 without t", n.body, f"v1={mac}", malformed, now),
        ("t without v1", n.body, f"t={now}", malformed, now),
        ("t that is not a number", n.body, f"t=yesterday,v1={mac}", malformed, now)])
    yield cases("verify refuses a stale or future timestamp", "Background: why a timestamp", [
        ("signed an hour ago (a captured request replayed)", n.body, n.header(now - 3600),
         stale, now),
        ("signed an hour ahead", n.body, n.header(now + 3600), stale, now),
        ("signed 301 s ago", n.body, n.header(now - 301), stale, now)])
    yield cases("verify refuses a signature made with another key",
                "Background: the signature", [
        ("header HMAC keyed with another merchant's key", n.body,
         n.header(now, key="SB-someone-else"), bad_mac, now)])
    other = new_notification(merchant, key, 2, body_key="SB-not-our-key")
    not_json = b"this is not JSON"
    not_object = b"[1, 2, 3]"
    no_fields = json.dumps({"event_id": "evt_x_1"}).encode()
    signed = webhook_signature_header
    yield cases("verify checks the body's signature_key after the HMAC",
                "Background: signature_key", [
        ("HMAC right, signature_key made with another key", other.body, other.header(now),
         bad_sig, now)])
    yield cases("verify never raises on hostile input (a bad body is MALFORMED)",
                "Background: the order of the checks", [
        ("HMAC right, body not JSON", not_json, signed(key.encode(), now, not_json),
         malformed, now),
        ("HMAC right, body a JSON list", not_object, signed(key.encode(), now, not_object),
         malformed, now),
        ("HMAC right, body without order_id/signature_key", no_fields,
         signed(key.encode(), now, no_fields), malformed, now),
        ("header of commas and equals signs", n.body, ",,=,=,t=,v1=", malformed, now)])


def check_inbox(mod: ModuleType) -> Iterator[Result]:
    name = "Inbox: each event id is new exactly once, and the memory is bounded"
    where = f"see {HANDOUT} (Background: at least once) and Inbox's docstring"

    def run() -> str | None:
        inbox = mod.Inbox(seen_max=50)
        answers = [inbox.first_time(e) for e in ("evt_a", "evt_a", "evt_b", "evt_a", "evt_b")]
        if answers != [True, False, True, False, False]:
            return (f"first_time on evt_a, evt_a, evt_b, evt_a, evt_b: expected "
                    f"[True, False, True, False, False], got {answers}")
        for i in range(500):
            inbox.first_time(f"evt_many_{i}")
        if len(inbox) > 50:
            return f"after 502 ids with seen_max=50 the inbox holds {len(inbox)}"
        if inbox.first_time("evt_many_499") or not inbox.first_time("evt_many_0"):
            return ("after 502 ids with seen_max=50, the newest must still be known and the "
                    "oldest forgotten (evict the oldest, not the newest)")
        return None

    problem, error = _call(run)
    problem = error or problem
    yield Result(name, problem is None, f"{problem}\n{where}" if problem else "")


# --- end to end: the hub's dispatcher against the student's receiver ------------------------

@dataclass
class Row:
    webhook: Webhook
    due_ms: int = 0
    state: str = "pending"
    attempts: list[str] = field(default_factory=list)  # "HTTP 500", "delivered", ...


class LabOutbox:
    """The four outbox calls the dispatcher makes, in memory, recording every attempt.

    The dispatcher takes a ledger; it only ever calls these four methods on it (the rest of
    the ledger is the hub's), so this stands in for the ledger's outbox table."""

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self.rows: dict[int, Row] = {}
        self.changed = asyncio.Condition()
        self.echo = echo

    def add(self, url: str, n: Notification) -> int:
        wid = len(self.rows) + 1
        self.rows[wid] = Row(Webhook(wid, n.merchant, f"tx-{wid}", n.event, url, n.body, 0))
        return wid

    async def due_webhooks(self, now_ms: int, limit: int) -> list[Webhook]:
        return [r.webhook._replace(attempts=len(r.attempts)) for r in self.rows.values()
                if r.state == "pending" and r.due_ms <= now_ms][:limit]

    async def _note(self, wid: int, outcome: str, state: str, due_ms: int = 0) -> None:
        row = self.rows[wid]
        row.attempts.append(outcome)
        row.state, row.due_ms = state, due_ms
        if self.echo is not None:
            then = f"retry in {max(0, due_ms - int(time.time() * 1000)) / 1000:.2f} s" \
                if state == "pending" else state
            self.echo(f"hub: {row.webhook.event_id} attempt {len(row.attempts)}: {outcome} "
                      f"-> {then}")
        async with self.changed:
            self.changed.notify_all()

    async def webhook_delivered(self, wid: int, attempts: int, now_ms: int) -> None:
        await self._note(wid, "delivered (2xx)", "delivered")

    async def webhook_retry(self, wid: int, attempts: int, next_ms: int,
                            error: str | None) -> None:
        await self._note(wid, error or "failed", "pending", next_ms)

    async def webhook_dead(self, wid: int, attempts: int, error: str | None) -> None:
        await self._note(wid, error or "failed", "dead")

    async def settled(self, wids: list[int], timeout_s: float = DELIVERY_S_MAX) -> bool:
        def done() -> bool:
            return all(self.rows[w].state != "pending" for w in wids)
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(done), timeout_s)
            except TimeoutError:
                return done()
        return True


class Served:
    """The student's app on 127.0.0.1, an ephemeral port."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.runner = web.AppRunner(app)
        self.url = ""

    async def __aenter__(self) -> Served:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = cast(Any, site)._server  # aiohttp keeps the listening socket here
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/paywire"
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.runner.cleanup()


async def start_dispatcher(outbox: LabOutbox, merchant: str,
                           key: str) -> WebhookDispatcher:
    dispatcher = WebhookDispatcher(LAB_WEBHOOKS, cast(Ledger, outbox), {merchant: key},
                                   seed=random.randrange(1 << 30))
    await dispatcher.start()
    return dispatcher


def _ids(processed: list[Any]) -> list[Any]:
    """The event ids in ``processed``, whatever the student appended: a body (a dict) gives
    its ``event_id``; anything else (an id string, bytes) is kept as is, so a check compares
    and reports it instead of crashing on ``.get``."""
    return [p.get("event_id") if isinstance(p, dict) else p for p in processed]


def _summary(processed: list[Any]) -> str:
    return str(_ids(processed))


def _bodies_appended(processed: list[Any]) -> str | None:
    """Why ``processed`` is not a list of parsed bodies, or ``None`` when it is."""
    odd = [p for p in processed if not isinstance(p, dict)]
    if not odd:
        return None
    return (f"processed holds {type(odd[0]).__name__} values ({odd[0]!r:.80}), not parsed "
            f"bodies: append the notification's parsed JSON body (a dict), as make_app's "
            f"docstring says")


async def end_to_end(mod: ModuleType) -> list[Result]:
    merchant, key = "M-lab07", "SB-lab07-" + secrets.token_hex(8)
    results: list[Result] = []
    plain: list[dict[str, Any]] = []
    retried: list[dict[str, Any]] = []
    apps = []
    for processed, fail_first in ((plain, False), (retried, True)):
        def build(p: list[dict[str, Any]] = processed, f: bool = fail_first) -> Any:
            return mod.make_app(key, p, fail_first=f)

        app, error = _call(build)
        if error is not None or not isinstance(app, web.Application):
            return [Result("make_app returns an aiohttp web.Application", False,
                           f"make_app(key, processed, fail_first={fail_first}) "
                           f"{error or f'returned {app!r}'}; see {HANDOUT} (Steps)")]
        apps.append(app)
    outbox = LabOutbox()
    async with Served(apps[0]) as ok_rx, Served(apps[1]) as flaky_rx:
        dispatcher = await start_dispatcher(outbox, merchant, key)
        try:
            a, b, c = (new_notification(merchant, key, s) for s in (1, 2, 3))
            forged = new_notification(merchant, key, 4, body_key="SB-not-our-key")

            # 1. One genuine notification to the plain receiver: delivered at once.
            w = outbox.add(ok_rx.url, a)
            await outbox.settled([w])
            row = outbox.rows[w]
            not_bodies = _bodies_appended(plain)
            good = row.attempts == ["delivered (2xx)"] and \
                _ids(plain) == [a.event] and not_bodies is None
            results.append(Result(
                "your receiver processes a genuine notification from the hub's dispatcher",
                good, "" if good else
                f"the dispatcher POSTed {a.event} to your receiver: expected one attempt "
                f"answered 2xx and processed == [{a.event!r}] (its parsed body); attempts: "
                f"{row.attempts}, processed: {_summary(plain)}. "
                f"{not_bodies + '. ' if not_bodies else ''}Answer 200 once verify() says "
                f"OK and append the parsed body; see {HANDOUT} (Steps)"))

            # 2. fail_first: the dispatcher gets a 500, retries, the retry is processed.
            w = outbox.add(flaky_rx.url, b)
            await outbox.settled([w])
            row = outbox.rows[w]
            good = len(row.attempts) == 2 and row.attempts[0] == "HTTP 500" and \
                row.attempts[1] == "delivered (2xx)" and \
                _ids(retried) == [b.event]
            results.append(Result(
                "with fail_first, the first delivery gets 500 and the hub's retry is processed",
                good, "" if good else
                f"expected attempts ['HTTP 500', 'delivered (2xx)'] and processed == "
                f"[{b.event!r}]; attempts: {row.attempts}, processed: {_summary(retried)}. "
                f"See {HANDOUT} (Watch the hub retry)"))

            # 3. The hub delivers b again (at least once: e.g. `paywire webhooks redeliver`).
            # And c, new, to the plain receiver.
            again = outbox.add(flaky_rx.url, b)
            fresh = outbox.add(ok_rx.url, c)
            await outbox.settled([again, fresh])
            good = outbox.rows[again].attempts == ["delivered (2xx)"] and \
                _ids(retried) == [b.event] and \
                _ids(plain) == [a.event, c.event]
            results.append(Result(
                "a redelivered notification is acknowledged (2xx) and not processed again",
                good, "" if good else
                f"the hub delivered {b.event} a second time: expected one attempt answered "
                f"2xx (so the hub stops) and processed still [{b.event!r}]; attempts: "
                f"{outbox.rows[again].attempts}, processed: {_summary(retried)} (and the "
                f"other receiver: {_summary(plain)}, expected [{a.event!r}, {c.event!r}]). "
                f"Deduplicate on the body's event_id; see {HANDOUT} (Background: at least "
                f"once)"))

            # 4. Two events of the same order (a capture, then its refund): two different
            # event ids, both must be processed. Deduplicating on order_id drops the refund.
            order = f"lab07-{secrets.token_hex(4)}-same"
            capture = new_notification(merchant, key, 5, order=order)
            refund = new_notification(merchant, key, 6, order=order, status="refund")
            before = len(plain)
            ws = [outbox.add(ok_rx.url, capture)]
            await outbox.settled(ws)
            ws.append(outbox.add(ok_rx.url, refund))  # after the capture, as the hub would
            await outbox.settled(ws[1:])
            got = _ids(plain[before:])
            good = got == [capture.event, refund.event] and \
                all(outbox.rows[x].attempts == ["delivered (2xx)"] for x in ws)
            results.append(Result(
                "two events of the same order (capture, then refund) are both processed",
                good, "" if good else
                f"the hub delivered {capture.event} (capture) and {refund.event} (refund) "
                f"of the same order {order}: expected both processed, in that order; "
                f"processed: {got}, attempts: "
                f"{[outbox.rows[x].attempts for x in ws]}. One order has many events "
                f"(capture, refund, ...): deduplicate on the body's event_id, not on "
                f"order_id; see {HANDOUT} (Background: at least once)"))

            # 5. A refused notification is dead-lettered by the hub after the 4xx.
            w = outbox.add(ok_rx.url, forged)
            await outbox.settled([w])
            row = outbox.rows[w]
            good = row.state == "dead" and len(row.attempts) == 1 and \
                row.attempts[0].startswith("HTTP 4") and forged.event not in \
                _ids(plain)
            results.append(Result(
                "a notification whose signature_key is wrong is refused with a 4xx",
                good, "" if good else
                f"expected one attempt answered 401 and nothing processed; attempts: "
                f"{row.attempts}, processed: {_summary(plain)}. See {HANDOUT} (Steps)"))
        finally:
            await dispatcher.stop()
        results.append(await attacks(ok_rx.url, a, key, plain))
        results.append(await replay_new_header(ok_rx.url, a, plain))
    return results


async def replay_new_header(url: str, n: Notification, processed: list[Any]) -> Result:
    """An attacker who captured a delivery replays it within the tolerance (its signature
    still verifies) with a new ``X-Paywire-Event-Id``: that header is not covered by the
    MAC, so a receiver that deduplicates on it processes the same event twice."""
    name = "a replay within the tolerance with a new X-Paywire-Event-Id is not processed again"
    before = len(processed)
    headers = {"Content-Type": "application/json",
               EVENT_ID_HEADER: f"evt_replay_{secrets.token_hex(6)}",
               SIGNATURE_HEADER: n.header(int(time.time()))}
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    problem = None
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http, \
                http.post(url, data=n.body, headers=headers) as resp:
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        problem = f"no answer ({type(exc).__name__}: {exc})"
    else:
        if len(processed) != before:
            problem = (f"{n.event}, already processed, was POSTed again with a valid fresh "
                       f"signature and {EVENT_ID_HEADER}: {headers[EVENT_ID_HEADER]}; your "
                       f"receiver answered {status} and processed it again: "
                       f"{_summary(processed[before:])}. Only the signed body is covered by "
                       f"the MAC: deduplicate on the body's event_id, not on a header")
        elif status >= 500:
            problem = (f"answered {status}: the hub would keep resending a duplicate; "
                       f"acknowledge it with a 2xx (or refuse it with a 4xx)")
    return Result(name, problem is None,
                  f"{problem}\nsee {HANDOUT} (Background: at least once)" if problem else "")


async def attacks(url: str, n: Notification, key: str,
                  processed: list[dict[str, Any]]) -> Result:
    """What anyone who can reach the URL can send: none of it may be processed."""
    now = int(time.time())
    before = len(processed)
    as_refund = n.body.replace(b'"transaction_status":"capture"',
                               b'"transaction_status":"refund"')
    tries = [("the same body replayed with its old header (signed an hour ago)",
              n.body, n.header(now - 3600)),
             ("capture edited into refund, header of the original", as_refund, n.header(now)),
             ("no X-Paywire-Signature header", n.body, None),
             ("signed with another key", n.body, n.header(now, key="SB-someone-else"))]
    problems = []
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for label, body, header in tries:
            headers = {"Content-Type": "application/json", EVENT_ID_HEADER: n.event}
            if header is not None:
                headers[SIGNATURE_HEADER] = header
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problems.append(f"{label}: no answer ({type(exc).__name__}: {exc})")
                continue
            if status != 401:
                problems.append(f"{label}: answered {status}, expected 401")
    if len(processed) != before:
        problems.append(f"something was processed: {_summary(processed[before:])}")
    return Result("forged, tampered and replayed requests are answered 401, nothing processed",
                  not problems, "\n".join(problems) + f"\nsee {HANDOUT} (Steps)"
                  if problems else "")


def check(ctx: LabContext) -> Iterator[Result]:
    try:
        mod = ctx.load_module("receiver.py")
    except Exception as exc:  # a syntax error or a failing import in the student's file
        yield Result("receiver.py imports", False,
                     f"importing {ctx.work / 'receiver.py'} raised {type(exc).__name__}: "
                     f"{exc}")
        return
    yield from check_verify(mod)
    yield from check_inbox(mod)
    yield from asyncio.run(end_to_end(mod))


# --- python -m gateway.labs.lab07: watch the hub deliver to your receiver -------------------

async def watch(mod: ModuleType, merchant: str, key: str) -> int:
    """Serve the student's receiver with ``fail_first``, deliver one notification with the
    hub's dispatcher, then the same one again, and print every attempt and header."""
    processed: list[dict[str, Any]] = []
    app = mod.make_app(key, processed, fail_first=True, echo=True)

    @web.middleware
    async def show(request: web.Request, handler: Any) -> web.StreamResponse:
        shown = ", ".join(f"{h}: {request.headers.get(h, '-')}" for h in
                          (SIGNATURE_HEADER, EVENT_ID_HEADER, "X-Paywire-Attempt"))
        print(f"receiver got POST {request.path} ({request.content_length} bytes) {shown}",
              flush=True)
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(show)
    outbox = LabOutbox(echo=lambda line: print(line, flush=True))
    n = new_notification(merchant, key, random.randrange(1, 1 << 20))
    async with Served(app) as rx:
        print(f"receiver listening on {rx.url}", flush=True)
        dispatcher = await start_dispatcher(outbox, merchant, key)
        try:
            first = outbox.add(rx.url, n)
            await outbox.settled([first])
            print("hub: the same notification once more (at least once)", flush=True)
            second = outbox.add(rx.url, n)
            await outbox.settled([second])
        finally:
            await dispatcher.stop()
    print(f"processed {len(processed)} notification(s): "
          f"{_ids(processed)}", flush=True)
    return 0 if len(processed) == 1 else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.labs.lab07",
        description="deliver a notification to your lab 7 receiver with the hub's dispatcher")
    parser.add_argument("--dir", default=os.environ.get("PAYWIRE_LABWORK", "labwork"))
    ns = parser.parse_args()
    ctx = LabContext(7, Path(ns.dir) / "lab07")
    merchant = os.environ.get("PAYWIRE_MERCHANT", "M1")
    key = os.environ.get("PAYWIRE_SERVER_KEY") or "SB-lab07-" + secrets.token_hex(8)
    try:
        mod = ctx.load_module("receiver.py")
        return asyncio.run(watch(mod, merchant, key))
    except Exception as exc:  # the student's code: say what, not a traceback
        print(f"your receiver failed: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
