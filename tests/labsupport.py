"""A running ``paywire sandbox`` for the lab tests, started and stopped like a student
would: ``paywire sandbox --dir D`` in its own process group, ready when it has written
``sandbox.json`` (it writes it only once everything answers), stopped with SIGINT (Ctrl-C)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.labs import checks
from gateway.labs.checks import Sandbox

SANDBOX_START_S_MAX = 120.0  # a cold start on a loaded 2-core machine: certs, 5 processes
SANDBOX_STOP_S_MAX = 60.0
POLL_S = 0.05


def skip_without_tools(number: int, for_handout: bool = False) -> None:
    """A lab whose module says what this machine lacks for it (``missing_tools``: lab 3
    needs tshark, and capturing for its handout) is skipped with that reason."""
    try:
        missing = getattr(checks.lab_module(number), "missing_tools", None)
    except ImportError:
        return  # not written yet on this branch: the test itself reports it
    reason = missing(for_handout) if missing is not None else None
    if reason:
        pytest.skip(f"lab {number}: {reason}")


def paywire_bin() -> str:
    """The ``paywire`` script next to the interpreter running the tests (the .venv's)."""
    return str(Path(sys.executable).parent / "paywire")


@contextmanager
def scale_out_options() -> Iterator[list[str]]:
    """``paywire sandbox`` options for the scale-out mode: skipped (with the reason) without
    haproxy; with ``PAYWIRE_PG_DSN`` a fresh database on that server (``--pg-dsn``, dropped
    afterwards), else none: the sandbox starts its own throwaway PostgreSQL (pgserver)."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy; .ci/run "
                    "installs it on CI)")
    pytest.importorskip("asyncpg", reason="the scale-out sandbox needs pip install '.[lab]'")
    admin = os.environ.get("PAYWIRE_PG_DSN")
    if not admin:
        pytest.importorskip("pgserver", reason="the scale-out sandbox needs pip install "
                                               "'.[lab]' (or PAYWIRE_PG_DSN)")
        yield ["--scale-out"]
        return
    from tests.pgsupport import database

    with database(admin) as dsn:
        yield ["--scale-out", "--pg-dsn", dsn]


@contextmanager
def running_sandbox(directory: Path, *options: str) -> Iterator[Sandbox]:
    """``options``: more of ``paywire sandbox``'s (``--scale-out``)."""
    log = open(directory.parent / f"{directory.name}.out", "w")  # noqa: SIM115
    proc = subprocess.Popen([paywire_bin(), "sandbox", "--dir", str(directory),
                             "--port", "0", *options], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + SANDBOX_START_S_MAX
        sandbox = Sandbox.load(directory)
        while sandbox is None:
            if proc.poll() is not None:
                raise AssertionError(f"paywire sandbox exited with {proc.returncode}: "
                                     f"{Path(log.name).read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"paywire sandbox not ready after "
                                     f"{SANDBOX_START_S_MAX:g} s")
            time.sleep(POLL_S)  # polling the readiness file, with a deadline
            sandbox = Sandbox.load(directory)
        yield sandbox
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(SANDBOX_STOP_S_MAX)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
