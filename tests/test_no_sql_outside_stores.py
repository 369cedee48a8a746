"""Only the ledger (``gateway/ledger/``), its writer machinery (``gateway/storage/``) and the
bank's own store (``gateway/bank/store.py``) talk SQL: a second ledger implementation
(PostgreSQL, issue 12) must be able to replace the first without hunting statements
across the code base."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = ("gateway/ledger/", "gateway/storage/", "gateway/bank/store.py")
SQL = re.compile(r"\b(SELECT\b.+\bFROM|INSERT\s+INTO|UPDATE\b.+\bSET|DELETE\s+FROM|"
                 r"CREATE\s+(TABLE|INDEX)|PRAGMA\s+\w|BEGIN\s+IMMEDIATE)\b", re.S)
DRIVERS = {"sqlite3", "asyncpg", "psycopg", "psycopg2", "aiosqlite"}


def _runs_sql(node: ast.Attribute) -> bool:
    if node.attr in ("executescript", "executemany"):
        return True
    return node.attr == "execute" and isinstance(node.value, ast.Name) \
        and node.value.id in ("conn", "cur", "db")


def sql_users(source: str) -> list[str]:
    """What in ``source`` is a database driver import or a SQL statement."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] in DRIVERS]
        elif isinstance(node, ast.ImportFrom) and node.module \
                and node.module.split(".")[0] in DRIVERS:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and SQL.search(node.value):
            found.append(f"SQL {node.value[:60]!r} (line {node.lineno})")
        elif isinstance(node, ast.Attribute) and _runs_sql(node):
            found.append(f".{node.attr} (line {node.lineno})")
    return found


def test_no_sql_outside_the_ledger_and_the_bank_store() -> None:
    offenders = {}
    for package in ("gateway", "protocol"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(ALLOWED):
                continue
            found = sql_users(path.read_text())
            if found:
                offenders[rel] = found
    assert offenders == {}


def test_the_scan_finds_what_it_looks_for() -> None:
    """The check above cannot pass vacuously: each form it forbids is found."""
    assert sql_users("import sqlite3")
    assert sql_users("from sqlite3 import connect")
    assert sql_users("import asyncpg.pool")
    assert sql_users('q = "SELECT id FROM webhooks WHERE x = 1"')
    assert sql_users('q = ("UPDATE webhooks "\n "SET state = 1")')
    assert sql_users('q = "INSERT INTO t VALUES (1)"')
    assert sql_users('q = """\nDELETE FROM transactions"""')
    assert sql_users("conn.execute(q)")
    assert sql_users("x.executemany(q, rows)")
    assert not sql_users('"Select a bank from the list"; "update the settings"')
    # The allowed modules do use SQL: the scan would see it there.
    assert sql_users((ROOT / "gateway/ledger/sqlite.py").read_text())
    assert sql_users((ROOT / "gateway/bank/store.py").read_text())
