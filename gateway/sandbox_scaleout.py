"""``paywire sandbox --scale-out``: two hubs on one PostgreSQL ledger behind HAProxy (lab 6).

The same sandbox (keys, merchants, test cards, bank nodes, webhook receiver), but merchants
reach the hubs the way ``docs/deploy.md`` §3 deploys them: HAProxy on the sandbox's port,
configured with that document's ``haproxy`` block (``gateway/haproxy.py``), passing TLS
through to ``hub-a`` and ``hub-b``, which it checks on their ``/readyz`` health ports. Both
hubs share one PostgreSQL ledger: ``--pg-dsn URL`` (or ``PAYWIRE_PG_DSN``), else a
throwaway server from the ``pgserver`` package, started here and removed on stop.

What this mode keeps apart from the single-hub sandbox, in ``DIR/scale-out/``: the nodes'
configs and logs, HAProxy's configuration, log and stats socket, and the banks' books — they
belong with the PostgreSQL ledger (``paywire audit`` compares the two), not with
``DIR/ledger.db``. With the throwaway server the ledger starts empty at every start, so the
books there are started empty too. The CA, keys and merchants are the sandbox's own.

A hub that dies (a student's ``kill -9``) is reported, not restarted: HAProxy takes it out,
and the other hub serves. ``paywire sandbox restart hub-a`` (SIGUSR1 to the sandbox) starts
it again on the same ports; HAProxy takes it back once its ``/readyz`` answers 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import shutil
import signal
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from gateway.config import HubConfig
from gateway.deployment import Deployment, HubPlan, start_deployment
from gateway.haproxy import BACKEND, HAProxy, ServerState, documented_config, haproxy_path
from gateway.processes import NodeProcess
from gateway.sandbox import (
    CHILD_POLL_S,
    MERCHANT_IDS,
    PORTS_AFTER_HUB,
    PROBE_POLL_S,
    Sandbox,
    SandboxError,
    WebhookReceiver,
    _say,
    sandbox_fraud,
    sandbox_webhooks,
)

SCALE_OUT_DIR = "scale-out"
HUB_NAMES = ("hub-a", "hub-b")
# With a fixed port P: HAProxy on P, bank nodes P+1..P+4, the receiver P+5 (as the single-hub
# sandbox), then the hubs' merchant ports and their health ports.
HUB_PORT_OFFSET = PORTS_AFTER_HUB + 1  # hub-a P+6, hub-b P+7
HEALTH_PORT_OFFSET = HUB_PORT_OFFSET + len(HUB_NAMES)  # hub-a P+8, hub-b P+9
LAST_PORT_OFFSET = HEALTH_PORT_OFFSET + len(HUB_NAMES) - 1
PG_ENV = "PAYWIRE_PG_DSN"
LAB_EXTRA_HINT = "pip install -e '.[lab]'"
HAPROXY_CONFIG = "haproxy.cfg"
HAPROXY_SOCKET = "haproxy.sock"
HAPROXY_LOG = "haproxy.log"
# A Unix socket's path is at most ~100 bytes (HAProxy says 97): a deeper sandbox directory
# gets its stats socket in a private temporary directory instead.
SOCKET_PATH_CHARS_MAX = 97
RESTART_SIGNAL = signal.SIGUSR1  # "start every hub that died again" (paywire sandbox restart)


def env_name(node: str) -> str:
    """``hub-a`` -> ``HUB_A``: the part of a variable name for a node."""
    return node.upper().replace("-", "_")


class LedgerServer:
    """The PostgreSQL the hubs share: the URL given, or a throwaway ``pgserver``."""

    def __init__(self, dsn: str | None) -> None:
        self.given = dsn
        self.url = dsn or ""
        self.pid: int | None = None
        self.data_dir: Path | None = None
        self._server: Any = None

    @property
    def throwaway(self) -> bool:
        return self.given is None

    def start(self) -> str:
        # The hubs need the driver for a PostgreSQL ledger: only looked for here (the
        # ledger is the one module that imports it).
        if importlib.util.find_spec("asyncpg") is None:
            raise SandboxError("the scale-out sandbox needs the PostgreSQL driver: "
                               f"{LAB_EXTRA_HINT}")
        if self.given:
            return self.url
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (root, CI), then uses /tmp.
                warnings.simplefilter("ignore")
                from pgserver.postgres_server import get_server
        except ImportError:
            raise SandboxError("the scale-out sandbox needs PostgreSQL: give --pg-dsn URL (or "
                               f"{PG_ENV}), or install a throwaway server: "
                               f"{LAB_EXTRA_HINT}") from None
        # Outside the sandbox directory: as root, pgserver runs PostgreSQL as its own user
        # and opens every parent of the data directory to it, which the 0700 keys directory
        # must not be.
        self.data_dir = Path(tempfile.mkdtemp(prefix="paywire-sandbox-pg-"))
        self._server = get_server(self.data_dir, cleanup_mode="delete")
        self.url = str(self._server.get_uri())
        self.pid = self._server.get_pid()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # pg_ctl stop, then the data directory removed
            self._server = None
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class ScaleOutSandbox(Sandbox):
    def __init__(self, directory: Path, port: int, auto_pay_s: float | None,
                 pg_dsn: str | None) -> None:
        super().__init__(directory, port, auto_pay_s, plaintext=False)
        self.work = directory / SCALE_OUT_DIR
        self.mode = "scale-out"
        self.starting = ("starting PostgreSQL, 4 bank nodes, hub-a and hub-b, and HAProxy in "
                         "front of them")
        self.stopping = ("stopping HAProxy, the hubs, the bank nodes, PostgreSQL and the "
                         "webhook receiver")
        self.ledger = LedgerServer(pg_dsn)
        self.lb: HAProxy | None = None
        self.lb_port = 0
        self.health: dict[str, int] = {}
        self.socket_dir: Path | None = None

    @property
    def logs_dir(self) -> Path:
        return self.work

    # --- start and stop -----------------------------------------------------------------

    def _start_nodes(self, receiver: WebhookReceiver) -> Deployment:
        from gateway.storage.groupcommit import make_private_dirs

        if haproxy_path() is None:
            raise SandboxError("the scale-out sandbox needs HAProxy, and the haproxy command "
                               "is not on PATH: sudo apt install haproxy (Debian, Ubuntu)")
        make_private_dirs(self.work)
        # HAProxy's port, chosen first and held (bound, not listening) while everything else
        # starts: an ephemeral port picked late could be taken meanwhile by anyone's bind(0).
        hold: socket.socket | None = None
        if not self.port:
            hold = socket.socket()
            hold.bind(("127.0.0.1", 0))
            self.lb_port = hold.getsockname()[1]
        else:
            self.lb_port = self.port
        try:
            return self._start_held(receiver, hold)
        finally:
            if hold is not None:
                hold.close()

    def _start_held(self, receiver: WebhookReceiver, hold: socket.socket | None) -> Deployment:
        from gateway.config import MerchantConfig

        url = self.ledger.start()
        if self.ledger.throwaway:
            # A new, empty ledger: books left by the last start would disagree with it.
            for bank in self.banks:
                for path in self.work.glob(f"{bank.name}.db*"):
                    path.unlink()
        merchants = [MerchantConfig(m, k, receiver.url(m)) for m, k in self.keys.items()]
        nodes = [n for b in self.banks for n in b.nodes]
        plans = [HubPlan(name, self._port(HUB_PORT_OFFSET + i),
                         self._port(HEALTH_PORT_OFFSET + i)) for i, name in enumerate(HUB_NAMES)]
        dep = start_deployment(
            self.work, self.banks, merchants=merchants, fraud=sandbox_fraud(),
            webhooks=sandbox_webhooks(), keys_dir=self.dir, hubs=plans, ledger_url=url,
            bank_ports={n: self._port(1 + i) for i, n in enumerate(nodes)},
            auto_pay_after_s=self.auto_pay_s)
        try:
            self.health = {h.name: int(h.ready_info["health_port"]) for h in dep.hubs}
            config = self.work / HAPROXY_CONFIG
            sock = self.work / HAPROXY_SOCKET
            if len(str(sock)) > SOCKET_PATH_CHARS_MAX:
                self.socket_dir = Path(tempfile.mkdtemp(prefix="paywire-haproxy-"))
                sock = self.socket_dir / HAPROXY_SOCKET
            config.write_text(documented_config(
                self.lb_port, [(h.name, h.port, self.health[h.name]) for h in dep.hubs], sock))
            self.lb = HAProxy(config, sock, self.work / HAPROXY_LOG)
            exe = self.lb.check()
            if hold is not None:
                hold.close()  # HAProxy binds it now
            self.lb.run(exe)
        except BaseException:
            dep.stop()
            raise
        return dep

    def _stop_after_failed_start(self) -> None:
        if self.lb is not None:
            self.lb.stop()
        self.ledger.stop()
        self._remove_socket_dir()

    def _remove_socket_dir(self) -> None:
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def _stop_nodes(self) -> dict[str, int | None]:
        """HAProxy first (no new connection reaches a draining hub), then the hubs and the
        bank nodes, then PostgreSQL (last: the hubs flush their ledger into it)."""
        codes: dict[str, int | None] = {}
        try:
            if self.lb is not None:
                code = self.lb.stop()
                # SIGTERM is HAProxy's "stop now": it exits 0 or 143 (killed by it).
                codes["haproxy"] = 0 if code in (0, 143, -signal.SIGTERM) else code
            codes.update(super()._stop_nodes())
        finally:
            self.ledger.stop()
            self._remove_socket_dir()
        return codes

    # --- ready ----------------------------------------------------------------------------
    def _probe_ports(self) -> list[int]:
        assert self.deployment is not None
        return [h.port for h in self.deployment.hubs]

    async def _probe(self) -> None:
        await super()._probe()
        # Then through HAProxy, once its checks have seen both hubs answer /readyz: at its
        # start it counts a server up before checking it ("UP 1/2", check "* INI").
        assert self.lb is not None
        while not _all_checked_up(self.lb.states()):
            await asyncio.sleep(PROBE_POLL_S)
        from gateway.client import NotFound, connect

        async with connect("127.0.0.1", self.lb_port, merchant_id=MERCHANT_IDS[0],
                           server_key=self.keys[MERCHANT_IDS[0]],
                           certs_dir=self.dir / "certs") as client:
            with contextlib.suppress(NotFound):
                await client.status("sandbox-probe")

    # --- serving: deaths and restarts ----------------------------------------------------------
    async def _watch(self, stop: asyncio.Event) -> None:
        assert self.deployment is not None and self.lb is not None
        loop = asyncio.get_running_loop()
        restart = asyncio.Event()
        loop.add_signal_handler(RESTART_SIGNAL, restart.set)
        try:
            while not stop.is_set():
                waiters = [asyncio.ensure_future(stop.wait()),
                           asyncio.ensure_future(restart.wait())]
                await asyncio.wait(waiters, timeout=CHILD_POLL_S,
                                   return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if stop.is_set():
                    return
                self._report_deaths()
                if restart.is_set():
                    restart.clear()
                    await self._restart_dead_hubs()
        finally:
            loop.remove_signal_handler(RESTART_SIGNAL)

    def _report_deaths(self) -> None:
        assert self.deployment is not None and self.lb is not None
        for proc in [*self.deployment.hubs, *self.deployment.banks]:
            if proc.name in self.reported_dead or proc.alive:
                continue
            self.reported_dead.add(proc.name)
            assert proc.proc is not None
            code = proc.proc.returncode
            how = (f"killed by {signal.Signals(-code).name}" if code < 0
                   else f"exit code {code}")
            if proc.name in HUB_NAMES:
                _say(f"paywire sandbox: {proc.name} died ({how}); HAProxy takes it out "
                     f"when its /readyz stops answering, the other hub serves. Start it "
                     f"again: paywire sandbox restart {proc.name}")
            else:
                _say(f"paywire sandbox: {proc.name} exited ({how}); see {proc.log_path}. "
                     "The rest keeps running; Ctrl-C stops it.")
        if not self.lb.alive and "haproxy" not in self.reported_dead:
            self.reported_dead.add("haproxy")
            _say(f"paywire sandbox: haproxy exited; see {self.lb.log}. Nothing answers on "
                 f"127.0.0.1:{self.lb_port} now; Ctrl-C and start the sandbox again.")

    async def _restart_dead_hubs(self) -> None:
        assert self.deployment is not None
        loop = asyncio.get_running_loop()
        dead = [h for h in self.deployment.hubs if not h.alive]
        if not dead:
            _say("paywire sandbox: restart asked, but every hub is running")
            return
        for old in dead:
            self.reported_dead.add(old.name)  # its exit was on purpose, not a failure
            # The same ports: HAProxy's configuration names them.
            assert isinstance(old.config, HubConfig)
            cfg = dataclasses.replace(old.config, listen_port=old.port,
                                      health_listen=f"127.0.0.1:{self.health[old.name]}")
            new = NodeProcess("hub", cfg, self.work, old.name)
            try:
                await loop.run_in_executor(None, _start_and_wait, new)
            except (RuntimeError, OSError) as exc:
                _say(f"paywire sandbox: {old.name} did not start again: {exc}")
                continue
            hubs = self.deployment.hubs
            hubs[hubs.index(old)] = new
            if self.deployment.hub is old:
                self.deployment.hub = new
            self.reported_dead.discard(old.name)
            pid = new.proc.pid if new.proc else "?"
            _say(f"paywire sandbox: {new.name} started again (pid {pid}, 127.0.0.1:{new.port});"
                 " HAProxy takes it in once its /readyz answers 200")
        self._publish()

    # --- the contract ----------------------------------------------------------------------
    def ledger_ref(self) -> str:
        return self.ledger.url

    def env(self) -> dict[str, str]:
        assert self.deployment is not None and self.lb is not None
        env = super().env()
        env["PAYWIRE_HUB"] = f"127.0.0.1:{self.lb_port}"  # every command goes through HAProxy
        for h in self.deployment.hubs:
            name = env_name(h.name)
            env[f"PAYWIRE_{name}"] = f"127.0.0.1:{h.port}"
            env[f"PAYWIRE_{name}_PID"] = str(h.proc.pid if h.proc else "")
            env[f"PAYWIRE_{name}_HEALTH"] = f"127.0.0.1:{self.health[h.name]}"
        env["PAYWIRE_HAPROXY_PID"] = str(self.lb.pid)
        env["PAYWIRE_HAPROXY_STATS"] = str(self.lb.socket)
        return env

    def describe(self) -> dict[str, Any]:
        assert self.deployment is not None and self.lb is not None
        info = super().describe()
        lb = {"name": "haproxy", "host": "127.0.0.1", "port": self.lb_port, "pid": self.lb.pid,
              "config": str(self.lb.config), "log": str(self.lb.log),
              "stats_socket": str(self.lb.socket), "backend": BACKEND}
        info["hub"] = {**lb, "ledger": self.ledger.url, "plaintext_port": None}
        info["haproxy"] = lb
        info["hubs"] = [{"name": h.name, "host": "127.0.0.1", "port": h.port,
                         "pid": h.proc.pid if h.proc else None,
                         "health_port": self.health[h.name], "config": str(h.config_path),
                         "log": str(h.log_path)} for h in self.deployment.hubs]
        info["ledger"] = {"url": self.ledger.url, "throwaway": self.ledger.throwaway,
                          "pid": self.ledger.pid,
                          "data_dir": str(self.ledger.data_dir) if self.ledger.data_dir
                          else None}
        info["files"]["hub_config"] = str(self.lb.config)
        info["files"]["scale_out"] = str(self.work)
        return info

    def _banner_more(self, info: dict[str, Any]) -> None:
        _say("\nScale-out: merchants reach the hubs through HAProxy (docs/deploy.md §3.4)")
        _say(f"  haproxy    127.0.0.1:{self.lb_port}   pid {self.lb.pid if self.lb else '?'}   "
             f"log {self.work / HAPROXY_LOG}")
        for h in info["hubs"]:
            _say(f"  {h['name']:<10} 127.0.0.1:{h['port']}   pid {h['pid']}   /readyz on "
                 f"127.0.0.1:{h['health_port']}   log {h['log']}")
        where = ("a throwaway PostgreSQL (removed on stop)" if self.ledger.throwaway
                 else "PostgreSQL")
        _say(f"  ledger     {self.ledger.url}   {where}")
        _say("  paywire sandbox status          each hub as HAProxy sees it")
        _say("  kill -9 \"$PAYWIRE_HUB_A_PID\"     then: paywire sandbox restart hub-a")


def _all_checked_up(states: dict[str, ServerState]) -> bool:
    return len(states) == len(HUB_NAMES) and all(
        s.status == "UP" and s.check.startswith("L7OK") for s in states.values())


def _start_and_wait(proc: NodeProcess) -> None:
    proc.start()
    try:
        proc.wait_ready()
    except BaseException:
        proc.terminate()
        raise


# --- paywire sandbox status / restart: for a student, against the running sandbox ----------
WAIT_S_DEFAULT = 60.0
WAIT_POLL_S = 0.1
STATES = ("UP", "DOWN")


def _load(directory: Path) -> dict[str, Any]:
    from gateway.cliout import CliError
    from gateway.labs.checks import Sandbox as Running

    running = Running.load(directory)
    if running is None:
        raise CliError(1, f"no sandbox is running in {directory} (no sandbox.json)",
                       "start one: paywire sandbox (or give --dir)")
    pid = running.info.get("pid")
    try:  # a sandbox.json left by one that was killed may name a pid since reused
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if not isinstance(pid, int) or b"sandbox" not in cmdline:
        raise CliError(1, f"no sandbox is running in {directory} (its sandbox.json names "
                          f"pid {pid}, which is not a sandbox: it was killed)",
                       "start one: paywire sandbox (or give --dir)")
    return running.info


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _states(info: dict[str, Any]) -> dict[str, Any]:
    from gateway.haproxy import read_states

    lb = info.get("haproxy")
    if not lb:
        return {}
    try:
        return read_states(Path(lb["stats_socket"]))
    except OSError:
        return {}


def status_lines(info: dict[str, Any]) -> list[str]:
    """What ``paywire sandbox status`` prints: each process, and in the scale-out mode each
    hub as HAProxy sees it (its stats socket's ``show stat``)."""
    lines = [f"sandbox {info['dir']} ({info.get('mode', 'single')}), pid {info['pid']}"]
    lb = info.get("haproxy")
    states = _states(info)
    if lb:
        up = "running" if _alive(lb["pid"]) else "NOT RUNNING"
        lines.append(f"  haproxy  127.0.0.1:{lb['port']}  pid {lb['pid']}  {up}  "
                     f"backend {lb['backend']}, stats socket {lb['stats_socket']}")
        for h in info.get("hubs", []):
            st = states.get(h["name"])
            seen = (f"haproxy: {st.status} ({st.check}) for {st.last_change_s} s, "
                    f"{st.connections} connection(s) now, {st.total} in all"
                    if st is not None else "haproxy: no answer on the stats socket")
            proc = "running" if _alive(h["pid"]) else "DEAD"
            lines.append(f"  {h['name']:<8} 127.0.0.1:{h['port']}  pid {h['pid']}  {proc}  "
                         f"{seen}")
    else:
        hub = info["hub"]
        proc = "running" if _alive(hub["pid"]) else "DEAD"
        lines.append(f"  {hub['name']:<8} 127.0.0.1:{hub['port']}  pid {hub['pid']}  {proc}")
    for bank in info.get("banks", []):
        for n in bank["nodes"]:
            proc = "running" if _alive(n["pid"]) else "DEAD"
            lines.append(f"  {n['name']:<8} 127.0.0.1:{n['port']}  pid {n['pid']}  {proc}")
    ledger = info.get("ledger")
    if isinstance(ledger, dict):
        lines.append(f"  ledger   {ledger['url']}")
    return lines


def _parse_waits(waits: list[str], hubs: list[str]) -> list[tuple[str, str]]:
    from gateway.cliout import EXIT_USAGE, CliError

    out = []
    for w in waits:
        name, _, state = w.partition("=")
        if name not in hubs or state.upper() not in STATES:
            raise CliError(EXIT_USAGE, f"--wait {w!r} is not HUB=STATE",
                           f"HUB one of {', '.join(hubs) or '(none: not a scale-out sandbox)'}"
                           f", STATE one of {', '.join(STATES)}: e.g. --wait hub-a=DOWN")
        out.append((name, state.upper()))
    return out


def cmd_status(directory: Path, waits: list[str], wait_s: float) -> int:
    """``paywire sandbox status [--wait HUB=STATE ...]``: the table, after waiting (bounded)
    until HAProxy reports each HUB in STATE (UP: taking connections; DOWN: taken out)."""
    info = _load(directory)
    wanted = _parse_waits(waits, [h["name"] for h in info.get("hubs", [])])
    start = time.monotonic()
    while wanted:
        states = _states(info)
        if all(n in states and states[n].status == s for n, s in wanted):
            print(f"haproxy reports {', '.join(f'{n} {s}' for n, s in wanted)} "
                  f"(waited {time.monotonic() - start:.1f} s)")
            break
        if time.monotonic() - start > wait_s:
            for line in status_lines(info):
                print(line)
            print(f"paywire sandbox status: haproxy did not report "
                  f"{', '.join(f'{n} {s}' for n, s in wanted)} within {wait_s:g} s")
            return 1
        time.sleep(WAIT_POLL_S)  # polling HAProxy's stats socket, with the bound above
    for line in status_lines(info):
        print(line)
    return 0


def cmd_restart(directory: Path, name: str | None, wait_s: float) -> int:
    """``paywire sandbox restart HUB``: ask the sandbox to start a hub that died again (on
    its ports), then wait until HAProxy has taken it back in (UP)."""
    from gateway.cliout import EXIT_USAGE, CliError

    info = _load(directory)
    hubs = {h["name"]: h for h in info.get("hubs", [])}
    if not hubs:
        raise CliError(EXIT_USAGE, f"the sandbox in {directory} is not a scale-out sandbox: it "
                                   "restarts nothing", "start it with paywire sandbox --scale-out")
    if name is None or name not in hubs:
        raise CliError(EXIT_USAGE, f"which hub? {name!r} is not one of {', '.join(hubs)}",
                       "paywire sandbox restart hub-a")
    old_pid = hubs[name]["pid"]
    if _alive(old_pid):
        print(f"{name} is running (pid {old_pid}): nothing to restart")
        return 0
    os.kill(int(info["pid"]), RESTART_SIGNAL)
    start = time.monotonic()
    new_pid: object = old_pid
    while time.monotonic() - start < wait_s:
        latest = _load(directory)
        new_pid = next((h["pid"] for h in latest.get("hubs", []) if h["name"] == name), None)
        if new_pid != old_pid and _alive(new_pid):
            break
        time.sleep(WAIT_POLL_S)  # polling sandbox.json (rewritten once the hub is ready)
    else:
        print(f"paywire sandbox restart: {name} did not start again within {wait_s:g} s; see "
              f"the sandbox's output and {hubs[name]['log']}")
        return 1
    print(f"{name} started again: pid {new_pid}, 127.0.0.1:{hubs[name]['port']} "
          f"(PAYWIRE_{env_name(name)}_PID changed: . {directory / 'sandbox.env'})")
    while time.monotonic() - start < wait_s:
        st = _states(info).get(name)
        if st is not None and st.status == "UP" and st.check.startswith("L7OK"):
            print(f"haproxy reports {name} UP (after {time.monotonic() - start:.1f} s)")
            return 0
        time.sleep(WAIT_POLL_S)  # polling HAProxy's stats socket, with the bound above
    print(f"paywire sandbox restart: haproxy did not report {name} UP within {wait_s:g} s")
    return 1
