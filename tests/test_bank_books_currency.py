"""Issue 11 item 9, the bank's books: each account is held in one currency (stored in the
books, version 2); books of version 1 are migrated when a node opens them and keep their
balances; an account's currency cannot change under it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.bank.store import BOOKS_VERSION, BankStore, BooksError
from protocol import banklink
from protocol.errors import ErrorCode
from tests.deploy import RICH

V1_SCHEMA = """
CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL,
                       held INTEGER NOT NULL, opening INTEGER NOT NULL);
CREATE TABLE ops (op_id TEXT PRIMARY KEY, result BLOB NOT NULL);
"""


def authorize(op_id: str, account: str, currency: str) -> dict[str, object]:
    return {"op_id": op_id, "transaction_id": op_id, "account": account, "exp_month": 12,
            "exp_year": 2030, "amount": 100, "currency": currency, "capture": True}


async def test_books_of_version_1_are_migrated_and_keep_their_balances(tmp_path: Path) -> None:
    path = tmp_path / "books.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.executescript(V1_SCHEMA)
        conn.execute("INSERT INTO accounts VALUES (?, 700, 0, 1000)", (RICH[0],))
        conn.execute("INSERT INTO accounts VALUES ('settlement', 300, 0, 0)")
    conn.close()
    store = BankStore(path, {RICH[0]: 1000}, currency="IDR")
    await store.start()
    try:
        assert (await store.balances())[RICH[0]] == [700, 0]
        usd = await store.apply(banklink.AUTHORIZE, authorize("t1", RICH[0], "USD"))
        assert usd["approved"] is False and usd["code"] == ErrorCode.CURRENCY_NOT_SUPPORTED
        idr = await store.apply(banklink.AUTHORIZE, authorize("t2", RICH[0], "IDR"))
        assert idr["approved"] is True
        assert (await store.balances())[RICH[0]] == [600, 0]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == BOOKS_VERSION
        assert dict(conn.execute("SELECT id, currency FROM accounts").fetchall()) == {
            RICH[0]: "IDR", "settlement": "IDR", "payer": "IDR"}
    finally:
        conn.close()


async def test_a_changed_account_currency_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "books.db"
    store = BankStore(path, {RICH[0]: 1000}, currency="IDR")
    await store.start()
    await store.close()
    again = BankStore(path, {RICH[0]: 1000}, currency="IDR",
                      account_currencies={RICH[0]: "USD"})
    try:
        with pytest.raises(BooksError, match=f"{RICH[0]} is IDR, configured USD"):
            await again.start()
    finally:
        await again.close()
