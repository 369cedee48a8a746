"""Frame tracing on a real hub, bank nodes and client: every frame logged, no secret in it."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from gateway import pki, secret_keys
from gateway.client import Card, connect
from gateway.config import BankNodeConfig, BankRoute, HubConfig, MerchantConfig, dump_toml
from gateway.net import trace
from gateway.processes import NodeProcess, child_env, module_command
from tests.deploy import KEYS, RICH, deployment

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(?P<dir>send|recv) peer=(?P<peer>\S+) (?P<type>[A-Z]+) rid=(?P<rid>\d+) "
                  r"len=(?P<len>\d+) flags=(?P<flags>0x[0-9a-f]{4}\S*) "
                  r"(?:body=(?P<body>.*)|problem=.*)$")


def frames(lines: list[str]) -> list[re.Match[str]]:
    out = []
    for line in lines:
        # File lines start with a UTC time; log records are the message alone.
        text = re.sub(r"^\d{4}-\d\d-\d\dT[0-9:.]+Z ", "", line)
        m = LINE.match(text)
        assert m is not None, f"not a trace line: {line!r}"
        out.append(m)
    return out


def secrets_of(dep_secrets: Path) -> list[str]:
    """Every key of the deployment's secrets file, as the text it is stored as."""
    data = tomllib.loads(dep_secrets.read_text())
    return [str(v) for v in data.values() if isinstance(v, str) and len(v) >= 8]


def test_hub_bank_and_client_trace_every_frame_without_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    nodes_file = tmp_path / "nodes.trace"
    # The nodes (child processes) trace through the environment, into one file.
    monkeypatch.setenv(trace.TRACE_ENV, "1")
    monkeypatch.setenv(trace.TRACE_FILE_ENV, str(nodes_file))
    card1, card2 = RICH[3], RICH[4]
    cvv1, cvv2 = "9731", "8642"
    with deployment(tmp_path / "dep", bca_nodes=1) as dep:
        monkeypatch.delenv(trace.TRACE_ENV)
        monkeypatch.delenv(trace.TRACE_FILE_ENV)
        caplog.set_level(logging.INFO, logger="paywire.trace")

        async def charge() -> str:
            # The library option: this client's frames go to the ``paywire.trace`` logger.
            async with dep.client(trace=True) as client:
                tx = await client.charge("trace-1", 150_000, card=Card(card1, 12, 2030, cvv1))
                return tx.transaction_status

        assert asyncio.run(charge()) == "capture"
        client_lines = [r.getMessage() for r in caplog.records if r.name == "paywire.trace"]

        # The CLI's client command with --trace-file.
        cli_file = tmp_path / "cli.trace"
        run = subprocess.run(
            [*module_command("gateway.cli"), "charge", "trace-2", "--amount", "5000",
             "--card", card2, "--cvv", cvv2, "--hub", f"127.0.0.1:{dep.port}",
             "--merchant", "M1", "--server-key", KEYS["M1"], "--certs", str(dep.certs),
             "--trace-file", str(cli_file)],
            capture_output=True, cwd=ROOT, env=child_env(), timeout=120, check=False)
        assert run.returncode == 0, run.stderr
        secrets = secrets_of(dep.secrets)
    node_lines = nodes_file.read_text().splitlines()
    cli_lines = cli_file.read_text().splitlines()

    # The client saw its whole conversation: handshake, the charge and its answer.
    mine = frames(client_lines)
    port = f"127.0.0.1:{dep.port}"
    assert [(m["dir"], m["type"]) for m in mine[:2]] == [("send", "HELLO"), ("recv", "WELCOME")]
    sent = [m for m in mine if m["dir"] == "send" and m["type"] == "REQUEST"]
    assert len(sent) == 1 and sent[0]["peer"] == port and '"order_id": "trace-1"' in sent[0]["body"]
    rid = sent[0]["rid"]
    answer = [m for m in mine if m["dir"] == "recv" and m["type"] == "RESPONSE"]
    assert [a["rid"] for a in answer] == [rid] and '"transaction_status": "capture"' in \
        answer[0]["body"]
    assert '"cvv": "***"' in sent[0]["body"] and mask(card1) in sent[0]["body"]

    # The hub received that very request (same request id) and answered it; it called the
    # bank, and the bank node traced the same call from its side.
    nodes = frames(node_lines)
    got = [m for m in nodes if m["dir"] == "recv" and m["type"] == "REQUEST"
           and '"op": "charge"' in m["body"] and '"trace-1"' in m["body"]]
    assert [m["rid"] for m in got] == [rid]
    assert any(m["dir"] == "send" and m["type"] == "RESPONSE" and m["rid"] == rid
               and '"trace-1"' in m["body"] for m in nodes)
    bank_calls = [m for m in nodes if m["type"] == "REQUEST" and '"op": "bank.' in m["body"]
                  and mask(card1) in m["body"]]
    assert {m["dir"] for m in bank_calls} == {"send", "recv"}  # hub sent, bank received
    assert any(m["type"] == "HELLO" and m["dir"] == "recv" for m in nodes)

    # The CLI client traced its own charge.
    cli = frames(cli_lines)
    assert any(m["dir"] == "send" and m["type"] == "REQUEST" and '"trace-2"' in m["body"]
               for m in cli)
    assert any(m["dir"] == "recv" and m["type"] == "RESPONSE" for m in cli)

    # Nothing secret anywhere: full card numbers, CVVs, the server key, the link key.
    everything = "\n".join(client_lines + node_lines + cli_lines)
    for secret in (card1, card2, f'"{cvv1}"', f'"{cvv2}"', KEYS["M1"], *secrets):
        assert secret not in everything, f"{secret[:6]}... found in the trace"
    assert len(secrets) >= 1


