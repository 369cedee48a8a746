"""Our child processes run the installed code, not a ``gateway/`` where the operator stands
(issue 11 item 10): ``python -m`` alone puts the working directory first on ``sys.path``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.client import Card, connect
from tests.deploy import KEYS, RICH, deployment
from tests.waiting import wait_until

READY_TIMEOUT_S = 60.0


def hostile_cwd(root: Path, marker: Path) -> Path:
    """A directory holding packages named like ours that leave ``marker`` when imported."""
    cwd = root / "operator-cwd"
    for package in ("gateway", "protocol"):
        (cwd / package / "storage").mkdir(parents=True)
        code = (f"open({str(marker)!r}, 'a').write({package!r} + ' imported\\n')\n")
        (cwd / package / "__init__.py").write_text(code)
        (cwd / package / "storage" / "__init__.py").write_text(code)
    return cwd


async def test_nodes_and_writers_started_from_a_hostile_cwd_run_the_installed_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "MARKER"
    cwd = hostile_cwd(tmp_path, marker)
    monkeypatch.chdir(cwd)  # children inherit it, as from an operator's shell
    with deployment(tmp_path / "dep", bca_nodes=1) as dep:
        async with dep.client() as c:
            tx = await c.charge("cwd-1", 4_000, card=Card(RICH[0], 12, 2030, "123"))
        assert tx.transaction_status == "capture"
        assert not marker.exists(), marker.read_text()

        # The console script (as an operator types `paywire hub`) is safe by itself; what
        # it starts, the ledger's writer process, must be too.
        assert dep.hub is not None
        dep.hub.terminate()
        script = Path(sys.executable).with_name("paywire")
        ready = tmp_path / "script-hub.ready"
        with open(tmp_path / "script-hub.log", "wb") as log:
            proc = subprocess.Popen([str(script), "hub", "--config", str(dep.hub.config_path),
                                     "--ready-file", str(ready)], stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            await wait_until(lambda: ready.exists() or proc.poll() is not None,
                             "the hub started from the console script to be ready",
                             timeout_s=READY_TIMEOUT_S)
            assert proc.poll() is None, (tmp_path / "script-hub.log").read_text()
            info = json.loads(ready.read_text())
            assert info["pid"] == proc.pid
            async with connect("127.0.0.1", info["port"], merchant_id="M1",
                               server_key=KEYS["M1"], certs_dir=dep.certs) as c:
                tx = await c.charge("cwd-2", 4_000, card=Card(RICH[0], 12, 2030, "123"))
            assert tx.transaction_status == "capture"
        finally:
            proc.terminate()
            proc.wait(READY_TIMEOUT_S)
        assert not marker.exists(), marker.read_text()
