"""The CLI speaks to people (issue 15): every user error is one line that says what to do,
an exit code of its kind (docs/cli.md), no traceback, and a bounded time to fail; plus
``--version``, ``--json`` and progress that is line-based when not on a terminal.

Real processes against a running ``paywire sandbox`` (the session's ``lab_sandbox``). Time
bounds are generous (well below the old 30 s of silent retries) and only say "it returned".
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import cliout, pki
from gateway.client import connect
from gateway.labs.checks import Sandbox
from gateway.processes import child_env
from protocol.errors import ConnectionLost, ErrorCode, OutcomeUnknown, error_from_code
from tests.labsupport import paywire_bin

REPO = Path(__file__).resolve().parents[1]
RUN_S_MAX = 120.0     # a command on a loaded 2-core machine, start-up included
FAIL_S_MAX = 20.0     # "failed at once": well below the old 30 s of silent retries
TIMEOUT_S = "2"       # --timeout-s given to the unreachable cases
DECLINED_CARD = "4811222222222227"  # the sandbox's "no such account" card
APPROVED_CARD = "4811111111111114"


class Ran:
    def __init__(self, proc: subprocess.CompletedProcess[str], elapsed_s: float) -> None:
        self.code, self.out, self.err, self.elapsed_s = (proc.returncode, proc.stdout,
                                                         proc.stderr, elapsed_s)

    def one_line_error(self, kind: int) -> str:
        """Assert the failure shape every error shares; return its line."""
        assert self.code == kind, (self.code, self.err)
        assert "Traceback" not in self.err and "Traceback" not in self.out, self.err
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("paywire "), lines[0]
        # "what is wrong: what to do"
        assert ": " in lines[0] and len(lines[0]) < 600, lines[0]
        return lines[0]


def paywire(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Ran:
    t0 = time.monotonic()
    proc = subprocess.run([paywire_bin(), *args], env=child_env(env), cwd=cwd,
                          capture_output=True, text=True, timeout=RUN_S_MAX)
    return Ran(proc, time.monotonic() - t0)


@pytest.fixture
def sb_env(lab_sandbox: Sandbox) -> dict[str, str]:
    return {**os.environ, **lab_sandbox.env}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP (the kernel completes the handshake) and never answers TLS:
    the case where each connect attempt waits out its own timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def test_exit_code_table_in_docs_matches_the_code() -> None:
    doc = (REPO / "docs" / "cli.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([a-z-]+) \| (.+) \|$", doc, re.M)
    assert {int(code): (kind, meaning) for code, kind, meaning in rows} == cliout.EXIT_CODES
    assert len(set(cliout.EXIT_CODES)) == len(cliout.EXIT_CODES)


def test_version() -> None:
    ran = paywire("--version")
    assert ran.code == 0
    assert re.fullmatch(r"paywire \d+\.\d+\.\d+\S*\n", ran.out), ran.out


def test_unreachable_hub_fails_within_the_timeout_naming_the_address(
        certs_dir: Path) -> None:
    port = _free_port()  # nothing listens there: connection refused, retried with backoff
    ran = paywire("status", "order-1", "--hub", f"127.0.0.1:{port}", "--timeout-s", TIMEOUT_S,
                  "--server-key", "k", "--certs", str(certs_dir))
    line = ran.one_line_error(cliout.EXIT_UNREACHABLE)
    assert f"127.0.0.1:{port}" in line and "ConnectionRefused" in line
    assert "check --hub" in line
    assert ran.elapsed_s < FAIL_S_MAX


def test_silent_hub_fails_within_the_timeout(certs_dir: Path, silent_listener: int) -> None:
    """Each attempt is bounded by what is left of --timeout-s, not by a full connect
    timeout of its own."""
    ran = paywire("status", "order-1", "--hub", f"127.0.0.1:{silent_listener}",
                  "--timeout-s", TIMEOUT_S, "--server-key", "k", "--certs", str(certs_dir))
    line = ran.one_line_error(cliout.EXIT_UNREACHABLE)
    assert f"127.0.0.1:{silent_listener}" in line
    assert ran.elapsed_s < FAIL_S_MAX


def test_certificates_of_another_ca_fail_at_once(sb_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    other = tmp_path / "other-certs"
    pki.init(other, merchants=["M1"], banks=["b"])
    # A generous --timeout-s: a retried (temporary) error would use all of it.
    ran = paywire("status", "order-1", "--certs", str(other), "--timeout-s", "60", env=sb_env)
    line = ran.one_line_error(cliout.EXIT_AUTH)
    assert "does not verify" in line and "--certs" in line
    assert ran.elapsed_s < FAIL_S_MAX


async def test_client_treats_certificate_verification_failure_as_permanent(
        lab_sandbox: Sandbox, tmp_path: Path) -> None:
    """The library (reconnect on, its 30 s window) raises at the first attempt instead of
    retrying a certificate that cannot start verifying."""
    other = tmp_path / "other-certs"
    pki.init(other, merchants=["M1"], banks=["b"])
    hub = lab_sandbox.info["hub"]
    client = connect(hub["host"], hub["port"], merchant_id="M1",
                     server_key=lab_sandbox.env["PAYWIRE_SERVER_KEY"], certs_dir=other,
                     reconnect_window_s=60.0)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(client.connect(), 120.0)
        assert len(client.reconnect_attempts) == 1
    finally:
        await client.close()


def test_unknown_merchant(sb_env: dict[str, str], lab_sandbox: Sandbox,
                          tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(lab_sandbox.directory / "certs" / "ca.crt", certs / "ca.crt")
    pki.issue(certs, "merchant", "M9", [], ca_dir=lab_sandbox.directory / "certs-ca")
    ran = paywire("status", "order-1", "--merchant", "M9", "--certs", str(certs),
                  "--timeout-s", "60", env=sb_env)
    line = ran.one_line_error(cliout.EXIT_AUTH)
    assert "unknown merchant" in line and "--merchant" in line
    assert ran.elapsed_s < FAIL_S_MAX


def test_merchant_without_a_certificate(sb_env: dict[str, str]) -> None:
    ran = paywire("status", "order-1", "--merchant", "M7", env=sb_env)
    line = ran.one_line_error(cliout.EXIT_CONFIG)
    assert "merchant-M7.crt" in line and "paywire certs issue" in line


def test_bad_server_key(sb_env: dict[str, str]) -> None:
    ran = paywire("status", "order-1", "--server-key", "not-the-key", "--timeout-s", "60",
                  env=sb_env)
    line = ran.one_line_error(cliout.EXIT_AUTH)
    assert "BAD_SIGNATURE" in line and "--server-key" in line
    assert ran.elapsed_s < FAIL_S_MAX


def test_refused_request(sb_env: dict[str, str]) -> None:
    ran = paywire("status", "no-such-order-cli", env=sb_env)
    line = ran.one_line_error(cliout.EXIT_REFUSED)
    assert "NOT_FOUND" in line


def test_declined_charge_exits_non_zero_and_approved_exits_zero(
        sb_env: dict[str, str]) -> None:
    stamp = time.time_ns()
    declined = paywire("charge", f"cli-declined-{stamp}", "--amount", "10000", "--card",
                       DECLINED_CARD, env=sb_env)
    assert declined.code == cliout.EXIT_DECLINED, declined.err
    assert json.loads(declined.out)["transaction_status"] == "deny"
    assert "declined" in declined.one_line_error(cliout.EXIT_DECLINED)
    approved = paywire("charge", f"cli-approved-{stamp}", "--amount", "10000", "--card",
                       APPROVED_CARD, env=sb_env)
    assert approved.code == 0, approved.err
    assert json.loads(approved.out)["transaction_status"] == "capture"


def test_json_output_and_json_errors(sb_env: dict[str, str]) -> None:
    order = f"cli-json-{time.time_ns()}"
    charged = paywire("charge", order, "--amount", "10000", "--card", APPROVED_CARD,
                      "--json", env=sb_env)
    assert charged.code == 0, charged.err
    assert len(charged.out.splitlines()) == 1
    assert json.loads(charged.out)["order_id"] == order
    status = paywire("status", order, "--json", env=sb_env)
    assert status.code == 0 and json.loads(status.out)["transaction_status"] == "capture"
    missing = paywire("status", order + "-missing", "--json", env=sb_env)
    assert missing.code == cliout.EXIT_REFUSED and "Traceback" not in missing.err
    err = json.loads(missing.err)
    assert (err["error"], err["exit_code"], err["code"]) == ("refused", 3, "NOT_FOUND")
    assert err["todo"]


def test_bank_admin_labelled_and_json(sb_env: dict[str, str]) -> None:
    node = sb_env["PAYWIRE_NODE_BCA_1"]
    table = paywire("bank-admin", "balances", "--node", node, env=sb_env)
    assert table.code == 0, table.err
    header, first = table.out.splitlines()[:2]
    assert header.split() == ["account", "balance", "held"]
    assert re.fullmatch(r"\d{12,19}\s+[\d,]+\s+[\d,]+", first), first
    as_json = paywire("bank-admin", "balances", "--node", node, "--json", env=sb_env)
    assert as_json.code == 0 and isinstance(json.loads(as_json.out)["balances"], dict)
    nothing = paywire("bank-admin", "pay", "--node", node, "--number", "no-such", env=sb_env)
    assert "no such payment" in nothing.one_line_error(cliout.EXIT_FAILED)


def test_bank_node_unreachable(sb_env: dict[str, str]) -> None:
    port = _free_port()
    ran = paywire("bank-admin", "balances", "--node", f"127.0.0.1:{port}", "--timeout-s",
                  TIMEOUT_S, env=sb_env)
    assert f"127.0.0.1:{port}" in ran.one_line_error(cliout.EXIT_UNREACHABLE)
    assert ran.elapsed_s < FAIL_S_MAX


def test_bad_config_key(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("listen_portt = 7400\n")
    ran = paywire("hub", "--config", str(config))
    assert "listen_portt" in ran.one_line_error(cliout.EXIT_CONFIG)
    missing = paywire("hub", "--config", str(tmp_path / "nope.toml"))
    assert "nope.toml" in missing.one_line_error(cliout.EXIT_CONFIG)


def test_port_in_use(lab_sandbox: Sandbox, tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        ran = paywire("hub", "--config", lab_sandbox.info["hub"]["config"],
                      "--ledger", str(tmp_path / "ledger.db"),
                      "--listen", f"127.0.0.1:{port}")
    line = ran.one_line_error(cliout.EXIT_IN_USE)
    assert "already in use" in line and "--listen" in line


def test_missing_ledger_file(tmp_path: Path) -> None:
    ledger = tmp_path / "ledgr.db"
    for args in (["webhooks", "list", "--ledger", str(ledger)],
                 ["webhooks", "redeliver", "--ledger", str(ledger), "1"],
                 ["audit", "--ledger", str(ledger)]):
        line = paywire(*args).one_line_error(cliout.EXIT_CONFIG)
        assert str(ledger) in line and "--ledger" in line
    assert not ledger.exists()  # no empty ledger where the typo pointed


def test_redeliver_in_the_documented_form(lab_sandbox: Sandbox) -> None:
    ledger = lab_sandbox.info["hub"]["ledger"]
    ran = paywire("webhooks", "redeliver", "--ledger", ledger, "999999997", "999999998")
    assert ran.code in (0, cliout.EXIT_FAILED), ran.err  # parsed and ran: none to queue
    assert "unrecognized" not in ran.err and "queued" in ran.out
    nothing = paywire("webhooks", "redeliver", "--ledger", ledger)
    assert "--all-dead" in nothing.one_line_error(cliout.EXIT_USAGE)


def test_debug_prints_the_traceback(tmp_path: Path) -> None:
    ran = paywire("hub", "--config", str(tmp_path / "nope.toml"), "--debug")
    assert ran.code == cliout.EXIT_CONFIG
    assert "Traceback" in ran.err and ran.err.startswith("paywire hub: no such file")


def test_unexpected_error_is_one_line_with_a_hint() -> None:
    def boom() -> int:
        raise ZeroDivisionError("x")

    err = io.StringIO()
    assert cliout.run_command("demo", boom, stderr=err) == cliout.EXIT_INTERNAL
    assert err.getvalue().count("\n") == 1 and "--debug" in err.getvalue()


def test_progress_is_line_based_off_a_terminal() -> None:
    out = io.StringIO()
    bar = cliout.Progress("payments", 200, stream=out)
    for _ in range(200):
        bar.step()
    counter = cliout.Progress("paywire FULL", stream=out)
    for n in range(0, 5000, 500):
        counter.update(n)
    counter.finish()
    text = out.getvalue()
    assert "\r" not in text
    assert text.splitlines()[0].startswith("  payments: 200/200 done in ")
    assert text.splitlines()[1].startswith("  paywire FULL: 4,500 done in ")
    assert len(text.splitlines()) == 2  # one line per stage


def test_progress_redraws_on_a_terminal() -> None:
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as tty:
            bar = cliout.Progress("payments", 10, stream=tty)
            for _ in range(10):
                bar.step()
        os.close(follower)
        follower = -1
        seen = b""
        while b"\n" not in seen:
            seen += os.read(leader, 4096)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert b"\r" in seen and b"[" in seen


def test_bench_progress_is_line_based_off_a_terminal(
        capsys: pytest.CaptureFixture[str]) -> None:
    from bench.run import _progress

    with _progress("paywire FULL") as shown:
        for n in range(500, 3001, 500):
            shown(n, 10**9)
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 1 and "3,000 done" in err


def test_demo_in_a_pipe_has_no_carriage_returns(tmp_path: Path) -> None:
    proc = subprocess.run([paywire_bin(), "demo", "--transactions", "20", "--dir",
                           str(tmp_path / "demo")], env=child_env(), capture_output=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert b"\r" not in proc.stderr and b"\r" not in proc.stdout
    assert re.search(rb"^  payments: 20/20 done in ", proc.stderr, re.M), proc.stderr[-2000:]


async def test_event_stream_does_not_retry_a_certificate_that_cannot_verify(
        lab_sandbox: Sandbox, tmp_path: Path) -> None:
    """``events()`` reconnects for ever on temporary failures; a permanent one ends it."""
    other = tmp_path / "other-certs"
    pki.init(other, merchants=["M1"], banks=["b"])
    hub = lab_sandbox.info["hub"]
    client = connect(hub["host"], hub["port"], merchant_id="M1",
                     server_key=lab_sandbox.env["PAYWIRE_SERVER_KEY"], certs_dir=other)

    async def first_event() -> object:
        async for event in client.events():
            return event
        return None

    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.wait_for(first_event(), 120.0)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_error_code_has_a_kind(code: ErrorCode) -> None:
    """Whatever the hub answers ends as one of three kinds: credentials (permanent), an
    unknown outcome (ask again), or a refused request; never "internal"."""
    failure = cliout.classify(error_from_code(code, "why", remote=True))
    if 300 <= int(code) < 400:
        assert failure.code == cliout.EXIT_AUTH
    elif code in (ErrorCode.OUTCOME_UNKNOWN, ErrorCode.TIMEOUT):
        assert failure.code == cliout.EXIT_UNKNOWN
    else:
        assert failure.code == cliout.EXIT_REFUSED
    assert code.name in failure.line() and failure.todo


def test_local_failures_have_a_kind() -> None:
    assert cliout.classify(ConnectionLost("no hub reachable among [('h', 1)]: x")).code == \
        cliout.EXIT_UNREACHABLE
    assert cliout.classify(ConnectionLost("connection lost: reset")).code == \
        cliout.EXIT_UNKNOWN
    assert cliout.classify(OutcomeUnknown("no answer in time")).code == cliout.EXIT_UNKNOWN
    assert cliout.classify(FileNotFoundError(2, "No such file", "x.toml")).code == \
        cliout.EXIT_CONFIG
    assert cliout.classify(ssl.SSLCertVerificationError("CERTIFICATE_VERIFY_FAILED")).code \
        == cliout.EXIT_AUTH


def test_webhooks_ledger_before_the_action_still_parses() -> None:
    from gateway.cli import build_parser

    ns = build_parser().parse_args(["webhooks", "--ledger", "l.db", "list", "--state", "dead"])
    assert (ns.ledger_before, ns.ledger, ns.action, ns.state) == ("l.db", None, "list", "dead")
    ns = build_parser().parse_args(["webhooks", "redeliver", "--ledger", "l.db", "1", "2", "9"])
    assert (ns.ledger, ns.ids, ns.all_dead) == ("l.db", [1, 2, 9], False)
