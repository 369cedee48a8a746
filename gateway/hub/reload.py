"""What a configuration reload (SIGHUP) changes: the pure part, with no I/O and no hub.

A running hub applies the ``merchants`` list of the re-read file: merchants added and
removed, their server keys (rotation), webhook URLs and per-merchant limits. Everything
else (listen address, ledger, certificates, banks, hub-wide limits and timers) is bound
at start-up to sockets, files and tasks, so a change there needs a restart: it is named in
a WARNING and the running value is kept (docs/operations.md "Reloading configuration").

The new merchants are validated against the *running* configuration (its webhook rules,
its timestamp window), not the file's, since those are the rules they will run under: a
webhook URL the running hub would refuse to deliver to is refused now, at reload, with the
old configuration kept whole.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gateway.config import ConfigError, HubConfig, MerchantConfig, to_dict

RELOADABLE = frozenset({"merchants"})
# Per-merchant settings applied on reload and what the INFO line calls a change of them.
_LIMITS = ("connections_max", "rate_per_s", "rate_burst", "nonce_entries_max")


@dataclass
class ReloadPlan:
    merchants: list[MerchantConfig]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    keys_changed: list[str] = field(default_factory=list)
    webhook_changed: list[str] = field(default_factory=list)
    limits_changed: list[str] = field(default_factory=list)
    # Top-level settings that differ from what the hub started with: kept, need a restart.
    not_applied: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """What changed, by merchant id and setting name only: never a key or a URL (a URL
        may carry a token in its path or query)."""
        parts = [f"{what} [{', '.join(ids)}]" for what, ids in (
            ("merchants added", self.added), ("merchants removed", self.removed),
            ("server keys changed", self.keys_changed),
            ("webhook_url changed", self.webhook_changed),
            ("limits changed", self.limits_changed)) if ids]
        return "; ".join(parts) if parts else "no change to merchants"


def plan(running: HubConfig, started: HubConfig, new: HubConfig) -> ReloadPlan:
    """The reload of ``new`` (the file as re-read, valid on its own) into a hub running
    ``running`` that was started from the file read as ``started``. Raises ``ConfigError``
    if the new merchants are not valid under the running configuration."""
    try:
        dataclasses.replace(running, merchants=new.merchants)  # __post_init__ validates
    except ConfigError as exc:
        raise ConfigError(f"{exc} (checked against the running configuration)") from None
    result = ReloadPlan(merchants=new.merchants)
    before = {m.id: m for m in running.merchants}
    after = {m.id: m for m in new.merchants}
    result.added = [m for m in after if m not in before]
    result.removed = [m for m in before if m not in after]
    for mid in after.keys() & before.keys():
        old, now = before[mid], after[mid]
        if old.server_keys() != now.server_keys():
            result.keys_changed.append(mid)
        if old.webhook_url != now.webhook_url:
            result.webhook_changed.append(mid)
        if any(getattr(old, name) != getattr(now, name) for name in _LIMITS):
            result.limits_changed.append(mid)
    for lst in (result.keys_changed, result.webhook_changed, result.limits_changed):
        lst.sort()
    # Compared with the file the hub started from, not with the running values: those carry
    # the command line's overrides (--listen, --ledger, ...), which are no change.
    result.not_applied = [f.name for f in dataclasses.fields(HubConfig)
                          if f.name not in RELOADABLE
                          and to_dict(getattr(started, f.name)) != to_dict(getattr(new, f.name))]
    return result
