"""Ledger records: format 2 names its fields and says its version; format 1 rows, written
by the code before issue 12 (``tests/fixtures/ledger_v1.db``), still read the same."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ledger import SqliteLedger, SqliteLedgerTools
from gateway.transactions import model
from gateway.transactions.model import (
    RECORD_FIELDS_V1,
    RECORD_FORMAT,
    RecordFormatError,
    Transaction,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return bytes.fromhex(value["$bytes"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _expected() -> dict[str, Any]:
    out: dict[str, Any] = json.loads((FIXTURES / "ledger_v1.json").read_text())
    return out


def _tx(**kw: Any) -> Transaction:
    base: dict[str, Any] = dict(
        transaction_id="t-1", merchant_id="M1", order_id="o-1", gross_amount=1000,
        currency="IDR", payment_type="credit_card", status="capture", fraud_status="accept",
        request_hash=b"\x01" * 16, created_ms=1, updated_ms=2, bank="bca",
        refunds=[{"refund_key": "r", "amount": 5, "time_ms": 3, "reason": None}],
        pending_op={"op": "capture", "op_id": "x", "args": {"amount": 1}})
    base.update(kw)
    return Transaction(**base)


def _v2(names: list[str], values: list[Any], version: Any = RECORD_FORMAT) -> bytes:
    out: bytes = msgpack.packb({"v": version, "fields": names, "values": values},
                               use_bin_type=True)
    return out


async def test_the_fixture_ledger_of_format_1_reads_as_the_old_code_read_it(
        tmp_path: Path) -> None:
    expected = _expected()
    path = tmp_path / "ledger.db"
    shutil.copy(FIXTURES / "ledger_v1.db", path)
    want = [Transaction(**_decode(t)) for t in expected["transactions"]]
    ledger = SqliteLedger(path)
    await ledger.start()
    try:
        got = sorted(await ledger.created_since(0), key=lambda t: t.created_ms)
        assert got == want
        for t in want:
            assert await ledger.get(t.merchant_id, t.order_id) == t
            assert await ledger.get_by_id(t.transaction_id) == t
        assert sorted(t.transaction_id for t in await ledger.unresolved()) \
            == expected["unresolved"]
        assert sorted(t.transaction_id for t in await ledger.pending()) == expected["pending"]
        assert sorted(t.transaction_id for t in await ledger.challenged()) \
            == expected["challenged"]
        assert await ledger.last_event_seqs() == expected["last_event_seqs"]
        for merchant, events in expected["events"].items():
            assert [[s, d.hex()] for s, d in await ledger.events_after(merchant, 0, 100)] \
                == events
        # An old row rewritten by this code is format 2 and reads back the same.
        first = want[0]
        first.updated_ms += 1
        await ledger.save(first)
        seq = await ledger.save(first, None)
        assert seq is None
        again = await ledger.get(first.merchant_id, first.order_id)
        assert again == first
        # The event sequence continues after the old events, without a gap.
        from gateway.ledger.base import Notification
        seq = await ledger.save(first, Notification(b"d", None, b"", b""))
        assert seq == expected["last_event_seqs"][first.merchant_id] + 1
    finally:
        await ledger.close()
    tools = SqliteLedgerTools(path)
    assert [r._asdict() for r in tools.webhooks(None, 100)] == expected["webhooks"]
    assert tools.webhook_count() == len(expected["webhook_bodies"])
    summaries = {s.transaction_id: s for s in tools.summaries()}
    assert set(summaries) == {t.transaction_id for t in want}
    for t in want:
        s = summaries[t.transaction_id]
        assert (s.status, s.unresolved, s.captured, s.refunded, s.bank) == (
            t.status, t.unresolved, t.captured_amount, t.refunded_amount, t.bank)


def test_the_fixture_webhook_bodies_are_what_the_hub_builds_now(tmp_path: Path) -> None:
    """The bodies the old writer built are byte for byte what the hub's parts give now."""
    from gateway.webhooks.payload import notification_body

    expected = _expected()
    keys = {"M1": "SB-Mid-server-fixture-1", "M2": "SB-Mid-server-fixture-2"}
    rows = {r["id"]: r for r in expected["webhooks"]}
    for wid, body in expected["webhook_bodies"].items():
        parsed = json.loads(body)
        event = parsed["event_id"]
        seq = int(event.rsplit("_", 1)[1])
        assert event == rows[int(wid)]["event_id"]
        events = dict((s, d) for s, d in expected["events"][parsed["merchant_id"]])
        result = msgpack.unpackb(bytes.fromhex(events[seq]), raw=False)
        assert notification_body(result, keys[parsed["merchant_id"]], seq) == body.encode()


def test_format_1_records_keep_their_frozen_field_order() -> None:
    t = _tx()
    positional = msgpack.packb([getattr(t, n) for n in RECORD_FIELDS_V1], use_bin_type=True)
    assert Transaction.from_record(positional) == t


