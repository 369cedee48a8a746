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
