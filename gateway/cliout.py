"""How ``paywire`` talks to people: exit codes, one-line errors, progress, ``--json``.

Every command runs inside ``run_command``: what goes wrong because of the user's input, the
environment or the hub's answer ends as one line on stderr that says what is wrong and what
to do, and an exit code of its kind (``EXIT_CODES``, documented in docs/cli.md), so a script
can tell "the hub is down" from "the card was declined" without parsing text. A traceback is
printed only with ``--debug``: to an operator it is noise that hides the one line that
matters, and an unexpected exception (a bug) still says how to get it.
"""

from __future__ import annotations

import errno
import json
import os
import ssl
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

EXIT_OK = 0
EXIT_FAILED = 1        # the command ran; its answer is "no" (audit findings, a failed check)
EXIT_USAGE = 2         # the command line is wrong (argparse's own code)
EXIT_REFUSED = 3       # the hub refused the request (NOT_FOUND, INVALID_FIELD, ...)
EXIT_DECLINED = 4      # a charge was answered, and not approved (deny, failure)
EXIT_UNREACHABLE = 5   # the hub or bank node could not be reached in time
EXIT_AUTH = 6          # permanent: certificate or credentials refused
EXIT_CONFIG = 7        # a configuration, secrets, certificate or data file is wrong or missing
EXIT_IN_USE = 8        # a port or a ledger is already taken by another process
EXIT_UNKNOWN = 9       # no answer in time: the outcome is unknown (ask status, or resend)
EXIT_INTERNAL = 70     # a bug (sysexits' EX_SOFTWARE): rerun with --debug and report it
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)

# code -> (name, meaning): the table docs/cli.md shows (tests/test_cli_errors.py checks both
# agree, so the documentation cannot drift from the code).
EXIT_CODES: dict[int, tuple[str, str]] = {
    EXIT_OK: ("ok", "done"),
    EXIT_FAILED: ("failed", "the command ran and its answer is no: audit findings, a lab "
                            "check failed, nothing to redeliver, no payment matched"),
    EXIT_USAGE: ("usage", "the command line is wrong (unknown option, missing argument)"),
    EXIT_REFUSED: ("refused", "the hub refused the request (NOT_FOUND, INVALID_FIELD, "
                              "DUPLICATE_ORDER, ...): nothing changed"),
    EXIT_DECLINED: ("declined", "the charge was recorded but not approved (deny, failure)"),
    EXIT_UNREACHABLE: ("unreachable", "no hub or bank node answered at the address tried "
                                      "within --timeout-s"),
    EXIT_AUTH: ("auth", "certificate or credentials refused for good (unknown CA, unknown "
                        "merchant, bad signature): retrying cannot help"),
    EXIT_CONFIG: ("config", "a configuration, secrets, certificate or ledger file is wrong "
                            "or missing"),
    EXIT_IN_USE: ("in-use", "the port or the ledger is held by another process"),
    EXIT_UNKNOWN: ("outcome-unknown", "no answer in time: ask `paywire status`, or send the "
                                      "same request again (it is idempotent)"),
    EXIT_INTERNAL: ("internal", "an unexpected error (a bug): rerun with --debug and report "
                                "the traceback"),
    EXIT_INTERRUPTED: ("interrupted", "stopped by Ctrl-C"),
}

CONNECT_TIMEOUT_S_DEFAULT = 5.0  # how long a one-off command tries to reach the hub


class CliError(Exception):
    """A user-facing failure: ``what`` went wrong, ``todo`` says how to fix it."""

    def __init__(self, code: int, what: str, todo: str = "") -> None:
        super().__init__(what)
        self.code, self.what, self.todo = code, what, todo

    def line(self) -> str:
        return f"{self.what}: {self.todo}" if self.todo else self.what


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def existing_file(path: Path, what: str, todo: str) -> Path:
    """``path`` if it is a file; else a config error naming it (checked up front, because
    SQLite would create an empty ledger where a typo points, or fail with "unable to open
    database file", which names nothing)."""
    if not path.is_file():
        raise CliError(EXIT_CONFIG, f"no {what} at {path}", todo)
    return path


def _is_cert_verify(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLCertVerificationError) or (
        "CERTIFICATE_VERIFY_FAILED" in str(exc))


