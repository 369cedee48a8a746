"""Hostile counterparts on the hub ↔ bank link (docs/protocol.md §10): a hub (the hub's
certificate and the link key) that sends a real bank node what the reference hub never
sends, and a bank node (a genuine bank certificate) that answers the real hub what the
reference node never answers.

The hostile bank node (``FakeBank``) runs on its own event loop in a thread for the whole
module, so one deployment serves every test: the hub dials it for bank ``bca`` (the real
``bca-1`` process runs beside it, and the hostile-hub tests talk to that one directly). Each
test picks its own card (account), and the fake answers that account's operations the way
the test set up.

A test marked ``xfail(strict=True)`` shows a defect: it asserts what the spec says and fails
on the current code for the reason given.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import pki, secret_keys, tls
from gateway.client import Card
from gateway.net.signed import build_request
from gateway.transactions.model import now_ms, now_us
from protocol import banklink, messages
from protocol import body as bodycodec
from protocol.decoder import FrameDecoder
from protocol.errors import ErrorCode, PaywireError
from protocol.frame import Flags, Frame, FrameType, encode_frame
from tests.deploy import KEYS, RICH, Deployment
from tests.rawclient import Raw
from tests.test_hostile_peers import signed
from tests.waiting import wait_until

WAIT_S = 30.0

# How the fake answers an account's operations (``FakeBank.plans``).
HONEST = "honest"
NO_APPROVED = "no_approved"  # an authorize answered without ``approved``
GOAWAY = "goaway"  # the node starts draining when the authorize arrives (GOAWAY, then 901)
UNSOLICITED = "unsolicited"  # a RESPONSE nobody asked for, then the honest answer
# Applies the operations but answers the frame with something unreadable, once (a batch
# with no entries, a plain answer that is not msgpack); honest from then on.
UNREADABLE_ONCE = "unreadable_once"
# Refuses the account's next operation with ``FakeBank.refusals[account]`` (an error code a
# server answers for work it did not start: 401 past its in-flight bound, 901 past its
# GOAWAY, sent with it), once; honest from then on.
REFUSE_ONCE = "refuse_once"


class FakeBank:
    """A bank node holding the genuine ``bca-1`` certificate, on its own loop and thread."""

    def __init__(self, certs: Path) -> None:
        self.ctx = tls.node_server_context(certs, "bank", "bca-1")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.lock = threading.Lock()
        self.plans: dict[str, str] = {}  # account -> plan
        self.timings: dict[str, Any] = {}  # account -> the timings_us its answers carry
        self.refusals: dict[str, ErrorCode] = {}  # account -> code (REFUSE_ONCE)
        self.stored: dict[str, dict[str, Any]] = {}  # op id -> first answer
        self.account_of: dict[str, str] = {}  # op id / transaction id -> account
        # (connection number, request id, op, args) of every operation received, in order.
        self.received: list[tuple[int, int, str, dict[str, Any]]] = []
        self.cuts: dict[int, int] = {}  # connection number -> its GOAWAY's last_request_id
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.connections = 0
        self.server: asyncio.Server | None = None
        # While ``mute``: a HELLO gets no WELCOME (its connection goes to ``muted``).
        self.mute = False
        self.muted: list[int] = []
        self.welcomed = 0
        self.closed: set[int] = set()  # connections the hub closed (or we dropped)

    # --- lifecycle (called from the test's thread) -------------------------------------------
    def start(self) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(WAIT_S)

    async def _start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        return int(self.server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        async def close() -> None:
            if self.server is not None:
                self.server.close()
            for writer in list(self.writers.values()):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(WAIT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)

    def drop(self, conn: int) -> None:
        """Abort connection ``conn`` (the node's drain is over); the hub reconnects."""
        def abort() -> None:
            writer = self.writers.get(conn)
            if writer is not None:
                writer.transport.abort()

        self.loop.call_soon_threadsafe(abort)

    def end_drains(self) -> None:
        """Every connection that sent GOAWAY ends (its drain is over); the hub dials again."""
        for conn in list(self.cuts):
            self.drop(conn)
        self.cuts.clear()

    def plan(self, account: str, plan: str, timings: Any = None) -> None:
        with self.lock:
            self.plans[account] = plan
            if timings is not None:
                self.timings[account] = timings

    def ops(self, account: str) -> list[tuple[int, int, str, dict[str, Any]]]:
        """The operations received that concern ``account``."""
        with self.lock:
            return [r for r in self.received if self._account(r[3]) == account]

    # --- the node -------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        self.writers[conn] = writer
        decoder = FrameDecoder(1 << 22)
        try:
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    writer.write(self._frame(conn, frame))
        except (ConnectionError, OSError, PaywireError):
            pass
        finally:
            self.writers.pop(conn, None)
            self.closed.add(conn)
            writer.close()

    def _frame(self, conn: int, frame: Frame) -> bytes:
        if frame.type == FrameType.HELLO:
            with self.lock:
                if self.mute:
                    self.muted.append(conn)
                    return b""
                self.welcomed += 1
            return messages.encode_message(FrameType.WELCOME, {
                "version": 1, "server": "paywire-bank/bca-1", "session_id": f"fake-{conn}",
                "body_bytes_max": 65536, "in_flight_max": 4096,
                "heartbeat_interval_ms": 3_600_000, "resume_token": b"", "event_seq": 0,
                "server_time_ms": now_ms()})
        if frame.type == FrameType.PING:
            return encode_frame(FrameType.PONG, frame.request_id, b"\x80")
        if frame.type != FrameType.REQUEST:
            return b""
        rid = frame.request_id
        req = messages.decode_request(rid, frame.body)
        args = messages.decode_args(req.args_raw)
        received = now_us()
        cut = self.cuts.get(conn)
        if cut is not None and rid > cut:  # past our GOAWAY: refused, nothing done
            for op, op_args in ([(o["op"], o["args"]) for o in args["ops"]]
                                if req.op == banklink.BATCH else [(req.op, args)]):
                self._note(conn, rid, op, op_args)
            return _error(rid, ErrorCode.SHUTTING_DOWN, "bank node is draining")
        inner = ([(o["op"], o["args"]) for o in args["ops"]] if req.op == banklink.BATCH
                 else [(req.op, args)])
        if any(self._plan_of(a) == UNREADABLE_ONCE for _, a in inner):
            for op, op_args in inner:
                self._answer(conn, rid, op, op_args)  # applied (stored) ...
                with self.lock:
                    account = self._account(op_args)
                    if account is not None and self.plans.get(account) == UNREADABLE_ONCE:
                        self.plans[account] = HONEST
            if req.op == banklink.BATCH:  # ... and answered unreadably
                return messages.encode_response(rid, {"results": []})
            return encode_frame(FrameType.RESPONSE, rid, b"\xc1")
        if req.op != banklink.BATCH and self._plan_of(args) == REFUSE_ONCE:
            self._note(conn, rid, req.op, args)  # noted, not applied
            with self.lock:
                account = self._account(args)
                assert account is not None
                self.plans[account] = HONEST
                code = self.refusals[account]
            refusal = _error(rid, code, f"refused ({code.name}); nothing was done")
            if code is ErrorCode.SHUTTING_DOWN:
                self.cuts[conn] = rid - 1
                return messages.encode_message(FrameType.GOAWAY, {
                    "last_request_id": rid - 1, "code": int(code),
                    "message": "bank node draining"}) + refusal
            return refusal
        if req.op != banklink.BATCH:
            out = b""
            plan = self._plan_of(args)
            if plan == GOAWAY:
                self.cuts[conn] = rid - 1
                self._note(conn, rid, req.op, args)
                return messages.encode_message(FrameType.GOAWAY, {
                    "last_request_id": rid - 1, "code": int(ErrorCode.SHUTTING_DOWN),
                    "message": "bank node draining"}) + _error(
                        rid, ErrorCode.SHUTTING_DOWN, "bank node is draining")
            if plan == UNSOLICITED:
                out = messages.encode_response(rid + 1_000_000, {"approved": True})
            answer = self._answer(conn, rid, req.op, args)
            return out + messages.encode_response(
                rid, {**answer, banklink.TIMINGS_US: self._timings(args, received)})
        entries = [{"result": self._answer(conn, rid, o["op"], o["args"])}
                   for o in args["ops"]]
        return messages.encode_response(rid, {"results": entries, banklink.TIMINGS_US: {
            "received": received, "committed": now_us(), "answered": now_us()}})

    def _account(self, args: dict[str, Any]) -> str | None:
        for key in ("account", "op_id", "target_op_id", "transaction_id"):
            value = args.get(key)
            if value is not None and value in self.account_of:
                return self.account_of[value]
        return args.get("account")

    def _plan_of(self, args: dict[str, Any]) -> str:
        with self.lock:
            account = self._account(args)
            return self.plans.get(account, HONEST) if account else HONEST

    def _timings(self, args: dict[str, Any], received: int) -> Any:
        with self.lock:
            account = self._account(args)
            if account in self.timings:
                return self.timings[account]
        return {"received": received, "committed": now_us(), "answered": now_us()}

    def _note(self, conn: int, rid: int, op: str, args: dict[str, Any]) -> None:
        with self.lock:
            if "account" in args:
                self.account_of[args["op_id"]] = args["account"]
                self.account_of[args["transaction_id"]] = args["account"]
            self.received.append((conn, rid, op, args))

    def _answer(self, conn: int, rid: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self._note(conn, rid, op, args)
        plan = self._plan_of(args)
        if op == banklink.INQUIRY:
            found = self.stored.get(args["op_id"])
            return {"found": found is not None, "result": found}
        if op == banklink.REVERSE:
            self.stored.setdefault(args["target_op_id"], {
                "approved": False, "ok": False, "reversed": True, "reason": "reversed"})
            return self.stored.setdefault(args["op_id"], {"ok": True, "undone": False})
        if op == banklink.AUTHORIZE:
            if plan == NO_APPROVED:
                answer: dict[str, Any] = {"auth_code": "F00001"}
            else:
                answer = {"approved": True, "captured": args["capture"],
                          "auth_code": "F00001"}
        else:
            answer = {"ok": True}
        stored = self.stored.setdefault(args["op_id"], answer)
        return stored if stored is answer else {**stored, "duplicate": True}


def _error(rid: int, code: ErrorCode, message: str) -> bytes:
    return encode_frame(FrameType.RESPONSE, rid, bodycodec.pack(
        PaywireError(message, code=code).to_body()), Flags.ERROR)


# --- the module's deployment: the hub's bank ``bca`` is the fake ---------------------------------
@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, FakeBank]]:
    workdir = tmp_path_factory.mktemp("banklink")
    pki.init(workdir / "certs", merchants=list(KEYS), banks=["bca-1", "bni-1", "wallet-1"])
    fake = FakeBank(workdir / "certs")
    fake_port = fake.start()
    dep = Deployment(workdir, bca_nodes=1,
                     bank_address=lambda bank, port: fake_port if bank == "bca" else port)
    try:
        dep.start()
        yield dep, fake
    finally:
        dep.stop()
        fake.stop()


