"""The bank's books: accounts, card holds, pending payments, and the op-id journal.

All nodes of one bank share this database, as a real bank's front-ends share its core
system: that is what lets the hub fail over to another node of the same bank and still have
every ``op_id`` deduplicated. Operations run in the group-commit writer process inside its
batch transaction (reads and writes together, under SQLite's write lock), so an answer is
sent only after its effect is durable, and two nodes never interleave inside one operation.

Operations travel to the writer as *records* (``BankBulk``): every operation that arrived in
one loop iteration, single or in a ``bank.batch``, is applied in one SQL transaction, in
arrival order. The hot one, ``bank.authorize``, is decided against rows read once per batch
(one ``SELECT … IN`` per table) and written with one ``executemany`` per statement; the rare
ones run their handler on the connection, in a savepoint of their own so that a failing
one fails alone.

Money only moves between accounts: ``payer`` (customers paying virtual accounts and
e-wallets from outside), card accounts, and ``settlement`` (what the bank owes merchants);
the sum of all balances never changes. Every movement is also written to ``effects``, which
the audit reads to find duplicated effects.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from gateway.storage.groupcommit import GroupCommitWriter, execute, execute_many
from gateway.transactions.model import now_ms
from protocol import banklink
from protocol.errors import ErrorCode
from protocol.operations import card_expired

SETTLEMENT = "settlement"
PAYER = "payer"
PAYER_OPENING_DEFAULT = 10**15

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL,
                                     held INTEGER NOT NULL, opening INTEGER NOT NULL,
                                     currency TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS ops (op_id TEXT PRIMARY KEY, result BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS holds (transaction_id TEXT PRIMARY KEY, account TEXT NOT NULL,
    amount INTEGER NOT NULL, state TEXT NOT NULL, captured INTEGER NOT NULL,
    refunded INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS payments (transaction_id TEXT PRIMARY KEY, kind TEXT NOT NULL,
    number TEXT NOT NULL UNIQUE, amount INTEGER NOT NULL, merchant_id TEXT NOT NULL,
    expiry_ms INTEGER NOT NULL, status TEXT NOT NULL, paid_ms INTEGER,
    refunded INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS effects (seq INTEGER PRIMARY KEY AUTOINCREMENT,
    transaction_id TEXT NOT NULL, op_id TEXT NOT NULL, account TEXT NOT NULL,
    delta INTEGER NOT NULL, kind TEXT NOT NULL);
"""

# Version 2 added ``accounts.currency``. Books of version 1 (no column) are migrated when a
# node opens them: their accounts get the bank's declared currency, the only one such books
# were ever debited in by intent.
BOOKS_VERSION = 2

Result = dict[str, Any]


class BooksError(Exception):
    """The books disagree with the node's configuration (refuse to start, say why)."""


class BankOpFailed(Exception):
    """An operation's handler failed in the writer; its effects were rolled back."""


# One operation's outcome from the writer: (0, result) or (1, why it failed).
Outcome = tuple[int, Any]


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _move(conn: sqlite3.Connection, txid: str, op_id: str, account: str, delta: int,
          kind: str) -> None:
    conn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (delta, account))
    conn.execute("INSERT INTO effects (transaction_id, op_id, account, delta, kind) "
                 "VALUES (?,?,?,?,?)", (txid, op_id, account, delta, kind))


def _hold_delta(conn: sqlite3.Connection, account: str, delta: int) -> None:
    conn.execute("UPDATE accounts SET held = held + ? WHERE id = ?", (delta, account))


def _record(conn: sqlite3.Connection, op_id: str, result: Result) -> Result:
    conn.execute("INSERT OR REPLACE INTO ops VALUES (?,?)", (op_id, _pack(result)))
    return result


def _hold(conn: sqlite3.Connection, txid: str) -> list[Any] | None:
    row = conn.execute("SELECT account, amount, state, captured, refunded FROM holds "
                       "WHERE transaction_id = ?", (txid,)).fetchone()
    return list(row) if row else None


