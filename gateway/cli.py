"""``paywire``: certificates, nodes, one-off operations, the demo.

    paywire certs init DIR [--merchant M1 ...] [--bank bank-a-1 ...] [--san NAME ...]
                           [--ca-dir CADIR]
    paywire certs issue DIR --role merchant --name M2 [--ca-dir CADIR]
    paywire secrets init FILE
    paywire hub --config hub.toml
    paywire bank --config bank.toml
    paywire bank-admin pay|balances|payments|faults --node HOST:PORT ... [--json]
    paywire charge|capture|cancel|refund|approve|deny|status|expire ORDER_ID [...] [--json]
    paywire trace ORDER_ID [--png FILE] [--ledger PATH]
    paywire dump [HEX ...] [--file RAW] [--body] [--json]
    paywire demo
    paywire lab list | start N | check N [--dir labwork] [--sandbox sandbox] [--solution]
    paywire lab capture --port PORT -w FILE -- COMMAND ...
    paywire sandbox [--dir DIR] [--port PORT] [--auto-pay-s S] [--no-plaintext]
                    [--scale-out [--pg-dsn URL]]
    paywire sandbox status [--wait HUB=STATE] | restart HUB | load [--kill HUB --after N]
    paywire --version

An error is one line (what is wrong: what to do) and an exit code of its kind: 2 usage,
3 refused by the hub, 4 declined, 5 unreachable, 6 certificate or credentials refused,
7 configuration or file, 8 in use, 9 outcome unknown (docs/cli.md; gateway/cliout.py).
``--debug`` anywhere on the line adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from gateway import cliout, pki
from gateway import config as configmod
from gateway.cliout import CliError

log = logging.getLogger("paywire")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (structured logs a collector can parse). Messages never
    carry secrets: keys, card numbers and CVVs are not logged anywhere."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"t": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)  # a structured line's own keys (a request's)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s")


def _setup_logging(level: str, fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("paywire")
    handler.setFormatter(_formatter(fmt))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler])


def _config_logging(ns: argparse.Namespace, level: str | None, fmt: str | None) -> None:
    """A node config's ``log_level`` / ``log_format``, where no flag or variable set them."""
    if level is not None and not ns.log_level_given:
        ns.log_level = level
    if fmt is not None and not ns.log_format_given:
        ns.log_format = fmt
    root = logging.getLogger()
    root.setLevel(getattr(logging, ns.log_level.upper(), logging.INFO))
    for handler in root.handlers:
        if handler.get_name() == "paywire":  # ours (``_setup_logging``), not a test's
            handler.setFormatter(_formatter(ns.log_format))


# Chosen when a commit thread shared the GIL with the loop: every SQLite call released it,
# and with the default 5 ms interval getting it back took up to 5 ms. The writer is now a
# process; measured again after the move, 0.2 ms still gave 1.15-1.3x the throughput of
# 5 ms (BENCHMARKS.md). Why was not pinned down; the nodes still run helper threads (the
# default executor, the webhook outbox reader).
GIL_SWITCH_INTERVAL_S = 0.0002


def _run(main: Any) -> Any:
    import uvloop

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return uvloop.run(main)


async def _serve(node: Any, ready_file: str | None, parent_fd: int | None = None) -> int:
    """Run a node until SIGTERM/SIGINT (exit 0), or until its storage writer dies (exit 1:
    it can no longer make anything durable, so it stops and its clients fail over).
    ``parent_fd``: a ``hub --workers`` worker's end of a pipe from its parent; end of file
    means the parent died (even by SIGKILL), and the worker stops as on SIGTERM rather
    than serve on unsupervised."""
    from gateway.processes import write_ready

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if parent_fd is not None:
        def parent_gone() -> None:
            loop.remove_reader(parent_fd)  # readable for ever at end of file: once is enough
            log.warning("the hub --workers parent is gone: stopping")
            stop.set()

        loop.add_reader(parent_fd, parent_gone)
    try:
        await node.start()
    except Exception:
        # Refused at start (a port in use): release what start() opened (ledger writer,
        # webhook session) so the one line that says why is all the operator sees.
        with contextlib.suppress(Exception):
            await node.stop()
        raise
    # Everything allocated so far (modules, classes, configuration: ~56,000 objects in a
    # hub) lives as long as the process. Frozen, the collector stops walking it on every
    # full collection, which otherwise stalls the loop for tens of milliseconds.
    gc.freeze()
    health = getattr(node, "health_server", None)  # a hub's /readyz listener, if any
    plaintext_port = getattr(node, "plaintext_port", None)  # a hub's lab listener, if any
    extra = {**({"health_port": health.port} if health else {}),
             **({"plaintext_port": plaintext_port} if plaintext_port is not None else {})}
    write_ready(ready_file, node.port, extra or None)
    died = node.storage_died
    waiters = [asyncio.ensure_future(stop.wait())] + ([died] if died is not None else [])
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    waiters[0].cancel()
    await node.stop()
    return 1 if died is not None and died.done() else 0


# Nodes create ledgers, books, lock and ready files: owner-only, whatever umask the operator
# or the service manager started them with (their writer processes inherit it).
NODE_UMASK = 0o077


def _refused(kind: str, exc: Exception) -> int:
    """A node that cannot start says why in one line (no traceback) and exits with the
    code of the cause (docs/cli.md): another process holds its ledger (8), or its config,
    secrets or ledger settings are wrong (7). A port in use reaches ``cliout.run_command``
    as an ``OSError`` and exits 8 too."""
    from gateway.storage.lockfile import LockHeld

    print(f"paywire {kind}: {cliout.one_line(str(exc))}", file=sys.stderr)
    return cliout.EXIT_IN_USE if isinstance(exc, LockHeld) else cliout.EXIT_CONFIG


def _apply_listen(cfg: configmod.HubConfig | configmod.BankNodeConfig,
                  listen: str | None) -> None:
    """``--listen [HOST]:PORT`` overrides the config's listener (the host is optional)."""
    if listen:
        host, _, port = listen.rpartition(":")
        cfg.listen_host, cfg.listen_port = host or cfg.listen_host, int(port)


def _apply_ledger(cfg: configmod.HubConfig, ledger: str) -> None:
    """``--ledger`` names a SQLite file or a PostgreSQL URL (``[ledger] url``)."""
    from gateway.ledger import is_postgres_url

    if is_postgres_url(ledger):
        cfg.ledger = configmod.LedgerConfig(ledger, cfg.ledger.connect_timeout_s,
                                            cfg.ledger.commit_timeout_s)
    else:
        cfg.ledger_path, cfg.ledger.url = Path(ledger), None