def card(account: str) -> Card:
    return Card(account, 12, 2030, "123")


def order(prefix: str = "bl") -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


async def raw_charge(dep: Deployment, account: str) -> Any:
    """One charge on a connection of its own, sent by hand (no client retries): its
    transaction status, or its error code."""
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(order(), account)))
    try:
        while (frame := await raw.next_frame(60.0)).type != FrameType.RESPONSE:
            pass
    finally:
        raw.close()
    body = bodycodec.unpack(frame.body)
    return ErrorCode(body["code"]) if frame.flags & Flags.ERROR else body["transaction_status"]


def card_charge(order_id: str, account: str) -> dict[str, Any]:
    return {"order_id": order_id, "gross_amount": 1_000, "payment_type": "credit_card",
            "card": {"number": account, "exp_month": 12, "exp_year": 2030, "cvv": "123"}}


def hub_log(dep: Deployment, since: int = 0) -> str:
    """The hub's log from offset ``since`` (``len(hub_log(dep))`` marks a test's start)."""
    assert dep.hub is not None
    return dep.hub.log_path.read_text(errors="replace")[since:]


# --- a hostile bank node answering the hub ---------------------------------------------------
async def test_the_fake_bank_is_what_the_hub_talks_to(
        link: tuple[Deployment, FakeBank]) -> None:
    dep, fake = link
    account = RICH[10]
    async with dep.client() as c:
        tx = await c.charge(order(), 1_000, card=card(account))
    assert tx.transaction_status == "capture"
    assert {op for _, _, op, _ in fake.ops(account)} == {banklink.AUTHORIZE}


