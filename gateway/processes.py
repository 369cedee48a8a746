"""Starting nodes as child processes and waiting until they listen (demo, tests, labs).

A node started with ``--ready-file F`` writes ``{"port": N, "pid": P}`` to F once it accepts
connections, so callers can use ephemeral ports (``listen_port = 0``) and never race.
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

from gateway.config import BankNodeConfig, HubConfig, dump_toml

READY_TIMEOUT_S = 30.0


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

    def start(self) -> NodeProcess:
        self.config_path.write_text(dump_toml(self.config))
        self.ready_path.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", self.kind, "--config", str(self.config_path),
             "--ready-file", str(self.ready_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
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


def write_ready(path: str | None, port: int) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
        tmp.replace(path)
