"""Lab 7: a webhook receiver that believes only genuine, fresh notifications, once each.

When a transaction changes status, the hub POSTs a JSON notification to the merchant's URL
(README, "Webhooks"). Anyone who can reach that URL can POST too, so a receiver proves three
things before it acts on a notification:

1. **It comes from the hub.** The header ``X-Paywire-Signature: t=<unix s>,v1=<hex>`` holds
   HMAC-SHA256, keyed with the merchant's server key, over ``<t>.<raw body>``: only the hub
   and the merchant know the key, and the MAC covers every byte of the body.
2. **It is fresh.** ``t`` is when the hub signed it; a captured request replayed an hour
   later carries an old ``t``, and ``t`` cannot be changed without breaking the MAC.
3. **It is new.** Delivery is *at least once*: the hub sends again when it did not see a
   2xx (a 500, a timeout, a lost answer), so the same ``event_id`` can arrive twice within
   the tolerance. Act on it once, and still answer 2xx so the hub stops sending it.

The body's ``signature_key`` (Midtrans': SHA-512 hex of ``order_id + status_code +
gross_amount + server_key``) is checked too, but it is not enough on its own: it does not
cover ``transaction_status``, so a capture edited into a refund keeps a valid
``signature_key``. Only the HMAC over the exact bytes catches that.

Run it: ``python receiver.py --port 8080`` (the key from ``$PAYWIRE_SERVER_KEY``),
``--fail-first`` to answer 500 to the first delivery of each notification.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

SIGNATURE_HEADER = "X-Paywire-Signature"
TOLERANCE_S = 300  # how far ``t`` may be from our clock, either way (the README's advice)
BODY_BYTES_MAX = 64 * 1024  # a notification is about 1 KB; more is not one
SEEN_IDS_MAX = 100_000  # event ids remembered for deduplication (oldest forgotten first)

# The verdicts of ``verify``: exactly one applies, checked in this order.
OK = "ok"
MALFORMED = "malformed"  # no header, a header without t= and v1=, a t that is not a number,
#                          or a body that is not a JSON object with the fields we need
STALE = "stale"  # t further than the tolerance from our clock (past or future)
BAD_MAC = "bad_mac"  # v1 is not the HMAC of "<t>.<body>" under our key
BAD_SIGNATURE_KEY = "bad_signature_key"  # the MAC is right, the body's signature_key is not


def verify(raw: bytes, header: str, server_key: str, now_s: float,
           tolerance_s: float = TOLERANCE_S) -> str:
    """The verdict on one delivery: ``OK`` or the first reason it is not genuine and fresh.

    ``raw`` is the body exactly as received (bytes, before any JSON parsing: re-encoding
    parsed JSON would not give the bytes the hub signed)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if "t" not in parts or "v1" not in parts:
        return MALFORMED
    try:
        t = int(parts["t"])
    except ValueError:
        return MALFORMED
    if abs(now_s - t) > tolerance_s:
        return STALE
    expected = hmac.new(server_key.encode(), str(t).encode() + b"." + raw,
                        hashlib.sha256).hexdigest()
    # compare_digest: the time taken does not tell an attacker how many characters matched.
    if not hmac.compare_digest(expected, parts["v1"].strip()):
        return BAD_MAC
    try:
        body = json.loads(raw)
        fields = (body["order_id"], body["status_code"], body["gross_amount"])
        given = body["signature_key"]
    except (ValueError, TypeError, KeyError):
        return MALFORMED
    if not all(isinstance(f, str) for f in (*fields, given)):
        return MALFORMED
    wanted = hashlib.sha512("".join((*fields, server_key)).encode()).hexdigest()
    if not hmac.compare_digest(wanted, given):
        return BAD_SIGNATURE_KEY
    return OK


class Inbox:
    """The event ids already acted on, bounded: the oldest is forgotten past ``seen_max``.

    A real merchant keeps them in its database, in the same transaction as the effect of
    the notification; in memory is enough to see the idea. Forgetting the oldest is safe as
    long as ``seen_max`` covers more than the tolerance's worth of notifications: anything
    older is refused as stale by ``verify`` before it gets here."""

    def __init__(self, seen_max: int = SEEN_IDS_MAX) -> None:
        self.seen_max = seen_max
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._seen

    def first_time(self, event_id: str) -> bool:
        """True the first time ``event_id`` is seen (and remember it), False after."""
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        while len(self._seen) > self.seen_max:
            self._seen.popitem(last=False)
        return True


def make_app(server_key: str, processed: list[dict[str, Any]], *, fail_first: bool = False,
             tolerance_s: float = TOLERANCE_S, echo: bool = False) -> web.Application:
    """The receiver: ``POST /paywire``.

    Answers 401 to anything ``verify`` refuses (and acts on nothing); 200 to a genuine
    notification, appending its parsed body to ``processed`` the first time its
    ``event_id`` arrives, and only acknowledging it after. With ``fail_first``, the first
    delivery of each event is answered 500 and not acted on (a receiver whose database was
    down): the hub must send it again."""
    inbox = Inbox()
    attempted: set[str] = set()  # bounded by the inbox: an id leaves it once processed

    def say(text: str) -> None:
        if echo:
            print(text, flush=True)

    async def paywire(request: web.Request) -> web.Response:
        try:
            raw = await request.content.read(BODY_BYTES_MAX + 1)
        except (OSError, ValueError):
            return web.Response(status=400, text="unreadable body")
        if len(raw) > BODY_BYTES_MAX:
            return web.Response(status=413, text="too large for a notification")
        verdict = verify(raw, request.headers.get(SIGNATURE_HEADER, ""), server_key,
                         time.time(), tolerance_s)
        if verdict != OK:
            say(f"401 refused: {verdict}")
            return web.Response(status=401, text=verdict)
        body = json.loads(raw)
        # The event id from the signed body, not from X-Paywire-Event-Id: headers other
        # than the signature are not covered by the MAC.
        event = str(body.get("event_id", ""))
        if event in inbox:
            say(f"200 duplicate {event}: already processed, not again")
            return web.Response(status=200, text="duplicate")
        if fail_first and event not in attempted:
            if len(attempted) >= SEEN_IDS_MAX:
                attempted.clear()
            attempted.add(event)
            say(f"500 {event}: failing the first delivery on purpose")
            return web.Response(status=500, text="try again later")
        inbox.first_time(event)
        attempted.discard(event)
        processed.append(body)
        say(f"200 processed {event} {body.get('order_id')} {body.get('transaction_status')}")
        return web.Response(status=200, text="ok")

    app = web.Application(client_max_size=BODY_BYTES_MAX)
    app.router.add_post("/paywire", paywire)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Lab 7's webhook receiver")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--key", default=os.environ.get("PAYWIRE_SERVER_KEY", ""),
                        help="the merchant's server key (default: $PAYWIRE_SERVER_KEY)")
    parser.add_argument("--fail-first", action="store_true",
                        help="answer 500 to the first delivery of each notification")
    ns = parser.parse_args()
    if not ns.key:
        parser.error("give --key or set PAYWIRE_SERVER_KEY (source sandbox/sandbox.env)")
    processed: list[dict[str, Any]] = []
    web.run_app(make_app(ns.key, processed, fail_first=ns.fail_first, echo=True),
                host="127.0.0.1", port=ns.port)


if __name__ == "__main__":
    main()