def _set_hold(conn: sqlite3.Connection, txid: str, **cols: Any) -> None:
    sets = ", ".join(f"{k} = ?" for k in cols)
    conn.execute(f"UPDATE holds SET {sets} WHERE transaction_id = ?", (*cols.values(), txid))


def _payment(conn: sqlite3.Connection, txid: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT kind, number, amount, merchant_id, expiry_ms, status, paid_ms, "
                       "refunded FROM payments WHERE transaction_id = ?", (txid,)).fetchone()
    if row is None:
        return None
    keys = ("kind", "number", "amount", "merchant_id", "expiry_ms", "status", "paid_ms",
            "refunded")
    return dict(zip(keys, row, strict=True))


class BankStore:
    """Runs bank operations against the shared books; every call returns a future."""

    def __init__(self, path: Path, opening: dict[str, int], *, synchronous: str = "FULL",
                 va_prefix: str = "8808", currency: str = "IDR",
                 account_currencies: dict[str, str] | None = None) -> None:
        self.path = path
        self.opening = dict(opening)
        self.opening.setdefault(SETTLEMENT, 0)
        self.opening.setdefault(PAYER, PAYER_OPENING_DEFAULT)
        self.va_prefix = va_prefix
        self.currency = currency
        self.account_currencies = dict(account_currencies or {})
        self.writer = GroupCommitWriter(
            path, SCHEMA, synchronous=synchronous,
            bulk=functools.partial(BankBulk, va_prefix=va_prefix, currency=currency))

    def account_currency(self, account: str) -> str:
        return self.account_currencies.get(account, self.currency)

    async def start(self) -> None:
        await self.writer.start()
        await self.writer.submit(_migrate, self.currency)
        rows = [(k, v, v, self.account_currency(k)) for k, v in self.opening.items()]
        await self.writer.submit(
            execute_many, "INSERT OR IGNORE INTO accounts (id, balance, held, opening, currency) "
            "VALUES (?,?,0,?,?)", rows)
        stored: dict[str, str] = await self.writer.submit(_account_currencies)
        wrong = {k: v for k, v in stored.items()
                 if k in self.opening and v != self.account_currency(k)}
        if wrong:
            # An account's currency is fixed when it is opened: a changed setting would
            # silently debit old balances in another unit.
            raise BooksError(f"{self.path}: accounts held in another currency than configured: "
                             + ", ".join(f"{k} is {v}, configured "
                                         f"{self.account_currency(k)}"
                                         for k, v in sorted(wrong.items())))

    async def close(self) -> None:
        await self.writer.close()

    @property
    def died(self) -> asyncio.Future[None] | None:
        """Done if the books' writer process exited under the node."""
        return self.writer.died

    def apply(self, op: str, args: dict[str, Any]) -> asyncio.Future[Result]:
        """One operation: its result, or the exception its handler raised."""
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()

        def one(done: asyncio.Future[list[Outcome]]) -> None:
            if fut.done():
                return
            exc = done.exception()
            if exc is None:
                ((code, value),) = done.result()
                if not code:
                    fut.set_result(value)
                    return
                exc = BankOpFailed(value)
            fut.set_exception(exc)

        self.apply_batch([(op, args)]).add_done_callback(one)
        return fut

    def apply_batch(self, ops: list[tuple[str, dict[str, Any]]]
                    ) -> asyncio.Future[list[Outcome]]:
        """Apply ``ops`` in order, in one transaction with whatever else the writer commits
        with them: one outcome per op, ``(0, result)`` or ``(1, message)`` for an op whose
        handler failed (its own effects rolled back, the others' kept). The future fails as
        a whole only if the transaction does (nothing of it committed)."""
        return self.writer.submit_record(ops)

    def pay(self, txid: str | None = None, number: str | None = None) -> asyncio.Future[Result]:
        return self.writer.submit(_pay, txid, number)

    def ack_notification(self, nid: int) -> asyncio.Future[Any]:
        return self.writer.submit(execute, "DELETE FROM outbox WHERE id = ?", (nid,))

    def outbox(self) -> asyncio.Future[list[Result]]:
        return self.writer.submit(_outbox)

    def pending_payments(self) -> asyncio.Future[list[str]]:
        return self.writer.submit(_pending_payments)

    def balances(self) -> asyncio.Future[dict[str, list[int]]]:
        return self.writer.submit(_balances)

    def payments(self) -> asyncio.Future[dict[str, Result]]:
        return self.writer.submit(_payments)


