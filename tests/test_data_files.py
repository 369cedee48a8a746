"""Data files and their owners (issue 11 items 6 and 12): ledgers, books, their WAL and
shared-memory files are 0600 and their directories 0700 whatever the umask; a ledger has one
writing process at a time, and a second hub is refused with the file and the holder's pid."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway import pki, secret_keys
from gateway.client import Card, connect
from gateway.config import BankNodeConfig, BankRoute, HubConfig, MerchantConfig
from gateway.processes import NodeProcess
from gateway.storage import lockfile
from tests.deploy import RICH, deployment
from tests.waiting import wait_until

EXIT_TIMEOUT_S = 60.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): mode(p) for p in [root, *root.rglob("*")]}


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def assert_private(root: Path) -> None:
    wrong = {name: f"{m:04o}" for name, m in modes_under(root).items()
             if m != (0o700 if (root / name).is_dir() else 0o600)}
    assert not wrong, f"not owner-only: {wrong}"


async def test_ledger_books_wal_and_directories_are_owner_only_under_umask_000(
        tmp_path: Path) -> None:
    certs = tmp_path / "certs"  # the certificate directory's modes are another test's
    pki.init(certs, merchants=["M1"], banks=["bca-1"])
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    data = run / "data"  # the nodes create it, and everything below it
    with umask(0):
        secrets = secret_keys.init(run / "keys" / "paywire-secrets.toml")
        # A book made before this rule (world-readable) is tightened when a node opens it.
        (data / "bank").mkdir(parents=True, mode=0o700)
        os.chmod(data, 0o700)
        old_book = data / "bank" / "bca.db"
        old_book.touch()
        os.chmod(old_book, 0o644)
        bank = NodeProcess("bank", BankNodeConfig(
            node_id="bca-1", bank="bca", listen_port=0, certs_dir=certs,
            store_path=old_book, secrets_file=secrets,
            accounts={RICH[0]: 1_000_000}), run, "bca-1").start()
        hub = None
        try:
            bank_port = bank.wait_ready()
            hub = NodeProcess("hub", HubConfig(
                listen_port=0, certs_dir=certs, ledger_path=data / "hub" / "deep" / "ledger.db",
                secrets_file=secrets, merchants=[MerchantConfig("M1", "sk-M1")],
                banks=[BankRoute("bca", [f"bca-1@127.0.0.1:{bank_port}"], bins=["4811"])]),
                run, "hub").start()
            port = hub.wait_ready()
            async with connect("127.0.0.1", port, merchant_id="M1", server_key="sk-M1",
                               certs_dir=certs) as client:
                tx = await client.charge("m-1", 5_000, card=Card(RICH[0], 12, 2030, "123"))
            assert tx.transaction_status == "capture"
            live = modes_under(run)
            for name in ("data/hub/deep/ledger.db-wal", "data/hub/deep/ledger.db-shm",
                         "data/hub/deep/ledger.db.lock", "data/bank/bca.db-wal",
                         "data/bank/bca.db-shm"):
                assert name in live, sorted(live)
            assert_private(run)
        finally:
            if hub is not None:
                hub.terminate()
            bank.terminate()
    assert_private(run)


def _second_hub(dep_cfg: HubConfig, workdir: Path, name: str) -> NodeProcess:
    cfg = dataclasses.replace(dep_cfg, listen_port=0)
    return NodeProcess("hub", cfg, workdir, name).start()


async def test_second_hub_on_a_ledger_is_refused_and_the_lock_survives_no_kill_9(
        tmp_path: Path) -> None:
    with deployment(tmp_path, bca_nodes=1) as dep:
        assert dep.hub is not None and dep.hub.proc is not None and dep.hub_cfg is not None
        first_pid = dep.hub.proc.pid
        ledger = dep.hub_cfg.ledger_path
        second = _second_hub(dep.hub_cfg, tmp_path, "hub-2")
        assert second.proc is not None
        try:
            proc = second.proc
            await wait_until(lambda: proc.poll() is not None or second.ready_path.exists(),
                             "the second hub to exit or start", timeout_s=EXIT_TIMEOUT_S)
            assert not second.ready_path.exists(), "a second hub serves the same ledger"
            assert second.proc.wait(EXIT_TIMEOUT_S) == 8  # EXIT_IN_USE (docs/cli.md)
        finally:
            second.terminate()
        lines = second.log_path.read_text().strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("paywire hub: ledger ")
        assert str(ledger) in lines[0] and f"pid {first_pid}" in lines[0]
        # The first hub never noticed: it still serves charges.
        async with dep.client() as c:
            tx = await c.charge("lock-1", 7_000, card=Card(RICH[1], 12, 2030, "123"))
        assert tx.transaction_status == "capture"
        # A crash releases the lock (the kernel closes the descriptors of the hub and of its
        # writer), so a new hub starts on the same ledger without anyone cleaning up.
        dep.hub.kill()
        await dep.arestart_hub()
        assert dep.hub.proc is not None
        assert lockfile.lock_path(ledger).read_text().strip() == str(dep.hub.proc.pid)
        async with dep.client() as c:
            again = await c.charge("lock-1", 7_000, card=Card(RICH[1], 12, 2030, "123"))
            assert again.replayed and again.transaction_id == tx.transaction_id
            tx2 = await c.charge("lock-2", 7_000, card=Card(RICH[1], 12, 2030, "123"))
        assert tx2.transaction_status == "capture"
        assert dep.audit().clean


def test_lock_names_the_file_and_a_live_holder_at_once(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    held = lockfile.acquire(db, "ledger")
    try:
        with pytest.raises(lockfile.LockHeld) as err:
            lockfile.acquire(db, "ledger", orphan_wait_s=60.0)
        message = str(err.value)
        assert "\n" not in message and str(db) in message and f"pid {os.getpid()}" in message
        assert mode(lockfile.lock_path(db)) == 0o600
    finally:
        held.close()
    lockfile.acquire(db, "ledger").close()


def test_one_file_reached_through_a_link_or_another_path_has_one_lock(tmp_path: Path) -> None:
    """Review finding: the lock file was named after the path as given, so a ledger opened
    through a symbolic link (or its directory through one) got a second lock and a second
    writer."""
    real = tmp_path / "data"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    (tmp_path / "ledger-link.db").symlink_to(real / "ledger.db")
    held = lockfile.acquire(real / "ledger.db", "ledger")
    try:
        for other in (tmp_path / "ledger-link.db", tmp_path / "alias" / "ledger.db",
                      real / ".." / "data" / "ledger.db"):
            with pytest.raises(lockfile.LockHeld):
                lockfile.acquire(other, "ledger", orphan_wait_s=60.0)
    finally:
        held.close()


def test_lock_left_by_a_dead_owner_is_waited_for_then_refused(tmp_path: Path) -> None:
    """A hub killed while its writer finishes: the recorded pid is gone, a child still holds
    the lock. The newcomer waits (bounded), then says so; once it is released, it proceeds."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    db = tmp_path / "ledger.db"
    held = lockfile.acquire(db, "ledger")
    os.ftruncate(held.fd, 0)
    os.pwrite(held.fd, dead.stdout.encode(), 0)
    try:
        with pytest.raises(lockfile.LockHeld) as err:
            lockfile.acquire(db, "ledger", orphan_wait_s=0.2)
        assert f"pid {dead.stdout.strip()} has exited" in str(err.value)
    finally:
        held.close()
    lockfile.acquire(db, "ledger", orphan_wait_s=0.2).close()