def mask(number: str) -> str:
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


def test_tracing_is_off_unless_asked() -> None:
    """Off by default: an adapter holds no tracer (its hot paths test only that)."""
    from gateway.client.connection import ClientConnection

    async def main() -> tuple[bool, bool, bool]:
        off = ClientConnection("M1", {})
        on = ClientConnection("M1", {}, trace_frames=True)
        return trace.enabled(), off.net._trace_wanted, on.net._trace_wanted

    assert asyncio.run(main()) == (False, False, True)


def test_a_trace_line_for_a_frame_that_does_not_decode() -> None:
    tracer = trace.FrameTracer(("127.0.0.1", 9))
    line = tracer.line("recv", 3, 5, 0, b"\xc1junk")
    assert line.startswith("recv peer=127.0.0.1:9 REQUEST rid=5 len=5 flags=0x0000 problem=")
    assert "MALFORMED_BODY" in line
    ping = tracer.line("send", 6, 0, 0, b"")
    assert ping == "send peer=127.0.0.1:9 PING rid=0 len=0 flags=0x0000 body=(empty)"


def test_a_hostile_length_ends_the_trace_of_that_direction(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="paywire.trace")
    tracer = trace.FrameTracer(("127.0.0.1", 9))
    tracer.received(b"\xff\xff\xff\xff\x01\x03\x00\x00" + bytes(8) + b"junk")
    tracer.received(bytes(64))  # nothing after it can be framed: not traced
    tracer.sent(b"\x00\x00\x00\x01\x01\x06\x00\x00" + bytes(8))  # split mid-body...
    tracer.sent(b"\x80")  # ...and completed: the other direction is unaffected
    lines = [r.getMessage() for r in caplog.records if r.name == "paywire.trace"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("recv peer=127.0.0.1:9 frame_type=3 rid=0 problem=")
    assert lines[1] == "send peer=127.0.0.1:9 PING rid=0 len=1 flags=0x0000 body={}"


class FlaggedNode(NodeProcess):
    """A node started with extra command-line flags (``--trace-file``)."""

    def __init__(self, kind: str, config: HubConfig | BankNodeConfig, workdir: Path,
                 name: str, flags: list[str]) -> None:
        super().__init__(kind, config, workdir, name)
        self.flags = flags

    def start(self) -> FlaggedNode:
        self.config_path.write_text(dump_toml(self.config))
        self.config_path.chmod(0o600)
        self.ready_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*module_command("gateway.cli"), self.kind, "--config", str(self.config_path),
                 "--ready-file", str(self.ready_path), *self.flags],
                stdout=log, stderr=subprocess.STDOUT, env={**child_env(),
                                                          "PYTHONUNBUFFERED": "1"})
        return self


def test_the_trace_flags_of_hub_and_bank(tmp_path: Path) -> None:
    certs, secrets = tmp_path / "certs", tmp_path / "secrets.toml"
    pki.init(certs, merchants=["M1"], banks=["solo-1"])
    secret_keys.init(secrets)
    card = RICH[8]
    bank_file, hub_file = tmp_path / "bank.trace", tmp_path / "hub.trace"
    bank = FlaggedNode("bank", BankNodeConfig(
        node_id="solo-1", bank="solo", listen_port=0, certs_dir=certs,
        store_path=tmp_path / "solo.db", secrets_file=secrets, accounts={card: 10**9}),
        tmp_path, "solo-1", ["--trace-file", str(bank_file)])
    hub = FlaggedNode("hub", HubConfig(
        listen_port=0, certs_dir=certs, ledger_path=tmp_path / "ledger.db",
        secrets_file=secrets, merchants=[MerchantConfig("M1", KEYS["M1"])],
        banks=[BankRoute("solo", ["solo-1@127.0.0.1:0"], bins=["4811"])]),
        tmp_path, "hub", ["--trace", "--trace-file", str(hub_file)])
    try:
        bank_port = bank.start().wait_ready()
        assert isinstance(hub.config, HubConfig)
        hub.config.banks[0].nodes = [f"solo-1@127.0.0.1:{bank_port}"]
        hub_port = hub.start().wait_ready()

        async def charge() -> str:
            async with connect("127.0.0.1", hub_port, merchant_id="M1",
                               server_key=KEYS["M1"], certs_dir=certs) as client:
                tx = await client.charge("flag-1", 4_000, card=Card(card, 12, 2030, "4455"))
                return tx.transaction_status

        assert asyncio.run(charge()) == "capture"
    finally:
        hub.terminate()
        bank.terminate()
    hub_lines, bank_lines = hub_file.read_text(), bank_file.read_text()
    hub_frames, bank_frames = frames(hub_lines.splitlines()), frames(bank_lines.splitlines())
    assert any(m["dir"] == "recv" and m["type"] == "REQUEST" and '"flag-1"' in m["body"]
               for m in hub_frames)
    assert any(m["dir"] == "send" and m["type"] == "REQUEST" and '"op": "bank.' in m["body"]
               for m in hub_frames)
    assert any(m["dir"] == "recv" and m["type"] == "REQUEST" and '"op": "bank.' in m["body"]
               for m in bank_frames)
    for text in (hub_lines, bank_lines):
        assert card not in text and '"4455"' not in text and KEYS["M1"] not in text
