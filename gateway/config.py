"""One typed, validated configuration object per process, loadable from TOML.

Every field has a documented default (``docs/configuration.md`` lists them). Unknown keys are
refused, for the same reason unknown request fields are: a misspelt limit silently ignored
is a limit that does not exist.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from protocol.signing import CURRENCY_EXPONENTS

C = TypeVar("C")

# The host names a plain-HTTP webhook may name when the lab opt-in is on: loopback only, so
# a notification and its signature header never cross a network in clear.
PLAIN_HTTP_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class ConfigError(Exception):
    pass


@dataclass
class MerchantConfig:
    id: str
    # The key the hub signs this merchant's webhooks with and accepts requests signed with.
    server_key: str
    webhook_url: str | None = None
    connections_max: int = 64
    rate_per_s: float = 20_000.0
    rate_burst: int = 40_000
    # This merchant's nonce space (remembered nonces, <= 192 bytes each). None: derived from
    # the rate limit and the hub's window (``HubConfig.nonce_entries_max``), so a merchant
    # within its rate is never refused by it. Set lower to cap memory; at least rate_burst.
    nonce_entries_max: int | None = None
    # Key rotation (docs/operations.md "Rotating a merchant's server key"): the key being
    # retired, still accepted on requests while the merchant's clients move to
    # ``server_key``; webhooks are signed with ``server_key`` only. At most two keys are
    # active, so a leaked old key has a known end: the reload that removes this line.
    previous_server_key: str | None = None

    def server_keys(self) -> tuple[str, ...]:
        """The keys a request may be signed with, the primary (newest) first."""
        if self.previous_server_key is None:
            return (self.server_key,)
        return (self.server_key, self.previous_server_key)

    def check_keys(self) -> None:
        """Non-empty, distinct keys: an empty key would sign requests anyone can forge, and
        the same key twice is a rotation that rotated nothing (most likely a copy slip)."""
        if not self.server_key:
            raise ConfigError(f"merchants[{self.id}].server_key is empty")
        if self.previous_server_key is not None:
            if not self.previous_server_key:
                raise ConfigError(f"merchants[{self.id}].previous_server_key is empty: "
                                  "remove the line when the rotation is over")
            if self.previous_server_key == self.server_key:
                raise ConfigError(f"merchants[{self.id}].previous_server_key is the same as "
                                  "server_key: set server_key to the new key")


@dataclass
class BankRoute:
    """One bank (or e-wallet provider node group) and how the hub reaches and routes to it."""

    name: str
    nodes: list[str]
    bins: list[str] = field(default_factory=list)
    virtual_account: bool = False
    providers: list[str] = field(default_factory=list)


@dataclass
class VelocityRule:
    """At most ``count_max`` charges per ``key`` value within ``window_s``; beyond: ``action``."""

    key: str  # card | email | ip | merchant
    window_s: float
    count_max: int
    action: str = "challenge"  # challenge | deny


@dataclass
class FraudConfig:
    enabled: bool = True
    # Per currency, in minor units: amounts above these are challenged / denied.
    challenge_above: dict[str, int] = field(default_factory=dict)
    deny_above: dict[str, int] = field(default_factory=dict)
    velocity: list[VelocityRule] = field(default_factory=list)
    block_cards: list[str] = field(default_factory=list)  # card numbers; kept only as hashes
    challenge_cards: list[str] = field(default_factory=list)  # likewise, held for review
    block_bins: list[str] = field(default_factory=list)
    block_emails: list[str] = field(default_factory=list)
    block_ips: list[str] = field(default_factory=list)
    # Card BIN prefix -> ISO 3166 country of the issuer, for the country mismatch rule.
    bin_countries: dict[str, str] = field(default_factory=dict)
    country_mismatch: str = "challenge"  # off | challenge | deny
    challenge_timeout_s: float = 86400.0
    velocity_keys_max: int = 100_000


@dataclass
class WebhookConfig:
    # Delay steps before retries 1..5 (Midtrans-like: 2, 10, 30, 90, 210 minutes); each retry
    # waits a uniform random time between the previous step and its own (jitter that grows).
    retry_schedule_s: list[float] = field(
        default_factory=lambda: [120.0, 600.0, 1800.0, 5400.0, 12600.0])
    time_scale: float = 1.0  # multiplies every delay; tests use ~0.001 to run in seconds
    client_error_attempts_max: int = 3  # 4xx and non-307/308 redirects
    timeout_s: float = 15.0
    concurrency_per_merchant: int = 8
    concurrency_max: int = 256
    poll_interval_s: float = 0.2
    # Redirects are never followed (a 3xx is a failed attempt, like a 4xx): following one
    # could carry the body and its signature header off HTTPS or to another host.
    # Lab opt-in: accept ``http://`` webhook URLs whose host is 127.0.0.1, ::1 or localhost.
    # Every other URL must be ``https://``; the check runs at config load and again before
    # each delivery (rows queued under an older configuration are refused, not sent).
    allow_plain_http_loopback: bool = False
    # Extra CA bundle to trust for HTTPS endpoints (private CAs in labs or internal
    # receivers); the system's trust store is used as well.
    ca_file: Path | None = None


@dataclass
class LedgerConfig:
    """``[ledger]``: where the hub keeps its ledger when it is not the SQLite file
    ``ledger_path`` (docs/configuration.md, docs/postgres.md)."""

    # postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?...]; None: SQLite at ledger_path.
    # A password may also come from PGPASSWORD or ~/.pgpass instead of this file.
    url: str | None = None
    connect_timeout_s: float = 10.0
    # A commit not answered by then has an unknown outcome: the hub stops (as when its
    # SQLite writer dies) and recovery settles it at the next start.
    commit_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"ledger.url: {self.url!r} must start with postgresql:// (the "
                              f"SQLite ledger is set by ledger_path)")
        for name in ("connect_timeout_s", "commit_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ledger.{name} must be positive")


@dataclass
class RetentionConfig:
    """``[retention]``: how long the hub keeps delivered webhooks and pushed events
    (docs/operations.md "Retention and the resume horizon"). Transactions are never deleted;
    nor is a webhook still pending or dead, nor an event a subscriber may still resume from."""

    enabled: bool = True
    # An event stays resumable (``events_since``) this long after it was recorded; older
    # ones are deleted, oldest first, unless their webhook is still pending.
    events_resume_horizon_s: float = 7 * 86400.0
    # A delivered webhook row is kept this long after its delivery (``webhooks list``).
    webhooks_delivered_keep_s: float = 7 * 86400.0
    sweep_interval_s: float = 300.0
    # Rows deleted per statement batch (of events, and of webhooks): a sweep is short
    # transactions, never one long lock; a full batch is followed at once by the next.
    sweep_rows_max: int = 5_000

    def __post_init__(self) -> None:
        if not self.events_resume_horizon_s >= RESUME_HORIZON_S_MIN:
            raise ConfigError(f"retention.events_resume_horizon_s must be at least "
                              f"{RESUME_HORIZON_S_MIN:g} s (a subscriber that reconnects "
                              f"after a short outage must find its events)")
        if not self.webhooks_delivered_keep_s >= 0:
            raise ConfigError("retention.webhooks_delivered_keep_s must be 0 or more")
        if not self.sweep_interval_s > 0:
            raise ConfigError("retention.sweep_interval_s must be positive")
        if not 1 <= self.sweep_rows_max <= SWEEP_ROWS_MAX_LIMIT:
            raise ConfigError(f"retention.sweep_rows_max must be 1..{SWEEP_ROWS_MAX_LIMIT}")


# The shortest resume horizon a hub accepts: below it a brief disconnection could already
# cost a subscriber its events (``paywire ledger prune`` may go lower, by hand).
RESUME_HORIZON_S_MIN = 60.0
SWEEP_ROWS_MAX_LIMIT = 100_000


@dataclass
class HubConfig:
    node_id: str = "hub"
    listen_host: str = "127.0.0.1"
    listen_port: int = 7400
    certs_dir: Path = Path("certs")
    ledger_path: Path = Path("paywire-ledger.db")
    ledger_synchronous: str = "FULL"
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    # The deployment's keys (link, card fingerprints, idempotency hashes): a 0600 file made
    # by `paywire secrets init`; the node refuses to start without it (gateway/secret_keys.py).
    secrets_file: Path = Path("paywire-secrets.toml")
    link_key: str | None = None  # no longer read: refused if set (it was a public default)
    merchants: list[MerchantConfig] = field(default_factory=list)
    banks: list[BankRoute] = field(default_factory=list)
    body_bytes_max: int = 64 * 1024
    in_flight_max: int = 256
    heartbeat_interval_s: float = 5.0
    tls_handshake_timeout_s: float = 5.0
    hello_timeout_s: float = 5.0
    timestamp_window_s: float = 300.0
    bank_timeout_s: float = 5.0
    bank_calls_queued_max: int = 20_000
    bank_retry_attempts_max: int = 3
    pending_expiry_default_s: int = 24 * 3600
    expiry_check_interval_s: float = 0.5
    recovery_interval_s: float = 1.0
    # How long start-up waits for the settling of unanswered bank calls before serving; what
    # is not settled by then stays marked unresolved and is settled in the background.
    recovery_at_start_s: float = 20.0
    ledger_queue_writes_max: int = 50_000
    shutdown_grace_s: float = 10.0
    cache_entries_max: int = 20_000
    event_replay_batch_max: int = 1000
    event_buffer_bytes_max: int = 4 * 1024 * 1024
    # ISO 4217 codes a charge may use; others get INVALID_FIELD on ``args.currency``. Each
    # must be one whose minor-unit exponent the hub knows (``protocol.signing``), since the
    # webhook ``gross_amount`` string (and so ``signature_key``) depends on it.
    currencies: list[str] = field(default_factory=lambda: list(CURRENCY_EXPONENTS))
    fraud: FraudConfig = field(default_factory=FraudConfig)
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    # Plaintext lab mode (labs 1 and 3): an extra merchant listener WITHOUT TLS, "HOST:PORT"
    # on loopback only (e.g. "127.0.0.1:7410"); None (default) opens none. Anything but a
    # loopback IP literal is refused at load (PLAINTEXT_NOT_LOOPBACK).
    plaintext_listen: str | None = None
    # The health/readiness endpoint a load balancer probes (gateway/health.py): plain HTTP,
    # "HOST:PORT"; None (default) opens none. With ``paywire hub --workers N``, worker i
    # listens on PORT + i.
    health_listen: str | None = None
    # Logging (docs/configuration.md "Logging"): used when neither ``--log-level`` /
    # ``--log-format`` nor PAYWIRE_LOG_LEVEL / PAYWIRE_LOG_FORMAT is given.
    log_level: str | None = None  # DEBUG, INFO, WARNING, ERROR
    log_format: str | None = None  # "json" or "text"

    def __post_init__(self) -> None:
        if self.log_level is not None and self.log_level.upper() not in (
                "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"log_level: {self.log_level!r} is not DEBUG, INFO, WARNING or "
                              "ERROR")
        if self.log_format is not None and self.log_format not in ("json", "text"):
            raise ConfigError(f"log_format: {self.log_format!r} is not \"json\" or \"text\"")
        if self.plaintext_listen is not None:
            check_plaintext_listen(self.plaintext_listen)
        if self.health_listen is not None:
            check_health_listen(self.health_listen)
        seen_ids: set[str] = set()
        for m in self.merchants:
            if m.id in seen_ids:
                raise ConfigError(f"merchant {m.id!r} is configured twice")
            seen_ids.add(m.id)
            m.check_keys()
            if m.nonce_entries_max is not None and m.nonce_entries_max < m.rate_burst:
                # A burst the rate limit admits would then be refused by the nonce space.
                raise ConfigError(f"merchant {m.id}: nonce_entries_max "
                                  f"({m.nonce_entries_max}) must be at least rate_burst "
                                  f"({m.rate_burst})")
            if m.webhook_url is not None:
                problem = webhook_url_problem(m.webhook_url,
                                              self.webhooks.allow_plain_http_loopback)
                if problem is not None:
                    raise ConfigError(f"merchants[{m.id}].webhook_url: {problem}")
        check_currencies(self.currencies, "currencies")
        check_recovery_bound(self)
        for route in self.banks:
            for node in route.nodes:
                check_bank_node_address(route.name, node)

    def merchant(self, merchant_id: str) -> MerchantConfig | None:
        for m in self.merchants:
            if m.id == merchant_id:
                return m
        return None

    def nonce_entries_max(self, m: MerchantConfig) -> int:
        """The size of merchant ``m``'s nonce space: its own setting, or every nonce its
        rate limit can admit while one is remembered (a nonce lives up to 2 * the window
        + 1 s: its timestamp may be a window ahead), so the bound never refuses a merchant
        within its rate. Memory: this * ``NONCE_ENTRY_BYTES`` (192) bytes at most."""
        if m.nonce_entries_max is not None:
            return m.nonce_entries_max
        return m.rate_burst + math.ceil(m.rate_per_s * (2 * self.timestamp_window_s + 1))


def check_plaintext_listen(value: str) -> None:
    """``plaintext_listen`` must be a loopback ``HOST:PORT`` (gateway/net/plaintext.py)."""
    from gateway.net.plaintext import parse_listen

    try:
        parse_listen(value)
    except ValueError as exc:  # PlaintextRefused included
        raise ConfigError(f"plaintext_listen: {exc}") from None


def check_health_listen(value: str) -> None:
    """``health_listen`` must be ``HOST:PORT`` (gateway/health.py)."""
    from gateway.health import parse_listen

    try:
        parse_listen(value)
    except ValueError as exc:
        raise ConfigError(f"health_listen: {exc}") from None


_NODE_ADDRESS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,63}@[^@\s]+:[0-9]{1,5}")


def check_bank_node_address(bank: str, node: str) -> None:
    """A bank node is configured as ``NODE@HOST:PORT``: the hub refuses a link whose
    certificate does not name NODE, so a genuine node of another bank that answers at this
    address (a moved port, a hostile host) cannot approve this bank's charges or report
    payments for it. The address alone would prove only that *some* bank answered."""
    if not _NODE_ADDRESS.fullmatch(node):
        raise ConfigError(f"banks[{bank}].nodes: {node!r} must name the node whose "
                          f"certificate it serves, as NODE@HOST:PORT (e.g. "
                          f"'{bank}-1@127.0.0.1:7501')")


def check_recovery_bound(cfg: HubConfig) -> None:
    """The start-up recovery bound must outlast one inquiry through every bank attempt
    (``bank_timeout_s`` x ``bank_retry_attempts_max``): with less, a merely slow bank could
    never be settled before serving. A longer recovery never stops the hub from starting;
    it continues in the background (``docs/reliability.md``)."""
    one_inquiry_s = cfg.bank_timeout_s * cfg.bank_retry_attempts_max
    if not cfg.recovery_at_start_s > one_inquiry_s:
        raise ConfigError(
            f"recovery_at_start_s ({cfg.recovery_at_start_s:g}) must exceed bank_timeout_s "
            f"x bank_retry_attempts_max ({cfg.bank_timeout_s:g} x "
            f"{cfg.bank_retry_attempts_max} = {one_inquiry_s:g} s), the time one inquiry "
            "to an unresponsive bank takes")


@dataclass
class BankNodeConfig:
    node_id: str = "bank-a-1"
    bank: str = "bank-a"
    listen_host: str = "127.0.0.1"
    listen_port: int = 7500
    certs_dir: Path = Path("certs")
    store_path: Path = Path("paywire-bank.db")
    store_synchronous: str = "FULL"
    secrets_file: Path = Path("paywire-secrets.toml")  # only its link_key is read
    link_key: str | None = None  # no longer read: refused if set (it was a public default)
    # Opening balances in minor units, by account id (card number, or "payer"/"settlement").
    accounts: dict[str, int] = field(default_factory=dict)
    # The currency the bank keeps its accounts in (and the one ``payer``/``settlement`` use);
    # an operation in another currency is declined. ``account_currencies`` overrides it per
    # account (e.g. a USD card at an IDR bank).
    currency: str = "IDR"
    account_currencies: dict[str, str] = field(default_factory=dict)
    va_prefix: str = "8808"
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    failure_rate: float = 0.0
    # Simulated customers: pay open virtual accounts / e-wallet requests after this delay;
    # only this share of them pays (the rest expire). None disables automatic payment.
    auto_pay_after_s: float | None = None
    auto_pay_ratio: float = 1.0
    notify_retry_interval_s: float = 1.0
    heartbeat_interval_s: float = 5.0
    hello_timeout_s: float = 5.0  # as the hub's: HANDSHAKE_TIMEOUT after it
    seed: int = 0
    # ``HOST:PORT`` of the node's /healthz, /readyz and /metrics (plain HTTP), as the hub's.
    health_listen: str | None = None

    def __post_init__(self) -> None:
        if self.health_listen is not None:
            check_health_listen(self.health_listen)
        check_currencies([self.currency], "currency")
        for account, code in self.account_currencies.items():
            check_currencies([code], f"account_currencies.{account}")


def webhook_url_problem(url: str, allow_plain_http_loopback: bool) -> str | None:
    """Why ``url`` may not receive webhooks, or ``None`` if it may.

    Notifications carry card and payment details and a signature header a replay would reuse,
    so they travel over HTTPS only; plain HTTP only to loopback, and only when a lab opts in.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    scheme = parts.scheme.lower()
    if not host:
        return f"{url!r} names no host"
    if scheme == "https":
        return None
    if scheme != "http":
        return f"{url!r}: only https:// webhook URLs are allowed"
    if not allow_plain_http_loopback:
        return (f"{url!r} is plain HTTP: notifications and their signatures would travel in "
                f"clear; use https:// (for a lab on loopback only, set "
                f"webhooks.allow_plain_http_loopback = true)")
    if _loopback_name(host):
        return None
    return (f"{url!r}: webhooks.allow_plain_http_loopback allows plain HTTP only to "
            f"{', '.join(sorted(PLAIN_HTTP_LOOPBACK_HOSTS))}")


