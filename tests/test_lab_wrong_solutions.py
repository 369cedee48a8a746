"""Wrong solutions the lab checks must fail (an outside review found each one passing).

Each test copies a lab's reference solution into a work directory, makes the one mistake a
student could make, runs ``checks.run_lab`` like ``paywire lab check`` does, and asserts the
check that should catch it fails with a message that says what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

from gateway.labs import checks
from gateway.labs.checks import Result, Sandbox


def wrong_variant(number: int, root: Path, relative: str, old: str, new: str) -> Path:
    """Lab ``number``'s reference solution in ``root/labNN``, with ``old`` replaced by
    ``new`` in ``relative`` (exactly once: the test fails if the solution changed)."""
    target = checks.work_dir(root, number)
    for f in checks.lab_module(number).FILES:
        (target / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checks.solution_dir(number) / f, target / f)
    path = target / relative
    text = path.read_text()
    assert text.count(old) == 1, f"{relative} no longer contains {old!r} exactly once"
    path.write_text(text.replace(old, new))
    return target


def failed(results: list[Result], name_part: str) -> Result:
    """The failed result whose name contains ``name_part`` (asserting there is one)."""
    hits = [r for r in results if name_part in r.name]
    assert hits, f"no check named like {name_part!r}: {[r.name for r in results]}"
    assert not hits[0].passed, f"{hits[0].name!r} passes a wrong solution"
    return hits[0]


def totals_stable(number: int, results: list[Result], solution: list[Result]) -> None:
    assert [r.name for r in results] == [r.name for r in solution], \
        f"lab {number}: a wrong solution gets other checks than the reference"


# --- lab 7 ---------------------------------------------------------------------------------

LAB07_EVENT_LINE = 'event = str(body.get("event_id", ""))'


def test_lab07_dedup_on_the_unsigned_header_fails(tmp_path: Path) -> None:
    work = wrong_variant(7, tmp_path, "receiver.py", LAB07_EVENT_LINE,
                         'event = request.headers.get("X-Paywire-Event-Id", "")')
    results = checks.run_lab(7, work, None)
    r = failed(results, "new X-Paywire-Event-Id")
    assert "processed it again" in r.detail and "body's event_id" in r.detail
    assert sum(not x.passed for x in results) == 1, checks.render(7, results)


def test_lab07_dedup_on_order_id_fails(tmp_path: Path) -> None:
    work = wrong_variant(7, tmp_path, "receiver.py", LAB07_EVENT_LINE,
                         'event = str(body.get("order_id", ""))')
    results = checks.run_lab(7, work, None)
    r = failed(results, "same order")
    assert "not on order_id" in r.detail and "refund" in r.detail


def test_lab07_appending_the_event_id_is_a_fail_not_a_crash(tmp_path: Path) -> None:
    work = wrong_variant(7, tmp_path, "receiver.py", "processed.append(body)",
                         "processed.append(event)")
    results = checks.run_lab(7, work, None)
    assert all(r.name != "the checks ran to the end" for r in results), \
        checks.render(7, results)
    r = failed(results, "processes a genuine notification")
    assert "not parsed bodies" in r.detail and "str" in r.detail


# --- lab 4 ---------------------------------------------------------------------------------

def test_lab04_a_client_that_keeps_its_own_wish_fails(tmp_path: Path,
                                                      lab_sandbox: Sandbox) -> None:
    """It asks for 3 and 5 and keeps them (the hub grants both): asking for 1000 or for
    nothing shows it ignores WELCOME."""
    work = wrong_variant(4, tmp_path, "pipeline.py",
                         'self.in_flight_max = welcome["in_flight_max"]',
                         "self.in_flight_max = in_flight_wish or 64")
    results = checks.run_lab(4, work, lab_sandbox.directory)
    r = failed(results, "handshake() keeps WELCOME's in_flight_max")
    assert "in_flight_max=1000" in r.detail and "WELCOME" in r.detail, r.detail


# --- lab 2 ---------------------------------------------------------------------------------

def test_lab02_the_hubs_alert_counts_as_the_hub_closing() -> None:
    """tlsprobe.hub_outcome says ``alert <OpenSSL reason>: ...`` when the hub sent an alert;
    where the hub is expected to close, the expected alert matches and another does not."""
    from gateway.labs.lab02 import EXPECTED, _hub_matches

    hub, _, alert = EXPECTED["expired"]
    assert _hub_matches("alert SSLV3_ALERT_CERTIFICATE_EXPIRED: [SSL] sslv3 alert "
                        "certificate expired (_ssl.c:2580)", hub, alert)
    assert _hub_matches("alert TLSV1_ALERT_CERTIFICATE_EXPIRED: ...", hub, alert)
    assert _hub_matches("closed: the hub ended the connection without a frame", hub, alert)
    assert not _hub_matches("alert TLSV1_ALERT_UNKNOWN_CA: ...", hub, alert)
    hub, _, alert = EXPECTED["rogue_ca"]
    assert _hub_matches("alert TLSV1_ALERT_UNKNOWN_CA: ...", hub, alert)
    hub, _, alert = EXPECTED["wrong_role"]
    assert _hub_matches("FORBIDDEN: role hub may not ...", hub, alert)
    assert not _hub_matches("alert TLSV1_ALERT_UNKNOWN_CA: ...", hub, alert)


# --- lab 1 ---------------------------------------------------------------------------------

LAB01_REFUSE = "                self.error = problem\n                self._buf.clear()\n" \
               "                return frames\n"


def test_lab01_totals_are_stable_and_skipped_checks_fail(tmp_path: Path) -> None:
    """The skeleton stops at the first failing check of a group; the later ones are still
    reported, as FAILs that say why, so skeleton and solution show the same total."""
    from gateway.labs.lab01 import CHECK_NAMES

    target, _, _ = checks.start_lab(1, tmp_path)
    skeleton = checks.run_lab(1, target, None)
    solution = checks.run_lab(1, checks.solution_dir(1), None)
    assert [r.name for r in skeleton] == [r.name for r in solution] == list(CHECK_NAMES)
    r = failed(skeleton, "a frame with an empty body")
    assert r.detail.startswith("not run: fix the earlier check first")


def test_lab01_a_decoder_that_raises_on_a_hostile_header_gets_its_hint(
        tmp_path: Path) -> None:
    work = wrong_variant(1, tmp_path, "decoder.py", LAB01_REFUSE,
                         "                raise ValueError(f'bad header: {problem}')\n")
    r = failed(checks.run_lab(1, work, None), "hostile headers are refused")
    assert "never raise" in r.detail and "16 header bytes alone" not in r.detail, r.detail


def test_lab01_a_decoder_that_drops_the_frames_before_a_bad_header_gets_its_hint(
        tmp_path: Path) -> None:
    work = wrong_variant(1, tmp_path, "decoder.py", LAB01_REFUSE,
                         "                self.error = problem\n"
                         "                self._buf.clear()\n                return []\n")
    r = failed(checks.run_lab(1, work, None), "hostile headers are refused")
    assert "do not drop them" in r.detail and "16 header bytes alone" not in r.detail, \
        r.detail


def test_lab01_a_read_frames_bug_on_the_hub_is_not_blamed_on_the_sandbox(
        tmp_path: Path, lab_sandbox: Sandbox) -> None:
    """read_frames works on the local socket pair but raises ValueError on the hub's TLS
    socket: the message names the student's code, not an unreachable sandbox."""
    work = wrong_variant(1, tmp_path, "hello.py", "        frames.extend(decoder.feed(data))\n",
                         "        if hasattr(sock, 'cipher'):\n"
                         "            raise ValueError('my parsing bug')\n"
                         "        frames.extend(decoder.feed(data))\n")
    r = failed(checks.run_lab(1, work, lab_sandbox.directory), "sandbox hub's WELCOME")
    assert "your read_frames" in r.detail and "my parsing bug" in r.detail, r.detail
    assert "is the sandbox running" not in r.detail, r.detail


# --- lab 5 ---------------------------------------------------------------------------------

def test_lab05_resending_the_charge_after_outcome_unknown_fails(tmp_path: Path,
                                                                lab_sandbox: Sandbox) -> None:
    """Safe for the money (same order id), so the ledger check passes it; the handout asks
    for status first, and now a check does too."""
    work = wrong_variant(5, tmp_path, "retry.py", "            if unknown:\n",
                         "            if unknown and False:  # never ask, resend\n")
    results = checks.run_lab(5, work, lab_sandbox.directory)
    r = failed(results, "after OutcomeUnknown")
    assert "then your code sent charge" in r.detail and "status" in r.detail, r.detail
    assert [x.name for x in results if not x.passed] == [r.name], checks.render(5, results)


def test_lab05_never_closing_the_clients_fails(tmp_path: Path, lab_sandbox: Sandbox) -> None:
    work = wrong_variant(5, tmp_path, "retry.py", "            await _close(client)\n",
                         "            pass  # never closed\n")
    results = checks.run_lab(5, work, lab_sandbox.directory)
    r = failed(results, "is closed before it returns")
    assert "still open" in r.detail and "client.close()" in r.detail, r.detail
