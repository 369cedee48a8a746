"""A whole deployment on this machine: dev PKI, secrets, bank nodes and a hub as child processes.

Shared by ``paywire demo`` (which drives traffic through it and tears it down) and
``paywire sandbox`` (which keeps it up for people to experiment against). Both plan the
same banks (``plan_banks``: two nodes for ``bca``, one for ``bni``, an e-wallet node) and
start them with ``start_deployment``; what differs (ports, merchants, fraud rules, whether
simulated customers pay on their own) is passed in.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway import pki, secret_keys
from gateway.config import (
    BankNodeConfig,
    BankRoute,
    FraudConfig,
    HubConfig,
    LedgerConfig,
    MerchantConfig,
    WebhookConfig,
)
from gateway.processes import NodeProcess

# What the demo's and the sandbox's card accounts open with, in IDR (zero decimals).
RICH_OPENING = 50_000_000
POOR_OPENING = 1_000
STOP_TIMEOUT_S = 15.0  # a hub's drain after SIGTERM (as NodeProcess.terminate), then SIGKILL


def luhn_complete(prefix: str, length: int = 16) -> str:
    """Append the check digit that makes ``prefix`` (padded) a valid card number."""
    body = prefix.ljust(length - 1, "0")
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)


@dataclass(frozen=True)
class HubPlan:
    """One hub of a deployment: its node id (and certificate name), merchant port and health
    port (0: ephemeral; None: no health endpoint)."""

    name: str
    port: int = 0
    health_port: int | None = None


@dataclass
class BankPlan:
    """One bank (or e-wallet provider group): its nodes, what routes to it, its accounts."""

    name: str
    nodes: list[str]
    bins: list[str] = field(default_factory=list)
    va: bool = False
    providers: list[str] = field(default_factory=list)
    rich_cards: list[str] = field(default_factory=list)
    poor_cards: list[str] = field(default_factory=list)
    rich_opening: int = RICH_OPENING
    poor_opening: int = POOR_OPENING

    def accounts(self) -> dict[str, int]:
        """Opening balances of the card accounts (the books keep them once created)."""
        opening = {c: self.rich_opening for c in self.rich_cards}
        opening.update({c: self.poor_opening for c in self.poor_cards})
        return opening


def plan_banks() -> list[BankPlan]:
    """``bca`` (two nodes sharing one set of books), ``bni`` and an e-wallet node."""
    bca = BankPlan("bca", ["bca-1", "bca-2"], bins=["4811"], va=True)
    bni = BankPlan("bni", ["bni-1"], bins=["5211"], va=True)
    wallet = BankPlan("wallet", ["wallet-1"], providers=["gopay", "shopeepay"])
    for bank in (bca, bni):
        prefix = bank.bins[0]
        bank.rich_cards = [luhn_complete(f"{prefix}{i:06d}") for i in range(1, 41)]
        bank.poor_cards = [luhn_complete(f"{prefix}9{i:05d}") for i in range(1, 6)]
    return [bca, bni, wallet]


def ensure_keys(workdir: Path, banks: list[BankPlan], merchants: list[str],
                hubs: Sequence[str] = ("hub",)) -> tuple[Path, Path]:
    """The deployment's certificates (``workdir/certs``, CA key in ``workdir/certs-ca``) and
    secrets file, created where missing and kept where present: a second start reuses the
    CA and the keys. ``hubs``: the hubs' node ids (a certificate each; ``hub`` is always
    issued, ``paywire bank-admin`` dials bank nodes with it). Returns (certs directory,
    secrets file)."""
    certs = workdir / "certs"
    node_names = [n for b in banks for n in b.nodes]
    if not (certs / "ca.crt").exists():
        pki.init(certs, merchants=merchants, banks=node_names)
    # A directory made by an older plan (or for one hub) may lack a node, a hub or a
    # merchant: issue only those.
    wanted = [("hub", "hub"), *(("hub", h) for h in hubs),
              *(("bank", n) for n in node_names),
              *(("merchant", m) for m in merchants)]
    for role, name in wanted:
        if not pki.cert_paths(certs, role, name).cert.exists():
            pki.issue(certs, role, name)
    # The deployment's own random keys (link, fingerprints, idempotency): no built-in key.
    secrets_file = workdir / "paywire-secrets.toml"
    if not secrets_file.exists():
        secret_keys.init(secrets_file)
    return certs, secrets_file


@dataclass
class Deployment:
    """What ``start_deployment`` started: the bank node processes (plan order) and the hub
    (the first of ``hubs``: several share a PostgreSQL ledger)."""

    banks: list[NodeProcess]
    hub: NodeProcess
    routes: list[BankRoute]
    hubs: list[NodeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.hubs:
            self.hubs = [self.hub]

    def stop(self) -> dict[str, int | None]:
        """Stop the hubs first (they drain their bank calls), then the bank nodes; each gets
        SIGTERM, then SIGKILL if it does not exit in time. Returns each one's exit code."""
        codes: dict[str, int | None] = {}
        for hub in self.hubs:  # all draining at once: one grace period, not one per hub
            if hub.alive:
                assert hub.proc is not None
                hub.proc.terminate()
        for hub in self.hubs:
            codes[hub.name] = _wait_stopped(hub)
        for proc in self.banks:
            codes[proc.name] = proc.terminate()
        return codes


