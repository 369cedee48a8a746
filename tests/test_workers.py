"""``paywire hub --workers N`` (gateway/hub/workers.py): N hub processes sharing one port on
one machine, over a PostgreSQL ledger; refused on SQLite.

``test_two_workers_share_the_port_and_both_serve_charges`` needs several hubs on one
PostgreSQL ledger at once (issue 14, the multi-hub work): until the ledger's one-hub lock is
lifted, its second worker is refused and the test fails saying so."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway import cliout
from gateway.client import Card, Client
from gateway.config import HubConfig, LedgerConfig, dump_toml
from gateway.processes import child_env, module_command
from tests.deploy import RICH, Deployment
from tests.healthprobe import probe
from tests.waiting import wait_until

STOP_TIMEOUT_S = 60.0


class Workers:
    """``paywire hub --workers N`` as a child process, with its ready file and log."""

    def __init__(self, config_path: Path, count: int, workdir: Path) -> None:
        self.ready_path = workdir / "workers.ready"
        self.log_path = workdir / "workers.log"
        self.ready_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*module_command("gateway.cli"), "--log-level", "INFO", "hub", "--config",
                 str(config_path), "--workers", str(count), "--health-listen", "127.0.0.1:0",
                 "--ready-file", str(self.ready_path)],
                stdout=log, stderr=subprocess.STDOUT, env={**child_env(),
                                                           "PYTHONUNBUFFERED": "1"})

    def info(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"hub --workers exited with {self.proc.returncode}:\n"
                                 f"{self.log_path.read_text(errors='replace')[-4000:]}")
        try:
            data: dict[str, Any] = json.loads(self.ready_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of the (stopped) parent counts as gone.
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower().split(
            "state:")[1].splitlines()[0]
    except (FileNotFoundError, IndexError):
        return False


@contextmanager
def pg_deployment(tmp_path: Path, pg_dsn: str) -> Iterator[Deployment]:
    """Bank nodes and a hub config on the PostgreSQL ledger; the single hub the deployment
    starts is stopped again (the test runs the workers instead)."""
    dep = Deployment(tmp_path, bca_nodes=1, hub_overrides={"ledger": LedgerConfig(url=pg_dsn)})
    try:
        dep.start()
        assert dep.hub is not None
        dep.hub.terminate()
        yield dep
    finally:
        dep.stop()


async def _workers_ready(workers: Workers, count: int) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        info = workers.info()
        return info if info and len(info["workers"]) == count else None

    return await wait_until(ready, f"{count} hub workers to be ready", timeout_s=120)


def _client(dep: Deployment, port: int) -> Client:
    from gateway.client import connect
    from tests.deploy import KEYS

    return connect("127.0.0.1", port, merchant_id="M1", server_key=KEYS["M1"],
                   certs_dir=dep.certs)


def test_workers_on_sqlite_are_refused_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(dump_toml(HubConfig(listen_port=0, ledger_path=tmp_path / "l.db")))
    run = subprocess.run([*module_command("gateway.cli"), "hub", "--config", str(config),
                          "--workers", "2"], capture_output=True, text=True, timeout=60,
                         env=child_env())
    assert run.returncode == cliout.EXIT_CONFIG, run.stderr  # a setting that cannot be
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("paywire hub: --workers needs a PostgreSQL ledger")
    assert "one writer per file" in lines[0]
    assert not (tmp_path / "l.db").exists()  # nothing was started


def test_workers_refuse_the_plaintext_lab_listener(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(dump_toml(HubConfig(
        listen_port=0, ledger=LedgerConfig(url="postgresql://paywire@127.0.0.1:1/none"),
        plaintext_listen="127.0.0.1:0")))
    run = subprocess.run([*module_command("gateway.cli"), "hub", "--config", str(config),
                          "--workers", "2"], capture_output=True, text=True, timeout=60,
                         env=child_env())
    assert run.returncode == cliout.EXIT_CONFIG, run.stderr  # a setting that cannot be
    assert run.stderr.strip() == ("paywire hub: --workers does not run the lab's plaintext "
                                  "listener (plaintext_listen): run a single hub for the labs")


async def test_a_killed_worker_is_restarted_and_sigterm_stops_all(tmp_path: Path,
                                                                  pg_dsn: str) -> None:
    with pg_deployment(tmp_path, pg_dsn) as dep:
        assert dep.hub is not None
        workers = Workers(dep.hub.config_path, 1, tmp_path)
        try:
            info = await _workers_ready(workers, 1)
            port, first = info["port"], info["workers"][0]
            status, body = await probe(first["health_port"], "/readyz")
            assert status == 200 and isinstance(body, dict) and body["pid"] == first["pid"]
            async with _client(dep, port) as c:
                tx = await c.charge("wk-1", 4_000, card=Card(RICH[1], 12, 2030, "123"))
            assert tx.transaction_status == "capture"

            os.kill(first["pid"], signal.SIGKILL)  # the supervisor starts another

            def replaced() -> dict[str, Any] | None:
                now = workers.info()
                return now if now and now["workers"][0]["pid"] != first["pid"] else None

            again = (await wait_until(replaced, "the killed worker to be replaced",
                                      timeout_s=120))["workers"][0]
            assert again["pid"] != first["pid"] and _alive(again["pid"])
            assert "exited with -9: restarting" in workers.log_path.read_text()
            async with _client(dep, port) as c:  # the same port, served by the new worker
                replay = await c.charge("wk-1", 4_000, card=Card(RICH[1], 12, 2030, "123"))
                tx2 = await c.charge("wk-2", 4_500, card=Card(RICH[2], 12, 2030, "123"))
            assert replay.replayed and replay.transaction_id == tx.transaction_id
            assert tx2.transaction_status == "capture"
        finally:
            code = workers.stop()
        assert code == 0, workers.log_path.read_text()[-3000:]
        assert not _alive(again["pid"])  # SIGTERM reached the worker, which drained and left
        assert "hub hub stopped" in workers.log_path.read_text()


async def test_workers_stop_when_their_parent_is_killed(tmp_path: Path, pg_dsn: str) -> None:
    """SIGKILL of the parent (nothing it can catch): its worker sees the end of its
    lifeline pipe and stops as on SIGTERM, instead of serving on unsupervised."""
    with pg_deployment(tmp_path, pg_dsn) as dep:
        assert dep.hub is not None
        workers = Workers(dep.hub.config_path, 1, tmp_path)
        worker: int | None = None
        try:
            worker = (await _workers_ready(workers, 1))["workers"][0]["pid"]
            assert worker is not None
            workers.proc.kill()
            workers.proc.wait(STOP_TIMEOUT_S)
            await wait_until(lambda: not _alive(worker),  # type: ignore[arg-type]
                             "the orphaned worker to stop")
            log = workers.log_path.read_text()
            assert "the hub --workers parent is gone: stopping" in log
            assert "hub hub stopped" in log  # a graceful stop, not a crash
        finally:
            workers.stop()
            if worker is not None and _alive(worker):
                os.kill(worker, signal.SIGKILL)


async def test_two_workers_share_the_port_and_both_serve_charges(tmp_path: Path,
                                                                 pg_dsn: str) -> None:
    """Needs the multi-hub work of issue 14 (two hubs on one PostgreSQL ledger)."""
    with pg_deployment(tmp_path, pg_dsn) as dep:
        assert dep.hub is not None
        workers = Workers(dep.hub.config_path, 2, tmp_path)
        clients: list[Client] = []
        try:
            info = await _workers_ready(workers, 2)
            pids = {w["pid"] for w in info["workers"]}
            assert len(pids) == 2
            sessions: dict[int, int] = {}

            async def both_have_sessions() -> bool:
                # Open one connection more, then ask each worker how many it holds: the
                # kernel spreads connections over the port's sockets by a hash of their
                # addresses, so both get some within a few dozen.
                if len(clients) < 64:
                    clients.append(await _client(dep, info["port"]).connect())
                for w in info["workers"]:
                    status, body = await probe(w["health_port"], "/healthz")
                    assert status == 200 and isinstance(body, dict)
                    sessions[body["pid"]] = body["sessions"]
                return all(sessions.get(pid, 0) > 0 for pid in pids)

            await wait_until(both_have_sessions, "connections on both workers")
            assert sum(sessions.values()) == len(clients)
            results = await asyncio.gather(*(
                c.charge(f"two-{i}", 1_000 + i, card=Card(RICH[i % len(RICH)], 12, 2030, "123"))
                for i, c in enumerate(clients)))
            assert all(r.transaction_status == "capture" for r in results)
            assert len({r.transaction_id for r in results}) == len(clients)
        finally:
            for c in clients:
                await c.close()
            code = workers.stop()
        assert code == 0, workers.log_path.read_text()[-3000:]
