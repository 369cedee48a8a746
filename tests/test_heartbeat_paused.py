"""A peer is not declared dead for a silence the hub caused itself.

At its in-flight bound the hub stops reading the connection (protocol §3.4), so the peer's
PONGs wait unread in the socket. Behind a bank slower than three heartbeat intervals, the
hub used to count that as the peer's silence and close a healthy connection with
IDLE_TIMEOUT, losing the answer. A peer that stops reading *our* bytes is another matter: it
is still bounded by the same three intervals.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.transactions.model import now_ms
from protocol import body as bodycodec
from protocol import messages, signing
from protocol.frame import Flags, FrameType
from tests.deploy import KEYS, RICH, Deployment
from tests.rawclient import Raw

HEARTBEAT_S = 0.25
BANK_LATENCY_MS = 1_500  # six heartbeat intervals (twice what the idle rule tolerates), and
# below the test deployment's bank timeout of 2 s


def signed_charge(rid: int, order_id: str) -> bytes:
    args_raw = messages.encode_args({
        "order_id": order_id, "gross_amount": 10_000, "payment_type": "credit_card",
        "card": {"number": RICH[0], "exp_month": 12, "exp_year": 2030, "cvv": "123"}})
    nonce, ts = os.urandom(16), now_ms()
    sig = signing.sign_request(KEYS["M1"].encode(), "M1", rid, "charge", ts, nonce, args_raw)
    return messages.encode_request(rid, "charge", "M1", ts, nonce, sig, args_raw)


async def test_paused_reading_at_the_in_flight_bound_is_not_the_peers_silence(
        tmp_path: Path) -> None:
    dep = await Deployment(tmp_path, bca_nodes=1,
                           hub_overrides={"heartbeat_interval_s": HEARTBEAT_S}).astart()
    try:
        await dep.admin("bca", "admin.faults", {"latency_ms": BANK_LATENCY_MS})
        raw = await Raw.open(dep)
        raw.send(messages.encode_message(FrameType.HELLO, {
            "versions": [1], "role": "merchant", "identity": "M1", "in_flight_max": 1}))
        welcome = await raw.next_frame()
        assert welcome.type == FrameType.WELCOME
        raw.send(signed_charge(1, "slow-bank-1"))  # the hub is now at its bound: reads paused
        pings = 0
        while True:
            frame = await raw.next_frame(timeout_s=30.0)
            if frame.type == FrameType.PING:
                pings += 1  # answered at once, as a live peer does; the hub cannot read it yet
                raw.send(messages.encode_message(FrameType.PONG, {}, frame.request_id))
                continue
            assert frame.type == FrameType.RESPONSE, (frame, bodycodec.unpack(frame.body))
            break
        assert frame.request_id == 1 and not frame.flags & Flags.ERROR
        assert bodycodec.unpack(frame.body)["transaction_status"] == "capture"
        # The wait really spanned more than the idle rule's three intervals of silence.
        assert pings >= 3
        raw.close()
    finally:
        dep.stop()
