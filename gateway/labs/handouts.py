"""The runnable part of a lab handout, so the handouts cannot rot.

A handout (``docs/labs/NN-*.md``) shows commands in two kinds of fenced blocks:

- ```` ```console ```` blocks are **run by the test suite** against a sandbox: each line
  starting with ``$ `` is a command (a trailing ``\\`` continues it on the next line), and
  the lines after it, up to the next command or the end of the block, are its expected
  output;
- ```` ```sh ```` (or any other) blocks are shown, not run: commands that stay up until
  Ctrl-C, need a second terminal, or are the student's to write.

Expected output is matched loosely, in order: each expected line must be found in a later
line of the actual output (stdout then stderr), where ``...`` inside a line stands for any
text and a line that is only ``...`` stands for any number of lines. Lines the handout
leaves out are allowed, so a handout shows what matters and stays true when unrelated
output changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LABS_DOCS = Path(__file__).resolve().parents[2] / "docs" / "labs"
RUN_BLOCK = "console"
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Command:
    """One ``$`` command of a console block, with its expected output lines."""

    text: str
    expected: tuple[str, ...]
    line: int  # 1-based line of the ``$`` in the handout, for messages


def handout_paths(language: str = "en") -> list[Path]:
    """The handouts in order: ``docs/labs/NN-*.md`` or ``docs/labs/id/NN-*.md``."""
    base = LABS_DOCS if language == "en" else LABS_DOCS / language
    return sorted(base.glob("[0-9][0-9]-*.md"))


def commands(markdown: str) -> list[Command]:
    """Every ``$`` command of every console block, in order."""
    out: list[Command] = []
    lines = markdown.splitlines()
    in_block: str | None = None
    current: list[str] | None = None
    expected: list[str] = []
    start = 0

    def flush() -> None:
        nonlocal current, expected
        if current is not None:
            out.append(Command("\n".join(current), tuple(expected), start))
        current, expected = None, []

    for number, raw in enumerate(lines, 1):
        fence = FENCE.match(raw.strip())
        if fence is not None:
            if in_block is None:
                in_block = fence.group(1)
                continue
            if raw.strip() == "```":
                if in_block == RUN_BLOCK:
                    flush()
                in_block = None
                continue
        if in_block != RUN_BLOCK:
            continue
        if current is not None and current[-1].endswith("\\") and not expected:
            current.append(raw)
        elif raw.startswith("$ "):
            flush()
            current, start = [raw[2:]], number
        elif current is not None and raw.strip():
            expected.append(raw.rstrip())
    return out


def headings(markdown: str, level: int = 2) -> list[str]:
    """The handout's headings of one level, outside code blocks."""
    found, in_block = [], False
    prefix = "#" * level + " "
    for raw in markdown.splitlines():
        if raw.strip().startswith("```"):
            in_block = not in_block
        elif not in_block and raw.startswith(prefix):
            found.append(raw[len(prefix):].strip())
    return found


def _pattern(line: str) -> re.Pattern[str]:
    text = line.strip()
    parts = [re.escape(p) for p in text.split("...")]
    # A number at either end is matched whole: "17/17 checks pass" must not match "117/17".
    head = r"(?<![0-9])" if text[:1].isdigit() else ""
    tail = r"(?![0-9])" if text[-1:].isdigit() else ""
    return re.compile(head + ".*".join(parts) + tail)


def mismatch(expected: tuple[str, ...], actual: str) -> str | None:
    """``None`` when ``actual`` shows every expected line in order; otherwise the first
    expected line not found, with what was left to search."""
    got = [a.rstrip() for a in actual.splitlines()]
    at = 0
    for line in expected:
        if line.strip() == "...":
            continue
        pattern = _pattern(line)
        while at < len(got) and not pattern.search(got[at]):
            at += 1
        if at == len(got):
            return f"expected a line matching {line.strip()!r}; output was:\n{actual}"
        at += 1
    return None
