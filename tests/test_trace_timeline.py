"""``paywire trace``'s pure parts: hops → timeline rows → text chart, and the wire pieces that
feed the hops (the client's ``sent_us``, the bank node's ``timings_us``), without I/O."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest

from gateway.hub.banklink import BankPool, note_answer
from gateway.tracing import timeline
from gateway.tracing.command import Traced, show
from protocol import banklink, docgen, messages
from protocol.decoder import FrameDecoder
from protocol.errors import BodyError, ErrorCode

T0 = 1_764_547_200_000_000
CARD = {"client_sent": T0, "received": T0 + 412, "intent_committed": T0 + 1_020,
        "bank_sent": T0 + 1_050, "bank_node_received": T0 + 1_300,
        "bank_node_committed": T0 + 2_100, "bank_node_answered": T0 + 2_110,
        "bank_answered": T0 + 2_400, "committed": T0 + 3_000, "answered": T0 + 3_214}
PATH = [h.key for h in timeline.HOPS]


def rows_of(text: str) -> list[list[str]]:
    """The chart's hop rows, split into columns (key, clock, offset, step?)."""
    out = []
    for line in text.splitlines()[2:]:
        if "|" not in line:
            break
        out.append(line.split("|")[0].split())
    return out


def test_a_card_charge_reads_in_path_order_with_offsets_and_steps() -> None:
    tl = timeline.build(dict(reversed(list(CARD.items()))))  # map order does not matter
    assert [r.key for r in tl.rows] == PATH and tl.missing == () and tl.ignored == ()
    assert [r.offset_us for r in tl.rows] == [v - T0 for v in CARD.values()]
    assert tl.rows[0].step_us is None
    assert [r.step_us for r in tl.rows[1:]] == [412, 608, 30, 250, 800, 10, 290, 600, 214]
    assert tl.total_us == 3_214 and not tl.negative_steps
    assert [r.clock for r in tl.rows] == ["client", "hub", "hub", "hub", "bank", "bank",
                                          "bank", "hub", "hub", "hub"]
    text = timeline.render_text(tl, "title")
    lines = text.splitlines()
    assert lines[0] == "title"
    assert lines[1].split()[:4] == ["hop", "clock", "offset", "ms"]
    assert "0 ms" in lines[1] and "3.214 ms|" in lines[1]
    rows = rows_of(text)
    assert [r[0] for r in rows] == PATH
    assert rows[0][1:] == ["client", "0.000"]  # the first hop has no step
    assert rows[4] == ["bank_node_received", "bank", "1.300", "0.250"]
    assert rows[-1] == ["answered", "hub", "3.214", "0.214"]
    assert "total 3.214 ms from client_sent to answered" in lines
    assert not any(line.startswith("not recorded") for line in lines)
    assert any(line.startswith("note: client_sent is on the client's clock, bank_node_*")
               for line in lines)
    assert all(len(line) <= timeline.LINE_COLUMNS for line in lines[1:])
    # Bars: the first hop a marker at 0, the last step ends at the right edge, and each
    # step starts where the previous one ended (a shared scale).
    bars = [line.split("|")[1] for line in lines[2:12]]
    assert bars[0].startswith("+") and bars[-1].endswith("#")
    assert all(len(b) == timeline.BAR_WIDTH_COLUMNS for b in bars)
    assert all("#" in b for b in bars[1:])  # even a 10 µs step shows


def test_a_charge_denied_by_the_fraud_screen_has_no_intent_and_no_bank_hops() -> None:
    hops = {"client_sent": T0, "received": T0 + 300, "committed": T0 + 900,
            "answered": T0 + 950}
    tl = timeline.build(hops)
    assert [r.key for r in tl.rows] == ["client_sent", "received", "committed", "answered"]
    assert tl.missing == ("intent_committed", *timeline.BANK_HOPS)
    assert [r.step_us for r in tl.rows] == [None, 300, 600, 50]
    reasons = timeline.why_missing(tl, "deny")
    assert reasons == ["denied by the fraud screen: no intent, no bank call"]
    text = timeline.render_text(tl, "t", reasons=reasons)
    assert "not recorded: intent_committed, bank_sent, bank_node_received," in text
    assert "  denied by the fraud screen: no intent, no bank call" in text.splitlines()
    assert "bank_node_*" not in text  # no bank clock in this chart: no note about it
    # Without the fraud verdict nothing is guessed.
    assert timeline.why_missing(tl, "accept") == []