def _loopback_name(host: str) -> bool:
    if host.lower() in PLAIN_HTTP_LOOPBACK_HOSTS:
        return True
    try:
        return str(ipaddress.ip_address(host)) in PLAIN_HTTP_LOOPBACK_HOSTS
    except ValueError:
        return False


def check_currencies(codes: list[str], where: str) -> None:
    """Every code must be an ISO 4217 code whose minor-unit exponent we know."""
    if not codes:
        raise ConfigError(f"{where}: at least one currency is needed")
    for code in codes:
        if code not in CURRENCY_EXPONENTS:
            raise ConfigError(f"{where}: {code!r} is not a supported ISO 4217 currency "
                              f"(known: {', '.join(sorted(CURRENCY_EXPONENTS))})")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path string")
        return Path(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number")
        return float(value)
    if tp in (int, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def from_dict(cls: type[C], data: Any, where: str = "config") -> C:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """The inverse of ``from_dict``, for writing TOML and for passing to child processes."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if getattr(obj, f.name) is not None}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load(cls: type[C], path: Path) -> C:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return from_dict(cls, data, str(path))


def dump_toml(obj: Any) -> str:
    """A TOML writer for the shapes our configs have: scalars, arrays, nested tables and
    arrays of tables."""
    lines: list[str] = []
    _emit(to_dict(obj), [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def _emit(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    for key, value in table.items():
        if not isinstance(value, dict) and not _is_table_list(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        dotted = ".".join(_toml_key(p) for p in [*path, key])
        if isinstance(value, dict):
            lines.append(f"\n[{dotted}]")
            _emit(value, [*path, key], lines)
        elif _is_table_list(value):
            for item in value:
                lines.append(f"\n[[{dotted}]]")
                _emit(item, [*path, key], lines)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} as TOML")
