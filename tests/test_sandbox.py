"""``paywire sandbox`` on real processes: it comes up, writes its contract files, serves the
README's example and a charge of every kind, its test cards behave as labelled, its webhook
receiver verifies what the hub sends (and rejects a forgery), the CLI works with its
environment, SIGINT stops everything (exit 0, no process left), and a second start on the
same directory keeps the CA, the keys and the ledger.

One sandbox is shared by the module's tests (it takes seconds to start); the last test stops
it and starts it again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import secret_keys
from gateway.cli import bank_admin_call
from gateway.client import Card, Client, InvalidTransition, connect
from gateway.config import FraudConfig
from gateway.fraud.engine import FraudEngine, Screening
from gateway.processes import child_env, module_command
from gateway.sandbox import CHALLENGE_ABOVE_IDR, verify_notification
from protocol import banklink
from protocol.operations import FraudStatus
from protocol.signing import webhook_signature_header
from tests.waiting import log_contains, wait_until

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
START_S = 120.0  # bounds for a loaded 2-core machine, not expectations
STOP_S = 60.0
ENV_NAMES = ("PAYWIRE_HUB", "PAYWIRE_MERCHANT", "PAYWIRE_SERVER_KEY", "PAYWIRE_CERTS",
             "PAYWIRE_SECRETS", "PAYWIRE_LEDGER", "PAYWIRE_WEBHOOK_LOG")


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    dir: Path
    out: Path
    info: dict[str, Any]
    env: dict[str, str]

    def pids(self) -> list[int]:
        nodes = [n for b in self.info["banks"] for n in b["nodes"]]
        return [self.info["pid"], self.info["hub"]["pid"], *(n["pid"] for n in nodes)]


def poll(condition: Callable[[], Any], what: str, timeout_s: float) -> Any:
    """The synchronous ``wait_until`` (for fixtures): poll an observable condition with a
    bound."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        export, assignment = shlex.split(line)
        assert export == "export"
        name, _, value = assignment.partition("=")
        env[name] = value
    return env


def start_sandbox(directory: Path, out: Path, *options: str) -> Running:
    with open(out, "ab") as f:
        proc = subprocess.Popen([*module_command("gateway.cli"), "sandbox", "--dir",
                                 str(directory), "--port", "0", *options],
                                stdout=f, stderr=subprocess.STDOUT,
                                env={**child_env(), "PYTHONUNBUFFERED": "1"})

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sandbox exited with {proc.returncode}:\n"
                                 f"{out.read_text(errors='replace')}")
        return (directory / "sandbox.json").exists()

    try:
        poll(ready, "sandbox.json", START_S)
    except BaseException:
        proc.kill()
        proc.wait(STOP_S)
        raise
    info = json.loads((directory / "sandbox.json").read_text())
    return Running(proc, directory, out, info, read_env(directory / "sandbox.env"))


def stop_sandbox(sb: Running, sig: int = signal.SIGINT) -> int:
    """SIGINT, as Ctrl-C (or ``sig``); a sandbox that does not exit in time is killed with
    its nodes."""
    if sb.proc.poll() is None:
        sb.proc.send_signal(sig)
    try:
        return sb.proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        for pid in sb.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sb.proc.wait(STOP_S)
        raise


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    base = tmp_path_factory.mktemp("sandbox")
    sb = start_sandbox(base / "sb", base / "sandbox.out")
    try:
        yield sb
    finally:
        stop_sandbox(sb)


def client_for(sb: Running) -> Client:
    host, _, port = sb.env["PAYWIRE_HUB"].rpartition(":")
    return connect(host, int(port), merchant_id=sb.env["PAYWIRE_MERCHANT"],
                   server_key=sb.env["PAYWIRE_SERVER_KEY"], certs_dir=sb.env["PAYWIRE_CERTS"])


async def pay(sb: Running, bank: str, number: str) -> dict[str, Any]:
    """The customer pays a virtual account or e-wallet request at the bank's first node."""
    node = next(b for b in sb.info["banks"] if b["name"] == bank)["nodes"][0]
    key = secret_keys.load_link_key(Path(sb.env["PAYWIRE_SECRETS"]))
    return await bank_admin_call(f"{node['name']}@127.0.0.1:{node['port']}",
                                 Path(sb.env["PAYWIRE_CERTS"]), "hub", key,
                                 banklink.ADMIN_PAY, {"number": number})


