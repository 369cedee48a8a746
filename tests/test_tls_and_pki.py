"""Certificates and TLS contexts over a real loopback handshake."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import pytest

from gateway import pki, tls


def test_keys_are_0600_and_files_never_silently_overwritten(tmp_path: Path) -> None:
    issued = pki.init(tmp_path, merchants=["M1"], banks=["b1"])
    for item in issued:
        assert stat.S_IMODE(item.key.stat().st_mode) == 0o600
    before = (tmp_path / "merchant-M1.crt").read_bytes()
    with pytest.raises(pki.PkiError):
        pki.issue(tmp_path, "merchant", "M1")
    with pytest.raises(pki.PkiError):
        pki.create_ca(tmp_path)
    assert (tmp_path / "merchant-M1.crt").read_bytes() == before
    pki.issue(tmp_path, "merchant", "M1", force=True)
    assert (tmp_path / "merchant-M1.crt").read_bytes() != before


def test_issue_validates_role_and_name(tmp_path: Path) -> None:
    pki.create_ca(tmp_path)
    with pytest.raises(pki.PkiError):
        pki.issue(tmp_path, "admin", "x")
    with pytest.raises(pki.PkiError):
        pki.issue(tmp_path, "merchant", "bad/name")


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                     host: str = "localhost") -> tuple[str, str] | None:
    """Open a real TLS connection on loopback; return the peer identity the server saw."""
    seen: list[tuple[str | None, str | None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(tls.peer_identity(writer.get_extra_info("peercert")))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=host), 5)
        data = await asyncio.wait_for(reader.read(2), 5)
        writer.close()
        if data != b"ok":
            return None
        role, name = seen[0]
        assert role is not None and name is not None
        return role, name
    finally:
        server.close()
        await server.wait_closed()


async def test_mutual_tls_handshake_identifies_the_merchant(certs_dir: Path) -> None:
    server = tls.node_server_context(certs_dir, "hub", "hub")
    client = tls.node_client_context(certs_dir, "merchant", "M1")
    assert await _handshake(server, client) == ("merchant", "M1")
    assert await _handshake(server, client, host="127.0.0.1") == ("merchant", "M1")


async def _refused(server: ssl.SSLContext, client: ssl.SSLContext) -> bool:
    try:
        return await _handshake(server, client) is None
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True


async def test_client_without_certificate_is_refused(certs_dir: Path) -> None:
    server = tls.node_server_context(certs_dir, "hub", "hub")
    client = tls.client_context(certs_dir / "ca.crt")
    assert await _refused(server, client)


async def test_certificate_from_another_ca_is_refused(certs_dir: Path, tmp_path: Path) -> None:
    pki.init(tmp_path, merchants=["M1"], banks=[])
    server = tls.node_server_context(certs_dir, "hub", "hub")
    rogue = tls.client_context(certs_dir / "ca.crt", tmp_path / "merchant-M1.crt",
                               tmp_path / "merchant-M1.key")
    assert await _refused(server, rogue)
    # And the client refuses a hub whose certificate another CA issued.
    fake_hub = tls.node_server_context(tmp_path, "hub", "hub")
    honest = tls.node_client_context(certs_dir, "merchant", "M1")
    assert await _refused(fake_hub, honest)


async def test_tls12_client_is_refused(certs_dir: Path) -> None:
    server = tls.node_server_context(certs_dir, "hub", "hub")
    paths = pki.cert_paths(certs_dir, "merchant", "M1")
    old = tls.client_context(certs_dir / "ca.crt", paths.cert, paths.key,
                             minimum_version=ssl.TLSVersion.TLSv1_2,
                             maximum_version=ssl.TLSVersion.TLSv1_2)
    assert await _refused(server, old)


async def test_hostname_is_checked(certs_dir: Path) -> None:
    server = tls.node_server_context(certs_dir, "hub", "hub")
    client = tls.node_client_context(certs_dir, "merchant", "M1")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(server, client, host="evil.example")


def test_sslkeylogfile_only_when_set(certs_dir: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    assert tls.node_client_context(certs_dir, "merchant", "M1").keylog_filename is None
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys.log"))
    assert tls.node_client_context(certs_dir, "merchant", "M1").keylog_filename == str(
        tmp_path / "keys.log")
