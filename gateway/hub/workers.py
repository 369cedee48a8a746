"""``paywire hub --workers N``: N hub processes on one machine, sharing one port.

Python runs one event loop per process on one core, so a machine with several cores runs
several hub processes. Each binds the merchant port with ``SO_REUSEPORT`` and the kernel
spreads new connections over them; a connection stays with the process that accepted it.
They are full hubs, each with its own ledger connection, bank links and schedulers, so
they must share a ledger that takes several writers: PostgreSQL (``[ledger] url``), never
a SQLite file (one writer per file: the second hub is refused).

This module is the parent: it starts the workers, restarts one that dies (a bounded number
of times), and stops them all gracefully on SIGTERM/SIGINT (each drains as a single hub
does: GOAWAY, in-flight requests finished, ledger flushed); SIGHUP it passes on to every
worker, each of which reloads the config file itself. It serves no traffic itself and
opens no ledger. Worker i's health endpoint is ``health_listen``'s port + i.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import HubConfig
from gateway.processes import READY_TIMEOUT_S, child_env, module_command

log = logging.getLogger("paywire.workers")

WORKERS_MAX = 64
# A worker that dies is started again, at most RESTARTS_MAX times within RESTART_WINDOW_S;
# past that something is wrong with every start (the database, the certificates) and the
# parent stops everything and exits 1 rather than crash-looping.
RESTARTS_MAX = 5
RESTART_WINDOW_S = 60.0
RESTART_DELAY_S = 0.5  # before a restart: a worker dying at once does not spin the CPU
WATCH_INTERVAL_S = 0.2
# After SIGTERM a worker has its shutdown_grace_s to drain, plus this to close; then SIGKILL.
STOP_EXTRA_S = 15.0
# A worker's exit codes for "cannot start" (docs/cli.md): a config or ledger it refuses, a
# port or ledger in use, or (before the CLI's table) 2. Passed on: restarting cannot help.
START_REFUSED_CODES = frozenset({2, 7, 8})

SQLITE_REFUSAL = ("--workers needs a PostgreSQL ledger ([ledger] url or --ledger "
                  "postgresql://...): a SQLite ledger has one writer per file, so a second "
                  "hub process on it would be refused")


class WorkersError(Exception):
    """The workers cannot be started (one line for the operator)."""


@dataclass
class Worker:
    index: int
    argv: list[str]
    ready_path: Path
    proc: subprocess.Popen[bytes] | None = None
    # The write end of a pipe whose read end the worker watches: when this process dies,
    # however, the kernel closes it and the worker sees end of file and stops.
    lifeline: int | None = None
    health_port: int | None = None
    restarts: deque[float] = field(default_factory=lambda: deque(maxlen=RESTARTS_MAX + 1))

    def start(self) -> None:
        self.ready_path.unlink(missing_ok=True)
        env = {**child_env(), "PYTHONUNBUFFERED": "1"}
        self.close_lifeline()
        read_fd, self.lifeline = os.pipe()  # both not inheritable; pass_fds passes one
        try:
            self.proc = subprocess.Popen(  # logs go where the parent's go
                [*self.argv, "--parent-fd", str(read_fd)], env=env, pass_fds=(read_fd,))
        finally:
            os.close(read_fd)

    def close_lifeline(self) -> None:
        if self.lifeline is not None:
            os.close(self.lifeline)
            self.lifeline = None

    def ready(self) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = json.loads(self.ready_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if self.proc is None or info.get("pid") != self.proc.pid:
            return None  # a previous incarnation's file
        self.health_port = info.get("health_port")
        return info

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


def check_ledger(cfg: HubConfig) -> None:
    if cfg.ledger.url is None:
        raise WorkersError(SQLITE_REFUSAL)
    if cfg.plaintext_listen is not None:
        # Its listener is not shared (no SO_REUSEPORT): the second worker could not bind it.
        raise WorkersError("--workers does not run the lab's plaintext listener "
                           "(plaintext_listen): run a single hub for the labs")


class Supervisor:
    """Starts, watches and stops ``count`` workers of the hub configured in ``config_path``
    (with ``cfg`` already loaded and overridden from the command line)."""

    def __init__(self, cfg: HubConfig, config_path: Path, count: int, *,
                 ledger_arg: str | None, log_level: str, passthrough: list[str]) -> None:
        if not 1 <= count <= WORKERS_MAX:
            raise WorkersError(f"--workers must be between 1 and {WORKERS_MAX}")
        check_ledger(cfg)
        self.cfg = cfg
        self.count = count
        self.stop_requested = threading.Event()
        self._rundir = Path(tempfile.mkdtemp(prefix="paywire-workers-"))
        self._reserved: socket.socket | None = None
        self.port = self._choose_port()
        health: tuple[str, int] | None = None
        if cfg.health_listen is not None:
            from gateway.health import parse_listen

            health = parse_listen(cfg.health_listen)
        self.workers: list[Worker] = []
        for i in range(count):
            argv = [*module_command("gateway.cli"), "--log-level", log_level, "hub",
                    "--config", str(config_path),
                    "--listen", f"{_host(cfg.listen_host)}:{self.port}", "--reuse-port",
                    "--ready-file", str(self._rundir / f"worker-{i}.ready"), *passthrough]
            if ledger_arg:
                argv += ["--ledger", ledger_arg]
            if health is not None:
                port = health[1] + i if health[1] else 0
                argv += ["--health-listen", f"{_host(health[0])}:{port}"]
            self.workers.append(Worker(i, argv, self._rundir / f"worker-{i}.ready"))

    def _choose_port(self) -> int:
        """The shared port. With ``listen_port = 0`` (tests) the parent picks one and keeps
        a bound, never listening socket on it, so the port stays the group's while workers
        come and go; a socket that does not listen gets no connections."""
        if self.cfg.listen_port:
            return self.cfg.listen_port
        family = socket.AF_INET6 if ":" in self.cfg.listen_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.cfg.listen_host, 0))
        self._reserved = sock
        return int(sock.getsockname()[1])

    # --- running ------------------------------------------------------------------------
    def run(self, ready_file: str | None) -> int:
        """Until SIGTERM/SIGINT (exit 0 when every worker drained cleanly), or until a
        worker cannot be kept running (exit 1), or cannot start at all (its exit code: 7 or 8)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_requested.set())
        signal.signal(signal.SIGHUP, lambda *_: self.forward_reload())
        code = 1
        try:
            for w in self.workers:
                w.start()
            started = self._wait_all_ready()
            if started is not None:
                code = started
                return code
            self._write_ready(ready_file)
            log.warning("hub workers: %d processes on port %d (pids %s)", self.count,
                        self.port, ", ".join(str(w.pid) for w in self.workers))
            code = self._watch(ready_file)
        finally:
            codes = self._stop_all()
            if self._reserved is not None:
                self._reserved.close()
            shutil.rmtree(self._rundir, ignore_errors=True)
            if any(c not in (0, None) for c in codes):
                log.warning("hub workers: exit codes %s", codes)
                code = code or 1
        return code

    def _wait_all_ready(self) -> int | None:
        # A worker's start-up includes its recovery, bounded by recovery_at_start_s.
        bound_s = READY_TIMEOUT_S + self.cfg.recovery_at_start_s
        deadline = time.monotonic() + bound_s
        while not all(w.ready() for w in self.workers):
            for w in self.workers:
                assert w.proc is not None
                code = w.proc.poll()
                if code is not None:
                    log.error("hub worker %d (pid %d) exited with %d while starting", w.index,
                              w.proc.pid, code)
                    return code if code in START_REFUSED_CODES else 1
            if self.stop_requested.wait(WATCH_INTERVAL_S):
                return 0
            if time.monotonic() > deadline:
                log.error("hub workers: not all ready after %g s", bound_s)
                return 1
        return None

    def _watch(self, ready_file: str | None) -> int:
        published = [w.pid for w in self.workers]
        while not self.stop_requested.wait(WATCH_INTERVAL_S):
            for w in self.workers:
                assert w.proc is not None
                code = w.proc.poll()
                if code is None:
                    continue
                now = time.monotonic()
                w.restarts.append(now)
                recent = sum(1 for t in w.restarts if now - t <= RESTART_WINDOW_S)
                if recent > RESTARTS_MAX:
                    log.error("hub worker %d died %d times within %g s: stopping all", w.index,
                              recent, RESTART_WINDOW_S)
                    return 1
                log.error("hub worker %d (pid %d) exited with %d: restarting", w.index,
                          w.proc.pid, code)
                if self.stop_requested.wait(RESTART_DELAY_S):
                    return 0
                w.start()
            pids = [w.pid for w in self.workers]
            if ready_file and pids != published and all(w.ready() for w in self.workers):
                self._write_ready(ready_file)  # a restarted worker's pid and health port
                published = pids
        return 0

    def forward_reload(self) -> list[int]:
        """SIGHUP: every worker re-reads the config file (``Hub.reload``); this process
        reads nothing. Only to workers that are ready: one still starting reads the file
        as it is now anyway, and before its hub is built a SIGHUP would end it. Returns the
        pids signalled."""
        sent = []
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None and w.ready() is not None:
                w.proc.send_signal(signal.SIGHUP)
                sent.append(w.proc.pid)
        log.warning("hub workers: SIGHUP forwarded to %d of %d workers (pids %s)", len(sent),
                    self.count, ", ".join(map(str, sent)) or "none")
        return sent

    def _write_ready(self, ready_file: str | None) -> None:
        if not ready_file:
            return
        info = {"port": self.port, "pid": os.getpid(),
                "workers": [{"pid": w.pid, "health_port": w.health_port}
                            for w in self.workers]}
        tmp = Path(ready_file + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(ready_file)

    def _stop_all(self) -> list[int | None]:
        """SIGTERM to every worker at once (they drain in parallel), then wait; SIGKILL
        what is still running after its grace."""
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.shutdown_grace_s + STOP_EXTRA_S
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("hub worker pid %d did not stop in time: killed", proc.pid)
                proc.kill()
                proc.wait()
        for w in self.workers:
            w.close_lifeline()
        return [w.proc.returncode if w.proc is not None else None for w in self.workers]


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