@pytest.mark.parametrize("timings", [
    "not a map", {"received": -1}, {"received": 2**64 - 1}, {"received": "x"},
    {"received": True}, {"unknown_key": 1}, {"received": {"nested": 1}}, [1, 2, 3]])
async def test_timings_that_fail_their_table_are_ignored(link: tuple[Deployment, FakeBank],
                                                         timings: Any) -> None:
    """§10.3: a hub ignores a ``timings_us`` that fails the table (and keys it does not
    know) rather than failing the operation: the charge is captured, no bank-node hop is
    recorded from a value outside the table."""
    dep, fake = link
    account = RICH[11]
    fake.plan(account, HONEST, timings)
    start = len(hub_log(dep))
    async with dep.client() as c:
        tx = await c.charge(order(), 1_000, card=card(account))
        assert tx.transaction_status == "capture"
        hops = (await c.status(tx.order_id)).hops_us
    for hop in ("bank_node_received", "bank_node_committed", "bank_node_answered"):
        assert hop not in hops, hops
    assert "Traceback" not in hub_log(dep, start)


async def test_a_response_nobody_asked_for_is_ignored(link: tuple[Deployment, FakeBank]) -> None:
    """§7.1: on a bank link, a RESPONSE whose id matches no outstanding request is ignored;
    the link goes on and the real answer settles the charge."""
    dep, fake = link
    account = RICH[12]
    fake.plan(account, UNSOLICITED)
    connections = fake.connections
    async with dep.client() as c:
        tx = await c.charge(order(), 1_000, card=card(account))
    assert tx.transaction_status == "capture"
    assert fake.connections == connections  # the link was not dropped for it