def test_contract_files(sandbox: Running) -> None:
    info, env = sandbox.info, sandbox.env
    for name in ENV_NAMES:
        assert env[name] == info["env"][name]
    assert env["PAYWIRE_HUB"] == f"127.0.0.1:{info['hub']['port']}"
    assert env["PAYWIRE_LEDGER"] == info["hub"]["ledger"] == info["files"]["ledger"]
    assert env["PAYWIRE_WEBHOOK_LOG"] == info["receiver"]["log"]
    assert env["PAYWIRE_LABWORK"] == str(sandbox.dir.resolve().parent / "labwork")
    assert info["receiver"]["url"] == info["receiver"]["urls"]["M1"] == \
        f"http://127.0.0.1:{info['receiver']['port']}/paywire/M1"
    assert {m["id"]: m["server_key"] for m in info["merchants"]}[env["PAYWIRE_MERCHANT"]] \
        == env["PAYWIRE_SERVER_KEY"]
    assert {n["name"] for b in info["banks"] for n in b["nodes"]} == \
        {"bca-1", "bca-2", "bni-1", "wallet-1"}
    assert {c["name"] for c in info["test_cards"]} >= \
        {"approved", "declined", "insufficient_funds", "challenged"}
    for path in (sandbox.dir / "sandbox.env", sandbox.dir / "sandbox.json",
                 Path(info["files"]["hub_config"])):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # they hold server keys
    for pid in sandbox.pids():
        assert not gone(pid)
    for node in [info["hub"], *(n for b in info["banks"] for n in b["nodes"])]:
        assert Path(node["log"]).exists() and Path(node["config"]).exists()
    for node in (n for b in info["banks"] for n in b["nodes"]):
        name = "PAYWIRE_NODE_" + node["name"].upper().replace("-", "_")
        assert env[name] == f"127.0.0.1:{node['port']}"


def test_bank_admin_reaches_a_node_from_the_sandbox_env(sandbox: Running) -> None:
    """The lab handouts' form: only the sandbox's environment, no --certs or --secrets."""
    done = subprocess.run([str(Path(sys.executable).parent / "paywire"), "bank-admin",
                           "balances", "--json", "--node", sandbox.env["PAYWIRE_NODE_BCA_1"]],
                          env={**child_env(), **sandbox.env}, capture_output=True, text=True,
                          timeout=START_S)
    assert done.returncode == 0, done.stderr
    assert "balances" in json.loads(done.stdout)


def test_readme_example_runs_as_written(sandbox: Running, tmp_path: Path) -> None:
    block = re.search(r"## Calling the hub from Python\n\n```python\n(.*?)```",
                      README.read_text(), re.S)
    assert block is not None
    result = subprocess.run([sys.executable, "-c", block.group(1)], cwd=tmp_path,
                            env={**child_env(), **sandbox.env}, capture_output=True,
                            text=True, timeout=START_S)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "capture 481111******1114"
    assert re.fullmatch(r"pending 8808\d+", lines[1])
    assert lines[2] == "REFUND_EXCEEDS_CAPTURED"


def test_printed_snippet_runs(sandbox: Running, tmp_path: Path) -> None:
    out = sandbox.out.read_text()
    block = re.search(r"Python \(save as try.py.*?\n\n(.*?)\nsandbox ready", out, re.S)
    assert block is not None
    code = textwrap.dedent(block.group(1))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True, timeout=START_S)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:3] == ["try-1", "capture", "481111******1114"]


async def test_test_cards_behave_as_labelled(sandbox: Running) -> None:
    async with client_for(sandbox) as client:
        for i, card in enumerate(sandbox.info["test_cards"]):
            tx = await client.charge(f"card-{i}", 150_000, card=Card(
                card["number"], card["exp_month"], card["exp_year"], card["cvv"]))
            got = {k: getattr(tx, k) for k in card["expect"]}
            assert got == card["expect"], card["name"]
            if card["name"] == "challenged":
                assert CHALLENGE_ABOVE_IDR >= 150_000  # the card, not the amount, is held
                approved = await client.approve(f"card-{i}")
                assert (approved.transaction_status, approved.fraud_status) == \
                    ("capture", "accept")
            if tx.transaction_status == "capture":
                assert tx.bank == card["bank"]


