"""``paywire lab capture``: capture the loopback while one command runs, then stop.

By hand this is two terminals: ``dumpcap -i lo -f 'tcp port P' -w FILE`` in one, the client
in the other, Ctrl-C on dumpcap once the client is done. This does the same in one command,
with the two waits a person does by eye done by observation instead:

- the command starts only once dumpcap is capturing (it prints ``File: ...`` when the
  interface is open and the file created; before that, packets are lost — the TCP and TLS
  handshakes first);
- dumpcap is stopped only once every TCP connection in the file has ended (a FIN or RST from
  both sides, read back from the file itself with ``gateway.labs.pcap``), so the capture
  holds the last RESPONSE and the close, not whatever happened to be written by then.

Both waits are bounded. It prints the dumpcap command it runs, so the student sees what
to type on their own machine.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gateway.labs.pcap import Connection, read_capture

CAPTURE_START_S_MAX = 30.0
COMMAND_S_MAX = 120.0
CAPTURE_END_S_MAX = 30.0
POLL_S = 0.1
INSTALL_HINT = ("install Wireshark's command-line tools: Debian/Ubuntu `sudo apt-get install "
                "tshark` (it brings dumpcap), Fedora `sudo dnf install wireshark-cli`, macOS "
                "`brew install wireshark`")
PERMISSION_HINT = ("capturing needs root or the capture capability: run as root (CI does), "
                   "or on your own laptop `sudo dpkg-reconfigure wireshark-common` (answer Yes), "
                   "`sudo usermod -aG wireshark $USER` and log in again; or `sudo setcap "
                   "cap_net_raw,cap_net_admin=eip $(command -v dumpcap)`")


PROBE_S_MAX = 30.0


def capture_problem(interface: str = "lo") -> str | None:
    """Why nothing can be captured on ``interface`` here (dumpcap missing, or no permission to
    open the interface), or ``None`` when capturing works. ``dumpcap -L`` opens the interface
    exactly as a capture would, and captures nothing."""
    dumpcap = shutil.which("dumpcap")
    if dumpcap is None:
        return f"dumpcap is not installed; {INSTALL_HINT}"
    try:
        probe = subprocess.run([dumpcap, "-i", interface, "-L"], capture_output=True,
                               timeout=PROBE_S_MAX, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"dumpcap cannot run: {exc}"
    if probe.returncode != 0:
        said = probe.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"dumpcap cannot open {interface}: {said[0] if said else probe.returncode}; " \
            + PERMISSION_HINT
    return None


def parse_port(value: str) -> int:
    """``7406``, ``127.0.0.1:7406`` or ``[::1]:7406`` (so ``$PAYWIRE_PLAINTEXT_HUB`` works)."""
    port = value.rpartition(":")[2]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not a port or HOST:PORT")
    return int(port)


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL_S)  # polling dumpcap's output and file, bounded by the deadline
    return False


def _connections(path: Path) -> list[Connection]:
    try:
        return read_capture(path).connections()
    except OSError:  # not created yet, or removed under us
        return []


def _all_closed(path: Path) -> bool:
    conns = _connections(path)
    return bool(conns) and all(c.closed for c in conns)


def run_capture(port_text: str, out: Path, command: list[str], interface: str = "lo") -> int:
    """0 when the command succeeded and the capture holds its connections, closed; the
    command's exit code if it failed; 2 when nothing could be captured."""
    try:
        port = parse_port(port_text)
    except ValueError as exc:
        print(f"paywire lab capture: {exc}", file=sys.stderr)
        return 2
    if not command:
        print("paywire lab capture: give the command to run after --", file=sys.stderr)
        return 2
    dumpcap = shutil.which("dumpcap")
    if dumpcap is None:
        print(f"paywire lab capture: dumpcap is not installed; {INSTALL_HINT}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    argv = [dumpcap, "-i", interface, "-f", f"tcp port {port}", "-w", str(out)]
    print("capturing: " + shlex.join(["dumpcap", *argv[1:]]), flush=True)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)

        def said() -> str:
            err.seek(0)
            return err.read().decode("utf-8", "replace")

        try:
            started = _wait(lambda: "\nFile: " in said() or proc.poll() is not None,
                            CAPTURE_START_S_MAX)
            if proc.poll() is not None or not started:
                text = said().strip()
                hint = PERMISSION_HINT if ("ermission" in text or "not permitted" in text
                                           or "ould not" in text) else ""
                print(f"paywire lab capture: dumpcap did not start capturing: {text[-800:]}"
                      + (f"\n{hint}" if hint else ""), file=sys.stderr)
                return 2
            try:
                done = subprocess.run(command, timeout=COMMAND_S_MAX, env=os.environ.copy())
                code = done.returncode
            except subprocess.TimeoutExpired:
                print(f"paywire lab capture: the command did not finish within "
                      f"{COMMAND_S_MAX:g} s; stopping the capture", file=sys.stderr)
                code = 1
            except OSError as exc:
                print(f"paywire lab capture: cannot run {command[0]!r}: {exc}", file=sys.stderr)
                return 2
            # A command that failed without connecting leaves nothing to wait for.
            nothing = code != 0 and not _connections(out)
            if not nothing and not _wait(lambda: _all_closed(out), CAPTURE_END_S_MAX):
                print("paywire lab capture: not every connection was seen to close within "
                      f"{CAPTURE_END_S_MAX:g} s; the capture may lack its end", file=sys.stderr)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # dumpcap writes out what it has and exits
                try:
                    proc.wait(CAPTURE_END_S_MAX)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    cap = read_capture(out)
    conns = cap.connections()
    print(f"captured {cap.packets} packets, {len(conns)} TCP connection(s) on port {port} "
          f"in {out}")
    return code