async def test_timings_in_their_table_become_the_bank_node_hops(
        link: tuple[Deployment, FakeBank]) -> None:
    """The control for the test above: valid values are recorded, as the node sent them."""
    dep, fake = link
    account = RICH[17]
    fake.plan(account, HONEST, {"received": 5, "answered": 7, "later_key": "ignored"})
    async with dep.client() as c:
        tx = await c.charge(order(), 1_000, card=card(account))
        hops = (await c.status(tx.order_id)).hops_us
    assert (hops.get("bank_node_received"), hops.get("bank_node_answered")) == (5, 7), hops
    assert "bank_node_committed" not in hops


async def test_an_unreadable_answer_is_retried_with_the_same_op_ids(
        link: tuple[Deployment, FakeBank]) -> None:
    """The node applies two authorizations (one frame, or two) and answers unreadably: the
    hub counts them as maybe applied (docs/protocol.md §10.2 rule 5) and sends them again
    with the same ``op_id`` only, so the node's stored answers settle them: captured once."""
    dep, fake = link
    accounts = RICH[18], RICH[19]
    for account in accounts:
        fake.plan(account, UNREADABLE_ONCE)
    raw = await Raw.open(dep)
    await raw.hello()
    raw.send(signed("M1", 1, "charge", card_charge(order(), accounts[0]))
             + signed("M1", 2, "charge", card_charge(order(), accounts[1])))
    got: dict[int, Any] = {}
    while len(got) < 2:
        frame = await raw.next_frame(60.0)
        if frame.type == FrameType.RESPONSE:
            got[frame.request_id] = bodycodec.unpack(frame.body)
    raw.close()
    assert [got[i].get("transaction_status") for i in (1, 2)] == ["capture", "capture"], got
    for account in accounts:
        auths = [a["op_id"] for _, _, op, a in fake.ops(account) if op == banklink.AUTHORIZE]
        assert len(auths) >= 2 and len(set(auths)) == 1, auths