# Calls run in the writer process (see gateway/storage/groupcommit.py): module-level
# functions, so they can be sent there.
def _outbox(conn: sqlite3.Connection) -> list[Result]:
    return [msgpack.unpackb(r[0]) for r in conn.execute("SELECT payload FROM outbox ORDER BY id")]


def _pending_payments(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT transaction_id FROM payments WHERE status = 'pending'")]


def _balances(conn: sqlite3.Connection) -> dict[str, list[int]]:
    return {r[0]: [r[1], r[2]] for r in conn.execute("SELECT id, balance, held FROM accounts")}


def _payments(conn: sqlite3.Connection) -> dict[str, Result]:
    return {r[0]: {"number": r[1], "status": r[2], "amount": r[3]} for r in conn.execute(
        "SELECT transaction_id, number, status, amount FROM payments")}


def _migrate(conn: sqlite3.Connection, currency: str) -> None:
    """Bring books of an older version to ``BOOKS_VERSION``; a no-op on current ones."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > BOOKS_VERSION:
        raise BooksError(f"books version {version} is newer than this node's "
                         f"({BOOKS_VERSION}); upgrade the node")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(accounts)")}
    if "currency" not in columns:
        conn.execute("ALTER TABLE accounts ADD COLUMN currency TEXT NOT NULL DEFAULT ''")
    conn.execute("UPDATE accounts SET currency = ? WHERE currency = ''", (currency,))
    if version != BOOKS_VERSION:
        conn.execute(f"PRAGMA user_version = {BOOKS_VERSION}")


def _account_currencies(conn: sqlite3.Connection) -> dict[str, str]:
    return {r[0]: r[1] for r in conn.execute("SELECT id, currency FROM accounts")}


def _dedup(conn: sqlite3.Connection, op: str, args: dict[str, Any], handler: Any) -> Result:
    """The first answer under an op id is the only answer: a repeat gets it back unchanged."""
    if op != banklink.INQUIRY:
        row = conn.execute("SELECT result FROM ops WHERE op_id = ?", (args["op_id"],)).fetchone()
        if row is not None:
            return {**msgpack.unpackb(row[0]), "duplicate": True}
    result: Result = handler(conn, args)
    return result


def _authorize(conn: sqlite3.Connection, a: dict[str, Any]) -> Result:
    """The issuer's checks, in the order a card network applies them: the account exists,
    the card has not expired, the account is in the charge's currency (an amount is an
    integer of minor units of *that* currency: debiting it from an account in another would
    move a different sum), then funds."""
    txid, op_id, amount, account = a["transaction_id"], a["op_id"], a["amount"], a["account"]
    row = conn.execute("SELECT balance, held, currency FROM accounts WHERE id = ?",
                       (account,)).fetchone()
    if row is None or account in (SETTLEMENT, PAYER):
        return _record(conn, op_id, {"approved": False, "code": int(ErrorCode.ACCOUNT_UNKNOWN),
                                     "reason": "card account unknown to the issuer"})
    if card_expired(a["exp_month"], a["exp_year"], dt.datetime.now(dt.UTC).date()):
        return _record(conn, op_id, {
            "approved": False, "code": int(ErrorCode.CARD_EXPIRED),
            "reason": f"card expired ({a['exp_month']:02d}/{a['exp_year']})"})
    if a["currency"] != row[2]:
        return _record(conn, op_id, {
            "approved": False, "code": int(ErrorCode.CURRENCY_NOT_SUPPORTED),
            "reason": f"card account is in {row[2]}, not {a['currency']}"})
    if row[0] - row[1] < amount:
        return _record(conn, op_id, {"approved": False, "code": int(ErrorCode.INSUFFICIENT_FUNDS),
                                     "reason": "insufficient funds"})
    if a["capture"]:
        _move(conn, txid, op_id, account, -amount, "capture")
        _move(conn, txid, op_id, SETTLEMENT, amount, "capture")
        state, captured = "captured", amount
    else:
        _hold_delta(conn, account, amount)
        state, captured = "held", 0
    conn.execute("INSERT INTO holds VALUES (?,?,?,?,?,0)", (txid, account, amount, state,
                                                            captured))
    auth_code = hashlib.sha256(op_id.encode()).hexdigest()[:6].upper()
    return _record(conn, op_id, {"approved": True, "captured": a["capture"],
                                 "auth_code": auth_code})


def _capture(conn: sqlite3.Connection, a: dict[str, Any]) -> Result:
    txid, op_id, amount = a["transaction_id"], a["op_id"], a["amount"]
    hold = _hold(conn, txid)
    if hold is None or hold[2] != "held":
        return _record(conn, op_id, {"ok": False, "reason": "no open authorization"})
    account, held_amount = hold[0], hold[1]
    if amount > held_amount:
        return _record(conn, op_id, {"ok": False, "reason": "amount exceeds authorization"})
    _hold_delta(conn, account, -held_amount)
    _move(conn, txid, op_id, account, -amount, "capture")
    _move(conn, txid, op_id, SETTLEMENT, amount, "capture")
    _set_hold(conn, txid, state="captured", captured=amount)
    return _record(conn, op_id, {"ok": True})


def _void(conn: sqlite3.Connection, a: dict[str, Any]) -> Result:
    txid, op_id = a["transaction_id"], a["op_id"]
    hold = _hold(conn, txid)
    if hold is None or hold[2] not in ("held", "voided"):
        return _record(conn, op_id, {"ok": False, "reason": "no open authorization"})
    if hold[2] == "held":
        _hold_delta(conn, hold[0], -hold[1])
        _set_hold(conn, txid, state="voided")
    return _record(conn, op_id, {"ok": True})


def _refund(conn: sqlite3.Connection, a: dict[str, Any]) -> Result:
    txid, op_id, amount = a["transaction_id"], a["op_id"], a["amount"]
    hold = _hold(conn, txid)
    if hold is not None and hold[2] == "captured":
        if hold[4] + amount > hold[3]:
            return _record(conn, op_id, {"ok": False, "reason": "refunds exceed capture"})
        _move(conn, txid, op_id, SETTLEMENT, -amount, "refund")
        _move(conn, txid, op_id, hold[0], amount, "refund")
        _set_hold(conn, txid, refunded=hold[4] + amount)
        return _record(conn, op_id, {"ok": True})
    p = _payment(conn, txid)
    if p is not None and p["status"] == "paid":
        if p["refunded"] + amount > p["amount"]:
            return _record(conn, op_id, {"ok": False, "reason": "refunds exceed payment"})
        _move(conn, txid, op_id, SETTLEMENT, -amount, "refund")
        _move(conn, txid, op_id, PAYER, amount, "refund")
        conn.execute("UPDATE payments SET refunded = refunded + ? WHERE transaction_id = ?",
                     (amount, txid))
        return _record(conn, op_id, {"ok": True})
    return _record(conn, op_id, {"ok": False, "reason": "nothing captured to refund"})


def _reverse(conn: sqlite3.Connection, a: dict[str, Any]) -> Result:
    """Undo ``target_op_id`` if it took effect; if it never arrived, make sure it never will."""
    txid, op_id, target = a["transaction_id"], a["op_id"], a["target_op_id"]
    row = conn.execute("SELECT result FROM ops WHERE op_id = ?", (target,)).fetchone()
    undone = False
    if row is None:
        _record(conn, target, {"approved": False, "ok": False, "reversed": True,
                               "reason": "reversed before it arrived"})
    else:
        done = msgpack.unpackb(row[0])
        hold = _hold(conn, txid)
        p = _payment(conn, txid)
        if not (done.get("approved") or done.get("ok")):
            pass
        elif hold is not None and hold[2] == "held":
            _hold_delta(conn, hold[0], -hold[1])
            _set_hold(conn, txid, state="reversed")
            undone = True
        elif hold is not None and hold[2] == "captured":
            net = hold[3] - hold[4]
            _move(conn, txid, op_id, SETTLEMENT, -net, "reversal")
            _move(conn, txid, op_id, hold[0], net, "reversal")
            _set_hold(conn, txid, state="reversed")
            undone = True
        elif p is not None and p["status"] == "pending":
            conn.execute("UPDATE payments SET status = 'reversed' WHERE transaction_id = ?",
                         (txid,))
            undone = True
    return _record(conn, op_id, {"ok": True, "undone": undone})


def _inquiry(conn: sqlite3.Connection, a: dict[str, Any]) -> Result:
    row = conn.execute("SELECT result FROM ops WHERE op_id = ?", (a["op_id"],)).fetchone()
    return {"found": row is not None, "result": msgpack.unpackb(row[0]) if row else None}


def _open_payment(conn: sqlite3.Connection, a: dict[str, Any], va_prefix: str = "8808",
                  currency: str = "IDR") -> Result:
    txid, op_id = a["transaction_id"], a["op_id"]
    if a["currency"] != currency:
        # The customer pays from ``payer`` into ``settlement``, both in the bank's currency.
        return _record(conn, op_id, {
            "ok": False, "code": int(ErrorCode.CURRENCY_NOT_SUPPORTED),
            "reason": f"bank accepts payments in {currency}, not {a['currency']}"})
    digest = int(hashlib.sha256(txid.encode()).hexdigest(), 16)
    if a["kind"] == "va":
        number = va_prefix + f"{digest % 10**12:012d}"
    else:
        number = f"EW{digest % 10**14:014d}"
    conn.execute("INSERT INTO payments VALUES (?,?,?,?,?,?,'pending',NULL,0)",
                 (txid, a["kind"], number, a["amount"], a["merchant_id"], a["expiry_ms"]))
    return _record(conn, op_id, {"ok": True, "number": number})


def _close_payment(conn: sqlite3.Connection, a: dict[str, Any]) -> Result:
    txid, op_id = a["transaction_id"], a["op_id"]
    p = _payment(conn, txid)
    if p is None:
        return _record(conn, op_id, {"closed": False, "reason": "no such payment"})
    if p["status"] == "paid":
        return _record(conn, op_id, {"closed": False, "paid": True, "paid_ms": p["paid_ms"]})
    if p["status"] == "pending":
        status = "expired" if a["reason"] == "expire" else "cancelled"
        conn.execute("UPDATE payments SET status = ? WHERE transaction_id = ?", (status, txid))
    return _record(conn, op_id, {"closed": True})


def _pay(conn: sqlite3.Connection, txid: str | None, number: str | None) -> Result:
    """A simulated customer pays a pending virtual account or e-wallet request."""
    if txid is None and number is not None:
        row = conn.execute("SELECT transaction_id FROM payments WHERE number = ?",
                           (number,)).fetchone()
        txid = row[0] if row else None
    p = _payment(conn, txid) if txid is not None else None
    if txid is None or p is None:
        return {"paid": False, "reason": "no such payment"}
    if p["status"] != "pending":
        return {"paid": False, "reason": f"payment is {p['status']}"}
    paid_ms = now_ms()
    if paid_ms > p["expiry_ms"]:
        return {"paid": False, "reason": "payment has expired"}
    op_id = f"{txid}:paid"
    _move(conn, txid, op_id, PAYER, -p["amount"], "payment")
    _move(conn, txid, op_id, SETTLEMENT, p["amount"], "payment")
    conn.execute("UPDATE payments SET status = 'paid', paid_ms = ? WHERE transaction_id = ?",
                 (paid_ms, txid))
    cur = conn.execute("INSERT INTO outbox (payload) VALUES (x'')")
    nid = cur.lastrowid
    note = {"notification_id": nid, "transaction_id": txid, "status": "settlement",
            "amount": p["amount"], "paid_ms": paid_ms}
    conn.execute("UPDATE outbox SET payload = ? WHERE id = ?", (_pack(note), nid))
    return {"paid": True, "notification": note}


_HANDLERS: dict[str, Any] = {
    banklink.AUTHORIZE: _authorize,
    banklink.CAPTURE: _capture,
    banklink.VOID: _void,
    banklink.REFUND: _refund,
    banklink.REVERSE: _reverse,
    banklink.INQUIRY: _inquiry,
    banklink.OPEN_PAYMENT: _open_payment,
    banklink.CLOSE_PAYMENT: _close_payment,
}


class BooksSummary(NamedTuple):
    """What the audit and the demo check in a bank's books, read beside a running node."""

    net: int  # sum of balance - opening over all accounts: 0 unless money was made or lost
    held_min: int
    held_total: int
    open_holds: int  # sum of open authorizations
    duplicated_debits: list[tuple[str, str, int]]  # (transaction_id, kind, count) with count > 1
    settled: dict[str, int]  # transaction_id -> net amount moved to settlement
    held_by_tx: dict[str, int]  # transaction_id -> amount of its open hold
    settlement: int  # the settlement account's balance - opening


