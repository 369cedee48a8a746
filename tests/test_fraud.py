"""The fraud rule engine: each rule fires when it should and only then; memory is bounded."""

from __future__ import annotations

import pytest

from gateway.config import FraudConfig, VelocityRule
from gateway.fraud import FraudEngine, Screening
from protocol.operations import FraudStatus

CARD = "4811111111111114"
OTHER = "5211111111111117"


def engine(**cfg: object) -> FraudEngine:
    return FraudEngine(FraudConfig(**cfg), b"key")  # type: ignore[arg-type]


def screen(e: FraudEngine, now: float = 1000.0, **s: object) -> tuple[FraudStatus, list[str]]:
    base: dict[str, object] = {"merchant_id": "M1", "amount": 1000, "currency": "IDR",
                               "card_number": CARD}
    base.update(s)
    v = e.screen(Screening(**base), now)  # type: ignore[arg-type]
    return v.status, v.reasons


def test_amount_thresholds() -> None:
    e = engine(challenge_above={"IDR": 10_000}, deny_above={"IDR": 50_000})
    assert screen(e, amount=10_000) == (FraudStatus.ACCEPT, [])
    assert screen(e, amount=10_001) == (FraudStatus.CHALLENGE, ["amount_above:10000"])
    assert screen(e, amount=50_001) == (FraudStatus.DENY, ["amount_above:50000"])
    assert screen(e, amount=10**9, currency="USD") == (FraudStatus.ACCEPT, [])


@pytest.mark.parametrize("key", ["card", "email", "ip", "merchant"])
def test_velocity_per_key_over_a_sliding_window(key: str) -> None:
    e = engine(velocity=[VelocityRule(key, 60.0, 2, "deny")])
    who = {"email": "a@x.io", "ip": "10.0.0.1"}
    assert screen(e, 0.0, **who)[0] is FraudStatus.ACCEPT
    assert screen(e, 10.0, **who)[0] is FraudStatus.ACCEPT
    status, reasons = screen(e, 20.0, **who)
    assert status is FraudStatus.DENY and reasons == [f"velocity:{key}:2/60s"]
    # Someone else is not affected (except for the per-merchant rule, which is shared).
    other = {"email": "b@x.io", "ip": "10.0.0.2", "card_number": OTHER}
    expected = FraudStatus.DENY if key == "merchant" else FraudStatus.ACCEPT
    assert screen(e, 21.0, **other)[0] is expected
    # The window slides: 70 s after the first two, they no longer count.
    assert screen(e, 85.0, **who)[0] is FraudStatus.ACCEPT


def test_block_lists() -> None:
    e = engine(block_cards=[CARD], block_bins=["5211"], block_emails=["Bad@X.io"],
               block_ips=["6.6.6.6"])
    assert screen(e) == (FraudStatus.DENY, ["blocked_card"])
    assert screen(e, card_number=OTHER) == (FraudStatus.DENY, ["blocked_bin:5211"])
    assert screen(e, card_number="4911111111111113", email="bad@x.io") == \
        (FraudStatus.DENY, ["blocked_email"])
    assert screen(e, card_number="4911111111111113", ip="6.6.6.6") == \
        (FraudStatus.DENY, ["blocked_ip:6.6.6.6"])
    assert screen(e, card_number="4911111111111113", email="ok@x.io", ip="1.2.3.4") == \
        (FraudStatus.ACCEPT, [])
    assert CARD not in repr(e.blocked_cards)  # kept only as keyed hashes


def test_country_mismatch() -> None:
    e = engine(bin_countries={"4811": "ID", "5211": "SG"})
    assert screen(e, country="ID") == (FraudStatus.ACCEPT, [])
    assert screen(e, country="US") == (FraudStatus.CHALLENGE,
                                       ["country_mismatch:card=ID,customer=US"])
    assert screen(e, card_number="4000000000000002", country="US")[0] is FraudStatus.ACCEPT
    assert screen(engine(bin_countries={"4811": "ID"}, country_mismatch="off"),
                  country="US")[0] is FraudStatus.ACCEPT


def test_most_severe_action_wins_and_all_reasons_are_kept() -> None:
    e = engine(challenge_above={"IDR": 10}, block_ips=["6.6.6.6"])
    status, reasons = screen(e, amount=100, ip="6.6.6.6")
    assert status is FraudStatus.DENY
    assert reasons == ["amount_above:10", "blocked_ip:6.6.6.6"]


def test_velocity_memory_is_bounded() -> None:
    e = engine(velocity=[VelocityRule("ip", 3600.0, 3)], velocity_keys_max=100)
    for i in range(1000):
        screen(e, float(i), ip=f"10.0.{i // 256}.{i % 256}")
    assert e.tracked_keys == 100


def test_rebuild_from_records_counts_like_live_charges() -> None:
    live = engine(velocity=[VelocityRule("card", 60.0, 2, "deny")])
    rebuilt = engine(velocity=[VelocityRule("card", 60.0, 2, "deny")])
    screen(live, 1.0)
    screen(live, 2.0)
    rebuilt.record("M1", rebuilt.fingerprint(CARD), None, None, 1.0)
    rebuilt.record("M1", rebuilt.fingerprint(CARD), None, None, 2.0)
    assert screen(live, 3.0)[0] is screen(rebuilt, 3.0)[0] is FraudStatus.DENY


def test_disabled_engine_accepts_everything() -> None:
    assert screen(engine(enabled=False, block_cards=[CARD])) == (FraudStatus.ACCEPT, [])