def test_a_virtual_account_charge() -> None:
    """A VA charge opens a payment at the bank: the same path as a card's. The customer pays
    later; that commit is not the charge's and changes no hop (the hub keeps the first)."""
    hops = dict(CARD)
    hops_after_payment = dict(hops)
    note_answer(hops_after_payment, {"ok": True, banklink.TIMINGS_US: {
        "received": T0 + 9_000_000, "committed": T0 + 9_000_100, "answered": T0 + 9_000_200}},
        T0 + 9_000_300)
    assert hops_after_payment == hops
    traced = Traced("M1", "va-1", "tx-va", "bank_transfer", "pending", "accept", hops)
    text = show(traced, None)
    assert text.splitlines()[0] == ("trace of order va-1 (merchant M1): bank_transfer, "
                                    "pending/accept, transaction tx-va")
    assert [r[0] for r in rows_of(text)] == PATH


def test_a_replayed_charge_read_after_a_hub_restart() -> None:
    """A charge answered again from its record (a replay) has the first charge's hops; after
    a hub restart ``answered``, kept in memory only, is gone, and the chart says why."""
    hops = {k: v for k, v in CARD.items() if k != "answered"}
    tl = timeline.build(hops)
    assert tl.missing == ("answered",)
    assert tl.rows[-1].key == "committed"
    reasons = timeline.why_missing(tl, "accept")
    assert reasons == ["answered: kept in memory until the transaction's next change, so a "
                       "hub restart loses it"]
    text = timeline.render_text(tl, "t", reasons=reasons)
    assert "not recorded: answered" in text
    assert "total 3.000 ms from client_sent to committed" in text


def test_missing_client_and_bank_node_hops_are_explained() -> None:
    hops = {k: v for k, v in CARD.items()
            if k not in ("client_sent", "bank_node_received", "bank_node_committed",
                         "bank_node_answered")}
    tl = timeline.build(hops)
    assert tl.rows[0].key == "received" and tl.rows[0].offset_us == 0
    reasons = timeline.why_missing(tl)
    assert reasons[0] == "client_sent: the client sent no sent_us"
    assert reasons[1].startswith("bank_node_*: the bank node reported no timings")
    text = timeline.render_text(tl, "t", reasons=reasons)
    assert "note:" not in text  # every hop is on the hub's clock


def test_a_skewed_clock_shows_a_negative_step_not_a_reordered_path() -> None:
    hops = dict(CARD, bank_node_received=T0 + 900)  # the bank's clock 150 µs behind
    tl = timeline.build(hops)
    assert [r.key for r in tl.rows] == PATH
    (neg,) = tl.negative_steps
    assert neg.key == "bank_node_received" and neg.step_us == -150
    text = timeline.render_text(tl, "t")
    assert "warning: negative step at bank_node_received" in text
    assert "<" in text.splitlines()[2 + PATH.index("bank_node_received")]
    # A client clock ahead of the hub's: offsets below 0, the scale starts there.
    ahead = timeline.build({"client_sent": T0 + 500, "received": T0, "committed": T0 + 800})
    assert ahead.low_us == -500 and ahead.high_us == 300 and ahead.total_us == 800
    assert timeline.render_text(ahead, "t").splitlines()[1].endswith("|-0.500 ms" + " " * 13
                                                                     + "0.300 ms|")


def test_unknown_hops_are_placed_by_time_and_non_times_ignored() -> None:
    hops: dict[str, Any] = {"received": T0, "committed": T0 + 1_000, "answered": T0 + 1_100,
                            "future_hop": T0 + 500, "late": T0 + 2_000, "bad": "x",
                            "negative": -1, "flag": True, 7: T0}
    tl = timeline.build(hops)
    assert [r.key for r in tl.rows] == ["received", "future_hop", "committed", "answered",
                                        "late"]
    assert tl.rows[1].clock == "?"
    assert tl.ignored == ("7", "bad", "flag", "negative")
    text = timeline.render_text(tl, "t")
    assert "ignored (not a time): 7, bad, flag, negative" in text
    assert "hops marked ? on an unknown one" in text