def read_books(path: Path) -> BooksSummary:
    """One read-only pass over the books at ``path`` (``paywire audit``, the demo)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        totals = conn.execute("SELECT COALESCE(SUM(balance - opening), 0), "
                              "COALESCE(MIN(held), 0), COALESCE(SUM(held), 0) "
                              "FROM accounts").fetchone()
        open_holds = conn.execute("SELECT COALESCE(SUM(amount), 0) FROM holds "
                                  "WHERE state = 'held'").fetchone()[0]
        debits = conn.execute(
            "SELECT transaction_id, kind, COUNT(*) FROM effects WHERE delta < 0 AND "
            "kind IN ('capture', 'payment') AND account != 'settlement' "
            "GROUP BY transaction_id, kind HAVING COUNT(*) > 1").fetchall()
        settled = dict(conn.execute("SELECT transaction_id, SUM(delta) FROM effects "
                                    "WHERE account = 'settlement' "
                                    "GROUP BY transaction_id").fetchall())
        held_by_tx = dict(conn.execute("SELECT transaction_id, amount FROM holds "
                                       "WHERE state = 'held'").fetchall())
        row = conn.execute("SELECT balance - opening FROM accounts WHERE id = ?",
                           (SETTLEMENT,)).fetchone()
    finally:
        conn.close()
    return BooksSummary(totals[0], totals[1], totals[2], open_holds, debits, settled,
                        held_by_tx, row[0] if row else 0)


# --- the bulk path: every operation of one writer batch -----------------------------------
FAST_OPS = frozenset({banklink.AUTHORIZE})
_IN_CHUNK = 500  # host parameters per ``IN (…)``: far below SQLite's limit (32 766)


def _select_in(conn: sqlite3.Connection, sql: str, keys: list[str]) -> list[Any]:
    rows: list[Any] = []
    for at in range(0, len(keys), _IN_CHUNK):
        chunk = keys[at:at + _IN_CHUNK]
        rows += conn.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
    return rows


class BankBulk:
    """The ``BulkWriter`` of a bank's books (built in the writer process). Each record is
    the list of ``(op, args)`` of one request frame; every record of one writer batch is
    applied in one transaction, ops in arrival order."""

    def __init__(self, va_prefix: str = "8808", currency: str = "IDR") -> None:
        self.handlers = dict(_HANDLERS)
        self.handlers[banklink.OPEN_PAYMENT] = functools.partial(
            _open_payment, va_prefix=va_prefix, currency=currency)

    def rollback(self) -> None:
        """Nothing to forget: ``apply`` keeps no state between batches."""

    def apply(self, conn: sqlite3.Connection,
              records: list[list[tuple[str, dict[str, Any]]]]) -> list[list[Outcome]]:
        run = _BulkRun(conn, self.handlers, [op for rec in records for op in rec])
        out = [[run.one(op, args) for op, args in rec] for rec in records]
        run.flush()
        return out


class _BulkRun:
    """One batch: rows read once, authorizations decided in memory, writes gathered.

    The in-memory rows are exact for the whole batch: only authorizations change them here,
    and before any other op runs its handler on the connection, the gathered writes are
    flushed and the cached rows it may change are dropped (read again if needed)."""

    def __init__(self, conn: sqlite3.Connection, handlers: dict[str, Any],
                 ops: list[tuple[str, dict[str, Any]]]) -> None:
        self.conn = conn
        self.handlers = handlers
        self.today = dt.datetime.now(dt.UTC).date()
        self.done: dict[str, bytes] = {}  # op id -> stored answer, as known in this batch
        self.accounts: dict[str, list[Any]] = {}  # id -> [balance, held, currency]
        self.holds: set[str] = set()  # transaction ids holding an authorization
        self.ops_rows: list[tuple[str, bytes]] = []
        self.effects_rows: list[tuple[str, str, str, int, str]] = []
        self.deltas: dict[str, list[int]] = {}  # account -> [balance delta, held delta]
        self.hold_rows: list[tuple[str, str, int, str, int]] = []
        # Keys whose rows were read (present or not) by the preload: a miss on one of
        # these means "no row", a miss on any other is read from the connection.
        self.loaded_ops: set[str] = set()
        self.loaded_accounts: set[str] = set()
        auth = [a for op, a in ops if op in FAST_OPS]
        if not auth:
            return
        self.done = dict(_select_in(conn, "SELECT op_id, result FROM ops WHERE op_id IN ({})",
                                    list({a["op_id"] for a in auth})))
        for r in _select_in(conn, "SELECT id, balance, held, currency FROM accounts "
                            "WHERE id IN ({})", list({a["account"] for a in auth})):
            self.accounts[r[0]] = [r[1], r[2], r[3]]
        self.holds = {r[0] for r in _select_in(
            conn, "SELECT transaction_id FROM holds WHERE transaction_id IN ({})",
            list({a["transaction_id"] for a in auth}))}
        self.loaded_ops = set(self.done) | {a["op_id"] for a in auth}
        self.loaded_accounts = {a["account"] for a in auth}

    def one(self, op: str, args: dict[str, Any]) -> Outcome:
        if op in FAST_OPS:
            try:
                return 0, self._authorize(args)
            except Exception as exc:  # fails alone: nothing of it was gathered
                return 1, repr(exc)
        self.flush()
        self.conn.execute("SAVEPOINT op")
        try:
            outcome: Outcome = (0, _dedup(self.conn, op, args, self.handlers[op]))
        except Exception as exc:
            self.conn.execute("ROLLBACK TO op")
            outcome = (1, repr(exc))
        self.conn.execute("RELEASE op")
        # The handler may have stored answers (its own op id, a reversal's target) and moved
        # any account: forget those rows, so later authorizations read them again.
        self.accounts.clear()
        self.loaded_accounts.clear()
        for key in ("op_id", "target_op_id"):
            if key in args:
                self.done.pop(args[key], None)
                self.loaded_ops.discard(args[key])
        return outcome

    def _stored(self, op_id: str) -> bytes | None:
        known = self.done.get(op_id)
        if known is None and op_id not in self.loaded_ops:
            row = self.conn.execute("SELECT result FROM ops WHERE op_id = ?",
                                    (op_id,)).fetchone()
            if row is not None:
                known = self.done[op_id] = row[0]
        return known

    def _account(self, account: str) -> list[Any] | None:
        row = self.accounts.get(account)
        if row is None and account not in self.loaded_accounts:
            r = self.conn.execute("SELECT balance, held, currency FROM accounts WHERE id = ?",
                                  (account,)).fetchone()
            if r is not None:
                row = self.accounts[account] = [r[0], r[1], r[2]]
        return row

    def _record(self, op_id: str, result: Result) -> Result:
        packed = _pack(result)
        self.done[op_id] = packed
        self.ops_rows.append((op_id, packed))
        return result

    def _move(self, txid: str, op_id: str, account: str, delta: int, kind: str) -> None:
        d = self.deltas.setdefault(account, [0, 0])
        d[0] += delta
        row = self.accounts.get(account)
        if row is not None:
            row[0] += delta
        self.effects_rows.append((txid, op_id, account, delta, kind))

    def _authorize(self, a: dict[str, Any]) -> Result:
        """``_authorize`` over the batch's rows: the same checks, answers and effects."""
        txid, op_id, amount, account = a["transaction_id"], a["op_id"], a["amount"], a["account"]
        stored = self._stored(op_id)
        if stored is not None:
            return {**msgpack.unpackb(stored), "duplicate": True}
        row = self._account(account)
        if row is None or account in (SETTLEMENT, PAYER):
            return self._record(op_id, {"approved": False,
                                        "code": int(ErrorCode.ACCOUNT_UNKNOWN),
                                        "reason": "card account unknown to the issuer"})
        if card_expired(a["exp_month"], a["exp_year"], self.today):
            return self._record(op_id, {
                "approved": False, "code": int(ErrorCode.CARD_EXPIRED),
                "reason": f"card expired ({a['exp_month']:02d}/{a['exp_year']})"})
        if a["currency"] != row[2]:
            return self._record(op_id, {
                "approved": False, "code": int(ErrorCode.CURRENCY_NOT_SUPPORTED),
                "reason": f"card account is in {row[2]}, not {a['currency']}"})
        if row[0] - row[1] < amount:
            return self._record(op_id, {"approved": False,
                                        "code": int(ErrorCode.INSUFFICIENT_FUNDS),
                                        "reason": "insufficient funds"})
        if txid in self.holds:
            # The row-by-row path fails here on the holds primary key: a second op id for
            # one transaction is a hub fault, answered as a failure, nothing moved.
            raise sqlite3.IntegrityError("UNIQUE constraint failed: holds.transaction_id")
        if a["capture"]:
            self._move(txid, op_id, account, -amount, "capture")
            self._move(txid, op_id, SETTLEMENT, amount, "capture")
            state, captured = "captured", amount
        else:
            self.deltas.setdefault(account, [0, 0])[1] += amount
            row[1] += amount
            state, captured = "held", 0
        self.holds.add(txid)
        self.hold_rows.append((txid, account, amount, state, captured))
        auth_code = hashlib.sha256(op_id.encode()).hexdigest()[:6].upper()
        return self._record(op_id, {"approved": True, "captured": a["capture"],
                                    "auth_code": auth_code})

    def flush(self) -> None:
        """The gathered writes, one ``executemany`` per statement, in the order the
        row-by-row path would have made them visible."""
        conn = self.conn
        if self.deltas:
            conn.executemany("UPDATE accounts SET balance = balance + ?, held = held + ? "
                             "WHERE id = ?", [(d[0], d[1], k) for k, d in self.deltas.items()])
            self.deltas = {}
        if self.effects_rows:
            conn.executemany("INSERT INTO effects (transaction_id, op_id, account, delta, "
                             "kind) VALUES (?,?,?,?,?)", self.effects_rows)
            self.effects_rows = []
        if self.hold_rows:
            conn.executemany("INSERT INTO holds VALUES (?,?,?,?,?,0)", self.hold_rows)
            self.hold_rows = []
        if self.ops_rows:
            conn.executemany("INSERT OR REPLACE INTO ops VALUES (?,?)", self.ops_rows)
            self.ops_rows = []