async def test_an_answer_missing_its_fields_is_not_a_hub_fault(
        link: tuple[Deployment, FakeBank]) -> None:
    """A bank answer the hub cannot read is not a fault of the hub (INTERNAL: "nothing is
    acknowledged", not retryable): the bank may have moved the money, so the outcome is
    unknown (§5.3, §7) and nothing escapes as an exception."""
    dep, fake = link
    account = RICH[13]
    fake.plan(account, NO_APPROVED)
    start = len(hub_log(dep))
    try:
        got = await raw_charge(dep, account)
    finally:
        fake.plan(account, HONEST)  # (the hub may settle it later; nothing depends on it)
    assert got is not ErrorCode.INTERNAL, got
    assert "Traceback" not in hub_log(dep, start)


async def test_a_draining_bank_node_is_not_the_hub_draining(
        link: tuple[Deployment, FakeBank]) -> None:
    dep, fake = link
    account = RICH[14]
    fake.plan(account, GOAWAY)
    try:
        got = await raw_charge(dep, account)
    finally:
        fake.plan(account, HONEST)
        fake.end_drains()
    assert got is not ErrorCode.SHUTTING_DOWN, got


async def test_no_new_call_goes_to_a_link_that_sent_goaway(
        link: tuple[Deployment, FakeBank]) -> None:
    dep, fake = link
    draining, other = RICH[15], RICH[16]
    fake.plan(draining, GOAWAY)
    try:
        await raw_charge(dep, draining)
        cut_conn = max(fake.cuts)
        await raw_charge(dep, other)
        sent_after = [r for r in fake.ops(other) if r[0] == cut_conn]
    finally:
        fake.plan(draining, HONEST)
        fake.end_drains()
    assert sent_after == [], sent_after


@pytest.mark.parametrize("code", [ErrorCode.TOO_MANY_IN_FLIGHT, ErrorCode.SHUTTING_DOWN])
async def test_a_call_the_node_did_not_start_can_be_retried_to_success(
        link: tuple[Deployment, FakeBank], code: ErrorCode) -> None:
    """§3.4 and §8 as a bank node (a server) applies them: such a request was not executed
    and is retried (§7: retry same request). Like BANK_UNAVAILABLE ("this operation did
    nothing, send it again"), it must not cost the merchant its order: the same charge,
    sent again once the node serves, is captured."""
    dep, fake = link
    account = RICH[27] if code is ErrorCode.TOO_MANY_IN_FLIGHT else RICH[28]
    oid = order()
    with fake.lock:
        fake.refusals[account] = code
    fake.plan(account, REFUSE_ONCE)
    raw = await Raw.open(dep)
    await raw.hello()
    try:
        raw.send(signed("M1", 1, "charge", card_charge(oid, account)))
        first = await answered(raw, 1)
        fake.end_drains()  # the node's drain is over: the hub dials it again
        retried: Any = None
        for rid in range(2, 20):  # retryable answers (no node ready yet) are retried
            raw.send(signed("M1", rid, "charge", card_charge(oid, account)))
            retried = await answered(raw, rid)
            if retried not in (ErrorCode.BANK_UNAVAILABLE, ErrorCode.OUTCOME_UNKNOWN):
                break
    finally:
        raw.close()
    assert retried == "capture", (first, retried)


async def answered(raw: Raw, rid: int) -> Any:
    while (frame := await raw.next_frame(60.0)).type != FrameType.RESPONSE or \
            frame.request_id != rid:
        pass
    body = bodycodec.unpack(frame.body)
    return ErrorCode(body["code"]) if frame.flags & Flags.ERROR else body["transaction_status"]


# --- a hostile hub talking to a real bank node -----------------------------------------------
async def bank_raw(dep: Deployment) -> tuple[Raw, bytes]:
    raw = await Raw.open_bank(dep)
    await raw.hello_as_hub()
    return raw, secret_keys.load_link_key(dep.secrets)


