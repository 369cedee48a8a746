"""``paywire lab check N``: run lab N's checks against a student's work directory.

A lab module ``gateway.labs.labNN`` defines:

- ``TITLE: str`` — one line, shown by ``paywire lab list``;
- ``FILES: tuple[str, ...]`` — the student's files, relative to the lab's work directory
  (``labwork/labNN`` by default); ``paywire lab start N`` copies them from
  ``skeletons/labNN/``;
- ``NEEDS_SANDBOX: bool`` — whether the checks talk to a running ``paywire sandbox``;
- ``check(ctx: LabContext) -> Iterator[Result]`` — yields one :class:`Result` per check, in
  the order a student should fix them. A failing result's ``detail`` says what was expected,
  what the student's code did, and where to look (the handout's section, the spec's §).

Why a child process: the checks import and run the student's code, which may loop forever,
print, or crash the interpreter. ``run_lab`` runs them in a child process with a bound
(``check_timeout_s``), so a hung decoder is a failed check with a message, not a hung
terminal.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

LABS_DIR = Path(__file__).resolve().parent
LAB_COUNT = 8
CHECK_TIMEOUT_S_DEFAULT = 300.0
DETAIL_CHARS_MAX = 2000  # one failure's message, so a runaway repr cannot flood a terminal
HUB_PROBE_TIMEOUT_S = 5.0  # a connect on loopback: long only on a badly loaded machine


@dataclass(frozen=True)
class Result:
    """One check's outcome: ``name`` says what was checked, ``detail`` why it failed (or a
    short note when it passed)."""

    name: str
    passed: bool
    detail: str = ""


@dataclass
class Sandbox:
    """What a running ``paywire sandbox`` published in ``sandbox.json`` and ``sandbox.env``."""

    directory: Path
    info: dict[str, Any]
    env: dict[str, str]

    @classmethod
    def load(cls, directory: Path) -> Sandbox | None:
        """The sandbox in ``directory``, or ``None`` when none is running there (it writes
        both files only once everything is up, and removes them when it stops)."""
        info_path, env_path = directory / "sandbox.json", directory / "sandbox.env"
        if not info_path.is_file() or not env_path.is_file():
            return None
        env: dict[str, str] = {}
        for line in env_path.read_text().splitlines():
            line = line.strip()
            if line.startswith("export "):
                line = line[len("export "):]
            name, sep, value = line.partition("=")
            if sep and name.strip():
                env[name.strip()] = value.strip().strip("'\"")
        return cls(directory, json.loads(info_path.read_text()), env)

    def dead(self) -> str | None:
        """Why this sandbox cannot be serving, or ``None``: its process is gone, or its hub
        does not accept a connection. So a stale sandbox is not blamed on the student's
        code ("your code raised ConnectionRefusedError")."""
        pid = self.info.get("pid")
        if isinstance(pid, int):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return f"its process {pid} is gone"
            except PermissionError:
                pass  # alive, someone else's
        host, _, port = self.env.get("PAYWIRE_HUB", "").rpartition(":")
        if not port.isdigit():
            return "its sandbox.env names no hub (PAYWIRE_HUB)"
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)),
                                          timeout=HUB_PROBE_TIMEOUT_S):
                return None
        except OSError as exc:
            return f"its hub at {host}:{port} does not accept connections ({exc})"


@dataclass
class LabContext:
    """What a lab's checks get: the student's directory and, when the lab needs one, the
    running sandbox."""

    number: int
    work: Path
    sandbox: Sandbox | None = None
    scratch: Path = field(default_factory=lambda: Path("."))

    def load_module(self, relative: str, name: str | None = None) -> ModuleType:
        """Import the student's file ``relative`` (a fresh module each time, not cached in
        ``sys.modules`` under a name that could shadow the project's own)."""
        path = self.work / relative
        spec = importlib.util.spec_from_file_location(
            name or f"labwork_{self.number:02d}_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        # Registered before it runs, as an import would: a @dataclass in the student's file
        # looks its module up in sys.modules while the class is being built.
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


def lab_module(number: int) -> ModuleType:
    if not 1 <= number <= LAB_COUNT:
        raise ValueError(f"there are labs 1 to {LAB_COUNT}, not {number}")
    return importlib.import_module(f"gateway.labs.lab{number:02d}")


def skeleton_dir(number: int) -> Path:
    return LABS_DIR / "skeletons" / f"lab{number:02d}"


def solution_dir(number: int) -> Path:
    return LABS_DIR / "solutions" / f"lab{number:02d}"


def work_dir(root: Path, number: int) -> Path:
    return root / f"lab{number:02d}"


def start_lab(number: int, root: Path) -> tuple[Path, list[str], list[str]]:
    """Copy lab ``number``'s skeleton files into ``root/labNN``; never overwrite a file the
    student already has. Returns the directory, the files copied and the files kept."""
    module = lab_module(number)
    target = work_dir(root, number)
    copied, kept = [], []
    for relative in module.FILES:
        source, dest = skeleton_dir(number) / relative, target / relative
        if dest.exists():
            kept.append(relative)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        copied.append(relative)
    return target, copied, kept


def _guarded(step: Callable[[], Iterator[Result]]) -> Iterator[Result]:
    """Run a lab's checks; an exception escaping them (from the student's code, typically)
    becomes a failed result with the end of its traceback, and stops the lab."""
    try:
        yield from step()
    except Exception as exc:  # the student's code may raise anything
        tail = "".join(traceback.format_exception(exc)[-3:])
        yield Result("the checks ran to the end", False,
                     f"your code raised {type(exc).__name__}: {exc}\n{tail}")


def run_in_process(number: int, work: Path, sandbox_dir: Path | None,
                   scratch: Path) -> list[Result]:
    """Lab ``number``'s checks in this process (the child of :func:`run_lab`)."""
    module = lab_module(number)
    missing = [f for f in module.FILES if not (work / f).is_file()]
    if missing:
        return [Result("your files are there", False,
                       f"missing in {work}: {', '.join(missing)}; run "
                       f"`paywire lab start {number}` first")]
    sandbox = Sandbox.load(sandbox_dir) if sandbox_dir is not None else None
    if module.NEEDS_SANDBOX and sandbox is None:
        return [Result("a sandbox is running", False,
                       f"no running sandbox in {sandbox_dir}: start `paywire sandbox` in "
                       "another terminal (or pass --sandbox DIR) and run the check again")]
    if module.NEEDS_SANDBOX and sandbox is not None:
        dead = sandbox.dead()
        if dead:
            return [Result("the sandbox answers", False,
                           f"{dead}: the sandbox in {sandbox.directory} is not serving (killed? "
                           "its files stay behind after a kill -9). Stop it if it still runs, "
                           "start `paywire sandbox` again, and run the check again")]
    ctx = LabContext(number, work, sandbox, scratch)
    return [Result(r.name, r.passed, r.detail[:DETAIL_CHARS_MAX])
            for r in _guarded(lambda: module.check(ctx))]


def run_lab(number: int, work: Path, sandbox_dir: Path | None, *,
            timeout_s: float = CHECK_TIMEOUT_S_DEFAULT) -> list[Result]:
    """Lab ``number``'s checks in a child process bounded by ``timeout_s``."""
    lab_module(number)  # an unknown lab number is refused here, with its message
    if work.resolve().is_relative_to(LABS_DIR):
        # Checking a reference solution: its scratch files stay out of the source tree.
        scratch = Path(tempfile.mkdtemp(prefix=f"paywire-lab{number:02d}-"))
    else:
        scratch = work / ".check"  # beside the student's files: logs they may want to read
        scratch.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "gateway.labs.checks", str(number), str(work),
            str(sandbox_dir) if sandbox_dir is not None else "", str(scratch)]
    # Its own process group, so a check that runs out of time is stopped with everything it
    # started (a lab's own hub and bank nodes keep ports and ledger locks otherwise); no
    # terminal input, so a forgotten input() or breakpoint() fails instead of hanging
    # silently while the output is captured.
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                             env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
                                  "PYTHONBREAKPOINT": "0"})
    try:
        stdout, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return [Result("the checks finished in time", False,
                       f"they did not finish within {timeout_s:g} s: look for a loop that "
                       "never ends, a read that waits for bytes that never come, or an "
                       "input() / breakpoint() left in your code")]
    finally:
        # Whatever the check started and did not stop (it normally stops everything).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return [Result(**r) for r in json.loads(line)["results"]]
    return [Result("the checks ran", False,
                   f"the check process exited with {child.returncode} without a result:\n"
                   f"{stderr[-DETAIL_CHARS_MAX:]}")]


def render(number: int, results: list[Result]) -> str:
    lines = [f"lab {number}: {lab_module(number).TITLE}"]
    for r in results:
        lines.append(f"  {'PASS' if r.passed else 'FAIL'}  {r.name}")
        if r.detail and not r.passed:
            lines.extend(f"        {d}" for d in r.detail.rstrip().splitlines())
    passed = sum(r.passed for r in results)
    verdict = "all checks pass" if passed == len(results) else "not yet"
    lines.append(f"{passed}/{len(results)} checks pass: {verdict}")
    return "\n".join(lines)


def _child_main(argv: list[str]) -> int:
    number, work, sandbox_dir, scratch = int(argv[0]), Path(argv[1]), argv[2], Path(argv[3])
    results = run_in_process(number, work, Path(sandbox_dir) if sandbox_dir else None,
                             scratch)
    sys.stdout.flush()
    print("\n" + json.dumps({"results": [r.__dict__ for r in results]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