def test_format_2_names_its_fields_and_version() -> None:
    t = _tx()
    rec = msgpack.unpackb(t.to_record(), raw=False)
    assert rec["v"] == RECORD_FORMAT == 2
    assert dict(zip(rec["fields"], rec["values"], strict=True)) == {
        f.name: getattr(t, f.name) for f in dataclasses.fields(Transaction)}
    assert Transaction.from_record(t.to_record()) == t


def test_a_field_added_later_is_ignored_and_one_removed_takes_its_default() -> None:
    t = _tx(masked_card="4811", customer={"email": "a@b"})
    names = [f.name for f in dataclasses.fields(Transaction)]
    values = [getattr(t, n) for n in names]
    # Written by a later version with a new field, in another order.
    later = _v2(["loyalty_points", *reversed(names)], [42, *reversed(values)])
    assert Transaction.from_record(later) == t
    # Written by a version without ``customer`` and ``masked_card``: defaults.
    kept = [(n, v) for n, v in zip(names, values, strict=True)
            if n not in ("customer", "masked_card")]
    earlier = _v2([n for n, _ in kept], [v for _, v in kept])
    got = Transaction.from_record(earlier)
    assert got.customer is None and got.masked_card is None
    assert dataclasses.replace(got, customer=t.customer, masked_card=t.masked_card) == t


def test_records_written_before_metadata_read_without_it() -> None:
    """Issue 15 added ``metadata`` and ``notification_url`` to format 2 without a new
    version: a record that does not name them (every record written before) reads with
    ``None``, and one that does keeps them."""
    t = _tx(metadata={"cart": "c-1", "note": "ünï"},
            notification_url="https://shop.example/hooks/o-1")
    assert Transaction.from_record(t.to_record()) == t
    names = [f.name for f in dataclasses.fields(Transaction)
             if f.name not in ("metadata", "notification_url")]
    before = _v2(names, [getattr(t, n) for n in names])
    old = Transaction.from_record(before)
    assert old.metadata is None and old.notification_url is None
    assert "metadata" not in old.to_result()
    assert dataclasses.replace(old, metadata=t.metadata,
                               notification_url=t.notification_url) == t
    assert t.to_result()["metadata"] == t.metadata
    assert "notification_url" not in t.to_result()  # the merchant's own setting, not shown


def test_format_1_is_read_by_name_once_the_dataclass_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a field is added to ``Transaction``, format 1 rows go through the name map of
    their frozen field list (they are not fed positionally to a different field order)."""
    t = _tx()
    positional = msgpack.packb([getattr(t, n) for n in RECORD_FIELDS_V1], use_bin_type=True)
    monkeypatch.setattr(model, "_V1_IS_NOW", False)
    assert Transaction.from_record(positional) == t


@pytest.mark.parametrize("record, why", [
    (_v2(["transaction_id"], ["t"], version=3), "format 3"),
    (_v2(["transaction_id"], ["t"], version=None), "format None"),
    (_v2(["transaction_id", "merchant_id"], ["t"]), "matching"),
    (_v2(["transaction_id", "transaction_id"], ["t", "u"]), "twice"),
    (_v2([1], ["t"]), "twice or not by a string"),
    (_v2(["transaction_id"], ["t"]), "lacks required field"),
    (msgpack.packb([1, 2, 3]), "3 values"),
    (msgpack.packb("text"), "is a str"),
    (b"\xc1", "not msgpack"),
])
def test_records_this_code_cannot_read_are_refused_not_misread(record: bytes,
                                                               why: str) -> None:
    with pytest.raises(RecordFormatError, match=why):
        Transaction.from_record(record)


_text = st.text(max_size=20)
_opt_text = st.none() | _text


@settings(max_examples=200, deadline=None)
@given(st.builds(
    Transaction, transaction_id=_text, merchant_id=_text, order_id=_text,
    gross_amount=st.integers(0, 2**62), currency=_text, payment_type=_text, status=_text,
    fraud_status=_text, request_hash=st.binary(max_size=32),
    created_ms=st.integers(0, 2**50), updated_ms=st.integers(0, 2**50), bank=_opt_text,
    capture_requested=st.booleans(), settlement_ms=st.none() | st.integers(0, 2**50),
    masked_card=_opt_text, va_number=_opt_text, captured_amount=st.integers(0, 2**62),
    refunds=st.lists(st.fixed_dictionaries({"refund_key": _text,
                                             "amount": st.integers(0, 10**9)}), max_size=3),
    fraud_reasons=st.lists(_text, max_size=3),
    pending_op=st.none() | st.dictionaries(_text, st.integers(-2**63, 2**63 - 1), max_size=3),
    hops_us=st.dictionaries(_text, st.integers(0, 2**40), max_size=3),
    metadata=st.none() | st.dictionaries(_text, _text, max_size=3),
    notification_url=_opt_text))
def test_every_transaction_round_trips_through_its_record(t: Transaction) -> None:
    assert Transaction.from_record(t.to_record()) == t