def auth_args(op_id: str, account: str, amount: int = 5_000) -> dict[str, Any]:
    return {"op_id": op_id, "transaction_id": op_id, "account": account, "exp_month": 12,
            "exp_year": 2030, "amount": amount, "currency": "IDR", "capture": True}


async def answer(raw: Raw) -> tuple[int, dict[str, Any]]:
    while (frame := await raw.next_frame(WAIT_S)).type != FrameType.RESPONSE:
        pass
    return frame.flags, bodycodec.unpack(frame.body)


async def test_a_bank_node_does_not_serve_bank_payment(link: tuple[Deployment, FakeBank]
                                                       ) -> None:
    dep, _ = link
    raw, key = await bank_raw(dep)
    raw.send(build_request(key, "hub", 1, banklink.PAYMENT, {
        "notification_id": 1, "transaction_id": "t-none", "status": "settlement",
        "amount": 1_000, "paid_ms": now_ms()}))
    flags, body = await answer(raw)
    raw.close()
    assert flags & Flags.ERROR
    assert body["code"] == ErrorCode.UNKNOWN_OPERATION, body
    assert "bank store failed" not in dep.banks["bca"][0].log_path.read_text()


async def test_a_reverse_before_its_target_in_one_batch_means_it_never_happens(
        link: tuple[Deployment, FakeBank]) -> None:
    """§10.2 rule 3: a ``bank.reverse`` before the operation it targets, in the same batch,
    makes sure the target never happens: the authorize is answered with the reversal's
    stored answer (a repeat) and no money moves."""
    dep, _ = link
    account = RICH[20]
    before = await dep.balance("bca", account)
    raw, key = await bank_raw(dep)
    target = f"rev-{os.urandom(4).hex()}"
    raw.send(build_request(key, "hub", 1, banklink.BATCH, banklink.batch_args([
        (banklink.REVERSE, {"op_id": f"{target}:rev", "transaction_id": target,
                            "target_op_id": target}),
        (banklink.AUTHORIZE, auth_args(target, account))])))
    flags, body = await answer(raw)
    raw.close()
    assert flags == 0, body
    reverse, authorize = (entry["result"] for entry in body["results"])
    assert reverse["ok"] is True and reverse["undone"] is False
    assert authorize["approved"] is False and authorize.get("duplicate") is True
    assert await dep.balance("bca", account) == before
    assert dep.bank_sql("bca", "SELECT COUNT(*) FROM effects WHERE transaction_id = ?",
                        (target,)) == [(0,)]


async def test_batch_timings_are_once_per_frame_and_omit_committed_when_nothing_was_applied(
        link: tuple[Deployment, FakeBank]) -> None:
    """§10.3: a batch's result carries ``timings_us`` once, next to ``results`` (its entries
    carry none); ``committed`` is absent when no operation of the frame reached the books; an
    error RESPONSE to the whole frame carries none."""
    dep, _ = link
    account = RICH[21]
    raw, key = await bank_raw(dep)
    op_id = f"tim-{os.urandom(4).hex()}"
    raw.send(build_request(key, "hub", 1, banklink.BATCH, banklink.batch_args([
        (banklink.AUTHORIZE, auth_args(op_id, account)),
        (banklink.INQUIRY, {"op_id": op_id})])))
    flags, body = await answer(raw)
    assert flags == 0, body
    assert set(body[banklink.TIMINGS_US]) == {"received", "committed", "answered"}
    assert all(banklink.TIMINGS_US not in e["result"] for e in body["results"])
    # The inquiry, after the authorize in the same frame, finds its stored answer: no timings.
    found = body["results"][1]["result"]
    assert found["found"] is True and banklink.TIMINGS_US not in found["result"]
    # Nothing valid: every inner op refused, nothing reached the books.
    raw.send(build_request(key, "hub", 2, banklink.BATCH, banklink.batch_args([
        (banklink.REFUND, {"op_id": "x", "transaction_id": "x", "amount": 0}),
        ("bank.nothing", {})])))
    flags, body = await answer(raw)
    assert flags == 0, body
    assert [e["error"]["code"] for e in body["results"]] == [ErrorCode.INVALID_FIELD,
                                                             ErrorCode.UNKNOWN_OPERATION]
    assert set(body[banklink.TIMINGS_US]) == {"received", "answered"}
    # The whole frame refused (129 operations): one error RESPONSE, no timings.
    raw.send(build_request(key, "hub", 3, banklink.BATCH, banklink.batch_args(
        [(banklink.INQUIRY, {"op_id": f"n-{i}"}) for i in range(banklink.BATCH_OPS_MAX + 1)])))
    flags, body = await answer(raw)
    raw.close()
    assert flags & Flags.ERROR and body["code"] == ErrorCode.INVALID_FIELD, body
    assert body["field"].startswith("args.ops"), body
    assert banklink.TIMINGS_US not in body


