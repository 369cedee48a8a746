"""``ssl.SSLContext`` builders: TLS 1.3 by default, mutual TLS, hostname checks on.

``SSLKEYLOGFILE`` is honoured only when set, so students can decrypt a capture of their own
lab traffic in Wireshark; it is off by default because the key log decrypts everything.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from gateway.pki import cert_paths


def _keylog(ctx: ssl.SSLContext) -> None:
    path = os.environ.get("SSLKEYLOGFILE")
    if path:
        ctx.keylog_filename = path


def server_context(
    cert: Path,
    key: Path,
    ca: Path,
    *,
    require_client_cert: bool = True,
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = minimum_version
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    _keylog(ctx)
    return ctx


def client_context(
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    maximum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    ctx.minimum_version = minimum_version
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    ctx.load_verify_locations(cafile=ca)
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    _keylog(ctx)
    return ctx


def node_server_context(certs_dir: Path, role: str, name: str) -> ssl.SSLContext:
    paths = cert_paths(certs_dir, role, name)
    return server_context(paths.cert, paths.key, certs_dir / "ca.crt")


def node_client_context(certs_dir: Path, role: str, name: str) -> ssl.SSLContext:
    paths = cert_paths(certs_dir, role, name)
    return client_context(certs_dir / "ca.crt", paths.cert, paths.key)


def peer_identity(peercert: object) -> tuple[str | None, str | None]:
    """(role, name) from a verified peer certificate's OU and CN, as ``getpeercert()`` gives."""
    if not isinstance(peercert, dict):
        return None, None
    role = name = None
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "organizationalUnitName":
                role = value
            elif attr == "commonName":
                name = value
    return role, name
