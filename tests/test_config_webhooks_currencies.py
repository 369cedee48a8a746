"""Configuration checks of issue 11 items 7 and 9: webhook URLs stay on TLS, and only
currencies the deployment supports are configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config as cfgmod


def _hub_toml(tmp_path: Path, url: str, *, opt_in: bool | None = None) -> Path:
    text = f'[[merchants]]\nid = "M1"\nserver_key = "k"\nwebhook_url = "{url}"\n'
    if opt_in is not None:
        text += f"\n[webhooks]\nallow_plain_http_loopback = {str(opt_in).lower()}\n"
    path = tmp_path / "hub.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://hooks.example.com/x",
                                 "HTTP://localhost/x", "ftp://example.com/x", "https:///x",
                                 "hooks.example.com/x"])
def test_a_webhook_url_off_https_is_refused_at_load(tmp_path: Path, url: str) -> None:
    with pytest.raises(cfgmod.ConfigError, match=r"merchants\[M1\]\.webhook_url"):
        cfgmod.load(cfgmod.HubConfig, _hub_toml(tmp_path, url))


def test_the_refusal_says_why_and_names_the_opt_in(tmp_path: Path) -> None:
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.load(cfgmod.HubConfig, _hub_toml(tmp_path, "http://127.0.0.1:8080/hook"))
    assert "plain HTTP" in str(err.value) and "https://" in str(err.value)
    assert "allow_plain_http_loopback" in str(err.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://[::1]:8080/hook",
                                 "http://localhost:8080/hook", "http://LOCALHOST/hook",
                                 "https://hooks.example.com/x"])
def test_the_loopback_opt_in_allows_plain_http_to_loopback(tmp_path: Path, url: str) -> None:
    hub = cfgmod.load(cfgmod.HubConfig, _hub_toml(tmp_path, url, opt_in=True))
    assert hub.merchants[0].webhook_url == url


@pytest.mark.parametrize("url", ["http://10.0.0.1/hook", "http://hooks.example.com/x",
                                 "http://127.0.0.1.nip.io/x", "http://localhost.example.com/x",
                                 "http://0.0.0.0/x", "http://[::ffff:127.0.0.1]/x",
                                 "ftp://127.0.0.1/x"])
def test_the_loopback_opt_in_allows_nothing_else(tmp_path: Path, url: str) -> None:
    with pytest.raises(cfgmod.ConfigError, match=r"merchants\[M1\]\.webhook_url"):
        cfgmod.load(cfgmod.HubConfig, _hub_toml(tmp_path, url, opt_in=True))


def test_https_webhook_urls_load_and_round_trip(tmp_path: Path) -> None:
    hub = cfgmod.load(cfgmod.HubConfig, _hub_toml(tmp_path, "https://hooks.example.com/p"))
    path = tmp_path / "again.toml"
    path.write_text(cfgmod.dump_toml(hub))
    assert cfgmod.load(cfgmod.HubConfig, path) == hub


def test_configured_currencies_must_be_known_iso_4217_codes(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('currencies = ["IDR", "USD"]\n')
    assert cfgmod.load(cfgmod.HubConfig, path).currencies == ["IDR", "USD"]
    for bad in ('["IDR", "XYZ"]', '["idr"]', "[]"):
        path.write_text(f"currencies = {bad}\n")
        with pytest.raises(cfgmod.ConfigError, match="currenc"):
            cfgmod.load(cfgmod.HubConfig, path)


def test_a_bank_declares_a_known_currency_for_its_accounts(tmp_path: Path) -> None:
    path = tmp_path / "bank.toml"
    path.write_text('currency = "USD"\n[account_currencies]\n"4811111111111114" = "IDR"\n')
    bank = cfgmod.load(cfgmod.BankNodeConfig, path)
    assert bank.currency == "USD" and bank.account_currencies == {"4811111111111114": "IDR"}
    assert cfgmod.BankNodeConfig().currency == "IDR"
    for text in ('currency = "XYZ"\n', '[account_currencies]\n"4811111111111114" = "usd"\n'):
        path.write_text(text)
        with pytest.raises(cfgmod.ConfigError, match="currency"):
            cfgmod.load(cfgmod.BankNodeConfig, path)
