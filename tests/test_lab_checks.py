"""Every ``paywire lab check`` passes on its reference solution and fails, helpfully, on the
untouched skeleton (the issue's rule: CI runs both)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.labs import checks
from gateway.labs.checks import Sandbox
from tests.labsupport import paywire_bin, skip_without_tools

LABS = list(range(1, checks.LAB_COUNT + 1))


@pytest.mark.parametrize("number", LABS)
def test_reference_solution_passes(number: int, lab_sandbox: Sandbox) -> None:
    skip_without_tools(number)
    results = checks.run_lab(number, checks.solution_dir(number), lab_sandbox.directory)
    failed = [r for r in results if not r.passed]
    assert results and not failed, checks.render(number, results)


@pytest.mark.parametrize("number", LABS)
def test_untouched_skeleton_fails_helpfully(number: int, lab_sandbox: Sandbox,
                                            tmp_path: Path) -> None:
    target, copied, kept = checks.start_lab(number, tmp_path)
    assert not kept and sorted(copied) == sorted(checks.lab_module(number).FILES)
    results = checks.run_lab(number, target, lab_sandbox.directory)
    failed = [r for r in results if not r.passed]
    assert failed, f"the untouched skeleton of lab {number} passes every check"
    for r in failed:
        # helpful: says what was expected, not just "wrong"
        assert len(r.detail) >= 20, f"lab {number}: {r.name!r} fails without a message"
        assert "Traceback" not in r.detail.splitlines()[0]


def test_cli_list_start_check(tmp_path: Path) -> None:
    """The commands a student types: list, start (never overwrites), check (exit 1 on the
    skeleton, a one-line message for an unknown lab)."""
    listed = subprocess.run([paywire_bin(), "lab", "list"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert [line.split()[0] for line in listed] == [str(n) for n in LABS]
    start = [paywire_bin(), "lab", "start", "1", "--dir", str(tmp_path)]
    first = subprocess.run(start, capture_output=True, text=True, check=True).stdout
    assert "created" in first
    edited = tmp_path / "lab01" / checks.lab_module(1).FILES[0]
    edited.write_text(edited.read_text() + "\n# my work\n")
    again = subprocess.run(start, capture_output=True, text=True, check=True).stdout
    assert "kept" in again and edited.read_text().endswith("# my work\n")
    check = subprocess.run([paywire_bin(), "lab", "check", "1", "--dir", str(tmp_path)],
                           capture_output=True, text=True)
    assert check.returncode == 1 and "FAIL" in check.stdout
    unknown = subprocess.run([paywire_bin(), "lab", "check", "9"], capture_output=True,
                             text=True)
    assert unknown.returncode == 2 and "labs 1 to 8" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_skeletons_and_solutions_live_apart() -> None:
    for n in LABS:
        module = checks.lab_module(n)
        for f in module.FILES:
            skeleton = checks.skeleton_dir(n) / f
            solution = checks.solution_dir(n) / f
            assert skeleton.is_file() and solution.is_file(), (n, f)
            assert skeleton.read_bytes() != solution.read_bytes(), (n, f)


def test_a_hung_student_program_is_a_failed_check(tmp_path: Path) -> None:
    """Lab 1's decoder looping forever ends as a FAIL with a message, within the bound."""
    target, _, _ = checks.start_lab(1, tmp_path)
    for f in checks.lab_module(1).FILES:
        (target / f).write_text("while True:\n    pass\n")
    results = checks.run_lab(1, target, None, timeout_s=5.0)
    assert len(results) == 1 and not results[0].passed
    assert "did not finish" in results[0].detail
    shutil.rmtree(target)


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_a_check_out_of_time_stops_what_it_started(tmp_path: Path) -> None:
    """A student's program that started a process and hung: after the bound, the process is
    gone too (a lab's own hub would otherwise keep its port and ledger lock)."""
    target, _, _ = checks.start_lab(1, tmp_path)
    pid_file = tmp_path / "child.pid"
    for f in checks.lab_module(1).FILES:
        (target / f).write_text(
            "import pathlib, subprocess, sys\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'])\n"
            f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
            "while True:\n    pass\n")
    results = checks.run_lab(1, target, None, timeout_s=10.0)
    assert "did not finish" in results[0].detail
    if pid_file.exists():  # on a loaded machine the bound may end the check before it spawns
        pid = int(pid_file.read_text())
        deadline = time.monotonic() + 30
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the process table, bounded
        assert _gone(pid), f"the check's child {pid} outlived it"


def test_input_in_student_code_fails_instead_of_hanging(tmp_path: Path) -> None:
    target, _, _ = checks.start_lab(1, tmp_path)
    for f in checks.lab_module(1).FILES:
        (target / f).write_text("name = input('your name? ')\nbreakpoint()\n")
    results = checks.run_lab(1, target, None, timeout_s=120.0)
    assert not results[0].passed and "EOFError" in results[0].detail, results


def test_a_dead_sandbox_is_not_blamed_on_the_student(tmp_path: Path) -> None:
    """sandbox.json and sandbox.env left by a killed sandbox: the check says the sandbox is
    not serving, before running the student's code against it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the with ends: nothing listens there
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "sandbox.json").write_text(json.dumps({"pid": dead.pid}))
    (sandbox / "sandbox.env").write_text(f"export PAYWIRE_HUB=127.0.0.1:{port}\n")
    target, _, _ = checks.start_lab(4, tmp_path / "work")
    results = checks.run_lab(4, target, sandbox)
    assert [r.name for r in results] == ["the sandbox answers"]
    assert "start `paywire sandbox` again" in results[0].detail