def test_no_hops_and_a_bounded_chart() -> None:
    empty = timeline.build({})
    assert empty.rows == () and empty.total_us == 0
    text = timeline.render_text(empty, "t", reasons=timeline.why_missing(empty))
    assert text.splitlines()[1] == "no hops recorded"
    many = timeline.build({f"h{i:03d}": T0 + i for i in range(500)})
    assert len(many.rows) == timeline.HOPS_MAX
    same = timeline.build({"received": T0, "committed": T0})  # zero span: no division
    assert same.total_us == 0 and "#" in timeline.render_text(same, "t")


# --- where the hops come from --------------------------------------------------------------
def test_the_request_envelope_carries_sent_us_optionally() -> None:
    args = messages.encode_args({"order_id": "o"})
    with_it = messages.encode_request(5, "status", "M1", 1, b"n" * 16, b"s" * 32, args,
                                      sent_us=T0)
    without = messages.encode_request(5, "status", "M1", 1, b"n" * 16, b"s" * 32, args)
    (f1,) = FrameDecoder(65536).feed(with_it)
    (f2,) = FrameDecoder(65536).feed(without)
    assert messages.decode_request(5, f1.body).sent_us == T0
    assert messages.decode_request(5, f2.body).sent_us is None
    bad = messages.bodycodec.pack({**messages.bodycodec.unpack(f2.body), "sent_us": "soon"})
    with pytest.raises(BodyError) as exc:
        messages.decode_request(5, bad)
    assert exc.value.code is ErrorCode.INVALID_FIELD and exc.value.field == "sent_us"


def test_answer_timings_are_read_leniently() -> None:
    good = {"received": 1, "committed": 2, "answered": 3}
    assert banklink.answer_timings({"ok": True, "timings_us": good}) == good
    assert banklink.answer_timings({"timings_us": {"received": 5, "later": "x"}}) == {
        "received": 5}
    for bad in ({"timings_us": {"received": "x"}}, {"timings_us": [1]}, {"ok": True}, [],
                None, {"timings_us": {"received": -1}}):
        assert banklink.answer_timings(bad) is None


def test_the_worked_example_answer_carries_the_node_timings() -> None:
    (frame,) = FrameDecoder(65536).feed(docgen.example_batch_response())
    body = messages.bodycodec.unpack(frame.body)
    assert banklink.answer_timings(body) == docgen.EXAMPLE_BATCH_TIMINGS_US
    assert "timings_us" not in body["results"][0]["result"]  # once per batch, not per op


def test_note_answer_records_the_charge_hops_once() -> None:
    hops: dict[str, int] = {"received": T0}
    note_answer(hops, {"approved": True, "timings_us": {"received": T0 + 5, "committed":
                                                        T0 + 6, "answered": T0 + 7}}, T0 + 9)
    assert hops == {"received": T0, "bank_node_received": T0 + 5,
                    "bank_node_committed": T0 + 6, "bank_node_answered": T0 + 7,
                    "bank_answered": T0 + 9}
    before = dict(hops)
    note_answer(hops, {"ok": True, "timings_us": {"received": T0 + 50}}, T0 + 90)
    assert hops == before  # a later operation's answer: the charge's hops stay
    fresh: dict[str, int] = {}
    note_answer(fresh, {"ok": True, "timings_us": {"received": "garbage"}}, T0)
    assert fresh == {"bank_answered": T0}


async def test_a_batch_answer_gives_each_call_the_frame_timings() -> None:
    from gateway.hub.banklink import BankLink

    pool = BankPool("bca", ["127.0.0.1:1"], hub_id="hub", key=b"k" * 32,
                    ssl_ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
                    on_bank_request=lambda link, frame: None, timeout_s=1.0, attempts_max=1)
    link = BankLink(pool.nodes[0])
    void = {"op_id": "v", "transaction_id": "t"}
    a, b = link.call(banklink.VOID, void, 5.0), link.call(banklink.VOID, void, 5.0)
    await asyncio.sleep(0)  # one batch leaves (without a connection nothing is written)
    (rid,) = link._batches
    timings = {"received": T0, "committed": T0 + 1, "answered": T0 + 2}
    (frame,) = FrameDecoder(65536).feed(messages.encode_response(
        rid, banklink.batch_result([{"ok": True}, {"ok": False}], timings)))
    link.frame_received(frame)
    assert a.result() == {"ok": True, "timings_us": timings}
    assert b.result() == {"ok": False, "timings_us": timings}
    for fut in (a, b):
        hops: dict[str, int] = {}
        note_answer(hops, fut.result(), T0 + 3)
        assert hops["bank_node_committed"] == T0 + 1
