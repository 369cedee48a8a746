"""Every ``paywire`` command the README (and docs/cli.md) shows in a code block parses with
the CLI's own parser, and the ones that end on their own run against a sandbox with the exit
code they should have (issue 15: the README's ``redeliver`` example was "unrecognized
arguments", found by an operator in an incident).

The commands run as written, with only what ties them to one machine replaced: file names
(``ledger.db``, ``bca.db``) by the running sandbox's, node addresses by its nodes', and order
ids made unique to this run (the sandbox is shared). Long-lived commands (nodes, the sandbox,
the chaos proxy) are only parsed: other tests start them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from gateway import cliout
from gateway.cli import build_parser
from gateway.labs.checks import Sandbox
from gateway.processes import child_env
from tests.labsupport import paywire_bin

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "docs" / "cli.md"]
RUN_S_MAX = 120.0
LONG_LIVED = {"sandbox", "hub", "bank", "chaos", "demo", "bench"}
# Commands whose right answer is not 0, by their text in the docs.
EXPECTED_CODES: dict[str, set[int]] = {
    # The README's example number "8808..." matches no payment.
    "paywire bank-admin pay --node 127.0.0.1:7500 --number 8808...": {cliout.EXIT_FAILED},
    "paywire charge order-2 --amount 10000 --card 4811222222222227": {cliout.EXIT_DECLINED},
    "paywire status order-1 --hub 127.0.0.1:7499 --timeout-s 2": {cliout.EXIT_UNREACHABLE},
    # Nothing dead, or none of these ids in this sandbox's ledger: ran, queued nothing.
    "paywire webhooks redeliver --ledger ledger.db 1 2 9": {0, cliout.EXIT_FAILED},
    "paywire webhooks redeliver --ledger ledger.db --all-dead": {0, cliout.EXIT_FAILED},
    # The sandbox is live (pending virtual accounts): findings are possible, a crash is not.
    "paywire audit --ledger ledger.db --bank bca=bca.db --bank bni=bni.db": {0, 1},
}


def documented_commands() -> list[str]:
    """``paywire ...`` lines of the docs' sh/console code blocks, in order: continuation
    lines joined, comments, ``$ ``, ``.venv/bin/`` and environment assignments dropped."""
    found: list[str] = []
    for doc in DOCS:
        for lang, body in re.findall(r"```(\w*)\n(.*?)```", doc.read_text(), re.S):
            if lang not in ("sh", "console", ""):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                if lang == "console" and not line.startswith("$ "):
                    continue  # the output shown after a command
                line = line.removeprefix("$ ").split("  #")[0].strip()
                words = shlex.split(line, comments=True) if "paywire" in line else []
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words.pop(0)
                if (words and words[0].endswith("/paywire")) or words[:1] == ["paywire"]:
                    found.append(shlex.join(["paywire", *words[1:]]))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 15, COMMANDS
    assert "paywire webhooks redeliver --ledger ledger.db 1 2 9" in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_documented_command_parses(command: str) -> None:
    argv = shlex.split(command)[1:]
    if argv == ["--version"]:
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(argv)
        assert exited.value.code == 0
        return
    ns = build_parser().parse_args(argv)
    assert callable(ns.fn)


def test_documented_commands_run_against_a_sandbox(lab_sandbox: Sandbox,
                                                   tmp_path: Path) -> None:
    directory = lab_sandbox.directory
    node = lab_sandbox.env["PAYWIRE_NODE_BCA_1"]
    suffix = f"-readme-{time.time_ns()}"
    fixed = {"ledger.db": str(lab_sandbox.info["hub"]["ledger"]),
             "bca=bca.db": f"bca={directory / 'bca.db'}",
             "bni=bni.db": f"bni={directory / 'bni.db'}",
             "127.0.0.1:7500": node, "bca-1@127.0.0.1:7401": f"bca-1@{node}",
             "sandbox/certs": str(directory / "certs")}

    def local(word: str) -> str:
        if re.fullmatch(r"order-\d+", word):
            return word + suffix
        return fixed.get(word, word)

    env = child_env({**os.environ, **lab_sandbox.env})

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([paywire_bin(), *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=RUN_S_MAX)

    # What the README's example.py does before `paywire status order-1001`.
    setup = run(["charge", "order-1001" + suffix, "--amount", "150000", "--card",
                 "4811111111111114"])
    assert setup.returncode == 0, setup.stderr
    ran = 0
    for command in COMMANDS:
        argv = shlex.split(command)[1:]
        if argv[0] in LONG_LIVED:
            continue
        done = run([local(w) for w in argv])
        allowed = EXPECTED_CODES.get(command, {0})
        assert done.returncode in allowed, (command, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, (command, done.stderr)
        assert "unrecognized arguments" not in done.stderr, command
        ran += 1
    assert ran >= 10