async def test_every_kind_of_charge(sandbox: Running) -> None:
    cards = {c["name"]: c for c in sandbox.info["test_cards"]}
    ok = Card(cards["approved"]["number"], 12, 2030, "123")
    async with client_for(sandbox) as client:
        auth = await client.charge("kind-auth", 200_000, card=ok, capture=False)
        assert auth.transaction_status == "authorize"
        assert (await client.capture("kind-auth", 150_000)).captured_amount == 150_000
        held = await client.charge("kind-cancel", 90_000, card=ok, capture=False)
        assert held.transaction_status == "authorize"
        assert (await client.cancel("kind-cancel")).transaction_status == "cancel"
        with pytest.raises(InvalidTransition):
            await client.capture("kind-cancel")
        await client.charge("kind-refund", 300_000, card=ok)
        refunded = await client.refund("kind-refund", "r1", 100_000, "partial return")
        assert (refunded.transaction_status, refunded.refunded_amount) == \
            ("partial_refund", 100_000)
        assert (await client.status("kind-refund")).refunded_amount == 100_000

        va = await client.charge("kind-va", 250_000, "bank_transfer", bank="bni")
        assert va.transaction_status == "pending" and va.va_number
        wallet = await client.charge("kind-wallet", 75_000, "ewallet", provider="gopay")
        assert wallet.transaction_status == "pending" and wallet.va_number
        assert (await pay(sandbox, "bni", va.va_number))["paid"]
        assert (await pay(sandbox, "wallet", wallet.va_number))["paid"]
        for order in ("kind-va", "kind-wallet"):
            async def settled(order: str = order) -> bool:
                return (await client.status(order)).transaction_status == "settlement"
            await wait_until(settled, f"{order} settled")
    log = Path(sandbox.env["PAYWIRE_WEBHOOK_LOG"])
    for line in ("verified kind-va settlement merchant=M1", "verified kind-wallet settlement",
                 "verified kind-auth capture", "verified kind-cancel cancel",
                 "verified kind-refund partial_refund"):
        await wait_until(log_contains(log, line), f"webhook line {line!r}")
    assert "REJECTED kind-" not in log.read_text()


async def test_receiver_rejects_a_forged_notification(sandbox: Running) -> None:
    key = sandbox.env["PAYWIRE_SERVER_KEY"]
    body = json.dumps({"order_id": "forged-1", "status_code": "200",
                       "gross_amount": "1.00", "transaction_status": "settlement",
                       "event_id": "evt_forged", "signature_key": "0" * 128}).encode()
    url = sandbox.info["receiver"]["urls"]["M1"]
    now = int(time.time())
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers={
                "X-Paywire-Signature": webhook_signature_header(b"not-the-key", now, body)}) \
                as resp:
            assert resp.status == 401
        # A genuine HMAC (the key is right) does not excuse a wrong signature_key.
        async with http.post(url, data=body, headers={
                "X-Paywire-Signature": webhook_signature_header(key.encode(), now, body)}) \
                as resp:
            assert resp.status == 401
    log = Path(sandbox.env["PAYWIRE_WEBHOOK_LOG"])
    await wait_until(log_contains(log, "REJECTED forged-1 settlement merchant=M1 "
                                       "event=evt_forged reason=bad_X-Paywire-Signature"),
                     "the forged notification's line")
    await wait_until(log_contains(log, "reason=bad_signature_key"), "the second one's line")
    # An unverified body cannot write lines of its own into the log.
    async with aiohttp.ClientSession() as http, \
            http.post(url, data=b'{"order_id": "x\\nverified fake capture"}') as resp:
        assert resp.status == 401
    await wait_until(log_contains(log, "REJECTED x?verified?fake?capture - merchant=M1"),
                     "the injected line, flattened")
    assert "\nverified fake" not in log.read_text()


def test_verify_notification_is_the_readme_check() -> None:
    key = "SB-M1-k"
    body = json.dumps({"order_id": "o1", "status_code": "200", "gross_amount": "10.00",
                       "signature_key": __import__("hashlib").sha512(
                           b"o1" b"200" b"10.00" + key.encode()).hexdigest()}).encode()
    now = int(time.time())
    assert verify_notification(key, body, webhook_signature_header(key.encode(), now, body),
                               now) is None
    stale = webhook_signature_header(key.encode(), now - 301, body)
    assert verify_notification(key, body, stale, now) == "stale timestamp"
    assert verify_notification(key, body + b" ", webhook_signature_header(
        key.encode(), now, body), now) == "bad X-Paywire-Signature"
    assert verify_notification(key, body, "garbage", now) is not None
    # Whatever a sender makes of the body or the header is a rejection, never an exception.
    for raw in (b"[1, 2]", b'"text"', b"\xff\xfe", b'{"order_id": 1}', b""):
        header = webhook_signature_header(key.encode(), now, raw)
        assert verify_notification(key, raw, header, now) is not None
    assert verify_notification(key, body, f"t={now},v1=\u00e9", now) is not None
    assert verify_notification(key, body, "t=x,v1=y", now) is not None


