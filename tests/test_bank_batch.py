"""``bank.batch``: many bank operations in one signed frame (docs/protocol.md §10.2).

The worked example of the spec is rebuilt byte for byte; the batch's limits and answers are
unit-tested; the bank's bulk path is checked against the row-by-row path it replaces on
random operation sequences; and end to end, concurrent charges share frames, a bad inner
operation fails alone, and a bank node killed with batches in flight leaves the audit clean.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import sqlite3
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import secret_keys, tls
from gateway.bank import store
from gateway.hub.banklink import BankPool
from gateway.net.signed import verified_request
from protocol import banklink, docgen, messages
from protocol.decoder import FrameDecoder
from protocol.errors import BodyError, ErrorCode, PaywireError, RemoteError
from protocol.frame import FrameType
from tests.deploy import RICH, Deployment
from tests.loadgen import assert_settled_and_clean, charge_load
from tests.test_protocol_doc import DOC, _canon, _hex_block
from tests.waiting import wait_until


# --- the worked example, byte for byte ---------------------------------------------------
def test_worked_example_matches_the_spec_byte_for_byte() -> None:
    args_raw = _hex_block("batch-args")
    assert args_raw == docgen.example_batch_args()
    assert messages.decode_args(args_raw) == banklink.batch_args(docgen.EXAMPLE_BATCH_OPS)
    # The signing input rebuilt from section 4.3 alone, then the HMAC under the link key.
    by_spec = b"paywire-request-v2\x00" + _canon(
        [docgen.EXAMPLE_LINK_IDENTITY, docgen.EXAMPLE_BATCH_REQUEST_ID, "bank.batch",
         docgen.EXAMPLE_TIMESTAMP_MS, docgen.EXAMPLE_NONCE, args_raw])
    assert by_spec == _hex_block("batch-signing-input")
    mac = hmac.new(docgen.EXAMPLE_LINK_KEY, by_spec, hashlib.sha256).hexdigest()
    assert f"`{mac}`" == docgen.sections_in(DOC.read_text())["batch-signature"]
    assert f"`c4 {len(args_raw):02x}`" in DOC.read_text()

    raw = _hex_block("batch-request")
    assert raw == docgen.example_batch_request()
    assert struct.unpack(">IBBHQ", raw[:16]) == (len(raw) - 16, 1, 3, 0, 7)
    assert f"body of {len(raw) - 16} bytes" in DOC.read_text()
    (frame,) = FrameDecoder(65536).feed(raw)
    req = verified_request(docgen.EXAMPLE_LINK_KEY, frame)  # one HMAC for both operations
    with pytest.raises(PaywireError) as bad:
        verified_request(b"another key", frame)
    assert bad.value.code is ErrorCode.BAD_SIGNATURE
    valid, errors = banklink.split_batch(
        banklink.validate(req.op, messages.decode_args(req.args_raw)))
    assert [(o.index, o.op) for o in valid] == [(0, banklink.AUTHORIZE)]
    assert errors[1].code is ErrorCode.INVALID_FIELD and errors[1].field == "ops[1].args.amount"

    # The example's first answer is what the reference bank store answers.
    conn = _books({"4811111111111114": 10**9})
    ((outcome,),) = store.BankBulk().apply(conn, [[(o.op, o.args) for o in valid]])
    assert outcome == (0, docgen.example_batch_answers()[0])

    resp = _hex_block("batch-response")
    assert resp == docgen.example_batch_response()
    (rframe,) = FrameDecoder(65536).feed(resp)
    assert (rframe.type, rframe.request_id, rframe.flags) == (FrameType.RESPONSE, 7, 0)
    first, second = banklink.decode_batch_result(messages.bodycodec.unpack(rframe.body), 2)
    assert first == {"approved": True, "captured": True, "auth_code": "E316EA"}
    assert isinstance(second, RemoteError)
    assert (second.code, second.field) == (ErrorCode.INVALID_FIELD, "ops[1].args.amount")


# --- limits and answers ------------------------------------------------------------------
def _void(i: int) -> dict[str, Any]:
    return {"op": banklink.VOID, "args": {"op_id": f"v{i}", "transaction_id": f"t{i}"}}


def test_batch_size_limits() -> None:
    full = {"ops": [_void(i) for i in range(banklink.BATCH_OPS_MAX)]}
    valid, errors = banklink.split_batch(banklink.validate(banklink.BATCH, full))
    assert len(valid) == banklink.BATCH_OPS_MAX and not errors
    for bad in ({"ops": []}, {"ops": [_void(i) for i in range(banklink.BATCH_OPS_MAX + 1)]},
                {"ops": [_void(0), "not a map"]}, {"ops": [{"op": banklink.VOID}]},
                {"ops": [{**_void(0), "extra": 1}]}, {}):
        with pytest.raises(BodyError) as exc:
            banklink.validate(banklink.BATCH, bad)
        assert exc.value.code is ErrorCode.INVALID_FIELD
        assert exc.value.field is not None and exc.value.field.startswith("args")


@pytest.mark.parametrize("op", [banklink.PAYMENT, banklink.ADMIN_STATS, banklink.ADMIN_PAY,
                                banklink.BATCH, "bank.nothing"])
def test_only_hub_to_bank_operations_are_batched_and_others_fail_alone(op: str) -> None:
    args = banklink.validate(banklink.BATCH, {"ops": [_void(0), {"op": op, "args": {}},
                                                      _void(2)]})
    valid, errors = banklink.split_batch(args)
    assert [o.index for o in valid] == [0, 2]
    assert errors[1].code is ErrorCode.UNKNOWN_OPERATION and errors[1].field == "ops[1].op"


def test_answers_round_trip_in_order() -> None:
    entries: list[dict[str, Any] | PaywireError] = [
        {"ok": True}, PaywireError("failing", code=ErrorCode.BANK_UNAVAILABLE),
        {"approved": False, "code": 502, "reason": "insufficient funds"}]
    body = messages.bodycodec.unpack(messages.bodycodec.pack(banklink.batch_result(entries)))
    got = banklink.decode_batch_result(body, 3)
    assert got[0] == {"ok": True} and got[2] == entries[2]
    assert isinstance(got[1], RemoteError) and got[1].code is ErrorCode.BANK_UNAVAILABLE


def test_malformed_answers_fail_each_operation_and_never_raise() -> None:
    for body in ({"results": [{"result": {}}]}, {}, [], None, {"results": "x"}):
        got = banklink.decode_batch_result(body, 2)
        assert len(got) == 2
        assert all(isinstance(g, RemoteError) and g.code is ErrorCode.INTERNAL for g in got)
    got = banklink.decode_batch_result({"results": [{"result": {"ok": True}}, 7]}, 2)
    assert got[0] == {"ok": True}
    assert isinstance(got[1], RemoteError) and got[1].code is ErrorCode.INTERNAL


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20),
       st.integers(1, 5))
def test_decoding_any_answer_never_raises(body: Any, count: int) -> None:
    got = banklink.decode_batch_result(body, count)
    assert len(got) == count
    assert all(isinstance(g, dict | RemoteError) for g in got)


# --- the bank's bulk path equals the row-by-row path ---------------------------------------
def _books(opening: dict[str, int]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(store.SCHEMA)
    accounts = {**opening, store.SETTLEMENT: 0, store.PAYER: store.PAYER_OPENING_DEFAULT}
    conn.executemany("INSERT INTO accounts VALUES (?,?,0,?,?)",
                     [(k, v, v, "USD" if k == "usd" else "IDR") for k, v in accounts.items()])
    return conn


def _row_by_row(conn: sqlite3.Connection, ops: list[tuple[str, dict[str, Any]]]
                ) -> list[store.Outcome]:
    """The pre-batch path: each operation a call of its own, in a savepoint."""
    handlers = dict(store._HANDLERS)
    handlers[banklink.OPEN_PAYMENT] = functools.partial(store._open_payment)
    out: list[store.Outcome] = []
    conn.execute("BEGIN IMMEDIATE")
    for op, args in ops:
        conn.execute("SAVEPOINT w")
        try:
            out.append((0, store._dedup(conn, op, args, handlers[op])))
        except Exception as exc:
            conn.execute("ROLLBACK TO w")
            out.append((1, repr(exc)))
        conn.execute("RELEASE w")
    conn.execute("COMMIT")
    return out


def _tables(conn: sqlite3.Connection) -> dict[str, list[Any]]:
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("accounts", "ops", "holds", "payments", "effects", "outbox")}


TXIDS = [f"t{i}" for i in range(5)]
ACCOUNTS = ["a1", "a1", "a2", "usd", "nope", store.SETTLEMENT]
OTHERS = sorted(banklink.BATCHABLE - {banklink.AUTHORIZE})


def _op(draw: Any, auth_weight: int) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from([banklink.AUTHORIZE] * auth_weight + OTHERS))
    txid = draw(st.sampled_from(TXIDS))
    # Few op ids per transaction and kind: repeats inside one batch, and a second
    # authorization of one transaction under another op id.
    op_id = f"{txid}:{kind}:{draw(st.integers(0, 1))}"
    amount = draw(st.sampled_from([1, 400, 700, 1500]))
    a: dict[str, Any] = {"op_id": op_id, "transaction_id": txid}
    if kind == banklink.AUTHORIZE:
        a.update(account=draw(st.sampled_from(ACCOUNTS)), exp_month=12,
                 exp_year=draw(st.sampled_from([2020] + [2030] * 5)), amount=amount,
                 currency=draw(st.sampled_from(["IDR"] * 5 + ["USD"])),
                 capture=draw(st.booleans()))
    elif kind in (banklink.CAPTURE, banklink.REFUND):
        a["amount"] = amount
    elif kind == banklink.REVERSE:
        a["target_op_id"] = f"{draw(st.sampled_from(TXIDS))}:{banklink.AUTHORIZE}:" \
                            f"{draw(st.integers(0, 1))}"
    elif kind == banklink.INQUIRY:
        a = {"op_id": f"{txid}:{banklink.AUTHORIZE}:{draw(st.integers(0, 1))}"}
    elif kind == banklink.OPEN_PAYMENT:
        a.update(kind="va", amount=amount, currency="IDR", expiry_ms=2**40, merchant_id="M1")
    elif kind == banklink.CLOSE_PAYMENT:
        a["reason"] = draw(st.sampled_from(["expire", "cancel"]))
    return kind, banklink.validate(kind, a)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_bulk_path_answers_and_writes_exactly_as_row_by_row(data: Any) -> None:
    """Same answers, same rows (effects in the same order) for any sequence of operations:
    authorizations decided in memory and written with executemany, the others run in
    between against flushed rows — including repeats, reversals before and after their
    target, declines, and a second authorization of one transaction (fails alone)."""
    # Authorizations (the bulk path's own) dominate, more or less: runs of them decided in
    # memory, and other operations in between that change the rows under them.
    weight = data.draw(st.sampled_from([2, 8, 32]))
    ops = data.draw(st.lists(st.composite(lambda draw: _op(draw, weight))(), min_size=4,
                             max_size=40))
    split = data.draw(st.integers(0, len(ops)))
    opening = {"a1": 1000, "a2": 900, "usd": 5000}  # two holds may exhaust a1
    ref, bulk = _books(opening), _books(opening)
    expected = _row_by_row(ref, ops)
    bulk.execute("BEGIN IMMEDIATE")
    got = store.BankBulk(va_prefix="8808", currency="IDR").apply(bulk, [ops[:split],
                                                                        ops[split:]])
    bulk.execute("COMMIT")
    flat = got[0] + got[1]
    assert [o[0] for o in flat] == [o[0] for o in expected]
    assert [o[1] for o in flat if not o[0]] == [o[1] for o in expected if not o[0]]
    assert _tables(bulk) == _tables(ref)


def _auth(txid: str, amount: int, capture: bool) -> tuple[str, dict[str, Any]]:
    return banklink.AUTHORIZE, {"op_id": f"{txid}:a", "transaction_id": txid, "account": "a1",
                                "exp_month": 12, "exp_year": 2030, "amount": amount,
                                "currency": "IDR", "capture": capture}


@pytest.mark.parametrize("between", [
    (banklink.VOID, {"op_id": "t1:v", "transaction_id": "t1"}),
    (banklink.REFUND, {"op_id": "t1:r", "transaction_id": "t1", "amount": 700}),
    (banklink.REVERSE, {"op_id": "t1:x", "transaction_id": "t1", "target_op_id": "t1:a"}),
    (banklink.CAPTURE, {"op_id": "t1:c", "transaction_id": "t1", "amount": 700})])
@pytest.mark.parametrize("capture", [False, True])
def test_rows_another_operation_changed_are_read_again(between: tuple[str, dict[str, Any]],
                                                       capture: bool) -> None:
    """An authorization after an operation that gave funds back (or took them) in the same
    batch decides on the account as that operation left it."""
    ops = [_auth("t1", 700, capture), between, _auth("t2", 400, True), _auth("t3", 400, False)]
    ref, bulk = _books({"a1": 1000}), _books({"a1": 1000})
    expected = _row_by_row(ref, ops)
    assert store.BankBulk().apply(bulk, [ops]) == [expected]
    assert _tables(bulk) == _tables(ref)


def test_bulk_path_reads_each_table_once_for_authorizations() -> None:
    conn = _books({"a1": 10**9})
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    ops = [(banklink.AUTHORIZE, {"op_id": f"o{i}", "transaction_id": f"t{i}", "account": "a1",
                                 "exp_month": 12, "exp_year": 2030, "amount": 10,
                                 "currency": "IDR", "capture": True}) for i in range(50)]
    outcomes = store.BankBulk().apply(conn, [ops])
    assert all(o == (0, {"approved": True, "captured": True, "auth_code": o[1]["auth_code"]})
               for o in outcomes[0])
    # 3 reads (ops, accounts, holds) whatever the batch's size; the writes are executemany
    # of 4 statements (traced per row).
    reads = [s for s in statements if s.startswith("SELECT")]
    assert len(reads) == 3, reads
    assert {s.split(" (")[0].split(" SET")[0] for s in statements if not s.startswith("SELECT")
            } == {"UPDATE accounts", "INSERT INTO effects", "INSERT INTO holds VALUES",
                  "INSERT OR REPLACE INTO ops VALUES"}


# --- end to end on real sockets --------------------------------------------------------------
async def _stats(dep: Deployment, node: int) -> dict[str, Any]:
    return await dep.stats("bca", node)


async def test_concurrent_charges_share_bank_frames_and_transactions(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path).astart()
    try:
        acks, errors = await charge_load(dep, 160, 11, "bb", clients=8)
        assert not errors and len(acks) == 160
        stats = [await _stats(dep, n) for n in (0, 1)]
        ops = sum(s["received"].get(banklink.AUTHORIZE, 0) for s in stats)
        frames = sum(s["frames_received"] for s in stats)
        commits = sum(s["sql_transactions"] for s in stats)
        assert ops == 160
        assert frames < ops, (frames, ops)  # batches of several operations were sent
        assert commits < ops, (commits, ops)
        print(f"160 authorizations in {frames} frames and {commits} transactions")
        await assert_settled_and_clean(dep, acks)
    finally:
        dep.stop()


async def test_a_bad_inner_operation_fails_alone(tmp_path: Path) -> None:
    """Three calls in one loop iteration leave as one frame: the invalid one is answered
    with its own error, the others are applied; a repeat of an op id inside the batch is
    answered as a repeat and moves nothing."""
    dep = await Deployment(tmp_path, bca_nodes=1).astart()
    try:
        proc = dep.banks["bca"][0]
        pool = BankPool("bca", [f"127.0.0.1:{proc.port}"], hub_id="hub",
                        key=secret_keys.load_link_key(dep.secrets),
                        ssl_ctx=tls.node_client_context(dep.certs, "hub", "hub"),
                        on_bank_request=lambda link, frame: None, timeout_s=10.0,
                        attempts_max=1)
        pool.start()
        try:
            assert await pool.wait_ready(30.0)
            link = pool.nodes[0].link
            assert link is not None
            before = await _stats(dep, 0)
            balance_before = await dep.balance("bca", RICH[0])

            def auth(op_id: str) -> dict[str, Any]:
                return {"op_id": op_id, "transaction_id": op_id, "account": RICH[0],
                        "exp_month": 12, "exp_year": 2030, "amount": 5000,
                        "currency": "IDR", "capture": True}

            calls = [link.call(banklink.AUTHORIZE, auth("bb-1"), 10.0),
                     link.call(banklink.REFUND, {"op_id": "bb-r", "transaction_id": "bb-1",
                                                 "amount": 0}, 10.0),
                     link.call(banklink.AUTHORIZE, auth("bb-2"), 10.0),
                     link.call(banklink.AUTHORIZE, auth("bb-2"), 10.0)]
            assert link.frames_sent == 0  # nothing leaves before the iteration ends
            first, bad, second, repeat = await asyncio.gather(*calls, return_exceptions=True)
            assert link.frames_sent == 1
            assert isinstance(first, dict) and first["approved"] is True
            assert isinstance(second, dict) and second["approved"] is True
            assert isinstance(repeat, dict) and repeat == {**second, "duplicate": True}
            assert isinstance(bad, RemoteError) and bad.code is ErrorCode.INVALID_FIELD
            assert bad.field == "ops[1].args.amount"
            after = await _stats(dep, 0)
            assert after["frames_received"] == before["frames_received"] + 1
            assert (after["received"][banklink.AUTHORIZE]
                    == before["received"].get(banklink.AUTHORIZE, 0) + 3)
            assert (await dep.balance("bca", RICH[0]))[0] == balance_before[0] - 10000
            assert dep.bank_sql("bca", "SELECT COUNT(*) FROM effects WHERE op_id IN "
                                "('bb-1','bb-2')")[0][0] == 4  # two moves each, once
            assert dep.bank_sql("bca", "SELECT COUNT(*) FROM ops WHERE op_id = 'bb-r'") == [(0,)]

            # A failing node (simulated) answers each inner op BANK_UNAVAILABLE in its entry:
            # nothing happened, so the pool may send it to another node.
            await dep.admin("bca", "admin.faults", {"failure_rate_pct": 100})
            failed = await asyncio.gather(
                link.call(banklink.AUTHORIZE, auth("bb-3"), 10.0),
                link.call(banklink.AUTHORIZE, auth("bb-4"), 10.0), return_exceptions=True)
            assert all(isinstance(f, RemoteError) and f.code is ErrorCode.BANK_UNAVAILABLE
                       for f in failed), failed
            assert dep.bank_sql("bca", "SELECT COUNT(*) FROM ops WHERE op_id IN "
                                "('bb-3','bb-4')") == [(0,)]
        finally:
            await pool.stop()
    finally:
        dep.stop()


async def test_kill_a_bank_node_with_batches_in_flight(tmp_path: Path) -> None:
    dep = await Deployment(tmp_path).astart()  # bca has two nodes sharing its books
    try:
        # A slow node 0 holds each batch 250 ms before applying it: the kill lands on
        # batches received and not yet answered. (Long enough that the load, whose calls
        # node 0 takes in turn with node 1, cannot end between two polls of its counters:
        # each poll is a TLS connection of its own, tens of ms on a busy machine.)
        await dep.admin("bca", "admin.faults", {"latency_ms": 250}, node=0)
        acks_live: list[dict[str, Any]] = []
        load = asyncio.ensure_future(charge_load(dep, 160, 13, "bk", clients=8,
                                                 acks=acks_live))

        async def batches_in_flight() -> bool:
            s = await _stats(dep, 0)
            received = s["received"].get(banklink.AUTHORIZE, 0)
            applied = s["applied"].get(banklink.AUTHORIZE, 0)
            return s["frames_received"] < received and received - applied > 1

        await wait_until(batches_in_flight, "batches received and not yet applied")
        dep.banks["bca"][0].kill()
        acks, errors = await asyncio.wait_for(load, 120)
        assert not errors and len(acks) == 160
        await assert_settled_and_clean(dep, acks)
    finally:
        dep.stop()


# --- the hub's side: answers reach each call ------------------------------------------------
def _unconnected_link() -> Any:
    from gateway.hub.banklink import BankLink

    pool = BankPool("bca", ["127.0.0.1:1"], hub_id="hub", key=b"k" * 32,
                    ssl_ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
                    on_bank_request=lambda link, frame: None, timeout_s=1.0, attempts_max=1)
    return BankLink(pool.nodes[0])


async def test_hub_hands_each_call_its_own_answer() -> None:
    """Without a connection (nothing is written): the calls of one iteration become one
    batch; an entry answers its call, a timed-out call keeps its timeout, a whole-frame
    error answers every call, and the link's loss fails the calls of unanswered batches."""
    from gateway.hub.banklink import LinkLost
    from gateway.net.signed import RequestTimeout

    link = _unconnected_link()
    void = {"op_id": "v", "transaction_id": "t"}
    a, b = link.call(banklink.VOID, void, 5.0), link.call(banklink.VOID, void, 0.01)
    await asyncio.sleep(0)  # the loop iteration ends: one batch "leaves"
    assert link.frames_sent == 1
    (batch_rid,) = link._batches
    await asyncio.wait([b])  # the short call's own deadline passes
    assert isinstance(b.exception(), RequestTimeout) and not a.done()
    link.frame_received(_frame(batch_rid, banklink.batch_result([{"ok": True},
                                                                  {"ok": False}])))
    assert a.result() == {"ok": True} and batch_rid not in link._batches

    c, d = link.call(banklink.VOID, void, 5.0), link.call(banklink.VOID, void, 5.0)
    await asyncio.sleep(0)
    (rid,) = link._batches
    link.frame_received(_frame(rid, PaywireError("no", code=ErrorCode.BAD_SIGNATURE)))
    for f in (c, d):
        assert isinstance(f.exception(), RemoteError)
        assert f.exception().code is ErrorCode.BAD_SIGNATURE

    e, f2 = link.call(banklink.VOID, void, 5.0), link.call(banklink.VOID, void, 5.0)
    await asyncio.sleep(0)
    link.on_disconnected(None)
    assert isinstance(link.ready.exception(), LinkLost)
    assert isinstance(e.exception(), LinkLost) and isinstance(f2.exception(), LinkLost)
    assert not link._batches