def classify(exc: BaseException) -> CliError:
    """What an exception means to the person at the terminal."""
    from gateway.config import ConfigError
    from gateway.pki import PkiError
    from gateway.storage.lockfile import LockHeld
    from protocol.errors import ConnectionLost, OutcomeUnknown, RemoteError

    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, RemoteError):
        return request_error(exc)
    if _is_cert_verify(exc):
        return CliError(EXIT_AUTH, f"certificate not accepted: {one_line(str(exc))}",
                        "use ca.crt and certificates of this deployment (--certs, "
                        "PAYWIRE_CERTS)")
    if isinstance(exc, ConnectionLost) and exc.message.startswith("no hub reachable"):
        # The client's own words when it never got a connection (gateway/client/client.py):
        # nothing was sent, so this is "unreachable", not an unknown outcome.
        return CliError(EXIT_UNREACHABLE, f"cannot reach the hub: {one_line(exc.message)}",
                        "is it running? check --hub / PAYWIRE_HUB")
    if isinstance(exc, OutcomeUnknown):
        return CliError(EXIT_UNKNOWN, f"no answer: {one_line(exc.message)}",
                        "ask `paywire status ORDER_ID`, or send the same request again")
    if isinstance(exc, LockHeld):
        return CliError(EXIT_IN_USE, one_line(str(exc)),
                        "stop the other process first, or use another ledger")
    if isinstance(exc, ConfigError | PkiError):
        return CliError(EXIT_CONFIG, one_line(str(exc)))
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return CliError(EXIT_IN_USE, f"address already in use: {one_line(str(exc))}",
                        "stop what listens there, or choose another port (--listen "
                        "HOST:PORT, or listen_port in the config)")
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        name = exc.filename or one_line(str(exc))
        return CliError(EXIT_CONFIG, f"no such file: {name}",
                        "check the path in the command or the config")
    if isinstance(exc, PermissionError):
        return CliError(EXIT_CONFIG, f"permission denied: {exc.filename or exc}",
                        "check the file's owner and mode")
    if isinstance(exc, ssl.SSLError):
        return CliError(EXIT_AUTH, f"TLS refused: {one_line(str(exc))}",
                        "use ca.crt and certificates of this deployment (--certs)")
    if isinstance(exc, TimeoutError | ConnectionError):
        return CliError(EXIT_UNREACHABLE, f"no connection: {one_line(repr(exc))}",
                        "check the address and that the node is running")
    return CliError(EXIT_INTERNAL, f"unexpected error: {type(exc).__name__}: "
                                   f"{one_line(str(exc))}",
                    "rerun with --debug for the traceback, and report it")


def request_error(exc: Any) -> CliError:
    """A ``RequestError`` the hub answered, by family: credentials are permanent (exit 6),
    an unknown outcome is not a refusal (exit 9), everything else refused the request."""
    from protocol.errors import ErrorCode

    code = exc.code
    text = f"{code.name} ({int(code)}): {one_line(exc.message)}"
    if exc.field:
        text += f" [field {exc.field}]"
    if code is ErrorCode.UNAUTHENTICATED:
        return CliError(EXIT_AUTH, f"refused by the hub: {text}",
                        "check --merchant / PAYWIRE_MERCHANT and its certificate")
    if code is ErrorCode.BAD_SIGNATURE:
        return CliError(EXIT_AUTH, f"refused by the hub: {text}",
                        "check --server-key / PAYWIRE_SERVER_KEY (the merchant's server key)")
    if 300 <= int(code) < 400:
        return CliError(EXIT_AUTH, f"refused by the hub: {text}",
                        "check the merchant id, its server key and certificate")
    if code in (ErrorCode.OUTCOME_UNKNOWN, ErrorCode.TIMEOUT):
        return CliError(EXIT_UNKNOWN, f"no outcome yet: {text}",
                        "ask `paywire status ORDER_ID` later, or send the same request again")
    hint = {ErrorCode.NOT_FOUND: "check the order id and the merchant",
            ErrorCode.DUPLICATE_ORDER: "use a new order id for a different charge",
            ErrorCode.INVALID_FIELD: "fix that argument"}.get(code, "nothing was changed")
    return CliError(EXIT_REFUSED, f"refused by the hub: {text}", hint)