def _wait_stopped(proc: NodeProcess, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """Wait for a node already sent SIGTERM (a second one would kill it mid-drain); SIGKILL
    if it does not exit in time."""
    if proc.proc is None:
        return None
    try:
        return proc.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.proc.kill()
        return proc.proc.wait(STOP_TIMEOUT_S)


def start_deployment(workdir: Path, banks: list[BankPlan], *,
                     merchants: list[MerchantConfig], fraud: FraudConfig,
                     webhooks: WebhookConfig, hub_port: int = 0,
                     bank_ports: Mapping[str, int] | None = None,
                     auto_pay_after_s: float | None = None, auto_pay_ratio: float = 1.0,
                     expiry_check_interval_s: float = 0.5,
                     hub_plaintext_port: int | None = None, keys_dir: Path | None = None,
                     hubs: Sequence[HubPlan] = (), ledger_url: str | None = None
                     ) -> Deployment:
    """Start every bank node, then the hub, each as a child process, and wait until each
    listens. ``hub_port`` and ``bank_ports`` (by node name) 0 or absent: ephemeral ports.
    ``auto_pay_after_s``: simulated customers pay ``auto_pay_ratio`` of the virtual accounts
    and e-wallet requests after about that long (None: only ``paywire bank-admin pay``).
    ``hub_plaintext_port`` (0: ephemeral): the hub also opens its plaintext lab listener on
    127.0.0.1 (``gateway/net/plaintext.py``); the bound port is in
    ``hub.ready_info["plaintext_port"]``.
    ``keys_dir`` (default ``workdir``): where the certificates and the secrets file are,
    when the nodes' configs, logs and books go elsewhere. ``hubs`` (default: one hub named
    ``hub`` on ``hub_port``): several hubs, each with its health endpoint, on the PostgreSQL
    ledger ``ledger_url`` (None: SQLite ``workdir/ledger.db``, one hub only).
    If any node fails to start, the ones already started are stopped before raising."""
    plans = list(hubs) or [HubPlan("hub", hub_port)]
    if len(plans) > 1 and ledger_url is None:
        raise ValueError("several hubs need a PostgreSQL ledger (ledger_url)")
    certs, secrets_file = ensure_keys(keys_dir or workdir, banks, [m.id for m in merchants],
                                      [p.name for p in plans])
    ports = bank_ports or {}
    started: list[NodeProcess] = []
    try:
        routes: list[BankRoute] = []
        for bank in banks:
            accounts = bank.accounts()
            addresses: list[str] = []
            for node in bank.nodes:
                cfg = BankNodeConfig(
                    node_id=node, bank=bank.name, listen_port=ports.get(node, 0),
                    certs_dir=certs, store_path=workdir / f"{bank.name}.db",
                    secrets_file=secrets_file, accounts=accounts,
                    auto_pay_after_s=auto_pay_after_s,
                    auto_pay_ratio=auto_pay_ratio, seed=hash(node) & 0xFFFF)
                proc = NodeProcess("bank", cfg, workdir, node).start()
                started.append(proc)
                # Nodes of one bank share its books; start them one by one so the first
                # creates the schema before the second opens it.
                addresses.append(f"{node}@127.0.0.1:{proc.wait_ready()}")
            routes.append(BankRoute(bank.name, addresses, bins=bank.bins,
                                    virtual_account=bank.va, providers=bank.providers))
        hub_procs: list[NodeProcess] = []
        for plan in plans:
            hub_cfg = HubConfig(
                node_id=plan.name, listen_port=plan.port, certs_dir=certs,
                ledger_path=workdir / "ledger.db", secrets_file=secrets_file,
                merchants=merchants, banks=routes,
                expiry_check_interval_s=expiry_check_interval_s, fraud=fraud,
                webhooks=webhooks,
                plaintext_listen=None if hub_plaintext_port is None
                else f"127.0.0.1:{hub_plaintext_port}",
                ledger=LedgerConfig(url=ledger_url),
                health_listen=None if plan.health_port is None
                else f"127.0.0.1:{plan.health_port}")
            # One by one: the first hub on a new PostgreSQL ledger creates its schema.
            hub = NodeProcess("hub", hub_cfg, workdir, plan.name).start()
            started.append(hub)
            hub_procs.append(hub)
            hub.wait_ready()
    except BaseException:
        for proc in reversed(started):
            proc.terminate()
        raise
    return Deployment(started[:-len(hub_procs)], hub_procs[0], routes, hub_procs)
