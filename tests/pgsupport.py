"""PostgreSQL servers for the tests: ``PAYWIRE_PG_DSN`` if set, else a throwaway server from
the ``pgserver`` package (PostgreSQL shipped on PyPI), started once per session and stopped
at its end. Each test gets a database of its own, dropped after it.

As root (CI), pgserver runs the server as a system user ``pgserver`` it creates (PostgreSQL
refuses to run as root) and listens on a Unix socket only, in its data directory; the DSN
names that socket (``postgresql://postgres:@/DB?host=/tmp/...``), so no TCP port is taken.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENV_DSN = "PAYWIRE_PG_DSN"
DROP_TIMEOUT_S = 30.0


def with_database(dsn: str, name: str) -> str:
    """``dsn`` with its database replaced by ``name`` (query, e.g. ``host=``, kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@contextmanager
def server() -> Iterator[str]:
    """An administrative DSN: the environment's, or a throwaway pgserver's."""
    given = os.environ.get(ENV_DSN)
    if given:
        yield given
        return
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (CI, root) and falls back to /tmp.
        warnings.simplefilter("ignore")
        import pgserver
    pgdata = tempfile.mkdtemp(prefix="paywire-pg-")
    srv = pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield srv.get_uri()
    finally:
        srv.cleanup()  # stops the server and removes its data directory
        shutil.rmtree(pgdata, ignore_errors=True)


async def _admin(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=DROP_TIMEOUT_S)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def database(admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database on the server; its DSN. Dropped afterwards (sessions left
    open by a killed process are ended: ``WITH (FORCE)``)."""
    name = f"paywire_test_{uuid.uuid4().hex[:12]}"
    _in_thread(_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(admin_dsn, name)
    finally:
        _in_thread(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _in_thread(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to completion from sync or async code (a test's loop may be
    running in this thread)."""
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        ex.submit(asyncio.run, coro).result()