def test_challenge_cards_rule() -> None:
    held = "4811444444444443"
    engine = FraudEngine(FraudConfig(challenge_cards=[held]), b"k" * 32)
    verdict = engine.screen(Screening("M1", 1_000, "IDR", card_number=held), 0.0)
    assert (verdict.status, verdict.reasons) == (FraudStatus.CHALLENGE, ["challenged_card"])
    other = engine.screen(Screening("M1", 1_000, "IDR", card_number="4811111111111114"), 0.0)
    assert other.status == FraudStatus.ACCEPT


def test_cli_with_the_sandbox_environment(sandbox: Running) -> None:
    env = {**child_env(), **sandbox.env}
    cli = module_command("gateway.cli")
    charged = subprocess.run([*cli, "charge", "cli-1", "--amount", "150000", "--card",
                              "4811111111111114"], env=env, capture_output=True, text=True,
                             timeout=START_S)
    assert charged.returncode == 0, charged.stderr
    assert json.loads(charged.stdout)["transaction_status"] == "capture"
    status = subprocess.run([*cli, "status", "cli-1"], env=env, capture_output=True,
                            text=True, timeout=START_S)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["order_id"] == "cli-1"


async def test_plaintext_lab_listener(sandbox: Running) -> None:
    """The hub's plaintext listener (lab 3) is published and serves a signed charge without
    TLS, on loopback; the TLS listener is another port."""
    address = sandbox.env["PAYWIRE_PLAINTEXT_HUB"]
    assert address == sandbox.info["env"]["PAYWIRE_PLAINTEXT_HUB"] == \
        f"127.0.0.1:{sandbox.info['hub']['plaintext_port']}"
    assert address != sandbox.env["PAYWIRE_HUB"]
    assert f"{address}   PLAINTEXT" in sandbox.out.read_text()
    async with connect("127.0.0.1", int(address.rpartition(":")[2]),
                       merchant_id=sandbox.env["PAYWIRE_MERCHANT"],
                       server_key=sandbox.env["PAYWIRE_SERVER_KEY"], plaintext=True) as client:
        tx = await client.charge("plain-1", 150_000, card=Card("4811111111111114", 12, 2030,
                                                                "123"))
    assert tx.transaction_status == "capture"
    async with client_for(sandbox) as client:  # the same hub and ledger, over TLS
        assert (await client.status("plain-1")).transaction_status == "capture"


def test_no_plaintext_leaves_the_listener_closed(tmp_path: Path) -> None:
    sb = start_sandbox(tmp_path / "sb", tmp_path / "sandbox.out", "--no-plaintext")
    try:
        assert "PAYWIRE_PLAINTEXT_HUB" not in sb.env
        assert sb.info["hub"]["plaintext_port"] is None
        assert "PLAINTEXT" not in sb.out.read_text()
    finally:
        assert stop_sandbox(sb) == 0


async def test_sigint_stops_everything_and_a_restart_reuses_the_directory(
        sandbox: Running) -> None:
    ca = (sandbox.dir / "certs" / "ca.crt").read_bytes()
    pids = sandbox.pids()
    assert stop_sandbox(sandbox) == 0
    assert not (sandbox.dir / "sandbox.json").exists()
    assert not (sandbox.dir / "sandbox.env").exists()
    assert all(gone(pid) for pid in pids), [p for p in pids if not gone(p)]
    assert "sandbox stopped\n" in sandbox.out.read_text()

    again = start_sandbox(sandbox.dir, sandbox.out)
    try:
        assert again.env["PAYWIRE_SERVER_KEY"] == sandbox.env["PAYWIRE_SERVER_KEY"]
        assert (again.dir / "certs" / "ca.crt").read_bytes() == ca
        async with client_for(again) as client:
            kept = await client.status("cli-1")  # the ledger too
            assert kept.transaction_status == "capture"
        # A second sandbox on a directory in use is refused, and leaves the first alone.
        refused = subprocess.run([*module_command("gateway.cli"), "sandbox", "--dir",
                                  str(again.dir), "--port", "0"], env=child_env(),
                                 capture_output=True, text=True, timeout=START_S)
        assert refused.returncode == 2
        assert "already serves" in refused.stderr
        assert (again.dir / "sandbox.json").exists()
    finally:
        # A closed terminal (SIGHUP) stops it as cleanly as Ctrl-C: nothing left running.
        assert stop_sandbox(again, signal.SIGHUP) == 0
    assert all(gone(pid) for pid in again.pids())
    assert not (again.dir / "sandbox.json").exists()
