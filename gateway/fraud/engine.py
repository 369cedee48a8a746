"""A rule engine run before the bank call: accept, challenge or deny, with reasons.

Rules (configured in the hub's ``[fraud]`` table): amount thresholds per currency, velocity
limits over sliding windows (per card, customer e-mail, client IP, merchant), block lists
(cards, BINs, e-mails, IPs), cards always held for review, and a mismatch between the card's
issuing country and the customer's country. Every rule that fires adds a reason; the
outcome is the most severe action among them. Velocity memory is bounded
(``velocity_keys_max`` keys, each holding at most ``count_max`` timestamps) and rebuilt
from the ledger at start.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from gateway.config import FraudConfig
from protocol.operations import FraudStatus
from protocol.signing import hmac_sha256

_SEVERITY = {FraudStatus.ACCEPT: 0, FraudStatus.CHALLENGE: 1, FraudStatus.DENY: 2}


@dataclass
class Screening:
    """What the screen looks at for one charge."""

    merchant_id: str
    amount: int
    currency: str
    card_number: str | None = None
    email: str | None = None
    ip: str | None = None
    country: str | None = None


@dataclass
class Verdict:
    status: FraudStatus = FraudStatus.ACCEPT
    reasons: list[str] = field(default_factory=list)
    # The card's keyed fingerprint, computed once here for the rules and kept on the record
    # (an HMAC per charge: not worth computing twice).
    card_fingerprint: str | None = None

    def add(self, action: str, reason: str) -> None:
        status = FraudStatus(action)
        self.reasons.append(reason)
        if _SEVERITY[status] > _SEVERITY[self.status]:
            self.status = status


class FraudEngine:
    def __init__(self, cfg: FraudConfig, key: bytes) -> None:
        self.cfg = cfg
        self.key = key
        self.blocked_cards = {self.fingerprint(c) for c in cfg.block_cards}
        self.challenged_cards = {self.fingerprint(c) for c in cfg.challenge_cards}
        self.blocked_emails = {e.lower() for e in cfg.block_emails}
        self.blocked_ips = set(cfg.block_ips)
        self._bin_countries = sorted(cfg.bin_countries.items(), key=lambda kv: -len(kv[0]))
        self._windows: OrderedDict[tuple[int, str], deque[float]] = OrderedDict()
        self.window_s_max = max((r.window_s for r in cfg.velocity), default=0.0)

    def fingerprint(self, card_number: str) -> str:
        """A keyed hash: lets rules and the ledger recognise a card without keeping it."""
        return hmac_sha256(self.key, card_number.encode()).hex()[:32]

    def _values(self, s: Screening, fp: str | None) -> dict[str, str | None]:
        return {"card": fp, "email": s.email.lower() if s.email else None, "ip": s.ip,
                "merchant": s.merchant_id}

    def screen(self, s: Screening, now_s: float) -> Verdict:
        """Judge one charge and count it in the velocity windows (whatever the verdict)."""
        fp = self.fingerprint(s.card_number) if s.card_number else None
        verdict = Verdict(card_fingerprint=fp)
        if not self.cfg.enabled:
            return verdict
        deny_at = self.cfg.deny_above.get(s.currency)
        challenge_at = self.cfg.challenge_above.get(s.currency)
        if deny_at is not None and s.amount > deny_at:
            verdict.add("deny", f"amount_above:{deny_at}")
        elif challenge_at is not None and s.amount > challenge_at:
            verdict.add("challenge", f"amount_above:{challenge_at}")
        if fp is not None and fp in self.blocked_cards:
            verdict.add("deny", "blocked_card")
        if fp is not None and fp in self.challenged_cards:
            verdict.add("challenge", "challenged_card")
        if s.card_number is not None:
            for prefix in self.cfg.block_bins:
                if s.card_number.startswith(prefix):
                    verdict.add("deny", f"blocked_bin:{prefix}")
        if s.email and s.email.lower() in self.blocked_emails:
            verdict.add("deny", "blocked_email")
        if s.ip and s.ip in self.blocked_ips:
            verdict.add("deny", f"blocked_ip:{s.ip}")
        if s.card_number and s.country and self.cfg.country_mismatch != "off":
            issuer = self.card_country(s.card_number)
            if issuer is not None and issuer != s.country:
                verdict.add(self.cfg.country_mismatch,
                            f"country_mismatch:card={issuer},customer={s.country}")
        values = self._values(s, fp)
        for i, rule in enumerate(self.cfg.velocity):
            value = values.get(rule.key)
            if value is None:
                continue
            seen = self._window(i, value)
            while seen and seen[0] <= now_s - rule.window_s:
                seen.popleft()
            if len(seen) >= rule.count_max:
                verdict.add(rule.action,
                            f"velocity:{rule.key}:{rule.count_max}/{rule.window_s:g}s")
        self.record(s.merchant_id, fp, s.email, s.ip, now_s)
        return verdict

    def card_country(self, card_number: str) -> str | None:
        for prefix, country in self._bin_countries:
            if card_number.startswith(prefix):
                return country
        return None

    def _window(self, rule_index: int, value: str) -> deque[float]:
        key = (rule_index, value)
        seen = self._windows.get(key)
        if seen is None:
            seen = self._windows[key] = deque(maxlen=self.cfg.velocity[rule_index].count_max)
            while len(self._windows) > self.cfg.velocity_keys_max:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        return seen

    def record(self, merchant_id: str, card_fp: str | None, email: str | None, ip: str | None,
               at_s: float) -> None:
        values = {"card": card_fp, "email": email.lower() if email else None, "ip": ip,
                  "merchant": merchant_id}
        for i, rule in enumerate(self.cfg.velocity):
            value = values.get(rule.key)
            if value is not None:
                self._window(i, value).append(at_s)

    @property
    def tracked_keys(self) -> int:
        return len(self._windows)
