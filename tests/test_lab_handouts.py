"""The handouts cannot rot: every command a handout shows in a ```console block is run
against a sandbox, in order, as a student would, and its output checked against the
handout's expected output; and the English and Bahasa Indonesia handouts stay in step.

A handout's commands run in one directory per handout, with the sandbox's environment
(``sandbox.env``) and ``sandbox/`` pointing at the running sandbox, as it would after
``paywire sandbox`` in the student's clone. Where the student writes code between
``paywire lab start N`` and ``paywire lab check N``, the test puts the reference solution in
place of the skeleton just before the check (the student's work, done)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.labs import checks, handouts
from gateway.labs.checks import Sandbox
from tests.labsupport import skip_without_tools

EN = handouts.handout_paths("en")
ID = handouts.handout_paths("id")
COMMAND_S_MAX = 300.0
REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"en": ["Goal", "Background", "Steps", "Questions", "Check your work"],
            "id": ["Tujuan", "Latar belakang", "Langkah", "Pertanyaan",
                   "Periksa pekerjaan Anda"]}
LAB_CHECK = re.compile(r"paywire lab check (\d)")
# From this comment on, a handout's commands need the scale-out sandbox (lab 6: two hubs
# behind HAProxy), as the student has restarted it with ``paywire sandbox --scale-out``.
SCALE_OUT_MARK = "<!-- sandbox: scale-out"


def scale_out_from(markdown: str) -> int | None:
    """The line of the handout's scale-out mark (commands after it need that sandbox)."""
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.startswith(SCALE_OUT_MARK):
            return number
    return None


def commands_before_scale_out(markdown: str) -> int | None:
    mark = scale_out_from(markdown)
    return None if mark is None else sum(c.line < mark for c in handouts.commands(markdown))


def test_eight_labs_in_both_languages() -> None:
    assert [p.name[:2] for p in EN] == [f"{n:02d}" for n in range(1, checks.LAB_COUNT + 1)]
    assert [p.name for p in ID] == [p.name for p in EN]


@pytest.mark.parametrize("path", EN, ids=lambda p: p.name)
def test_english_and_indonesian_in_step(path: Path) -> None:
    en, id_ = path.read_text(), (path.parent / "id" / path.name).read_text()
    assert len(handouts.headings(en)) == len(handouts.headings(id_))
    assert len(handouts.headings(en, 3)) == len(handouts.headings(id_, 3))
    for language, text in (("en", en), ("id", id_)):
        missing = [s for s in SECTIONS[language] if s not in handouts.headings(text)]
        assert not missing, f"{language}/{path.name} lacks sections {missing}"
    assert [(c.text, c.expected) for c in handouts.commands(en)] == \
        [(c.text, c.expected) for c in handouts.commands(id_)]
    assert handouts.commands(en), f"{path.name} runs no command"
    # Both switch to the scale-out sandbox at the same command.
    assert commands_before_scale_out(en) == commands_before_scale_out(id_)


def _run(command: handouts.Command, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["bash", "-c", command.text], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=COMMAND_S_MAX)
    return done.stdout + done.stderr


@pytest.mark.parametrize("path", EN, ids=lambda p: p.name)
def test_handout_commands_give_the_shown_output(path: Path, lab_sandbox: Sandbox,
                                                tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    skip_without_tools(int(path.name[:2]), for_handout=True)
    (tmp_path / "docs").symlink_to(REPO / "docs")

    def use(sandbox: Sandbox) -> dict[str, str]:
        """``sandbox/`` and the environment of this sandbox, as after ``source
        sandbox/sandbox.env`` in the student's clone."""
        (tmp_path / "sandbox").unlink(missing_ok=True)
        (tmp_path / "sandbox").symlink_to(sandbox.directory)
        return {**os.environ, **sandbox.env,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "PAYWIRE_SANDBOX": str(sandbox.directory),
                "PAYWIRE_LABWORK": str(tmp_path / "labwork")}  # this handout's own

    env = use(lab_sandbox)
    text = path.read_text()
    scale_out = scale_out_from(text)
    for command in handouts.commands(text):
        if scale_out is not None and command.line > scale_out:
            scale_out = None  # switch once; skipped, with the reason, without haproxy
            env = use(request.getfixturevalue("lab_sandbox_scale_out"))
        wanted = LAB_CHECK.search(command.text)
        if wanted:
            number = int(wanted.group(1))
            work = checks.work_dir(tmp_path / "labwork", number)
            shutil.copytree(checks.solution_dir(number), work, dirs_exist_ok=True)
        output = _run(command, tmp_path, env)
        problem = handouts.mismatch(command.expected, output)
        assert problem is None, f"{path.name}:{command.line}: $ {command.text}\n{problem}"


@pytest.mark.parametrize("language", ["en", "id"])
def test_index_links_every_handout(language: str) -> None:
    """docs/labs/README.md (and its translation) links each handout, in order, by its
    real file name."""
    base = handouts.LABS_DOCS if language == "en" else handouts.LABS_DOCS / language
    links = re.findall(r"\]\(([0-9][0-9]-[^)]+\.md)\)", (base / "README.md").read_text())
    assert links == [p.name for p in handouts.handout_paths(language)]


def test_expected_output_matches_numbers_whole() -> None:
    """The handout format's matcher: in order, ``...`` for any text, numbers at the ends of
    a line matched whole (an expected ``17/17`` is not satisfied by ``117/17``)."""
    assert handouts.mismatch(("17/17 checks pass",), "lab 1\n17/17 checks pass: ok") is None
    assert handouts.mismatch(("17/17 checks pass",), "117/17 checks pass") is not None
    assert handouts.mismatch(("total 12",), "total 123") is not None
    assert handouts.mismatch(("a ... c", "d"), "a b c\nd") is None
    assert handouts.mismatch(("d", "a ... c"), "a b c\nd") is not None  # order matters
