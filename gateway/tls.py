"""``ssl.SSLContext`` builders: TLS 1.3 by default, mutual TLS, hostname checks on; and the
check of the peer's role that every link makes right after the handshake.

``SSLKEYLOGFILE`` is honoured only when set, so students can decrypt a capture of their own
lab traffic in Wireshark; it is off by default because the key log decrypts everything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

from gateway.pki import (
    CA_FILE,
    CA_KEY_FILE,
    Peer,
    PeerRefused,
    Use,
    cert_paths,
    check_certificate,
)

__all__ = ["Peer", "PeerRefused", "Use", "check_peer", "client_context", "node_client_context",
           "node_server_context", "peer_identity", "server_context"]

log = logging.getLogger("paywire.tls")


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


def _warn_if_ca_key(certs_dir: Path) -> None:
    # A directory laid out before the CA key moved out of it: every node that reads it could
    # mint any certificate. Warn rather than refuse, so an upgrade does not stop a node.
    if (certs_dir / CA_KEY_FILE).exists():
        log.warning("%s holds the CA private key, which nodes must not be able to read; "
                    "move it out (paywire certs keeps it in %s-ca/)", certs_dir, certs_dir.name)


def node_server_context(certs_dir: Path, role: str, name: str) -> ssl.SSLContext:
    _warn_if_ca_key(certs_dir)
    paths = cert_paths(certs_dir, role, name)
    return server_context(paths.cert, paths.key, certs_dir / CA_FILE)


def node_client_context(certs_dir: Path, role: str, name: str) -> ssl.SSLContext:
    _warn_if_ca_key(certs_dir)
    paths = cert_paths(certs_dir, role, name)
    return client_context(certs_dir / CA_FILE, paths.cert, paths.key)


def check_peer(transport: asyncio.BaseTransport, role: str, used_as: Use) -> Peer | PeerRefused:
    """Check, right after the handshake and before any frame is sent, that the peer's
    certificate is a ``role`` certificate fit to be used as ``used_as`` (``Use.SERVER`` when
    we connected to it, ``Use.CLIENT`` when it connected to us). OpenSSL has already checked
    the chain, the host name (client side) and that the EKU allows ``used_as``; this adds
    the role, the single OU/CN, and that the EKU holds nothing the role does not use."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = None
    if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        der = ssl_object.getpeercert(binary_form=True)
    return check_certificate(der, role, used_as)


def peer_identity(peercert: object) -> tuple[str | None, str | None]:
    """(role, name) from a verified peer certificate's OU and CN, as ``getpeercert()`` gives;
    ``(None, None)`` unless it names exactly one of each (see ``check_certificate``)."""
    if not isinstance(peercert, dict):
        return None, None
    ous: list[str] = []
    cns: list[str] = []
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "organizationalUnitName":
                ous.append(value)
            elif attr == "commonName":
                cns.append(value)
    if len(ous) != 1 or len(cns) != 1:
        return None, None
    return ous[0], cns[0]