def _frame(rid: int, answer: dict[str, Any] | PaywireError) -> Any:
    raw = (messages.encode_error_response(rid, answer) if isinstance(answer, PaywireError)
           else messages.encode_response(rid, answer))
    (frame,) = FrameDecoder(65536).feed(raw)
    return frame


async def test_hub_splits_a_batch_that_would_exceed_the_peer_body_limit() -> None:
    link = _unconnected_link()
    void = {"op_id": "v" * 100, "transaction_id": "t"}
    link.conn.peer_body_bytes_max = 700  # one void fits (~270 bytes), two fit, four do not
    calls = [link.call(banklink.VOID, void, 5.0) for _ in range(4)]
    await asyncio.sleep(0)
    assert link.frames_sent == 2 and [len(c) for c in link._batches.values()] == [2, 2]
    link.on_disconnected(None)
    assert isinstance(link.ready.exception(), Exception)
    assert all(c.done() for c in calls)
    for c in calls:
        c.exception()


def test_which_failed_sends_count_as_maybe_applied() -> None:
    """A bank answer that leaves the effect unknown is never the operation's own error: it
    is retried (same op_id) and, unanswered, settled by inquiry like a timeout."""
    from gateway.hub.banklink import LinkLost, send_failure
    from gateway.net.signed import RequestTimeout

    def remote(code: ErrorCode) -> RemoteError:
        return RemoteError.from_body({"code": int(code), "name": code.name, "message": "m"})

    assert send_failure(remote(ErrorCode.BANK_UNAVAILABLE)) == "unavailable"
    for code in (ErrorCode.INTERNAL, ErrorCode.RESPONSE_TOO_LARGE, ErrorCode.MALFORMED_BODY):
        assert send_failure(remote(code)) == "maybe_sent", code
    # an answer we could not read ourselves
    assert send_failure(PaywireError("bad", code=ErrorCode.MALFORMED_BODY)) == "maybe_sent"
    assert send_failure(RequestTimeout("late")) == "maybe_sent"
    assert send_failure(LinkLost("gone")) == "maybe_sent"
    # a refusal: nothing happened, and it is the answer
    assert send_failure(remote(ErrorCode.INVALID_FIELD)) is None
    assert send_failure(remote(ErrorCode.BAD_SIGNATURE)) is None
    # our own BANK_UNAVAILABLE (no node) is not a node's refusal to retry elsewhere
    assert send_failure(PaywireError("none", code=ErrorCode.BANK_UNAVAILABLE)) is None
