"""HAProxy in front of several hubs, configured exactly as ``docs/deploy.md`` §3.4 says.

The configuration is not written twice: :func:`documented_config` takes the ``haproxy``
block of ``docs/deploy.md`` (TCP mode, TLS passed through, ``/readyz`` checks on each hub's
health port) and replaces only what ties it to the document's machines — the ``bind``
address and the ``server`` lines — and adds a ``global`` section with a stats socket. The
scale-out sandbox (``paywire sandbox --scale-out``) and ``tests/test_haproxy.py`` both run
what it returns, so the documented configuration is the one that is exercised.

:class:`HAProxy` runs ``haproxy -db`` (foreground) as a child process and reads each
server's state from the stats socket (``show stat``), as an operator does with
``echo "show stat" | socat stdio SOCKET``.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEPLOY_DOC = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
BACKEND = "paywire_hubs"
DOC_BIND = "bind 0.0.0.0:7400"
CHECK_TIMEOUT_S = 60.0  # ``haproxy -c`` of the configuration
STOP_TIMEOUT_S = 30.0
STATS_TIMEOUT_S = 10.0
STATS_BYTES_MAX = 1024 * 1024  # "show stat" of one frontend and a few servers is ~2 KB
INSTALL_HINT = "install HAProxy (Debian/Ubuntu: sudo apt install haproxy)"


class HAProxyError(Exception):
    """HAProxy is missing, its configuration is refused, or it exited."""


def haproxy_path() -> str | None:
    return shutil.which("haproxy")


def documented_config(bind_port: int, servers: list[tuple[str, int, int]],
                      stats_socket: Path, bind_host: str = "127.0.0.1",
                      doc: Path = DEPLOY_DOC) -> str:
    """docs/deploy.md's HAProxy configuration with these addresses: the frontend bound to
    ``bind_host:bind_port``, and one ``server`` line per (name, port, health port) on
    127.0.0.1, written the way the document writes them. A ``global`` section (logs to
    stdout, no SO_REUSEPORT, the stats socket, admin level) stands in for Debian's."""
    try:
        text = doc.read_text()
    except OSError as exc:
        raise HAProxyError(f"cannot read {doc} ({exc.strerror}): the HAProxy configuration "
                           "is the one docs/deploy.md documents; run from a clone") from None
    found = re.search(r"^```haproxy\n(.*?)^```", text, re.S | re.M)
    if found is None:
        raise HAProxyError(f"{doc} has no haproxy block")
    lines = found.group(1).splitlines()
    documented = [line for line in lines if line.strip().startswith("server ")]
    if not documented or not all(
            re.fullmatch(r"\s*server \S+ [\w.]+:\d+ check port \d+\s*", line)
            for line in documented):
        raise HAProxyError(f"{doc}: the haproxy block's server lines are not "
                           f"'server NAME HOST:PORT check port P': {documented}")
    kept = "\n".join(line for line in lines if not line.strip().startswith("server "))
    if DOC_BIND not in kept:
        raise HAProxyError(f"{doc}: the haproxy block does not '{DOC_BIND}'")
    kept = kept.replace(DOC_BIND, f"bind {bind_host}:{bind_port}")
    if not kept.rstrip().splitlines()[-1].strip().startswith(("#", "default-server")):
        raise HAProxyError(f"{doc}: the backend with its server lines must end the block")
    ours = "".join(f"\n    server {name} 127.0.0.1:{port} check port {health}"
                   for name, port, health in servers)
    # noreuseport: a port another process listens on is an error at start, not a port
    # silently shared with it (Linux would spread connections over both).
    glob = ("global\n    log stdout format raw local0\n    maxconn 4000\n    noreuseport\n"
            f"    stats socket {stats_socket} mode 600 level admin\n\n")
    return glob + kept + ours + "\n"


@dataclass(frozen=True)
class ServerState:
    """One backend server as HAProxy's stats show it."""

    name: str
    status: str  # UP, DOWN, "UP 1/2" (going down), "DOWN 1/2" (coming up), MAINT, no check
    connections: int  # current (scur)
    total: int  # connections since start (stot)
    check: str  # last check's status: L7OK, L4CON (refused), L7STS (not 200) ...
    last_change_s: int  # seconds since the status last changed (lastchg)

    @property
    def up(self) -> bool:
        return self.status.startswith("UP")

    @property
    def down(self) -> bool:
        return self.status.startswith("DOWN")


def read_states(stats_socket: Path, timeout_s: float = STATS_TIMEOUT_S) -> dict[str, ServerState]:
    """Each server of the hubs' backend, from ``show stat`` on the stats socket. Raises
    OSError when nothing answers on it (HAProxy not running)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout_s)
        s.connect(str(stats_socket))
        s.sendall(b"show stat\n")
        data = b""
        while len(data) < STATS_BYTES_MAX and (chunk := s.recv(65536)):
            data += chunk
    rows = csv.DictReader(io.StringIO(data.decode(errors="replace").lstrip("# ")))
    out: dict[str, ServerState] = {}
    for r in rows:
        if r.get("pxname") != BACKEND or r.get("svname") in ("FRONTEND", "BACKEND", None):
            continue
        out[r["svname"]] = ServerState(
            r["svname"], r.get("status", ""), _int(r.get("scur")), _int(r.get("stot")),
            r.get("check_status", ""), _int(r.get("lastchg")))
    return out


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class HAProxy:
    """HAProxy in the foreground (``-db``) with the documented configuration; its output
    (connection logs, server state changes) appended to ``log``."""

    def __init__(self, config: Path, stats_socket: Path, log: Path) -> None:
        self.config = config
        self.socket = stats_socket
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def check(self) -> str:
        """``haproxy -c``: the configuration is valid. Returns the command's path."""
        exe = haproxy_path()
        if exe is None:
            raise HAProxyError(f"the haproxy command is not on PATH: {INSTALL_HINT}")
        check = subprocess.run([exe, "-c", "-f", str(self.config)], capture_output=True,
                               text=True, timeout=CHECK_TIMEOUT_S)
        if check.returncode != 0:
            raise HAProxyError(f"haproxy refuses {self.config}: "
                               f"{(check.stdout + check.stderr).strip()}")
        return exe

    def start(self) -> HAProxy:
        """Check the configuration, then run HAProxy (it binds at once)."""
        return self.run(self.check())

    def run(self, exe: str) -> HAProxy:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([exe, "-db", "-f", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def states(self) -> dict[str, ServerState]:
        """Each server's state; empty while the stats socket does not answer yet."""
        if self.proc is not None and self.proc.poll() is not None:
            raise HAProxyError(f"haproxy exited with {self.proc.returncode}; see {self.log}")
        try:
            return read_states(self.socket)
        except OSError:
            return {}

    def stop(self) -> int | None:
        """SIGTERM (HAProxy stops at once, closing its connections), SIGKILL if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
