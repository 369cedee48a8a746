"""Certificate files on disk (issue 11, item 6): the certs directory is 0700 and every key
0600 whatever the umask, and the CA key is not in the directory nodes read."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import pki, tls


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _paywire_certs(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as an operator would, in a shell whose umask is 000."""
    return subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", sys.executable, "-m", "gateway.cli",
         "certs", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _check_modes(certs: Path, ca_dir: Path) -> None:
    assert _mode(certs) == 0o700
    assert _mode(ca_dir) == 0o700
    keys = sorted(certs.glob("*.key"))
    assert keys, "no keys were written"
    for key in [*keys, ca_dir / "ca.key"]:
        assert _mode(key) == 0o600, key
    for crt in [*certs.glob("*.crt"), ca_dir / "ca.crt"]:
        assert _mode(crt) == 0o644, crt  # public, but never writable by others


def test_certs_init_under_umask_000(tmp_path: Path) -> None:
    result = _paywire_certs(tmp_path, "init", "certs", "--merchant", "M1", "--bank", "bca-1")
    assert result.returncode == 0, result.stderr
    certs, ca_dir = tmp_path / "certs", tmp_path / "certs-ca"
    _check_modes(certs, ca_dir)
    assert {p.name for p in certs.iterdir()} == {
        "ca.crt", "hub-hub.crt", "hub-hub.key", "bank-bca-1.crt", "bank-bca-1.key",
        "merchant-M1.crt", "merchant-M1.key"}
    # The CA key is only in the CA directory, which nothing a node loads points at.
    assert not list(certs.rglob("ca.key"))
    assert (ca_dir / "ca.key").is_file()
    assert str(ca_dir) in result.stdout
    # Issuing later, still under umask 000, keeps the same bits.
    result = _paywire_certs(tmp_path, "issue", "certs", "--role", "merchant", "--name", "M2")
    assert result.returncode == 0, result.stderr
    _check_modes(certs, ca_dir)
    assert _mode(certs / "merchant-M2.key") == 0o600


def test_an_existing_open_directory_is_tightened(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    os.chmod(certs, 0o777)
    (certs / "README.md").write_text("kept\n")
    result = _paywire_certs(tmp_path, "init", "certs", "--ca-dir", "private/ca")
    assert result.returncode == 0, result.stderr
    _check_modes(certs, tmp_path / "private" / "ca")
    assert _mode(tmp_path / "private") == 0o700
    assert (certs / "README.md").read_text() == "kept\n"
    assert not (tmp_path / "certs-ca").exists()


def test_forced_reissue_never_leaves_a_key_readable(tmp_path: Path) -> None:
    pki.init(tmp_path / "certs", merchants=["M1"], banks=[])
    key = tmp_path / "certs" / "merchant-M1.key"
    os.chmod(key, 0o644)
    pki.issue(tmp_path / "certs", "merchant", "M1", force=True)
    assert _mode(key) == 0o600


def test_a_ca_key_in_the_node_directory_is_refused(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    pki.init(certs, merchants=["M1"], banks=[])
    # A directory laid out the old way: the CA key beside the node certificates.
    (certs / "ca.key").write_bytes((tmp_path / "certs-ca" / "ca.key").read_bytes())
    with pytest.raises(pki.PkiError, match="directory nodes read"):
        pki.issue(certs, "merchant", "M2")
    with pytest.raises(pki.PkiError, match="directory nodes read"):
        pki.create_ca(certs, force=True)
    with pytest.raises(pki.PkiError, match="must not be the certs directory"):
        pki.create_ca(certs, ca_dir=certs)
    result = _paywire_certs(tmp_path, "issue", "certs", "--role", "merchant", "--name", "M2")
    assert result.returncode == 2
    assert "directory nodes read" in result.stderr


def test_nodes_warn_about_a_ca_key_in_their_directory(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    certs = tmp_path / "certs"
    pki.init(certs, merchants=["M1"], banks=[])
    with caplog.at_level("WARNING", logger="paywire.tls"):
        tls.node_server_context(certs, "hub", "hub")
    assert not caplog.records
    (certs / "ca.key").write_bytes((tmp_path / "certs-ca" / "ca.key").read_bytes())
    with caplog.at_level("WARNING", logger="paywire.tls"):
        tls.node_client_context(certs, "merchant", "M1")
    assert "holds the CA private key" in caplog.text
