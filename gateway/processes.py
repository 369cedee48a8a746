"""Starting nodes as child processes and waiting until they listen (demo, tests, labs).

A node started with ``--ready-file F`` writes ``{"port": N, "pid": P}`` to F once it accepts
connections, so callers can use ephemeral ports (``listen_port = 0``) and never race.

Every Python child of ours (nodes, storage writers) is started by ``module_command``:
``python -P -m MODULE``. Plain ``python -m`` puts the working directory first on
``sys.path``, so a ``gateway/`` folder wherever the operator happens to stand would run
instead of the installed code, inside a process that holds the ledger and the keys. ``-P``
(Python >= 3.11) leaves the working directory out; the rest of the environment is kept
(``-I`` would also drop ``PYTHONUNBUFFERED`` and friends, which the nodes rely on).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gateway
from gateway.config import BankNodeConfig, HubConfig, dump_toml

READY_TIMEOUT_S = 30.0
# Configs carry merchants' server keys; logs and ready files are the node's own business.
PRIVATE_FILE_MODE = 0o600


def module_command(module: str) -> list[str]:
    """argv that runs ``module`` of this installation in a fresh interpreter, with the
    working directory kept off ``sys.path`` (see the module docstring)."""
    return [sys.executable, "-P", "-m", module]


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child started with ``module_command``.

    A ``-P`` child finds ``gateway`` where this process did (``pip install``, ``make``)
    and nothing is added, with one exception: when the code this process runs *is* the
    working directory (a source checkout, used in place: ``python -m gateway.cli`` there,
    or the test suite, whose writers unpickle functions of ``tests``), ``-P`` would hide it,
    so the checkout's root is named explicitly and the child runs the same code as this
    process. A ``gateway/`` anywhere else the operator stands is never on the child's path.
    """
    env = dict(os.environ if env is None else env)
    root = Path(gateway.__file__).resolve().parent.parent
    if Path.cwd().resolve() == root:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return env


def open_private(path: Path, flags: int) -> int:
    """``os.open`` with mode 0600, also for a file that existed with wider permissions."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)
    return fd


class NodeProcess:
    def __init__(self, kind: str, config: HubConfig | BankNodeConfig, workdir: Path,
                 name: str, log_path: Path | None = None) -> None:
        self.kind = kind
        self.config = config
        self.name = name
        self.config_path = workdir / f"{name}.toml"
        self.ready_path = workdir / f"{name}.ready"
        self.log_path = log_path or workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.ready_info: dict[str, Any] = {}  # the ready file's content, once ready

    def start(self) -> NodeProcess:
        with os.fdopen(open_private(self.config_path, os.O_WRONLY | os.O_TRUNC), "w") as f:
            f.write(dump_toml(self.config))
        self.ready_path.unlink(missing_ok=True)
        log = os.fdopen(open_private(self.log_path, os.O_WRONLY | os.O_APPEND), "ab")
        env = {**child_env(), "PYTHONUNBUFFERED": "1"}
        try:
            self.proc = subprocess.Popen(
                [*module_command("gateway.cli"), self.kind, "--config", str(self.config_path),
                 "--ready-file", str(self.ready_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                                   f"see {self.log_path}:\n{self.tail()}")
            if self.ready_path.exists():
                try:
                    info: dict[str, Any] = json.loads(self.ready_path.read_text())
                except json.JSONDecodeError:
                    time.sleep(0.02)
                    continue
                self.port = int(info["port"])
                self.ready_info = info
                return self.port
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def terminate(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: the crash the reliability rules are written for."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def write_ready(path: str | None, port: int, extra: dict[str, Any] | None = None) -> None:
    """``extra``: more facts about the node (a hub's ``health_port``, ``plaintext_port``),
    read back from ``NodeProcess.ready_info``."""
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps({**(extra or {}), "port": port, "pid": os.getpid()}))
        tmp.replace(path)
