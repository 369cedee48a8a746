"""Two active server keys per merchant (``previous_server_key``): validation, the
authenticator accepting either, and what a reload plan applies and names."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import config as cfgmod
from gateway.client.webhooks import (
    SignatureVerificationError,
    VerificationFailure,
    construct_event,
)
from gateway.config import ConfigError, HubConfig, MerchantConfig, WebhookConfig
from gateway.hub.auth import Authenticator
from gateway.hub.reload import plan
from gateway.webhooks.payload import notification_body
from protocol.errors import AuthenticationError, ErrorCode
from protocol.messages import Request
from protocol.signing import sign_request
from tests.test_client_webhooks import NOW, RESULT, signed


def hub(*merchants: MerchantConfig, **fields: object) -> HubConfig:
    return HubConfig(merchants=list(merchants), **{"listen_port": 0, **fields})  # type: ignore[arg-type]


def load_text(tmp_path: Path, text: str) -> HubConfig:
    path = tmp_path / "hub.toml"
    path.write_text(text)
    return cfgmod.load(HubConfig, path)


def test_previous_server_key_loads_and_server_key_alone_still_works(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[[merchants]]\nid = "M1"\nserver_key = "new"\n'
                              'previous_server_key = "old"\n'
                              '[[merchants]]\nid = "M2"\nserver_key = "only"\n')
    m1, m2 = cfg.merchants
    assert m1.server_keys() == ("new", "old")  # the primary first
    assert m2.server_keys() == ("only",) and m2.previous_server_key is None
    # Written back and read again (how tests and the CLI pass configs on): the same keys.
    again = load_text(tmp_path, cfgmod.dump_toml(cfg))
    assert [m.server_keys() for m in again.merchants] == [("new", "old"), ("only",)]


@pytest.mark.parametrize(("fields", "message"), [
    ({"server_key": ""}, "merchants[M1].server_key is empty"),
    ({"previous_server_key": ""}, "merchants[M1].previous_server_key is empty"),
    ({"previous_server_key": "k1"}, "previous_server_key is the same as server_key"),
])
def test_keys_are_non_empty_and_distinct(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        hub(dataclasses.replace(MerchantConfig("M1", "k1"), **fields))


def test_more_than_two_keys_has_no_spelling(tmp_path: Path) -> None:
    """At most two keys: there is no field for a third, and a list is not a key."""
    with pytest.raises(ConfigError, match="unknown keys"):
        load_text(tmp_path, '[[merchants]]\nid = "M1"\nserver_key = "a"\n'
                            'server_keys = ["a", "b", "c"]\n')
    with pytest.raises(ConfigError, match="previous_server_key: expected str"):
        load_text(tmp_path, '[[merchants]]\nid = "M1"\nserver_key = "a"\n'
                            'previous_server_key = ["b", "c"]\n')


def test_a_merchant_configured_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="merchant 'M1' is configured twice"):
        hub(MerchantConfig("M1", "a"), MerchantConfig("M1", "b"))


def request(key: bytes, merchant: str = "M1", rid: int = 1) -> Request:
    ts = int(time.time() * 1000)
    nonce = rid.to_bytes(16, "big")
    args = b"\x80"
    return Request(request_id=rid, merchant_id=merchant, op="status", timestamp_ms=ts,
                   nonce=nonce, signature=sign_request(key, merchant, rid, "status", ts, nonce,
                                                       args), args_raw=args)


def test_either_active_key_verifies_and_a_removed_one_no_longer_does() -> None:
    auth = Authenticator({"M1": (b"new", b"old")}, 300.0, {"M1": 100})
    assert auth.check(request(b"new", rid=1), "M1") is None
    assert auth.check(request(b"old", rid=2), "M1") is None
    with pytest.raises(AuthenticationError) as bad:
        auth.check(request(b"other", rid=3), "M1")
    assert bad.value.code is ErrorCode.BAD_SIGNATURE
    # The reload that ends the rotation: the old key is refused, the new one goes on.
    auth.update({"M1": (b"new",)}, {"M1": 100})
    with pytest.raises(AuthenticationError) as old:
        auth.check(request(b"old", rid=4), "M1")
    assert old.value.code is ErrorCode.BAD_SIGNATURE
    assert auth.check(request(b"new", rid=5), "M1") is None
    # A nonce spent before the update is still remembered after it.
    with pytest.raises(AuthenticationError) as replay:
        auth.check(request(b"new", rid=5), "M1")
    assert replay.value.code is ErrorCode.REPLAYED
    # A merchant removed by a reload: UNAUTHENTICATED, as for one never configured.
    auth.update({}, {})
    with pytest.raises(AuthenticationError) as gone:
        auth.check(request(b"new", rid=6), "M1")
    assert gone.value.code is ErrorCode.UNAUTHENTICATED


def test_reload_plan_names_changes_but_never_a_key() -> None:
    running = hub(MerchantConfig("M1", "key-one"), MerchantConfig("M2", "key-two"))
    new = hub(MerchantConfig("M1", "key-one-new", previous_server_key="key-one",
                             webhook_url="https://example.test/hook?token=secret-token",
                             rate_per_s=10.0, rate_burst=20),
              MerchantConfig("M3", "key-three"), listen_port=7401)
    change = plan(running, dataclasses.replace(running), new)
    assert (change.added, change.removed) == (["M3"], ["M2"])
    assert change.keys_changed == change.webhook_changed == change.limits_changed == ["M1"]
    assert change.not_applied == ["listen_port"]
    summary = change.summary()
    assert summary == ("merchants added [M3]; merchants removed [M2]; server keys changed "
                       "[M1]; webhook_url changed [M1]; limits changed [M1]")
    assert not any(secret in summary for secret in ("key-", "secret-token", "example.test"))
    assert plan(running, running, running).summary() == "no change to merchants"


def test_reload_plan_checks_merchants_against_the_running_webhook_rules() -> None:
    """A file that allows plain-HTTP webhooks is valid on its own, but the running hub keeps
    its webhook settings (they need a restart): a merchant URL it would refuse to deliver
    to is refused at reload, and nothing is applied."""
    running = hub(MerchantConfig("M1", "k"))
    lab = hub(MerchantConfig("M1", "k", webhook_url="http://127.0.0.1:9/hook"),
              webhooks=WebhookConfig(allow_plain_http_loopback=True))
    with pytest.raises(ConfigError, match="running configuration"):
        plan(running, running, lab)


def test_a_notification_queued_before_the_switch_verifies_with_both_keys() -> None:
    """The hub builds a notification's body (with its Midtrans ``signature_key``) when the
    change commits, and signs the header when it delivers: a row queued under the old key
    and delivered after the switch has the old key's signature_key under a header signed
    with the new key. A receiver given [new, old] accepts it; given only the new key, it
    refuses it (which is why the old key stays in the receiver's list until the hub's
    retries of such rows are over)."""
    body = notification_body(RESULT, "old-key", 7)  # committed before the switch
    headers = signed(body, NOW, "new-key")  # delivered after it
    assert construct_event(body, headers, ["new-key", "old-key"], now_s=NOW).order_id \
        == RESULT["order_id"]
    with pytest.raises(SignatureVerificationError) as only_new:
        construct_event(body, headers, "new-key", now_s=NOW)
    assert only_new.value.reason is VerificationFailure.BAD_SIGNATURE_KEY