def cmd_hub(ns: argparse.Namespace) -> int:
    from gateway.hub.server import Hub
    from gateway.ledger import LedgerError
    from gateway.storage.lockfile import LockHeld

    os.umask(NODE_UMASK)
    try:
        cfg = configmod.load(configmod.HubConfig, Path(ns.config))
        _apply_listen(cfg, ns.listen)
        if ns.ledger:
            _apply_ledger(cfg, ns.ledger)
        if ns.plaintext_listen:
            configmod.check_plaintext_listen(ns.plaintext_listen)
            cfg.plaintext_listen = ns.plaintext_listen
        if ns.health_listen:
            configmod.check_health_listen(ns.health_listen)
            cfg.health_listen = ns.health_listen
        if cfg.log_level is not None or cfg.log_format is not None:
            _config_logging(ns, cfg.log_level, cfg.log_format)
        if ns.workers is not None:
            return _run_workers(ns, cfg)
        hub = Hub(cfg, reuse_port=ns.reuse_port, config_path=Path(ns.config))  # SIGHUP re-reads
        return int(_run(_serve(hub, ns.ready_file, ns.parent_fd)))
    except (configmod.ConfigError, LockHeld, LedgerError) as exc:
        return _refused("hub", exc)


def _run_workers(ns: argparse.Namespace, cfg: configmod.HubConfig) -> int:
    """``paywire hub --workers N`` (gateway/hub/workers.py): this process only supervises."""
    from gateway.hub.workers import Supervisor, WorkersError

    passthrough = [*(["--trace"] if ns.trace else []),
                   *(["--trace-file", ns.trace_file] if ns.trace_file else [])]
    try:
        supervisor = Supervisor(cfg, Path(ns.config), ns.workers, ledger_arg=ns.ledger,
                                log_level=ns.log_level, passthrough=passthrough)
    except WorkersError as exc:
        return _refused("hub", exc)
    return supervisor.run(ns.ready_file)


def cmd_bank(ns: argparse.Namespace) -> int:
    from gateway.bank.node import BankNode

    os.umask(NODE_UMASK)
    try:
        cfg = configmod.load(configmod.BankNodeConfig, Path(ns.config))
        _apply_listen(cfg, ns.listen)
        return int(_run(_serve(BankNode(cfg), ns.ready_file)))
    except configmod.ConfigError as exc:
        return _refused("bank", exc)


def cmd_secrets(ns: argparse.Namespace) -> int:
    from gateway import secret_keys

    try:
        path = secret_keys.init(Path(ns.file), force=ns.force)
    except (secret_keys.SecretsError, OSError) as exc:
        print(f"paywire secrets: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (0600): link_key, fingerprint_key, idempotency_key; "
          "point secrets_file of the hub and of every bank node at it")
    return 0


def cmd_certs(ns: argparse.Namespace) -> int:
    directory = Path(ns.dir)
    ca_dir = Path(ns.ca_dir) if ns.ca_dir else pki.default_ca_dir(directory)
    try:
        if ns.certs_cmd == "init":
            issued = pki.init(directory, merchants=ns.merchant or ["M1"],
                              banks=ns.bank or ["bank-a-1"], hub_name=ns.hub, sans=ns.san or [],
                              force=ns.force, ca_dir=ca_dir)
        else:
            issued = [pki.issue(directory, ns.role, ns.name, ns.san or [], force=ns.force,
                                ca_dir=ca_dir)]
    except (pki.PkiError, OSError) as exc:
        print(f"paywire certs: {exc}", file=sys.stderr)
        return 2
    for item in issued:
        print(f"wrote {item.cert} and {item.key} (0600)")
    if ns.certs_cmd == "init":
        print(f"the CA key is in {ca_dir} (0700): keep it off the nodes, which need only "
              f"{directory}")
    return 0


def _client_options(ns: argparse.Namespace) -> dict[str, Any]:
    hub = ns.hub or os.environ.get("PAYWIRE_HUB", "127.0.0.1:7400")
    host, _, port = hub.rpartition(":")
    if not host or not port.isdigit():
        raise CliError(cliout.EXIT_USAGE, f"hub address {hub!r} is not HOST:PORT",
                       "give --hub HOST:PORT or set PAYWIRE_HUB")
    merchant = ns.merchant or os.environ.get("PAYWIRE_MERCHANT", "M1")
    key = ns.server_key or os.environ.get("PAYWIRE_SERVER_KEY")
    if not key:
        raise CliError(cliout.EXIT_USAGE, "no server key",
                       "give --server-key or set PAYWIRE_SERVER_KEY (`. sandbox/sandbox.env`)")
    timeout_s = getattr(ns, "timeout_s", None)
    if timeout_s is None:
        timeout_s = float(os.environ.get("PAYWIRE_TIMEOUT_S",
                                         cliout.CONNECT_TIMEOUT_S_DEFAULT))
    if timeout_s <= 0:
        raise CliError(cliout.EXIT_USAGE, f"--timeout-s {timeout_s:g} is not positive")
    if getattr(ns, "plaintext", False):
        return {"host": host, "port": int(port), "merchant_id": merchant, "server_key": key,
                "plaintext": True, "connect_timeout_s": timeout_s,
                "reconnect_window_s": timeout_s}
    certs = Path(ns.certs or os.environ.get("PAYWIRE_CERTS", "certs"))
    for name in ("ca.crt", f"merchant-{merchant}.crt", f"merchant-{merchant}.key"):
        cliout.existing_file(
            certs / name, f"{name} for merchant {merchant}",
            f"give --certs DIR (env PAYWIRE_CERTS) holding it, or issue one: `paywire certs "
            f"issue {certs} --role merchant --name {merchant}`")
    # A one-off command bounds how long it tries to reach the hub: the library's default
    # reconnect window (30 s, for long-lived merchants riding out a hub restart) made
    # ``paywire status`` with the hub down sit silent for 30 s (issue 15).
    return {"host": host, "port": int(port), "merchant_id": merchant, "server_key": key,
            "certs_dir": certs, "connect_timeout_s": timeout_s,
            "reconnect_window_s": timeout_s}