async def test_a_batch_whose_entries_are_not_op_and_args_is_refused_whole(
        link: tuple[Deployment, FakeBank]) -> None:
    """§10.2 rule 1: an entry that is not exactly ``op`` and ``args`` fails the whole frame
    (nothing applied), even when the other entries are valid."""
    dep, _ = link
    account = RICH[22]
    before = await dep.balance("bca", account)
    raw, key = await bank_raw(dep)
    op_id = f"whole-{os.urandom(4).hex()}"
    ops = banklink.batch_args([(banklink.AUTHORIZE, auth_args(op_id, account))])
    for bad in ({"op": banklink.INQUIRY, "args": {"op_id": "x"}, "extra": 1},
                {"op": banklink.INQUIRY}, {"op": 7, "args": {}}, "not a map"):
        raw.send(build_request(key, "hub", 1, banklink.BATCH, {"ops": [*ops["ops"], bad]}))
        flags, body = await answer(raw)
        assert flags & Flags.ERROR and body["code"] == ErrorCode.INVALID_FIELD, (bad, body)
        assert body["field"].startswith("args.ops"), body
    raw.close()
    assert await dep.balance("bca", account) == before
    assert dep.bank_sql("bca", "SELECT COUNT(*) FROM ops WHERE op_id = ?", (op_id,)) == [(0,)]


async def test_a_hub_goaway_to_a_bank_node_changes_nothing(
        link: tuple[Deployment, FakeBank]) -> None:
    """§8.1 on the bank link: the node (server) takes no action on its client's GOAWAY,
    whatever its body, and keeps answering; a second GOAWAY is UNEXPECTED_FRAME."""
    dep, _ = link
    raw, key = await bank_raw(dep)
    raw.send(encode_frame(FrameType.GOAWAY, 0, b"\xc1")
             + build_request(key, "hub", 1, banklink.INQUIRY, {"op_id": "none"}))
    flags, body = await answer(raw)
    assert flags == 0 and body["found"] is False, body
    raw.send(messages.encode_message(FrameType.GOAWAY, {
        "last_request_id": 0, "code": 901, "message": "again"}))
    assert await raw.error_then_close(WAIT_S) is ErrorCode.UNEXPECTED_FRAME
    # The node serves other links.
    again, key = await bank_raw(dep)
    again.send(build_request(key, "hub", 1, banklink.INQUIRY, {"op_id": "none"}))
    assert (await answer(again))[1]["found"] is False
    again.close()


