"""A deployment of bank nodes and a hub as real processes on loopback, for tests."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway import pki, secret_keys
from gateway.cli import bank_admin_call
from gateway.client import Client, connect
from gateway.config import BankNodeConfig, BankRoute, HubConfig, MerchantConfig
from gateway.demo import luhn_complete
from gateway.processes import READY_TIMEOUT_S, NodeProcess

KEYS = {"M1": "sk-M1-test", "M2": "sk-M2-test"}
RICH = [luhn_complete(f"4811{i:06d}") for i in range(1, 31)]
POOR = luhn_complete("4811900001")
BNI_CARDS = [luhn_complete(f"5211{i:06d}") for i in range(1, 11)]
OPENING = 1_000_000_000


class Deployment:
    def __init__(self, workdir: Path, *, bca_nodes: int = 2, hub_overrides: dict[str, Any]
                 | None = None, bank_overrides: dict[str, Any] | None = None,
                 webhook_urls: dict[str, str] | None = None,
                 merchant_overrides: dict[str, dict[str, Any]] | None = None,
                 bank_address: Callable[[str, int], int] | None = None) -> None:
        self.webhook_urls = webhook_urls or {}
        self.merchant_overrides = merchant_overrides or {}
        # Maps (bank, node port) to the port the hub should dial (e.g. a chaos proxy's).
        self.bank_address = bank_address or (lambda bank, port: port)
        self.workdir = workdir
        self.certs = workdir / "certs"
        self.secrets = workdir / "paywire-secrets.toml"  # its own keys, like a deployment
        self.bca_nodes = [f"bca-{i}" for i in range(1, bca_nodes + 1)]
        self.hub_overrides = hub_overrides or {}
        self.bank_overrides = bank_overrides or {}
        self.banks: dict[str, list[NodeProcess]] = {}
        self.hub: NodeProcess | None = None
        self.hub_cfg: HubConfig | None = None

    def start(self) -> Deployment:
        if not (self.certs / "ca.crt").exists():
            pki.init(self.certs, merchants=list(KEYS), banks=[*self.bca_nodes, "bni-1",
                                                               "wallet-1"])
        if not self.secrets.exists():
            secret_keys.init(self.secrets)
        plan = {
            "bca": (self.bca_nodes, {**{c: OPENING for c in RICH}, POOR: 1_000}),
            "bni": (["bni-1"], {c: OPENING for c in BNI_CARDS}),
            "wallet": (["wallet-1"], {}),
        }
        routes = []
        for bank, (nodes, accounts) in plan.items():
            procs = []
            for node in nodes:
                cfg = BankNodeConfig(node_id=node, bank=bank, listen_port=0,
                                     certs_dir=self.certs, store_path=self.workdir / f"{bank}.db",
                                     secrets_file=self.secrets,
                                     accounts=accounts, heartbeat_interval_s=1.0,
                                     **self.bank_overrides)
                proc = NodeProcess("bank", cfg, self.workdir, node).start()
                proc.wait_ready()
                procs.append(proc)
            self.banks[bank] = procs
            routes.append(BankRoute(bank, [f"{node}@127.0.0.1:{self.bank_address(bank, p.port)}"
                                           for node, p in zip(nodes, procs, strict=True)],
                                    bins={"bca": ["4811"], "bni": ["5211"]}.get(bank, []),
                                    virtual_account=bank != "wallet",
                                    providers=["gopay"] if bank == "wallet" else []))
        self.hub_cfg = HubConfig(
            listen_port=0, certs_dir=self.certs, ledger_path=self.workdir / "ledger.db",
            secrets_file=self.secrets,
            merchants=[MerchantConfig(m, k, webhook_url=self.webhook_urls.get(m),
                                      **self.merchant_overrides.get(m, {}))
                       for m, k in KEYS.items()], banks=routes,
            **{"expiry_check_interval_s": 0.1, "recovery_interval_s": 0.3,
               "bank_timeout_s": 2.0, **self.hub_overrides})
        self.start_hub()
        return self

    def start_hub(self, ready_timeout_s: float = READY_TIMEOUT_S) -> int:
        """Start (or restart) the hub; a restart listens on the same port as before."""
        assert self.hub_cfg is not None
        self.hub = NodeProcess("hub", self.hub_cfg, self.workdir, "hub").start()
        port = self.hub.wait_ready(ready_timeout_s)
        self.hub_cfg.listen_port = port
        return port

    async def astart(self) -> Deployment:
        """``start`` without blocking the event loop (in-process proxies keep serving)."""
        await asyncio.get_running_loop().run_in_executor(None, self.start)
        return self

    async def arestart_hub(self, ready_timeout_s: float = READY_TIMEOUT_S) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, self.start_hub,
                                                                ready_timeout_s)

    def bank_paths(self) -> dict[str, Path]:
        return {bank: self.workdir / f"{bank}.db" for bank in self.banks}

    def audit(self, acks: list[dict[str, Any]] | None = None) -> Any:
        from gateway.audit import audit

        return audit(self.workdir / "ledger.db", self.bank_paths(), acks)

    def stop(self) -> None:
        if self.hub is not None:
            self.hub.terminate()
        for procs in self.banks.values():
            for p in procs:
                p.terminate()

    @property
    def port(self) -> int:
        assert self.hub is not None
        return self.hub.port

    def client(self, merchant: str = "M1", **options: Any) -> Client:
        return connect("127.0.0.1", self.port, merchant_id=merchant, server_key=KEYS[merchant],
                       certs_dir=self.certs, **options)

    async def admin(self, bank: str, op: str, args: dict[str, Any] | None = None,
                    node: int = 0) -> dict[str, Any]:
        proc = self.banks[bank][node]
        return await bank_admin_call(f"127.0.0.1:{proc.port}", self.certs, "hub",
                                     secret_keys.load_link_key(self.secrets), op, args or {})

    async def stats(self, bank: str, node: int = 0) -> dict[str, dict[str, int]]:
        """A bank node's counters of operations received and applied (``admin.stats``)."""
        return await self.admin(bank, "admin.stats", node=node)

    async def received(self, bank: str, op: str, node: int = 0) -> int:
        """How many ``op`` requests the node has received (``bank.authorize``, ...)."""
        return int((await self.stats(bank, node))["received"].get(op, 0))

    async def applied(self, bank: str, op: str, node: int = 0) -> int:
        """How many ``op`` requests the node has applied to its books and answered."""
        return int((await self.stats(bank, node))["applied"].get(op, 0))

    async def balance(self, bank: str, account: str) -> tuple[int, int]:
        balances = (await self.admin(bank, "admin.balances"))["balances"]
        return balances[account][0], balances[account][1]

    def bank_sql(self, bank: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = sqlite3.connect(self.workdir / f"{bank}.db")
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def ledger_sql(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = sqlite3.connect(self.workdir / "ledger.db")
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@contextmanager
def deployment(workdir: Path, **options: Any) -> Iterator[Deployment]:
    dep = Deployment(workdir, **options)
    try:
        yield dep.start()
    finally:
        dep.stop()


def ack(tx: Any) -> dict[str, Any]:
    """What a client was told, in the form ``paywire audit --acks`` reads."""
    return {"merchant_id": tx.merchant_id, "order_id": tx.order_id,
            "transaction_id": tx.transaction_id, "transaction_status": tx.transaction_status}
