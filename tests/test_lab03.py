"""Lab 3's check on fresh captures of a real sandbox (made by the reference solution's
script, so the check is not tuned to the committed files), and on captures and answers
that are wrong the ways a student's can be: files
swapped, a file that is no capture or is cut short, a missing or foreign key log, wrong
answers (which must say where to look, never the value); the pcap reader on classic pcap;
``paywire lab capture`` refusing bad input. The reference solution passing and the
untouched skeleton failing are in tests/test_lab_checks.py, the handout's commands in
tests/test_lab_handouts.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.labs import checks, lab03
from gateway.labs.checks import Result, Sandbox
from gateway.labs.pcap import read_capture
from tests.labsupport import paywire_bin

SOLUTION = checks.solution_dir(3)
TSHARK_S_MAX = 120.0
MAKE_S_MAX = 600.0  # two captured charges and a handful of tshark runs, on a loaded machine


@pytest.fixture(autouse=True)
def _tools() -> None:
    reason = lab03.missing_tools()
    if reason:
        pytest.skip(reason)


def work(tmp_path: Path) -> Path:
    """A copy of the reference solution's files, as a student's lab directory."""
    target = tmp_path / "lab03"
    target.mkdir()
    for name in ("answers.toml", lab03.PLAINTEXT, lab03.TLS, lab03.KEYLOG):
        shutil.copyfile(SOLUTION / name, target / name)
    return target


def results(target: Path) -> dict[str, Result]:
    out = checks.run_lab(3, target, None)
    assert "the checks ran to the end" not in {r.name for r in out}, out
    assert "the checks ran" not in {r.name for r in out}, out
    return {r.name: r for r in out}


def answer(target: Path, key: str, value: str) -> None:
    """Replace the answer ``key = ...`` (each key appears once in the file)."""
    path = target / "answers.toml"
    text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", path.read_text(), flags=re.M)
    assert n == 1, key
    path.write_text(text)


def test_reference_copy_passes(tmp_path: Path) -> None:
    got = results(work(tmp_path))
    assert all(r.passed for r in got.values()), [r for r in got.values() if not r.passed]


def test_fresh_captures_of_the_sandbox_pass(lab_sandbox: Sandbox, tmp_path: Path) -> None:
    """make_captures.py, run now against a real sandbox (the handout's commands, answers
    read with paywire dump and tshark), makes a directory the check passes: the committed
    reference captures are not what the check is tuned to."""
    reason = lab03.missing_tools(for_handout=True)
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                 f"{os.environ['PATH']}"}
    made = subprocess.run([sys.executable, "-m", "gateway.labs.solutions.lab03.make_captures",
                           "--sandbox", str(lab_sandbox.directory), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=MAKE_S_MAX, env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    for name in ("answers.toml", lab03.PLAINTEXT, lab03.TLS, lab03.KEYLOG):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "answers.toml").read_text() != (SOLUTION / "answers.toml").read_text()
    got = results(tmp_path)
    assert all(r.passed for r in got.values()), [r for r in got.values() if not r.passed]


def test_swapped_captures_are_named(tmp_path: Path) -> None:
    target = work(tmp_path)
    plain, tls = target / lab03.PLAINTEXT, target / lab03.TLS
    plain_bytes = plain.read_bytes()
    plain.write_bytes(tls.read_bytes())
    tls.write_bytes(plain_bytes)
    got = results(target)
    clear = got[f"{lab03.PLAINTEXT} holds a charge in clear"]
    assert not clear.passed and "holds TLS" in clear.detail
    hub = got[f"{lab03.TLS} holds a TLS connection to the hub"]
    assert not hub.passed and "frames in clear" in hub.detail


def test_wrong_answers_say_where_to_look_not_the_value(tmp_path: Path) -> None:
    target = work(tmp_path)
    truth = (SOLUTION / "answers.toml").read_text()
    records = int(re.search(r"^client_application_data_records = (\d+)$", truth,
                            re.M).group(1))  # type: ignore[union-attr]
    suite = re.search(r'^cipher_suite = "(\S+)"$', truth, re.M).group(1)  # type: ignore[union-attr]
    answer(target, "client_application_data_records", str(records + 1))
    answer(target, "cipher_suite", '"TLS_CHACHA20_POLY1305_SHA256"'
           if suite != "TLS_CHACHA20_POLY1305_SHA256" else '"TLS_AES_128_GCM_SHA256"')
    answer(target, "charge_body_length", '"12x"')
    answer(target, "welcome_frame_type", '""')
    answer(target, "tls_version", '"TLSv1.3"')  # tshark's column spelling is accepted
    got = results(target)
    wrong = got["tls: how many Application Data records the client sent"]
    assert not wrong.passed and "is not what your capture shows" in wrong.detail
    assert f"= {records}" not in wrong.detail and "Count the records" in wrong.detail
    cipher = got["tls: the cipher suite negotiated"]
    assert not cipher.passed and suite not in cipher.detail and "ServerHello" in cipher.detail
    length = got["plaintext: the body length of your charge REQUEST"]
    assert not length.passed and "is not a number" in length.detail
    blank = got["plaintext: the frame type of WELCOME"]
    assert not blank.passed and "not answered yet" in blank.detail
    assert got["tls: the TLS version negotiated"].passed


def test_a_file_that_is_no_capture_or_is_cut_short(tmp_path: Path) -> None:
    target = work(tmp_path)
    (target / lab03.PLAINTEXT).write_bytes(b"this is not a capture\n" * 3)
    tls = target / lab03.TLS
    tls.write_bytes(tls.read_bytes()[:len(tls.read_bytes()) // 3])
    got = results(target)
    clear = got[f"{lab03.PLAINTEXT} holds a charge in clear"]
    assert not clear.passed and "not a pcap or pcapng file" in clear.detail
    cut = got[f"{lab03.TLS} is whole"]
    assert not cut.passed and "still running" in cut.detail
    assert not all(r.passed for r in got.values())


def test_a_missing_or_foreign_key_log(tmp_path: Path) -> None:
    target = work(tmp_path)
    (target / lab03.KEYLOG).unlink()
    got = results(target)
    assert not got[f"tls: {lab03.KEYLOG} holds TLS secrets"].passed
    assert got["tls: the cipher suite negotiated"].passed  # readable without the keys
    # A key log of some other session: well-formed, decrypts nothing of this capture.
    (target / lab03.KEYLOG).write_text("".join(
        f"{label} {'11' * 32} {'22' * 48}\n" for label in (
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0")))
    decrypts = results(target)["tls: the key log decrypts your charge"]
    assert not decrypts.passed and "SSLKEYLOGFILE" in decrypts.detail


def test_the_reader_gives_the_same_streams_from_classic_pcap(tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    assert tshark is not None
    for name in (lab03.PLAINTEXT, lab03.TLS):
        classic = tmp_path / (name + ".pcap")
        subprocess.run([tshark, "-r", str(SOLUTION / name), "-F", "pcap", "-w", str(classic)],
                       check=True, capture_output=True, timeout=TSHARK_S_MAX)
        assert classic.read_bytes()[:4] != (SOLUTION / name).read_bytes()[:4]
        a = read_capture(SOLUTION / name).connections()
        b = read_capture(classic).connections()
        assert [(c.client, c.server, c.to_server, c.to_client, c.closed) for c in a] == \
            [(c.client, c.server, c.to_server, c.to_client, c.closed) for c in b]
        assert a and a[0].syn_seen and a[0].closed and not a[0].gaps
        assert len(a[0].to_server) > 200 and len(a[0].to_client) > 200


def test_capture_command_refuses_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "x.pcapng"
    bad_port = subprocess.run([paywire_bin(), "lab", "capture", "--port", "nowhere", "-w",
                               str(out), "--", "true"], capture_output=True, text=True,
                              timeout=TSHARK_S_MAX)
    assert bad_port.returncode == 2 and "not a port" in bad_port.stderr
    no_command = subprocess.run([paywire_bin(), "lab", "capture", "--port", "7406", "-w",
                                 str(out)], capture_output=True, text=True,
                                timeout=TSHARK_S_MAX)
    assert no_command.returncode == 2 and "give the command" in no_command.stderr
    assert not out.exists()