class HubPeer:
    """A hand-built hub link to a real bank node that keeps itself alive: it answers the
    node's PINGs and acknowledges its ``bank.payment`` reports (their transaction ids go to
    ``reported``), and queues RESPONSEs for ``call``."""

    def __init__(self, raw: Raw, key: bytes) -> None:
        self.raw, self.key = raw, key
        self.reported: list[str] = []
        self.responses: asyncio.Queue[Frame] = asyncio.Queue()
        self.next_id = 1
        self.task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, dep: Deployment) -> HubPeer:
        raw, key = await bank_raw(dep)
        return cls(raw, key)

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.raw.next_frame(3600.0)
                if frame.type == FrameType.PING:
                    self.raw.send(encode_frame(FrameType.PONG, frame.request_id, b"\x80"))
                elif frame.type == FrameType.REQUEST:
                    req = messages.decode_request(frame.request_id, frame.body)
                    self.reported.append(messages.decode_args(req.args_raw)["transaction_id"])
                    self.raw.send(messages.encode_response(frame.request_id, {"ok": True}))
                elif frame.type == FrameType.RESPONSE:
                    self.responses.put_nowait(frame)
        except (EOFError, ConnectionError, OSError):
            pass

    async def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        rid, self.next_id = self.next_id, self.next_id + 1
        self.raw.send(build_request(self.key, "hub", rid, op, args))
        frame = await asyncio.wait_for(self.responses.get(), WAIT_S)
        assert frame.request_id == rid and not frame.flags & Flags.ERROR, frame
        result: dict[str, Any] = bodycodec.unpack(frame.body)
        return result

    def close(self) -> None:
        self.task.cancel()
        self.raw.close()


PAYMENTS = 12  # each report picks a link at random: all of them miss the draining one 1 in 4096


async def test_a_bank_node_reports_payments_only_on_links_not_draining(
        link: tuple[Deployment, FakeBank]) -> None:
    """§3's send table: once draining (its client's GOAWAY moved it there, §8.1) a server
    starts no new work, so the node reports its payments on the other hub link."""
    dep, _ = link
    node = dep.banks["bca"][0]
    start = len(node.log_path.read_text(errors="replace"))
    staying = await HubPeer.open(dep)
    leaving = await HubPeer.open(dep)
    try:
        leaving.raw.send(messages.encode_message(FrameType.GOAWAY, {
            "last_request_id": 0, "code": 901, "message": "hub leaving"}))
        paid = []
        for _ in range(PAYMENTS):
            txid = f"va-{os.urandom(4).hex()}"
            opened = await leaving.call(banklink.OPEN_PAYMENT, {
                "op_id": f"{txid}:open", "transaction_id": txid, "kind": "va",
                "amount": 5_000, "currency": "IDR", "expiry_ms": now_ms() + 3_600_000,
                "merchant_id": "M1"})
            assert opened["ok"] is True
            assert (await leaving.call(banklink.ADMIN_PAY, {"transaction_id": txid}))["paid"]
            paid.append(txid)

        def settled_or_broken() -> bool:
            log = node.log_path.read_text(errors="replace")[start:]
            return set(paid) <= set(staying.reported) or "Traceback" in log

        await wait_until(settled_or_broken, "every payment reported on the staying link")
        assert "Traceback" not in node.log_path.read_text(errors="replace")[start:]
        assert set(paid) <= set(staying.reported)
    finally:
        staying.close()
        leaving.close()


# --- last: a bank node that never answers HELLO (the hub's link to ``bca`` is down meanwhile) --
async def test_a_bank_node_that_never_welcomes_is_not_left_connected(
        link: tuple[Deployment, FakeBank]) -> None:
    dep, fake = link
    with fake.lock:
        fake.mute = True
        fake.muted.clear()
        welcomed = fake.welcomed
    for conn in list(fake.writers):
        fake.drop(conn)  # the hub dials again, into the silence

    def first_closed_or_third_attempt() -> bool:
        with fake.lock:
            muted = list(fake.muted)
        return bool(muted) and (muted[0] in fake.closed or len(muted) >= 3)

    try:
        await wait_until(first_closed_or_third_attempt, "the hub to give up on a silent node",
                         timeout_s=90.0)
        with fake.lock:  # (read now: the clean-up below drops every muted connection)
            first_closed = fake.muted[0] in fake.closed
    finally:
        with fake.lock:
            fake.mute = False
        for conn in list(fake.muted):
            fake.drop(conn)
        await wait_until(lambda: fake.welcomed > welcomed, "the hub's link to be back")
    async with dep.client() as c:  # and the link serves again
        assert (await c.charge(order(), 1_000, card=card(RICH[23]))).transaction_status == \
            "capture"
    assert first_closed, "the hub left its first unanswered connection open"
