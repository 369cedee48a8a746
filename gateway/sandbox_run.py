"""``paywire sandbox`` (run): choose the mode, check the arguments and the directory, run
it, and turn what can go wrong at start into one line and an exit code. Apart from
``gateway/sandbox.py`` (the sandbox) and ``gateway/sandbox_scaleout.py`` (its scale-out
mode, built on it), so that neither imports the other back."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gateway.sandbox import (
    ENV_FILE,
    JSON_FILE,
    PLAINTEXT_PORT_OFFSET,
    Sandbox,
    SandboxError,
    running_sandbox_pid,
)


def run_sandbox(directory: Path, port: int, auto_pay_s: float | None = None, *,
                plaintext: bool = True, scale_out: bool = False,
                pg_dsn: str | None = None) -> int:
    """``paywire sandbox``: 0 after a clean stop, 1 if a node failed, 2 if it cannot start.
    ``scale_out``: two hubs on one PostgreSQL ledger (``pg_dsn``, else a throwaway server)
    behind HAProxy (``gateway/sandbox_scaleout.py``)."""
    import uvloop

    from gateway.haproxy import HAProxyError
    from gateway.pki import PkiError
    from gateway.sandbox_scaleout import LAST_PORT_OFFSET, ScaleOutSandbox
    from gateway.secret_keys import SecretsError
    from gateway.storage.groupcommit import make_private_dirs

    last = LAST_PORT_OFFSET if scale_out else PLAINTEXT_PORT_OFFSET
    if port != 0 and not 1 <= port <= 65535 - last:
        print("paywire sandbox: --port must be 0 (ephemeral ports) or "
              f"1..{65535 - last}",
              file=sys.stderr)
        return 2
    if auto_pay_s is not None and auto_pay_s <= 0:
        print("paywire sandbox: --auto-pay-s must be positive", file=sys.stderr)
        return 2
    directory = directory.absolute()
    try:
        make_private_dirs(directory)  # 0700: it holds the keys, the ledger and the books
        running = running_sandbox_pid(directory)
        if running is not None and running != os.getpid():
            raise SandboxError(f"a sandbox already serves {directory} (pid {running}); "
                               "stop it (Ctrl-C) or use another --dir")
        for name in (ENV_FILE, JSON_FILE):  # left by a sandbox that was killed
            (directory / name).unlink(missing_ok=True)
        sandbox = (ScaleOutSandbox(directory, port, auto_pay_s, pg_dsn) if scale_out
                   else Sandbox(directory, port, auto_pay_s, plaintext))
        result: int = uvloop.run(sandbox.run())
        return result
    except (SandboxError, PkiError, SecretsError, HAProxyError, OSError, RuntimeError) as exc:
        if "already in use" in str(exc).lower():
            # A bank node's log tail would bury the point under its traceback.
            print(f"paywire sandbox: a port it needs ({port} to {port + last}) is "
                  "in use (another sandbox or program?): stop that, or give --port P for "
                  "another range, or --port 0 for free ports", file=sys.stderr)
            return 2
        print(f"paywire sandbox: {exc}", file=sys.stderr)
        return 2