async def connect_cli(opts: dict[str, Any], **extra: Any) -> Any:
    """A connected client for a one-off command; a hub that cannot be reached within the
    bound fails with the address tried (exit 5), a certificate or a merchant the hub
    refuses fails at once (exit 6)."""
    from gateway.client import connect
    from protocol.errors import ConnectionLost, RemoteError

    opts = dict(opts)
    host, port = opts.pop("host"), opts.pop("port")
    client = connect(host, port, **opts, **extra)
    try:
        return await client.connect()
    except RemoteError:
        raise  # the hub answered: classified by its code (unknown merchant: exit 6)
    except (ConnectionLost, TimeoutError, OSError) as exc:
        await client.close()
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise CliError(cliout.EXIT_AUTH,
                           f"the hub at {host}:{port} has a certificate that does not "
                           f"verify against {opts.get('certs_dir', 'certs')}/ca.crt "
                           f"({exc.verify_message})",
                           "use the ca.crt and certificates of this deployment (--certs, "
                           "PAYWIRE_CERTS)") from exc
        if isinstance(exc, ssl.SSLError):
            raise CliError(cliout.EXIT_AUTH, f"TLS with the hub at {host}:{port} failed: "
                                             f"{cliout.one_line(str(exc))}",
                           "use the certificates of this deployment (--certs)") from exc
        reason = cliout.one_line(getattr(exc, "message", None) or str(exc) or repr(exc))
        raise CliError(cliout.EXIT_UNREACHABLE,
                       f"cannot reach the hub at {host}:{port} within "
                       f"{opts['connect_timeout_s']:g} s ({reason})",
                       "is it running? check --hub / PAYWIRE_HUB; a hub that closes the "
                       "handshake may not trust your client certificate") from exc


# A charge answered with one of these statuses was recorded but not approved: the command
# exits EXIT_DECLINED so a script does not take a declined card for a payment.
DECLINED_STATUSES = frozenset({"deny", "failure"})


def cmd_operation(ns: argparse.Namespace) -> int:
    from gateway.client import Card
    from gateway.net.plaintext import PlaintextRefused

    opts = _client_options(ns)
    card = None
    if ns.op == "charge" and ns.card:
        month, _, year = ns.expiry.partition("/")
        if not (month.isdigit() and year.isdigit()):
            raise CliError(cliout.EXIT_USAGE, f"--expiry {ns.expiry!r} is not MM/YYYY")
        card = Card(ns.card, int(month), int(year), ns.cvv)

    async def main() -> dict[str, Any]:
        client = await connect_cli(opts)
        try:
            op = ns.op
            if op == "charge":
                tx = await client.charge(ns.order_id, ns.amount, ns.payment_type, card=card,
                                         capture=not ns.authorize_only, bank=ns.bank,
                                         provider=ns.provider, currency=ns.currency,
                                         expiry_s=ns.expiry_s)
            elif op == "refund":
                tx = await client.refund(ns.order_id, ns.refund_key, ns.amount, ns.reason)
            elif op == "capture":
                tx = await client.capture(ns.order_id, ns.amount)
            else:
                tx = await getattr(client, op)(ns.order_id)
        finally:
            await client.close()
        return {k: v for k, v in dataclasses.asdict(tx).items() if v not in (None, [], (), {})}

    try:
        result = asyncio.run(main())
    except PlaintextRefused as exc:
        raise CliError(cliout.EXIT_USAGE, str(exc),
                       "plaintext lab mode works on loopback addresses only") from exc
    cliout.print_json(result, compact=ns.json)
    status = result.get("transaction_status")
    if ns.op == "charge" and status in DECLINED_STATUSES:
        reason = result.get("decline_reason") or ", ".join(result.get("fraud_reasons", []))
        print(f"paywire charge: {ns.order_id} declined ({status}"
              f"{': ' + str(reason) if reason else ''})", file=sys.stderr)
        return cliout.EXIT_DECLINED
    return 0


def cmd_trace(ns: argparse.Namespace) -> int:
    from gateway.tracing.command import run

    ledger = _ledger_file(ns.ledger) if ns.ledger else None
    merchant = ns.merchant or os.environ.get("PAYWIRE_MERCHANT", "M1")
    return run(ns.order_id, png=Path(ns.png) if ns.png else None, ledger=ledger,
               merchant_id=merchant, client_options=None if ledger else _client_options(ns))


def cmd_bank_admin(ns: argparse.Namespace) -> int:
    from protocol import banklink

    args: dict[str, Any] = {}
    op = {"pay": banklink.ADMIN_PAY, "balances": banklink.ADMIN_BALANCES,
          "payments": banklink.ADMIN_PAYMENTS, "faults": banklink.ADMIN_FAULTS}[ns.action]
    if ns.action == "pay":
        args = {"transaction_id": ns.transaction_id} if ns.transaction_id else {
            "number": ns.number}
    elif ns.action == "faults":
        for name in ("latency_ms", "failure_rate_pct"):
            if getattr(ns, name) is not None:
                args[name] = getattr(ns, name)
        if ns.blackhole is not None:
            args["blackhole"] = ns.blackhole == "on"
    from gateway import secret_keys

    if ns.action == "pay" and not (ns.transaction_id or ns.number):
        raise CliError(cliout.EXIT_USAGE, "bank-admin pay needs --number or --transaction-id")
    link_key = secret_keys.load_link_key(Path(ns.secrets))  # SecretsError: exit 7
    certs = Path(ns.certs)
    cliout.existing_file(certs / f"hub-{ns.hub_name}.crt", f"hub certificate {ns.hub_name!r}",
                         "give --certs DIR (env PAYWIRE_CERTS) of this deployment")
    result = asyncio.run(bank_admin_call(ns.node, certs, ns.hub_name, link_key, op, args,
                                         timeout_s=ns.timeout_s))
    _print_admin(ns.action, result, ns.json)
    if ns.action == "pay" and not result.get("paid"):
        print(f"paywire bank-admin pay: nothing paid ({result.get('reason', 'no match')})",
              file=sys.stderr)
        return cliout.EXIT_FAILED
    return 0


def _print_admin(action: str, result: dict[str, Any], as_json: bool) -> None:
    """Balances and payments as labelled columns; the rest (fault settings, a payment's
    result) as indented JSON, whose keys label it (the lab handouts show that form)."""
    if as_json:
        cliout.print_json(result, compact=True)
    elif action == "balances":
        cliout.print_table(["account", "balance", "held"],
                           [[acct, int(v[0]), int(v[1])]
                            for acct, v in sorted(result.get("balances", {}).items())])
    elif action == "payments":
        payments = result.get("payments", {})
        cliout.print_table(["transaction_id", "number", "status", "amount"],
                           [[tid, str(p.get("number")), str(p.get("status")),
                             int(p.get("amount", 0))] for tid, p in sorted(payments.items())])
    else:
        cliout.print_json(result, compact=False)


