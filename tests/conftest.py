"""Shared fixtures: a dev PKI generated once per test session into a temp directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import pki

MERCHANTS = ["M1", "M2"]
BANKS = ["bank-a", "bank-b", "wallet"]


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("certs")
    pki.init(directory, merchants=MERCHANTS, banks=BANKS)
    yield directory
