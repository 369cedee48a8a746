"""Configuration: TOML round trip, strict keys, and every default documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway import config as cfgmod

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_round_trip_through_toml(tmp_path: Path) -> None:
    hub = cfgmod.HubConfig(listen_port=0, merchants=[cfgmod.MerchantConfig("M1", "k")],
                           banks=[cfgmod.BankRoute("bca", ["bca-1@127.0.0.1:1"], bins=["4811"])])
    path = tmp_path / "hub.toml"
    path.write_text(cfgmod.dump_toml(hub))
    assert cfgmod.load(cfgmod.HubConfig, path) == hub
    hub.fraud.velocity.append(cfgmod.VelocityRule("card", 60.0, 3, "deny"))
    hub.fraud.challenge_above["IDR"] = 1000
    path.write_text(cfgmod.dump_toml(hub))
    assert cfgmod.load(cfgmod.HubConfig, path) == hub
    bank = cfgmod.BankNodeConfig(accounts={"4811111111111114": 5}, auto_pay_after_s=0.5)
    path.write_text(cfgmod.dump_toml(bank))
    assert cfgmod.load(cfgmod.BankNodeConfig, path) == bank


@pytest.mark.parametrize("text", ["listen_prot = 1\n", "in_flight_max = \"many\"\n",
                                  "[[merchants]]\nid = \"M1\"\n", "in_flight_max = true\n"])
def test_bad_config_is_refused_with_the_key(tmp_path: Path, text: str) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(text)
    with pytest.raises(cfgmod.ConfigError):
        cfgmod.load(cfgmod.HubConfig, path)


SECTIONS = {
    "HubConfig": ("## Hub", "`[[merchants]]` tables"),
    "MerchantConfig": ("`[[merchants]]` tables", "`[[banks]]` tables"),
    "BankRoute": ("`[[banks]]` tables", "## Fraud screening"),
    "FraudConfig": ("## Fraud screening", "`[[fraud.velocity]]` tables"),
    "VelocityRule": ("`[[fraud.velocity]]` tables", "## Webhooks"),
    "WebhookConfig": ("## Webhooks", "## Ledger"),
    "LedgerConfig": ("## Ledger", "## Retention"),
    "RetentionConfig": ("## Retention", "## Bank node"),
    "BankNodeConfig": ("## Bank node", ""),
}


@pytest.mark.parametrize("cls", [cfgmod.HubConfig, cfgmod.MerchantConfig, cfgmod.BankRoute,
                                 cfgmod.BankNodeConfig, cfgmod.FraudConfig,
                                 cfgmod.VelocityRule, cfgmod.WebhookConfig,
                                 cfgmod.LedgerConfig, cfgmod.RetentionConfig])
def test_every_field_and_default_is_documented(cls: type) -> None:
    doc = DOC.read_text()
    start, end = SECTIONS[cls.__name__]
    text = doc[doc.index(start):doc.index(end) if end else len(doc)]
    for f in dataclasses.fields(cls):
        row = re.search(rf"^\| `{f.name}` \| ([^|]+) \|", text, re.M)
        assert row is not None, f"{cls.__name__}.{f.name} is not documented"
        cell = row.group(1).strip()
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            expected = "see below" if dataclasses.is_dataclass(default) else f"`{default}`"
            assert cell == expected, f"{cls.__name__}.{f.name}: doc says {cell}"
        if f.default is not dataclasses.MISSING and f.default is not None:
            shown = str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
            if isinstance(f.default, (str, Path)):
                shown = f'"{f.default}"'
            assert cell == f"`{shown}`", f"{cls.__name__}.{f.name}: doc says {cell}"


@pytest.mark.parametrize("node", ["127.0.0.1:7501", "@127.0.0.1:7501", "bca-1@127.0.0.1",
                                  "bca 1@127.0.0.1:7501", "a@b@127.0.0.1:7501"])
def test_a_bank_node_must_be_named_as_its_certificate_is(node: str) -> None:
    """NODE@HOST:PORT: the name is what the hub checks the node's certificate against."""
    with pytest.raises(cfgmod.ConfigError, match="NODE@HOST:PORT"):
        cfgmod.HubConfig(listen_port=0, merchants=[cfgmod.MerchantConfig("M1", "k")],
                         banks=[cfgmod.BankRoute("bca", [node], bins=["4811"])])
