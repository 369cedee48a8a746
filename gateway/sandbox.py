"""``paywire sandbox``: a deployment that stays up, to try the client library and run labs.

One command writes (or reuses) everything a deployment needs in one directory — a dev CA
and certificates, the deployment's secrets, merchants with their server keys, node configs,
the ledger and the banks' books — and starts a hub, the banks of ``plan_banks`` (``bca``
with two nodes sharing its books, ``bni``, an e-wallet node) and a webhook receiver that
verifies every notification the way the README tells merchants to. It prints test cards
that really behave as labelled, the merchants' credentials, the ports, a Python snippet
and the CLI's environment, then serves until SIGINT (Ctrl-C) or SIGTERM and stops
everything.

Machine-readable contract (labs and tests read it; ``docs/configuration.md``): once every
node answers, ``DIR/sandbox.env`` (``export NAME=value`` lines, values shell-quoted) and
``DIR/sandbox.json`` are written atomically, ``sandbox.json`` last (its appearance means
both are ready); both are removed on stop. A second start on the
same directory keeps the CA, the keys, the merchants, the ledger and the books.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import shlex
import signal
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.config import FraudConfig, MerchantConfig, WebhookConfig
from gateway.deployment import (
    BankPlan,
    Deployment,
    luhn_complete,
    plan_banks,
    start_deployment,
)
from gateway.processes import open_private

SANDBOX_DIR_DEFAULT = Path("sandbox")
SANDBOX_PORT_DEFAULT = 7400  # the README's hub port
# With a fixed hub port P the bank nodes listen on P+1.. in plan order and the receiver on
# the next port, so the printed addresses stay the same from one start to the next.
PORTS_AFTER_HUB = 5
# The hub's plaintext lab listener (no TLS, 127.0.0.1 only; gateway/net/plaintext.py), after
# the receiver: lab 3 captures frames in clear on it before it captures the TLS port.
PLAINTEXT_PORT_OFFSET = PORTS_AFTER_HUB + 1
ENV_FILE = "sandbox.env"
JSON_FILE = "sandbox.json"
MERCHANTS_FILE = "merchants.toml"
WEBHOOK_LOG = "webhooks.log"
SANDBOX_FORMAT_VERSION = 1  # of sandbox.json: bumped if a field changes meaning
MERCHANT_IDS = ("M1", "M2")  # M1 is the one the environment and the snippet use
SERVER_KEY_BYTES = 24
# The README's receiver: reject a signature timestamp further than this from our clock.
WEBHOOK_TOLERANCE_S = 300
WEBHOOK_BODY_BYTES_MAX = 64 * 1024  # a notification is ~1 KB; more is not one
LOG_FIELD_CHARS_MAX = 80  # an order id is at most 64
PROBE_TIMEOUT_S = 30.0  # for the hub and every bank node to answer after they listen
PROBE_POLL_S = 0.02
CHILD_POLL_S = 1.0  # how often the sandbox looks for a node that died
EXPIRY = (12, 2030)
CVV = "123"
# The issuer's and the fraud screen's limits the test cards are labelled with (IDR).
CHALLENGE_ABOVE_IDR = 10_000_000
DENY_ABOVE_IDR = 100_000_000
BLOCKED_EMAIL = "fraudster@example.com"
# The approved cards could not be drained by hand: a trillion rupiah each.
SANDBOX_RICH_OPENING = 1_000_000_000_000

APPROVED = "4811111111111114"  # the README's card
APPROVED_BNI = luhn_complete("521111111111111")
DECLINED = luhn_complete("481122222222222")  # routed to bca, no account there
NO_FUNDS = luhn_complete("481133333333333")
CHALLENGED = luhn_complete("481144444444444")
FRAUD_DENIED = luhn_complete("481155555555555")


@dataclass(frozen=True)
class SandboxCard:
    """A test card and what a charge with it (amount up to ``CHALLENGE_ABOVE_IDR``, default
    capture) is answered: ``expect`` holds fields of the transaction."""

    name: str
    number: str
    exp_month: int
    exp_year: int
    cvv: str
    bank: str
    expect: dict[str, str]
    note: str


def sandbox_cards() -> list[SandboxCard]:
    month, year = EXPIRY
    return [
        SandboxCard("approved", APPROVED, month, year, CVV, "bca",
                    {"transaction_status": "capture", "fraud_status": "accept"},
                    "approved and captured by bca"),
        SandboxCard("approved_other_bank", APPROVED_BNI, month, year, CVV, "bni",
                    {"transaction_status": "capture", "fraud_status": "accept"},
                    "approved and captured by bni"),
        SandboxCard("declined", DECLINED, month, year, CVV, "bca",
                    {"transaction_status": "deny", "fraud_status": "accept",
                     "decline_reason": "card account unknown to the issuer"},
                    "declined by the issuer: no such account at bca"),
        SandboxCard("insufficient_funds", NO_FUNDS, month, year, CVV, "bca",
                    {"transaction_status": "deny", "fraud_status": "accept",
                     "decline_reason": "insufficient funds"},
                    "declined by the issuer: the account holds 1,000 IDR"),
        SandboxCard("challenged", CHALLENGED, month, year, CVV, "bca",
                    {"transaction_status": "authorize", "fraud_status": "challenge"},
                    "held for review by the fraud screen (authorized, not captured): "
                    "approve or deny it"),
        SandboxCard("fraud_denied", FRAUD_DENIED, month, year, CVV, "bca",
                    {"transaction_status": "deny", "fraud_status": "deny",
                     "decline_reason": "denied by fraud screening"},
                    "denied by the fraud screen (blocked card); no bank call"),
        SandboxCard("expired", APPROVED, 1, 2020, CVV, "bca",
                    {"transaction_status": "deny", "fraud_status": "accept",
                     "decline_reason": "card expired (01/2020)"},
                    "the approved card with expiry 01/2020: declined by the issuer"),
    ]


def sandbox_banks() -> list[BankPlan]:
    """The demo's banks, plus the test cards' accounts (``DECLINED`` has none on purpose)."""
    banks = {b.name: b for b in plan_banks()}
    banks["bca"].rich_cards += [APPROVED, CHALLENGED, FRAUD_DENIED]
    banks["bca"].poor_cards += [NO_FUNDS]
    banks["bni"].rich_cards += [APPROVED_BNI]
    for bank in banks.values():
        bank.rich_opening = SANDBOX_RICH_OPENING
    return list(banks.values())


def sandbox_fraud() -> FraudConfig:
    return FraudConfig(challenge_above={"IDR": CHALLENGE_ABOVE_IDR},
                       deny_above={"IDR": DENY_ABOVE_IDR}, block_emails=[BLOCKED_EMAIL],
                       block_cards=[FRAUD_DENIED], challenge_cards=[CHALLENGED])


def sandbox_webhooks() -> WebhookConfig:
    # The receiver is on loopback in clear (the lab opt-in); retries follow the production
    # schedule's numbers in seconds instead of minutes, so a lab can watch them happen.
    return WebhookConfig(retry_schedule_s=[2.0, 10.0, 30.0, 90.0, 210.0],
                         poll_interval_s=0.05, allow_plain_http_loopback=True)


class SandboxError(Exception):
    """The sandbox cannot start; the message says why and what to do."""


def load_or_create_merchants(path: Path) -> dict[str, str]:
    """The sandbox's merchants and server keys: created once (random keys, 0600 file),
    then read back, so a second start keeps them."""
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
            keys = {str(m["id"]): str(m["server_key"]) for m in data["merchants"]}
        except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
            raise SandboxError(f"{path} is not a sandbox merchants file ({exc}); "
                               "remove it to create new merchants") from None
        if all(m in keys for m in MERCHANT_IDS):
            return keys
    else:
        keys = {}
    for m in MERCHANT_IDS:
        keys.setdefault(m, f"SB-{m}-{secrets.token_hex(SERVER_KEY_BYTES)}")
    text = "# paywire sandbox: merchants and their server keys, kept across starts\n" + "".join(
        f'\n[[merchants]]\nid = "{m}"\nserver_key = "{k}"\n' for m, k in keys.items())
    _write_atomic(path, text)
    return keys


def _write_atomic(path: Path, text: str) -> None:
    """Write a 0600 file that readers see whole or not at all (they poll for it)."""
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def running_sandbox_pid(directory: Path) -> int | None:
    """The pid of a sandbox still serving ``directory`` (from its sandbox.json), if any."""
    try:
        pid = int(json.loads((directory / JSON_FILE).read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def verify_notification(key: str, raw: bytes, header: str, now_s: float) -> str | None:
    """Why a webhook notification is not genuine and fresh, or ``None`` if it is: exactly
    the README's receiver — the ``X-Paywire-Signature`` HMAC over ``<t>.`` + the raw body,
    ``t`` within ``WEBHOOK_TOLERANCE_S``, then ``signature_key``."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t, v1 = parts["t"], parts["v1"]
        mac = hmac.new(key.encode(), t.encode() + b"." + raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, v1):
            return "bad X-Paywire-Signature"
        if abs(now_s - int(t)) >= WEBHOOK_TOLERANCE_S:
            return "stale timestamp"
        n = json.loads(raw)
        sig = hashlib.sha512((n["order_id"] + n["status_code"] + n["gross_amount"]
                              + key).encode()).hexdigest()
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        return f"malformed ({type(exc).__name__})"
    if not hmac.compare_digest(sig, str(n.get("signature_key", ""))):
        return "bad signature_key"
    return None


