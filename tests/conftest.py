"""Shared fixtures: a dev PKI generated once per test session into a temp directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import pki
from gateway.labs.checks import Sandbox

MERCHANTS = ["M1", "M2"]
BANKS = ["bank-a", "bank-b", "wallet"]


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("certs")
    pki.init(directory, merchants=MERCHANTS, banks=BANKS)
    yield directory


@pytest.fixture(scope="session")
def lab_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One ``paywire sandbox`` shared by the lab tests (handouts and checks): started on
    first use, stopped with SIGINT at the end of the session."""
    from tests.labsupport import running_sandbox

    with running_sandbox(tmp_path_factory.mktemp("lab") / "sandbox") as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def lab_sandbox_scale_out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """``paywire sandbox --scale-out`` (hub-a and hub-b behind HAProxy on one PostgreSQL
    ledger) for lab 6's scale-out section: started on first use, stopped with SIGINT at the
    end of the session. Skipped, with the reason, without haproxy."""
    from tests.labsupport import running_sandbox, scale_out_options

    with scale_out_options() as options, running_sandbox(
            tmp_path_factory.mktemp("lab-scale-out") / "sandbox", *options) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """An administrative DSN of a PostgreSQL server (tests/pgsupport.py): started once, on
    first use, and stopped at the end of the session."""
    pytest.importorskip("asyncpg", reason="the PostgreSQL tests need pip install '.[test]'")
    from tests.pgsupport import server

    with server() as dsn:
        yield dsn


@pytest.fixture
def pg_dsn(pg_server: str) -> Iterator[str]:
    """A fresh database of its own for one test, dropped after it."""
    from tests.pgsupport import database

    with database(pg_server) as dsn:
        yield dsn
