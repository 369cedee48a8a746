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
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
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


def client_tools_dir() -> Path | None:
    """Where ``pg_dump`` and ``pg_restore`` of the test server's own version are: pgserver
    ships them beside its server (``pginstall/bin``). ``None`` with ``PAYWIRE_PG_DSN`` (an
    outside server: its client tools are whatever is on ``PATH``)."""
    if os.environ.get(ENV_DSN):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    found = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return found if (found / "pg_dump").exists() else None


def client_tools_env() -> dict[str, str]:
    """The environment for ``paywire ledger backup`` and ``pg_restore`` against the test
    server: ``PATH`` with :func:`client_tools_dir` first."""
    env = dict(os.environ)
    found = client_tools_dir()
    if found is not None:
        env["PATH"] = f"{found}{os.pathsep}{env.get('PATH', '')}"
    return env


def restore(dump: Path, dsn: str, env: dict[str, str]) -> None:
    """``pg_restore`` a ``pg_dump --format=custom`` file into the (empty) database ``dsn``:
    the documented restore (docs/operations.md)."""
    exe = shutil.which("pg_restore", path=env.get("PATH"))
    assert exe is not None, "pg_restore is not on PATH"
    done = subprocess.run([exe, "--dbname", dsn, str(dump)], env=env,
                          capture_output=True, text=True, timeout=RESTORE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr


RESTORE_TIMEOUT_S = 120.0