def run_command(name: str, fn: Callable[[], int], *, debug: bool = False,
                as_json: bool = False, stderr: TextIO | None = None) -> int:
    """Run one command; turn what it raises into one line and an exit code. With
    ``as_json`` the line is a JSON object (``error``, ``exit_code``, ``message``, ``todo``)
    for scripts; with ``debug`` the traceback follows it."""
    err = stderr or sys.stderr
    try:
        return fn()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # argparse inside a command, or an old-style refusal
        if isinstance(exc.code, str):
            err.write(f"{exc.code}\n")
            return EXIT_USAGE
        return int(exc.code or 0)
    except BrokenPipeError:
        # ``paywire ... | head``: the reader left. Nothing to say; point stdout at devnull so
        # the flush at exit does not fail again (the Python docs' recipe for SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # every failure ends as one line and a code
        failure = classify(exc)
        if as_json:
            err.write(json.dumps({"error": EXIT_CODES[failure.code][0],
                                  "exit_code": failure.code, "message": failure.what,
                                  "todo": failure.todo, **_remote_fields(exc)}) + "\n")
        else:
            err.write(f"paywire {name}: {failure.line()}\n")
        if debug:
            traceback.print_exception(exc, file=err)
        err.flush()
        return failure.code


def _remote_fields(exc: BaseException) -> dict[str, Any]:
    from protocol.errors import RemoteError

    if isinstance(exc, RemoteError):
        return {"code": exc.code.name, "code_number": int(exc.code), "field": exc.field}
    return {}


def print_json(value: Any, *, compact: bool) -> None:
    """A result for scripts: one JSON object per line with ``compact`` (``--json``), else
    indented (the readable default of the transaction commands)."""
    if compact:
        print(json.dumps(value, separators=(",", ":"), default=list), flush=True)
    else:
        print(json.dumps(value, indent=2, default=list), flush=True)


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Labelled columns, numbers right-aligned with thousands separators."""
    cells = [[f"{c:,}" if isinstance(c, int) and not isinstance(c, bool) else str(c)
              for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows)
               for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w)
                         for c, w, n in zip(row, widths, numeric, strict=True)).rstrip()

    print(fmt(headers))
    for row in cells:
        print(fmt(row))


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class Progress:
    """Progress of one stage. On a terminal: a bar (or a counter, without a ``total``)
    redrawn in place with ``\\r``. Anywhere else (a log, a pipe, CI): nothing while it runs
    and one line when the stage ends, because ``\\r`` in a file makes one endless line."""

    label: str
    total: int | None = None
    stream: TextIO | None = None
    width: int = 40
    redraws_max: int = 50  # on a terminal: at most this many redraws per stage

    def __post_init__(self) -> None:
        self.out: TextIO = self.stream or sys.stderr
        self.tty = is_terminal(self.out)
        self.done = 0
        self.start = time.perf_counter()
        self.finished = False
        self._last_drawn = -1

    def step(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int) -> None:
        self.done = done
        if self.total is not None and done >= self.total:
            self.finish()
            return
        if not self.tty:
            return
        every = max(1, (self.total or 0) // self.redraws_max) if self.total else 1
        if done - self._last_drawn >= every:
            self._last_drawn = done
            self.out.write("\r" + self._text())
            self.out.flush()

    def _rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def _text(self) -> str:
        if self.total:
            filled = int(self.width * min(self.done, self.total) / self.total)
            return (f"  {self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                    f"{self.done:,}/{self.total:,}  {self._rate():,.0f}/s")
        return f"  {self.label}: {self.done:,} done  {self._rate():,.0f}/s"

    def finish(self) -> None:
        """End the stage: the final state on its own line (once)."""
        if self.finished:
            return
        self.finished = True
        elapsed = time.perf_counter() - self.start
        if self.tty:
            self.out.write("\r" + self._text() + "\n")
        else:
            total = f"/{self.total:,}" if self.total else ""
            self.out.write(f"  {self.label}: {self.done:,}{total} done in {elapsed:.1f} s  "
                           f"{self._rate():,.0f}/s\n")
        self.out.flush()