class WebhookReceiver:
    """The merchants' webhook endpoint, on loopback: ``POST /paywire/<merchant_id>``.

    Each notification is verified with that merchant's server key and answered 200 if
    genuine and fresh, 401 if not (the hub then retries it, as it would for a real
    merchant). One line per notification goes to ``echo`` and to the log file:
    ``verified|REJECTED <order_id> <transaction_status> merchant=<id> event=<event_id>``,
    plus `` reason=<why>`` when rejected (``-`` for what could not be read)."""

    def __init__(self, keys: dict[str, str], log_path: Path,
                 echo: Callable[[str], None]) -> None:
        self.keys = keys
        self.log_path = log_path
        self.echo = echo
        self.port = 0
        self._runner: Any = None
        self._log: Any = None

    async def start(self, port: int) -> int:
        from aiohttp import web

        self._log = os.fdopen(open_private(self.log_path, os.O_WRONLY | os.O_APPEND), "a")
        app = web.Application(client_max_size=WEBHOOK_BODY_BYTES_MAX)
        app.router.add_post("/paywire/{merchant}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.port

    def url(self, merchant_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/paywire/{merchant_id}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._log is not None:
            self._log.close()

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        merchant = request.match_info["merchant"]
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raw = b""
        key = self.keys.get(merchant)
        header = request.headers.get("X-Paywire-Signature", "")
        reason = ("unknown merchant" if key is None else
                  verify_notification(key, raw, header, time.time()))
        try:
            body = json.loads(raw)
            fields = [_printable(body.get(k)) for k in ("order_id", "transaction_status",
                                                        "event_id")]
        except (ValueError, AttributeError, RecursionError):  # anyone's bytes: log, never 500
            fields = ["-", "-", "-"]
        line = (f"{'verified' if reason is None else 'REJECTED'} {fields[0]} {fields[1]} "
                f"merchant={merchant} event={fields[2]}")
        if reason is not None:
            line += f" reason={reason.replace(' ', '_')}"
        self._log.write(line + "\n")
        self._log.flush()
        self.echo(f"webhook: {line}")
        return web.Response(status=200 if reason is None else 401)


def _printable(value: Any) -> str:
    """A field of a notification as one token of a log line: a rejected notification is
    anyone's text, and must not be able to write lines of its own into the log."""
    text = str(value) if value not in (None, "") else "-"
    return "".join(c if "!" <= c <= "~" else "?" for c in text[:LOG_FIELD_CHARS_MAX])


def _say(text: str = "") -> None:
    print(text, flush=True)


def python_snippet(hub_port: int, merchant: str, key: str, certs: Path) -> str:
    return f'''import asyncio
from gateway.client import Card, connect

async def main() -> None:
    async with connect("127.0.0.1", {hub_port}, merchant_id="{merchant}",
                       server_key="{key}",
                       certs_dir="{certs}") as client:
        tx = await client.charge("try-1", 150_000, card=Card("{APPROVED}", 12, 2030, "123"))
        print(tx.order_id, tx.transaction_status, tx.masked_card, tx.replayed)

asyncio.run(main())
'''


class Sandbox:
    def __init__(self, directory: Path, port: int, auto_pay_s: float | None,
                 plaintext: bool = True) -> None:
        self.dir = directory
        self.port = port
        self.auto_pay_s = auto_pay_s
        self.plaintext = plaintext
        self.banks = sandbox_banks()
        self.keys: dict[str, str] = {}
        self.deployment: Deployment | None = None
        self.receiver: WebhookReceiver | None = None
        self.reported_dead: set[str] = set()
        # Where the nodes' configs, logs, ledger and books are (the scale-out mode keeps its
        # own in a subdirectory: its books belong with its PostgreSQL ledger).
        self.work = directory
        self.mode = "single"
        self.starting = "starting 4 bank nodes and a hub"
        self.stopping = "stopping the hub, the bank nodes and the webhook receiver"

    def _port(self, offset: int) -> int:
        return self.port + offset if self.port else 0

    def _start_nodes(self, receiver: WebhookReceiver) -> Deployment:
        merchants = [MerchantConfig(m, k, receiver.url(m)) for m, k in self.keys.items()]
        nodes = [n for b in self.banks for n in b.nodes]
        return start_deployment(
            self.dir, self.banks, merchants=merchants, fraud=sandbox_fraud(),
            webhooks=sandbox_webhooks(), hub_port=self.port,
            bank_ports={n: self._port(1 + i) for i, n in enumerate(nodes)},
            auto_pay_after_s=self.auto_pay_s,
            hub_plaintext_port=self._port(PLAINTEXT_PORT_OFFSET) if self.plaintext else None)

    @property
    def plaintext_port(self) -> int | None:
        """The port the hub's plaintext lab listener bound, if it opened one."""
        assert self.deployment is not None
        port = self.deployment.hub.ready_info.get("plaintext_port")
        return int(port) if port is not None else None

    @property
    def logs_dir(self) -> Path:
        """Where the nodes' logs are (the scale-out mode keeps its own)."""
        return self.dir

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        # SIGHUP too: a closed terminal must not leave the nodes (and, scale-out, HAProxy
        # and PostgreSQL) running without the sandbox that stops them.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        self.keys = load_or_create_merchants(self.dir / MERCHANTS_FILE)
        receiver = self.receiver = WebhookReceiver(self.keys, self.dir / WEBHOOK_LOG, _say)
        try:
            await receiver.start(self._port(PORTS_AFTER_HUB))
        except OSError as exc:
            raise SandboxError(f"cannot start the webhook receiver: {exc}") from None
        _say(f"Paywire sandbox in {self.dir}: {self.starting} ...")
        try:
            self.deployment = await loop.run_in_executor(None, self._start_nodes, receiver)
        except BaseException:
            await loop.run_in_executor(None, self._stop_after_failed_start)
            await receiver.stop()
            raise
        clean = True
        try:
            try:
                await asyncio.wait_for(self._probe(), PROBE_TIMEOUT_S)
            except (TimeoutError, OSError) as exc:
                raise SandboxError(f"the nodes did not all answer within {PROBE_TIMEOUT_S:g} s "
                                   f"({exc or type(exc).__name__}); see the logs in "
                                   f"{self.logs_dir}") from None
            if not stop.is_set():
                info = self._publish()
                self._banner(info)
                await self._watch(stop)
        finally:
            for name in (ENV_FILE, JSON_FILE):
                (self.dir / name).unlink(missing_ok=True)
            _say(f"{self.stopping} ...")
            codes = await loop.run_in_executor(None, self._stop_nodes)
            await receiver.stop()
            for name, code in codes.items():
                if name not in self.reported_dead and code != 0:
                    clean = False
                    _say(f"paywire sandbox: {name} stopped with exit code {code}; "
                         f"see {self.work / (name + '.log')}")
        _say("sandbox stopped" + ("" if clean else " (not cleanly)"))
        return 0 if clean else 1

    def _publish(self) -> dict[str, Any]:
        """Write the contract files (again, when a restarted node changed a pid)."""
        info = self.describe()
        # sandbox.json last: its appearance is the "ready" signal, so both exist then.
        _write_atomic(self.dir / ENV_FILE, "".join(
            f"export {k}={shlex.quote(v)}\n" for k, v in info["env"].items()))
        _write_atomic(self.dir / JSON_FILE, json.dumps(info, indent=2) + "\n")
        return info

    def _stop_nodes(self) -> dict[str, int | None]:
        assert self.deployment is not None
        return self.deployment.stop()

    def _stop_after_failed_start(self) -> None:
        """What to stop when ``_start_nodes`` raised (it stops the nodes it started)."""

    async def _probe(self) -> None:
        """Return once the hub answers a signed request and every bank node completes the
        link handshake (TLS, role check, HELLO): only then do the contract files say the
        sandbox is up. The caller bounds the wait."""
        from gateway import secret_keys, tls
        from gateway.client import NotFound, connect
        from gateway.hub.banklink import BankPool

        assert self.deployment is not None
        certs = self.dir / "certs"
        for port in self._probe_ports():
            async with connect("127.0.0.1", port, merchant_id=MERCHANT_IDS[0],
                               server_key=self.keys[MERCHANT_IDS[0]],
                               certs_dir=certs) as client:
                try:
                    await client.status("sandbox-probe")
                except NotFound:
                    pass  # the answer expected: it went through TLS, HELLO and authentication
        link_key = secret_keys.load_link_key(self.dir / "paywire-secrets.toml")
        ctx = tls.node_client_context(certs, "hub", "hub")
        pools = [BankPool(route.name, route.nodes, hub_id="hub", key=link_key, ssl_ctx=ctx,
                          on_bank_request=lambda link, frame: None, timeout_s=PROBE_TIMEOUT_S,
                          attempts_max=1) for route in self.deployment.routes]
        for pool in pools:
            pool.start()
        try:
            while not all(node.healthy for pool in pools for node in pool.nodes):
                await asyncio.sleep(PROBE_POLL_S)
        finally:
            for pool in pools:
                await pool.stop()

    def _probe_ports(self) -> list[int]:
        """The merchant ports to try a signed request on before saying "ready"."""
        assert self.deployment is not None
        return [self.deployment.hub.port]

    async def _watch(self, stop: asyncio.Event) -> None:
        """Serve until asked to stop; say so when a node dies (a lab may kill a bank node
        on purpose, to watch the hub fail over to the other node of that bank)."""
        assert self.deployment is not None
        procs = [self.deployment.hub, *self.deployment.banks]
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), CHILD_POLL_S)
            except TimeoutError:
                pass
            if stop.is_set():
                return
            for proc in procs:
                if proc.name not in self.reported_dead and not proc.alive:
                    self.reported_dead.add(proc.name)
                    assert proc.proc is not None
                    _say(f"paywire sandbox: {proc.name} exited (code {proc.proc.returncode}); "
                         f"see {proc.log_path}. The rest keeps running; Ctrl-C stops it.")

    def env(self) -> dict[str, str]:
        assert self.deployment is not None
        m = MERCHANT_IDS[0]
        return {
            "PAYWIRE_HUB": f"127.0.0.1:{self.deployment.hub.port}",
            "PAYWIRE_MERCHANT": m,
            "PAYWIRE_SERVER_KEY": self.keys[m],
            "PAYWIRE_CERTS": str(self.dir / "certs"),
            "PAYWIRE_SECRETS": str(self.dir / "paywire-secrets.toml"),
            "PAYWIRE_LEDGER": self.ledger_ref(),
            "PAYWIRE_WEBHOOK_LOG": str(self.dir / WEBHOOK_LOG),
            "PAYWIRE_SANDBOX": str(self.dir),
            # Where `paywire lab start/check` keep the student's work: beside the sandbox's
            # directory (the clone's top when started as the labs say), from any directory.
            "PAYWIRE_LABWORK": str(self.dir.parent / "labwork"),
            # Each bank node's address, for `paywire bank-admin --node "$PAYWIRE_NODE_BCA_1"`.
            **{f"PAYWIRE_NODE_{p.name.upper().replace('-', '_')}": f"127.0.0.1:{p.port}"
               for p in self.deployment.banks},
            **({"PAYWIRE_PLAINTEXT_HUB": f"127.0.0.1:{self.plaintext_port}"}
               if self.plaintext_port is not None else {}),
        }

    def ledger_ref(self) -> str:
        """The hub's ledger as ``paywire audit --ledger`` takes it: a file or a URL."""
        return str(self.work / "ledger.db")

    def describe(self) -> dict[str, Any]:
        """The content of sandbox.json (format in ``docs/configuration.md``)."""
        dep, rx = self.deployment, self.receiver
        assert dep is not None and rx is not None
        by_name = {p.name: p for p in dep.banks}

        def node(p: Any) -> dict[str, Any]:
            return {"name": p.name, "host": "127.0.0.1", "port": p.port, "pid": p.proc.pid,
                    "config": str(p.config_path), "log": str(p.log_path)}

        return {
            "version": SANDBOX_FORMAT_VERSION,
            "mode": self.mode,
            "dir": str(self.dir),
            "pid": os.getpid(),
            "hub": {**node(dep.hub), "ledger": self.ledger_ref(),
                    "plaintext_port": self.plaintext_port},
            "banks": [{"name": b.name, "bins": b.bins, "virtual_account": b.va,
                       "providers": b.providers, "books": str(self.work / f"{b.name}.db"),
                       "nodes": [node(by_name[n]) for n in b.nodes]} for b in self.banks],
            "receiver": {"host": "127.0.0.1", "port": rx.port, "pid": os.getpid(),
                         "url": rx.url(MERCHANT_IDS[0]),
                         "urls": {m: rx.url(m) for m in self.keys},
                         "log": str(rx.log_path)},
            "merchants": [{"id": m, "server_key": k, "webhook_url": rx.url(m),
                           "cert": str(self.dir / "certs" / f"merchant-{m}.crt"),
                           "key": str(self.dir / "certs" / f"merchant-{m}.key")}
                          for m, k in self.keys.items()],
            "test_cards": [asdict(c) for c in sandbox_cards()],
            "limits": {"currency": "IDR", "challenge_above": CHALLENGE_ABOVE_IDR,
                       "deny_above": DENY_ABOVE_IDR, "blocked_email": BLOCKED_EMAIL},
            "auto_pay_after_s": self.auto_pay_s,
            "files": {"certs": str(self.dir / "certs"), "ca_dir": str(self.dir / "certs-ca"),
                      "secrets": str(self.dir / "paywire-secrets.toml"),
                      "merchants": str(self.dir / MERCHANTS_FILE),
                      "ledger": self.ledger_ref(),
                      "hub_config": str(dep.hub.config_path),
                      "webhook_log": str(rx.log_path),
                      "env": str(self.dir / ENV_FILE), "json": str(self.dir / JSON_FILE)},
            "env": self.env(),
        }

    def _banner(self, info: dict[str, Any]) -> None:
        hub = info["hub"]
        _say(f"\nPaywire sandbox in {self.dir} (pid {os.getpid()}): Ctrl-C stops everything\n")
        _say(f"  {hub['name']:<10} 127.0.0.1:{hub['port']}   log {hub['log']}")
        if hub["plaintext_port"] is not None:
            _say(f"  hub        127.0.0.1:{hub['plaintext_port']}   PLAINTEXT, no TLS: for "
                 "lab 3's capture only (--no-plaintext turns it off)")
        for bank in info["banks"]:
            nodes = ", ".join(f"{n['name']} 127.0.0.1:{n['port']}" for n in bank["nodes"])
            what = (f"e-wallet ({', '.join(bank['providers'])})" if bank["providers"]
                    else f"bank, cards {'/'.join(bank['bins'])}xx and virtual accounts")
            _say(f"  {bank['name']:<10} {nodes}   {what}")
        _say(f"  webhooks   {info['receiver']['urls'][MERCHANT_IDS[0]]} (and /paywire/M2): "
             f"verified here, one line each, also in {info['receiver']['log']}")
        _say("\nMerchants (client certificates in certs/merchant-<id>.crt)")
        for m in info["merchants"]:
            _say(f"  {m['id']}  server key {m['server_key']}")
        _say(f"\nTest cards (CVV {CVV}; amounts in IDR up to {CHALLENGE_ABOVE_IDR:,}, above it "
             f"every charge is challenged, above {DENY_ABOVE_IDR:,} denied)")
        for c in sandbox_cards():
            expect = ", ".join(f"{k}={v}" for k, v in c.expect.items())
            _say(f"  {c.number}  {c.exp_month:02d}/{c.exp_year}  {c.name:<20} {c.note}")
            _say(f"  {'':16}           -> {expect}")
        bca = info["banks"][0]["nodes"][0]
        paid = (f"customers pay after about {self.auto_pay_s:g} s"
                if self.auto_pay_s is not None else "they stay pending until the customer pays")
        _say(f"\nVirtual accounts (bank_transfer, bank bca or bni) and e-wallets (gopay, "
             f"shopeepay): {paid}:")
        _say(f"  paywire bank-admin pay --node {bca['name']}@127.0.0.1:{bca['port']} "
             f"--certs {self.dir / 'certs'} --number <va_number>")
        _say(f"\nCLI environment (also in {self.dir / ENV_FILE}: . {self.dir / ENV_FILE})")
        for k, v in info["env"].items():
            _say(f"  export {k}={shlex.quote(v)}")
        _say(f"  paywire charge order-1 --amount 150000 --card {APPROVED}")
        _say("  paywire status order-1")
        _say("\nPython (save as try.py, run with .venv/bin/python try.py):\n")
        m = MERCHANT_IDS[0]
        for line in python_snippet(hub["port"], m, self.keys[m],
                                   self.dir / "certs").splitlines():
            _say(f"    {line}")
        self._banner_more(info)
        _say("\nsandbox ready; webhook notifications follow")

    def _banner_more(self, info: dict[str, Any]) -> None:
        """More of the banner, before its last line (the scale-out mode's hubs)."""
