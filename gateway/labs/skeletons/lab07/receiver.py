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

# The skeleton imports and sets up what your code will use: until you write it, unused.
# ruff: noqa: F401, F841

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
    # Your code here. In this order (the first that applies is the verdict):
    # 1. Split the header into its parts "t=..." and "v1=..."; MALFORMED if either is
    #    missing or t is not an integer.
    # 2. STALE if t is more than ``tolerance_s`` seconds away from ``now_s`` (either way).
    # 3. Compute HMAC-SHA256 (module ``hmac``, ``hashlib.sha256``) keyed with
    #    ``server_key.encode()`` over ``str(t).encode() + b"." + raw``, as lowercase hex;
    #    BAD_MAC unless it equals v1 (compare with ``hmac.compare_digest``: why?).
    # 4. Only now parse ``raw`` as JSON; MALFORMED if it is not an object with string fields
    #    order_id, status_code, gross_amount and signature_key. Never let a bad body raise.
    # 5. BAD_SIGNATURE_KEY unless signature_key is the SHA-512 hex of
    #    order_id + status_code + gross_amount + server_key.
    raise NotImplementedError(
        "verify(): check the X-Paywire-Signature header (t and v1), the timestamp's "
        "freshness, the HMAC over '<t>.<body>' and the body's signature_key, in that order "
        "(see the steps above and the handout's 'Background')")


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
        # Your code here: remember the id in self._seen and forget the oldest ones while
        # there are more than self.seen_max (an OrderedDict keeps insertion order:
        # popitem(last=False) removes the oldest).
        raise NotImplementedError(
            "Inbox.first_time(): return True and remember the id the first time, False "
            "after; keep at most seen_max ids")



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
        # Your code here, in this order:
        # - verify(raw, the X-Paywire-Signature header (or "" if absent), server_key,
        #   time.time(), tolerance_s); anything but OK: answer 401 and do nothing else.
        # - parse the body; take the event id from the body's "event_id" (why not from the
        #   X-Paywire-Event-Id header?).
        # - already in the inbox: answer 200 and do NOT append it again (a redelivery).
        # - fail_first and this event not attempted before: remember it in ``attempted``
        #   (bounded!) and answer 500 without processing it.
        # - otherwise: mark it in the inbox, append the parsed body to ``processed``,
        #   answer 200. Use say(...) to print what you decided.
        raise NotImplementedError(
            "make_app(): the handler must verify, deduplicate on event_id and answer "
            "401/200/500 as the docstring says")

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
