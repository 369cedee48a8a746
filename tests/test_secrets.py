"""Deployment secrets (issue 11 item 5): one key per purpose, generated per deployment, kept
0600; no node starts on the old public default, on no key, or on a key shared by purposes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway import config as cfgmod
from gateway import secret_keys
from gateway.config import FraudConfig
from gateway.fraud import FraudEngine
from gateway.hub.service import TransactionService
from gateway.transactions.model import Transaction
from protocol.operations import Operation, validate_args
from tests.deploy import RICH, deployment

OLD_PUBLIC_DEFAULT = "paywire-dev-link-key"
CLI_TIMEOUT_S = 60


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S, cwd=cwd)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_init_writes_three_distinct_random_keys_0600_whatever_the_umask(
        tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "paywire-secrets.toml"
    old = os.umask(0)
    try:
        done = cli("secrets", "init", str(path))
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    keys = tomllib.loads(path.read_text())
    assert sorted(keys) == sorted(secret_keys.PURPOSES)
    raw = [bytes.fromhex(v) for v in keys.values()]
    assert all(len(k) == secret_keys.KEY_BYTES for k in raw) and len(set(raw)) == 3
    # A second deployment gets other keys; an existing file is never replaced silently.
    other = tmp_path / "other.toml"
    assert cli("secrets", "init", str(other)).returncode == 0
    assert not set(tomllib.loads(other.read_text()).values()) & set(keys.values())
    again = cli("secrets", "init", str(path))
    assert again.returncode == 2 and "--force" in again.stderr
    assert tomllib.loads(path.read_text()) == keys
    assert cli("secrets", "init", "--force", str(path)).returncode == 0
    assert tomllib.loads(path.read_text()) != keys and mode(path) == 0o600


def _write_secrets(path: Path, values: dict[str, str], file_mode: int = 0o600) -> None:
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in values.items()))
    os.chmod(path, file_mode)


def _good(tmp_path: Path) -> dict[str, str]:
    path = secret_keys.init(tmp_path / "good.toml")
    values: dict[str, str] = tomllib.loads(path.read_text())
    return values


def _case(tmp_path: Path, case: str) -> tuple[dict[str, Any], str]:
    """A config (as a dict) for ``case`` and a phrase its refusal must contain."""
    secrets = tmp_path / "paywire-secrets.toml"
    good = _good(tmp_path)
    if case == "no secrets file":
        return {"secrets_file": str(secrets)}, f"paywire secrets init {secrets}"
    if case == "old public default in the config":
        _write_secrets(secrets, good)
        return ({"secrets_file": str(secrets), "link_key": OLD_PUBLIC_DEFAULT},
                "old public default")
    if case == "old public default in the secrets file":
        _write_secrets(secrets, {**good, "link_key": OLD_PUBLIC_DEFAULT})
        return {"secrets_file": str(secrets)}, "old public default"
    if case == "one key for two purposes":
        _write_secrets(secrets, {**good, "fingerprint_key": good["link_key"]})
        return {"secrets_file": str(secrets)}, "two purposes"
    if case == "short key":
        _write_secrets(secrets, {**good, "link_key": "00" * 8})
        return {"secrets_file": str(secrets)}, "at least 16 random bytes"
    assert case == "readable by others"
    _write_secrets(secrets, good, 0o644)
    return {"secrets_file": str(secrets)}, "chmod 600"


HUB_CASES = ["no secrets file", "old public default in the config",
             "old public default in the secrets file", "one key for two purposes", "short key",
             "readable by others"]


@pytest.mark.parametrize("case", HUB_CASES)
def test_hub_refuses_to_start_without_its_own_keys(tmp_path: Path, case: str) -> None:
    fields, phrase = _case(tmp_path, case)
    cfg = cfgmod.HubConfig(listen_port=0, certs_dir=tmp_path / "certs",
                           ledger_path=tmp_path / "ledger.db",
                           secrets_file=Path(fields["secrets_file"]),
                           link_key=fields.get("link_key"),
                           merchants=[cfgmod.MerchantConfig("M1", "k")])
    (tmp_path / "hub.toml").write_text(cfgmod.dump_toml(cfg))
    done = cli("hub", "--config", str(tmp_path / "hub.toml"))
    assert done.returncode == 7  # EXIT_CONFIG (docs/cli.md)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("paywire hub: ") and phrase in lines[0]
    assert "paywire secrets init" in lines[0] or "chmod 600" in lines[0]
    assert not (tmp_path / "ledger.db").exists()


@pytest.mark.parametrize("case", ["no secrets file", "old public default in the config",
                                  "old public default in the secrets file"])
def test_bank_node_refuses_to_start_without_its_link_key(tmp_path: Path, case: str) -> None:
    fields, phrase = _case(tmp_path, case)
    cfg = cfgmod.BankNodeConfig(listen_port=0, certs_dir=tmp_path / "certs",
                                store_path=tmp_path / "bank.db",
                                secrets_file=Path(fields["secrets_file"]),
                                link_key=fields.get("link_key"))
    (tmp_path / "bank.toml").write_text(cfgmod.dump_toml(cfg))
    done = cli("bank", "--config", str(tmp_path / "bank.toml"))
    assert done.returncode == 7  # EXIT_CONFIG (docs/cli.md)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("paywire bank: ") and phrase in lines[0]
    assert not (tmp_path / "bank.db").exists()


def _hash_under(key: bytes, args: dict[str, Any]) -> bytes:
    """The idempotency hash the hub would store if ``key`` were its idempotency key."""
    fake = SimpleNamespace(hash_key=key)
    digest: bytes = TransactionService.request_hash(fake, args)  # type: ignore[arg-type]
    return digest


async def test_link_fingerprints_and_idempotency_hashes_use_three_different_keys(
        tmp_path: Path) -> None:
    number = RICH[0]
    with deployment(tmp_path, bca_nodes=1) as dep:
        async with dep.client() as c:
            tx = await c.charge("fp-1", 10_000, card={"number": number, "exp_month": 12,
                                                       "exp_year": 2030, "cvv": "123"})
        assert tx.transaction_status == "capture"  # the bank link works with link_key
        (record,) = dep.ledger_sql("SELECT record FROM transactions WHERE order_id = 'fp-1'")[0]
    stored = Transaction.from_record(record)
    keys = secret_keys.load_hub(dep.secrets)
    assert len({keys.link_key, keys.fingerprint_key, keys.idempotency_key}) == 3

    def fingerprint(key: bytes) -> str:
        return FraudEngine(FraudConfig(), key).fingerprint(number)

    assert stored.card_fingerprint == fingerprint(keys.fingerprint_key)
    assert stored.card_fingerprint != fingerprint(keys.link_key)
    assert stored.card_fingerprint != fingerprint(OLD_PUBLIC_DEFAULT.encode())
    sent = {"order_id": "fp-1", "gross_amount": 10_000, "payment_type": "credit_card",
            "currency": "IDR", "capture": True,
            "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvv": "123"}}
    args = validate_args(Operation.CHARGE, sent)
    assert stored.request_hash == _hash_under(keys.idempotency_key, args)
    assert stored.request_hash != _hash_under(keys.link_key, args)
    assert stored.request_hash != _hash_under(keys.fingerprint_key, args)