async def bank_admin_call(node: str, certs: Path, hub_name: str, link_key: bytes, op: str,
                          args: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """One admin call to a bank node over the hub link protocol (hub certificate)."""
    from gateway import tls
    from gateway.hub.banklink import BankNodeHandle, BankPool

    ctx = tls.node_client_context(certs, "hub", hub_name)
    pool = BankPool("admin", [node], hub_id=hub_name, key=link_key, ssl_ctx=ctx,
                    on_bank_request=lambda link, frame: None, timeout_s=timeout_s,
                    attempts_max=1)
    handle: BankNodeHandle = pool.nodes[0]
    handle.start()
    try:
        if not await pool.wait_ready(timeout_s):
            raise CliError(cliout.EXIT_UNREACHABLE,
                           f"cannot reach bank node {node} within {timeout_s:g} s",
                           "is it running? check --node (the sandbox prints each node's "
                           "address: PAYWIRE_NODE_BCA_1, ...) and --certs")
        assert handle.link is not None
        result: dict[str, Any] = await handle.link.call(op, args, timeout_s)
        return result
    finally:
        await pool.stop()


def cmd_webhooks(ns: argparse.Namespace) -> int:
    from gateway.ledger import is_postgres_url, ledger_tools

    ledger = getattr(ns, "ledger", None) or ns.ledger_before
    if not ledger:
        raise CliError(cliout.EXIT_USAGE, "no ledger given",
                       "give --ledger PATH (the hub's ledger_path, e.g. sandbox/ledger.db)")
    # a file (which must exist: no empty ledger where a typo pointed) or a postgresql:// URL
    tools = ledger_tools(ledger if is_postgres_url(ledger) else _ledger_file(ledger))
    if ns.action == "list":
        for row in tools.webhooks(ns.state, ns.limit):
            print(json.dumps(row._asdict()))  # one object per line: already for scripts
        return 0
    if not ns.ids and not ns.all_dead:
        raise CliError(cliout.EXIT_USAGE, "nothing to redeliver",
                       "give webhook ids (from `paywire webhooks list`) or --all-dead")
    count = tools.redeliver(ns.ids, all_dead=ns.all_dead)
    print(f"queued {count} webhook(s) for redelivery")
    return 0 if count else cliout.EXIT_FAILED


def cmd_ledger(ns: argparse.Namespace) -> int:
    """``ledger backup`` / ``ledger export``: the logic is in ``gateway.ledgercli``."""
    from gateway import ledgercli
    from gateway.ledger import LedgerError, is_postgres_url

    where = ns.ledger if is_postgres_url(ns.ledger) else _ledger_file(ns.ledger)
    try:
        if ns.action == "backup":
            ledgercli.backup(where, Path(ns.dest))
            print(f"backed up {ns.ledger} to {ns.dest}")
        elif ns.action == "prune":
            policy = _retention_policy(ns)
            print(ledgercli.describe_prune(ledgercli.prune(where, policy, ns.dry_run),
                                           ns.dry_run))
        else:
            ledgercli.export(where, ns.format)
    except LedgerError as exc:
        raise CliError(cliout.EXIT_FAILED, cliout.one_line(str(exc))) from exc
    return 0


def _retention_policy(ns: argparse.Namespace) -> Any:
    """``ledger prune``: the hub's ``[retention]`` (``--config``, else the defaults), with
    the keep times given on the command line instead (an operator may go below the hub's
    minimum horizon; subscribers behind it then get RESUME_EXPIRED)."""
    from gateway.hub.retention import policy_of

    try:
        cfg = (configmod.load(configmod.HubConfig, Path(ns.config)).retention if ns.config
               else configmod.RetentionConfig())
    except (OSError, configmod.ConfigError) as exc:
        raise CliError(cliout.EXIT_CONFIG, cliout.one_line(str(exc))) from exc
    policy = policy_of(cfg)
    for name in ("events_resume_horizon_s", "webhooks_delivered_keep_s"):
        value = getattr(ns, name)
        if value is not None:
            if not value >= 0:
                raise CliError(cliout.EXIT_USAGE, f"--{name.replace('_', '-')} must be 0 or "
                               "more")
            policy = policy._replace(**{name[:-2] + "_ms": round(value * 1000)})
    return policy


def _ledger_file(path: str) -> Path:
    return cliout.existing_file(Path(path), "ledger file",
                                "give the hub's ledger_path (hub.toml; the sandbox's is "
                                "sandbox/ledger.db) with --ledger")


def cmd_events(ns: argparse.Namespace) -> int:
    opts = _client_options(ns)

    async def main() -> None:
        client = await connect_cli(opts)  # fail here, at once, if the hub is unreachable
        seen = 0
        try:
            async for event in client.events(since=ns.since):
                tx = event.transaction
                print(json.dumps({"seq": event.seq, "order_id": tx.order_id,
                                  "transaction_status": tx.transaction_status,
                                  "fraud_status": tx.fraud_status,
                                  "gross_amount": tx.gross_amount}), flush=True)
                seen += 1
                if ns.count and seen >= ns.count:
                    return
        finally:
            await client.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def cmd_audit(ns: argparse.Namespace) -> int:
    from gateway.audit import audit, load_acks
    from gateway.ledger import is_postgres_url

    banks = {}
    for item in ns.bank or []:
        name, _, path = item.partition("=")
        banks[name] = Path(path)
    for name, path in banks.items():
        cliout.existing_file(path, f"store of bank {name!r}", "give --bank NAME=PATH of "
                             "the bank's books (store_path in its config)")
    ledger = ns.ledger if is_postgres_url(ns.ledger) else _ledger_file(ns.ledger)
    report = audit(ledger, banks,
                   load_acks(Path(ns.acks)) if ns.acks else None)
    if ns.json:
        cliout.print_json({"clean": report.clean, "findings": [str(f) for f in report.findings],
                           "summary": report.summary()}, compact=True)
        return 0 if report.clean else cliout.EXIT_FAILED
    for finding in report.findings:
        print(finding)
    print(json.dumps(report.summary()))
    return 0 if report.clean else 1


def cmd_chaos(ns: argparse.Namespace) -> int:
    from gateway.chaos import run_cli

    faults = json.loads(ns.faults) if ns.faults else {}
    try:
        _run(run_cli(ns.listen, ns.target, ns.control, faults, ns.seed))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    from bench.run import Options, run

    if ns.rounds < 1:
        print("paywire bench: --rounds must be at least 1", file=sys.stderr)
        return 2
    if ns.what == "durable":  # CPU per durable charge only, in pairs against --against
        from bench import durable

        return durable.main(ns.against, ns.rounds, ns.duration_s, ns.connections, ns.window,
                            Path(ns.out or "bench/results/durable.json"),
                            "paywire " + " ".join(sys.argv[1:]))
    if ns.what == "postgres":  # issue 14: SQLite vs PostgreSQL, 1 and 2 hubs, commit rate
        from bench import postgres

        return postgres.main(ns.rounds, ns.duration_s, ns.connections, ns.window,
                             ns.commit_s, Path(ns.out or "bench/results/postgres.json"),
                             "paywire " + " ".join(sys.argv[1:]))
    if ns.what == "smoke":
        opts = Options(duration_s=1.0, connections=2, window=4, warmup_s=0.2,
                       out=Path(ns.out or "bench/results/smoke.json"), fsync_samples=20,
                       memory_s=2.0, memory_warmup_s=1.0, rounds=2, wide_connections=4,
                       baseline=Path(ns.baseline) if ns.baseline else None)
    else:
        opts = Options(duration_s=ns.duration_s, connections=ns.connections, window=ns.window,
                       memory_s=ns.memory_s, memory_warmup_s=ns.memory_warmup_s,
                       rounds=ns.rounds, out=Path(ns.out or "bench/results/latest.json"),
                       wide_connections=ns.wide_connections, single=not ns.no_single,
                       baseline=Path(ns.baseline) if ns.baseline else None,
                       plot=Path(ns.plot) if ns.plot else None,
                       markdown=Path(ns.markdown) if ns.markdown else None)
    return run(opts, "paywire " + " ".join(sys.argv[1:]))


def cmd_demo(ns: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(Path(ns.dir) if ns.dir else None, ns.transactions, ns.seed)


def cmd_lab(ns: argparse.Namespace) -> int:
    """``paywire lab list|start N|check N``: the teaching labs (docs/labs/)."""
    from gateway.labs import checks

    if ns.lab_cmd == "list":
        for n in range(1, checks.LAB_COUNT + 1):
            print(f"{n}  {checks.lab_module(n).TITLE}")
        return 0
    try:
        checks.lab_module(ns.number)
    except ValueError as exc:
        print(f"paywire lab: {exc}", file=sys.stderr)
        return 2
    root = Path(ns.dir)
    if ns.lab_cmd == "start":
        target, copied, kept = checks.start_lab(ns.number, root)
        if target.absolute().is_relative_to(Path.cwd()):
            target = target.absolute().relative_to(Path.cwd())  # short, as the student typed
        for f in copied:
            print(f"created {target / f}")
        for f in kept:
            print(f"kept    {target / f} (already there: not overwritten)")
        print(f"now read docs/labs/ for lab {ns.number}, edit the files above, and run "
              f"`paywire lab check {ns.number}`")
        return 0
    work = (checks.solution_dir(ns.number) if ns.solution
            else checks.work_dir(root, ns.number))
    sandbox = Path(ns.sandbox) if ns.sandbox else None
    results = checks.run_lab(ns.number, work, sandbox, timeout_s=ns.timeout_s)
    print(checks.render(ns.number, results))
    return 0 if results and all(r.passed for r in results) else 1


def cmd_lab_capture(ns: argparse.Namespace) -> int:
    from gateway.labs.capture import run_capture

    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    return run_capture(ns.port, Path(ns.out), command, ns.interface)


def cmd_sandbox(ns: argparse.Namespace) -> int:
    from gateway.sandbox_run import run_sandbox

    if ns.action in ("status", "restart") and not 0 < ns.wait_s < float("inf"):
        raise CliError(cliout.EXIT_USAGE, f"--wait-s must be a positive number of seconds, not "
                                   f"{ns.wait_s!r}")
    if ns.action == "status":
        from gateway.sandbox_scaleout import cmd_status

        return cmd_status(Path(ns.dir), ns.wait or [], ns.wait_s)
    if ns.action == "restart":
        from gateway.sandbox_scaleout import cmd_restart

        return cmd_restart(Path(ns.dir), ns.name, ns.wait_s)
    if ns.action == "load":
        from gateway.sandbox_load import cmd_load

        return cmd_load(Path(ns.dir), ns)
    return run_sandbox(Path(ns.dir), ns.port, ns.auto_pay_s, plaintext=ns.plaintext,
                       scale_out=ns.scale_out, pg_dsn=ns.pg_dsn)


# ``paywire dump`` reads at most this much (a capture of a busy link is larger than anyone
# reads annotated; the dump also stops after protocol.dump.FRAMES_MAX frames).
DUMP_INPUT_BYTES_MAX = 64 * 1024 * 1024


def cmd_dump(ns: argparse.Namespace) -> int:
    """Exit 0: every frame complete and valid; 1: something a receiver would refuse (listed
    after its frame with ``!``); 2: the input is not hex / cannot be read."""
    from protocol import dump

    try:
        if ns.hex:
            data = dump.parse_hex(" ".join(ns.hex))
        elif ns.file is not None:
            with open(ns.file, "rb") as f:
                data = f.read(DUMP_INPUT_BYTES_MAX)
        else:
            data = sys.stdin.buffer.read(DUMP_INPUT_BYTES_MAX)
            as_hex = ns.stdin == "hex" or (ns.stdin == "auto" and dump.looks_like_hex(data))
            if as_hex:
                data = dump.parse_hex(data.decode("ascii", "replace"))
    except (ValueError, OSError) as exc:
        print(f"paywire dump: {exc}", file=sys.stderr)
        return 2
    frames = [dump.dump_body(data)] if ns.body else dump.dump(data)
    if ns.json:
        print(json.dumps([f.as_json() for f in frames], indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(dump.render(frames))
    return 1 if any(f.problems or not f.complete for f in frames) else 0


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    """How a one-off command reaches the hub as a merchant (see ``_client_options``)."""
    parser.add_argument("--hub", help="HOST:PORT (env PAYWIRE_HUB)")
    parser.add_argument("--merchant", help="merchant id (env PAYWIRE_MERCHANT)")
    parser.add_argument("--server-key", help="(env PAYWIRE_SERVER_KEY)")
    parser.add_argument("--certs", help="certificate directory (env PAYWIRE_CERTS)")
    parser.add_argument("--plaintext", action="store_true",
                        default=os.environ.get("PAYWIRE_PLAINTEXT", "") not in ("", "0"),
                        help="LAB ONLY: no TLS, to a hub's plaintext_listen on loopback "
                             "(env PAYWIRE_PLAINTEXT=1)")
    _add_trace_options(parser)
    parser.add_argument("--timeout-s", type=float,
                        help="give up reaching the hub after this many seconds (env "
                             f"PAYWIRE_TIMEOUT_S; default {cliout.CONNECT_TIMEOUT_S_DEFAULT:g})")


def _add_trace_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", action="store_true",
                        help="log every frame sent and received, secrets masked (env "
                             "PAYWIRE_TRACE=1)")
    parser.add_argument("--trace-file", help="append the frame trace to this file instead of "
                                             "the log (implies --trace; env PAYWIRE_TRACE_FILE)")


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="for scripts: the result as one JSON object per line, and an "
                             "error as a JSON object on stderr")


def paywire_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("paywire")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def checks_timeout_default() -> float:
    from gateway.labs.checks import CHECK_TIMEOUT_S_DEFAULT

    return CHECK_TIMEOUT_S_DEFAULT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="paywire", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default=os.environ.get("PAYWIRE_LOG_LEVEL", "WARNING"))
    p.add_argument("--log-format", choices=["json", "text"],
                   default=os.environ.get("PAYWIRE_LOG_FORMAT", "json"),
                   help="one JSON object per line (default) or plain text")
    p.add_argument("--version", action="version", version=f"paywire {paywire_version()}")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of an error (accepted after the command too)")
    sub = p.add_subparsers(dest="cmd", required=True)

    certs = sub.add_parser("certs", help="create a dev CA and certificates")
    csub = certs.add_subparsers(dest="certs_cmd", required=True)
    init = csub.add_parser("init", help="CA + hub + bank + merchant certificates")
    init.add_argument("dir")
    init.add_argument("--merchant", action="append")
    init.add_argument("--bank", action="append", help="bank node names (certificate CN)")
    init.add_argument("--hub", default="hub")
    init.add_argument("--san", action="append", help="extra server name or IP")
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.add_argument("--ca-dir", help="where the CA key is kept (default: DIR-ca beside DIR)")
    issue = csub.add_parser("issue", help="one more certificate from the existing CA")
    issue.add_argument("dir")
    issue.add_argument("--role", required=True, choices=pki.ROLES)
    issue.add_argument("--name", required=True)
    issue.add_argument("--san", action="append")
    issue.add_argument("--force", action="store_true")
    issue.add_argument("--ca-dir", help="where the CA key is kept (default: DIR-ca beside DIR)")
    certs.set_defaults(fn=cmd_certs)

    keys = sub.add_parser("secrets", help="create the deployment's keys (0600 file)")
    ksub = keys.add_subparsers(dest="secrets_cmd", required=True)
    kinit = ksub.add_parser("init", help="a random key per purpose: link, card fingerprints, "
                                         "idempotency hashes")
    kinit.add_argument("file", help="e.g. paywire-secrets.toml (the configs' default)")
    kinit.add_argument("--force", action="store_true",
                       help="replace an existing file (bank nodes need the new link_key)")
    keys.set_defaults(fn=cmd_secrets)

    for name, fn in (("hub", cmd_hub), ("bank", cmd_bank)):
        node = sub.add_parser(name, help=f"run a {name} node")
        node.add_argument("--config", required=True)
        node.add_argument("--listen", help="HOST:PORT, overrides the config")
        node.add_argument("--ready-file", help="write {port, pid} here once listening")
        if name == "hub":
            node.add_argument("--ledger", help="ledger path or postgresql:// URL, overrides "
                                               "the config")
            node.add_argument("--plaintext-listen", metavar="HOST:PORT",
                              help="LAB ONLY: also accept merchants WITHOUT TLS here; loopback "
                                   "only (overrides the config's plaintext_listen)")
            node.add_argument("--health-listen", metavar="HOST:PORT",
                              help="serve GET /healthz and /readyz (plain HTTP) here for a "
                                   "load balancer (overrides the config's health_listen)")
            node.add_argument("--workers", type=int, metavar="N",
                              help="run N hub processes sharing the port (SO_REUSEPORT); "
                                   "PostgreSQL ledger only (docs/deploy.md)")
            # Set by --workers on the processes it starts, not by operators.
            node.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
            node.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)
        _add_trace_options(node)
        node.set_defaults(fn=fn)

    admin = sub.add_parser("bank-admin", help="simulate payments, read balances, set faults")
    admin.add_argument("action", choices=["pay", "balances", "payments", "faults"])
    admin.add_argument("--node", required=True,
                       help="bank node HOST:PORT, or NODE@HOST:PORT to check it is NODE")
    admin.add_argument("--certs", default=os.environ.get("PAYWIRE_CERTS", "certs"),
                       help="directory with ca.crt and the hub's certificate "
                            "(env PAYWIRE_CERTS)")
    admin.add_argument("--hub-name", default="hub", help="hub certificate to connect with")
    admin.add_argument("--secrets", default=os.environ.get("PAYWIRE_SECRETS",
                                                          "paywire-secrets.toml"),
                       help="secrets file with the link_key (env PAYWIRE_SECRETS)")
    admin.add_argument("--transaction-id")
    admin.add_argument("--number", help="virtual account or e-wallet reference")
    admin.add_argument("--latency-ms", type=int)
    admin.add_argument("--failure-rate-pct", type=int)
    admin.add_argument("--blackhole", choices=["on", "off"])
    admin.add_argument("--timeout-s", type=float, default=10.0,
                       help="give up on the node after this many seconds")
    _add_json(admin)
    admin.set_defaults(fn=cmd_bank_admin)

    for op in ("charge", "capture", "cancel", "refund", "approve", "deny", "status", "expire"):
        o = sub.add_parser(op, help=f"one {op} request through the client library")
        o.add_argument("order_id")
        _add_client_options(o)
        _add_json(o)
        o.set_defaults(fn=cmd_operation, op=op)
        if op in ("charge", "refund", "capture"):
            o.add_argument("--amount", type=int, required=(op == "charge"))
        if op == "charge":
            o.add_argument("--payment-type", default="credit_card",
                           choices=["credit_card", "bank_transfer", "ewallet"])
            o.add_argument("--card")
            o.add_argument("--expiry", default="12/2030", help="MM/YYYY")
            o.add_argument("--cvv", default="123")
            o.add_argument("--authorize-only", action="store_true")
            o.add_argument("--bank")
            o.add_argument("--provider")
            o.add_argument("--currency", default="IDR")
            o.add_argument("--expiry-s", type=int)
        if op == "refund":
            o.add_argument("--refund-key", required=True)
            o.add_argument("--reason")

    trace = sub.add_parser("trace", help="a charge's hop timeline: text chart (and PNG)")
    trace.add_argument("order_id")
    _add_client_options(trace)
    trace.add_argument("--png", help="also draw the chart to this PNG file")
    trace.add_argument("--ledger", help="read the transaction from this hub ledger file "
                                        "(offline) instead of asking the hub")
    trace.set_defaults(fn=cmd_trace)

    hooks = sub.add_parser("webhooks", help="inspect and redeliver webhook notifications")
    # One subcommand each, so ``redeliver --ledger L 1 2 9`` (the README's form) parses: with
    # the action and the ids as two positionals of one parser, argparse took the action
    # alone and refused the ids after --ledger as "unrecognized arguments".
    hooks.add_argument("--ledger", dest="ledger_before", help=argparse.SUPPRESS)
    hsub = hooks.add_subparsers(dest="action", required=True)
    hlist = hsub.add_parser("list", help="notifications, newest first (JSON lines)")
    hlist.add_argument("--state", choices=["pending", "delivered", "dead"])
    hlist.add_argument("--limit", type=int, default=100)
    hredo = hsub.add_parser("redeliver", help="send notifications again")
    hredo.add_argument("ids", nargs="*", type=int, help="webhook ids to redeliver")
    hredo.add_argument("--all-dead", action="store_true", help="redeliver every dead letter")
    for hp in (hlist, hredo):
        hp.add_argument("--ledger", help="the hub's ledger file, or its postgresql:// URL")
        hp.set_defaults(fn=cmd_webhooks)

    events = sub.add_parser("events", help="tail this merchant's pushed events")
    events.add_argument("--since", type=int, help="replay events after this seq first")
    events.add_argument("--count", type=int, help="stop after this many events")
    _add_client_options(events)
    events.set_defaults(fn=cmd_events)

    led = sub.add_parser("ledger", help="back up, export or prune a ledger "
                                        "(docs/operations.md)")
    lsub = led.add_subparsers(dest="action", required=True)
    lbak = lsub.add_parser("backup", help="a consistent copy of a live ledger")
    lbak.add_argument("dest", help="the copy's file (must not exist)")
    lexp = lsub.add_parser("export", help="transactions as JSON lines or CSV on stdout")
    lexp.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    lpru = lsub.add_parser("prune", help="delete delivered webhooks and events past the "
                                         "resume horizon, as the hub's sweeper does")
    lpru.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    lpru.add_argument("--config", help="the hub's config, for its [retention] keep times")
    lpru.add_argument("--events-resume-horizon-s", type=float,
                      help="keep events this long (default: the config's, 7 days)")
    lpru.add_argument("--webhooks-delivered-keep-s", type=float,
                      help="keep delivered webhooks this long (default: the config's)")
    for lp in (lbak, lexp, lpru):
        lp.add_argument("--ledger", required=True,
                        help="the hub's ledger file, or its postgresql:// URL")
    led.set_defaults(fn=cmd_ledger)

    aud = sub.add_parser("audit", help="check the ledger against the banks' books")
    aud.add_argument("--ledger", required=True,
                     help="the hub's ledger file, or its postgresql:// URL")
    aud.add_argument("--bank", action="append", help="NAME=PATH of a bank's store")
    aud.add_argument("--acks", help="JSON lines of what clients were told (order_id, "
                                    "merchant_id, transaction_id, transaction_status)")
    _add_json(aud)
    aud.set_defaults(fn=cmd_audit)

    chaos = sub.add_parser("chaos", help="a fault-injecting TCP proxy between two nodes")
    chaos.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    chaos.add_argument("--target", required=True, help="HOST:PORT to forward to")
    chaos.add_argument("--control", help="HOST:PORT for the HTTP control API")
    chaos.add_argument("--faults", help='initial faults as JSON, e.g. {"latency_ms": 20}')
    chaos.add_argument("--seed", type=int, default=0)
    chaos.set_defaults(fn=cmd_chaos)

    bench = sub.add_parser("bench", help="measure Paywire against its ceiling and alternative")
    bench.add_argument("what", choices=["all", "smoke", "durable", "postgres"])
    bench.add_argument("--against", help="durable: another checkout (with its .venv) to run "
                       "in pairs with this one; --rounds pairs")
    bench.add_argument("--duration-s", type=float, default=10.0)
    bench.add_argument("--connections", type=int, default=8)
    bench.add_argument("--window", type=int, default=16, help="requests in flight per conn")
    bench.add_argument("--memory-s", type=float, default=0.0,
                       help="also run this long at 80%% of peak, sampling hub memory")
    bench.add_argument("--memory-warmup-s", type=float, default=None,
                       help="load before the memory measurement (default: the hub's "
                            "timestamp window + 30 s, so the nonce cache is full)")
    bench.add_argument("--rounds", type=int, default=3,
                       help="interleaved rounds of the alternative, durable and "
                            "synchronous=OFF closed-loop runs (ratios: median of the rounds)")
    bench.add_argument("--wide-connections", type=int, default=64,
                       help="also run the durable closed loop at this many connections (0: no)")
    bench.add_argument("--no-single", action="store_true",
                       help="skip the run with one charge in flight")
    bench.add_argument("--baseline", help="result JSON of the pre-redesign code's bench, run "
                       "in the same hour: CPU per charge is reported as a ratio against it")
    bench.add_argument("--commit-s", type=float, default=3.0,
                       help="postgres: seconds of each commit-rate measurement")
    bench.add_argument("--out", help="JSON result file")
    bench.add_argument("--markdown", help="also write the Markdown table here")
    bench.add_argument("--plot", help="PNG of latency percentiles against offered load")
    bench.set_defaults(fn=cmd_bench)

    lab = sub.add_parser("lab", help="the teaching labs: list, start, check your work")
    lsub = lab.add_subparsers(dest="lab_cmd", required=True)
    lsub.add_parser("list", help="the labs, in order").set_defaults(fn=cmd_lab)
    for name, text in (("start", "copy lab N's skeleton files into your work directory"),
                       ("check", "run lab N's checks against your work")):
        lp = lsub.add_parser(name, help=text)
        lp.add_argument("number", type=int, metavar="N")
        lp.add_argument("--dir", default=os.environ.get("PAYWIRE_LABWORK", "labwork"),
                        help="your work directory (env PAYWIRE_LABWORK; default labwork); "
                             "lab N lives in DIR/labNN")
        lp.set_defaults(fn=cmd_lab)
        if name == "check":
            lp.add_argument("--sandbox", default=os.environ.get("PAYWIRE_SANDBOX", "sandbox"),
                            help="the running sandbox's directory (env PAYWIRE_SANDBOX; "
                                 "default sandbox)")
            lp.add_argument("--solution", action="store_true",
                            help="check the reference solution instead (for lecturers, CI)")
            lp.add_argument("--timeout-s", type=float,
                            default=checks_timeout_default(),
                            help="give up on the checks after this many seconds")
    cap = lsub.add_parser("capture", help="capture the loopback on a port while a command "
                                          "runs (lab 3); prints the dumpcap command it runs")
    cap.add_argument("--port", required=True, help="PORT or HOST:PORT to capture")
    cap.add_argument("-w", "--out", required=True, help="the capture file to write (pcapng)")
    cap.add_argument("-i", "--interface", default="lo", help="default lo (macOS: lo0)")
    cap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    cap.set_defaults(fn=cmd_lab_capture)

    dmp = sub.add_parser("dump", help="decode frames field by field, with offsets (secrets "
                                      "masked)")
    dmp.add_argument("hex", nargs="*", help="the bytes as hex (spaces, 0x and hexdump offset "
                                            "columns allowed); else --file, else stdin")
    dmp.add_argument("--file", help="a file of raw stream bytes (one direction of a "
                                    "connection, e.g. a capture's follow-stream export)")
    dmp.add_argument("--stdin", choices=["auto", "hex", "raw"], default="auto",
                     help="how stdin is read; auto: hex if it holds only hex digits, "
                          "whitespace, 0x, ':' and ',', else raw bytes")
    dmp.add_argument("--body", action="store_true",
                     help="the bytes are one bare msgpack body (no frame header)")
    dmp.add_argument("--json", action="store_true", help="one JSON object per frame")
    dmp.set_defaults(fn=cmd_dump)

    demo = sub.add_parser("demo", help="run hub + banks and drive real transactions")
    demo.add_argument("--dir", help="keep everything here instead of a temp directory")
    demo.add_argument("--transactions", type=int, default=300)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(fn=cmd_demo)

    sandbox = sub.add_parser("sandbox", help="a hub, banks and a webhook receiver that stay "
                                             "up until Ctrl-C, with test cards and keys")
    sandbox.add_argument("action", nargs="?", default="run",
                         choices=["run", "status", "restart", "load"],
                         help="run (default): start it; status: its processes and, scale-out, "
                              "each hub as HAProxy sees it; restart HUB: start a hub that died "
                              "again; load: paced charges through it")
    sandbox.add_argument("name", nargs="?", help="restart: the hub (hub-a, hub-b)")
    sandbox.add_argument("--dir", default=os.environ.get("PAYWIRE_SANDBOX", "sandbox"),
                         help="configs, keys, ledger and logs; reused if present (status, "
                              "restart, load: env PAYWIRE_SANDBOX)")
    sandbox.add_argument("--port", type=int, default=7400,
                         help="hub port; bank nodes and the receiver take the next five "
                              "(0: ephemeral ports)")
    sandbox.add_argument("--auto-pay-s", type=float,
                         help="simulated customers pay every virtual account and e-wallet "
                              "request after about this long (default: only bank-admin pay)")
    sandbox.add_argument("--no-plaintext", dest="plaintext", action="store_false",
                         help="do not open the hub's plaintext lab listener (no TLS, "
                              "127.0.0.1, port + 6; lab 3 captures it)")
    sandbox.add_argument("--scale-out", action="store_true",
                         help="two hubs (hub-a, hub-b) on one PostgreSQL ledger behind HAProxy "
                              "on PORT (lab 6; docs/deploy.md)")
    sandbox.add_argument("--pg-dsn", default=os.environ.get("PAYWIRE_PG_DSN"),
                         help="--scale-out: the ledger's postgresql:// URL (env PAYWIRE_PG_DSN;"
                              " default: a throwaway server from the pgserver package)")
    sandbox.add_argument("--wait", action="append", metavar="HUB=STATE",
                         help="status: first wait until HAProxy reports HUB in STATE (UP, DOWN)")
    sandbox.add_argument("--wait-s", type=float, default=60.0,
                         help="status, restart: give up waiting after this many seconds")
    sandbox.add_argument("--charges", type=int, default=60, help="load: how many charges")
    sandbox.add_argument("--connections", type=int, default=4,
                         help="load: client connections, each one charge at a time")
    sandbox.add_argument("--kill", metavar="HUB",
                         help="load: kill -9 this hub while charges are in flight on it")
    sandbox.add_argument("--after", type=int, default=20,
                         help="load --kill: after this many answers")
    sandbox.add_argument("--acks", help="load: write what each charge was answered (JSON "
                                        "lines, for paywire audit --acks)")
    sandbox.set_defaults(fn=cmd_sandbox)
    return p


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # ``--debug`` anywhere on the line (operators add it at the end of the command that
    # failed), not only before the subcommand where argparse would want it.
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    ns = build_parser().parse_args(args)
    ns.log_level_given = "PAYWIRE_LOG_LEVEL" in os.environ or any(
        a == "--log-level" or a.startswith("--log-level=") for a in args)
    ns.log_format_given = "PAYWIRE_LOG_FORMAT" in os.environ or any(
        a == "--log-format" or a.startswith("--log-format=") for a in args)
    _setup_logging(ns.log_level, ns.log_format)
    if getattr(ns, "trace", False) or getattr(ns, "trace_file", None):
        from gateway.net import trace

        trace.configure(True, ns.trace_file)
    return cliout.run_command(ns.cmd, lambda: int(ns.fn(ns)), debug=debug or ns.debug,
                              as_json=bool(getattr(ns, "json", False)))


if __name__ == "__main__":
    sys.exit(main())
