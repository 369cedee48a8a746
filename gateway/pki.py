"""A development PKI: one CA, a hub certificate, bank-node and merchant client certificates.

Files in the directory: ``ca.crt``/``ca.key``, then ``<role>-<name>.crt``/``.key`` for each
node (``hub-hub.crt``, ``bank-bca.crt``, ``merchant-M1.crt``). The role is the certificate's
OU and the name its CN; the hub reads both to learn who is on the other end of a connection.
Keys are EC P-256 (fast handshakes), written with mode 0600, and never silently overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("hub", "bank", "merchant")
DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
CA_VALIDITY_DAYS = 3650
LEAF_VALIDITY_DAYS = 825


class PkiError(Exception):
    """A certificate operation that cannot proceed (file exists, CA missing, bad name)."""


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def cert_paths(directory: Path, role: str, name: str) -> Issued:
    return Issued(directory / f"{role}-{name}.crt", directory / f"{role}-{name}.key")


def _write_private(path: Path, data: bytes, force: bool) -> None:
    """Create with 0600 from the first byte, so the key is never readable by others."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise PkiError(f"{path} exists; pass --force to replace it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes, force: bool) -> None:
    if path.exists() and not force:
        raise PkiError(f"{path} exists; pass --force to replace it")
    path.write_bytes(data)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(directory: Path, common_name: str = "Paywire Dev CA", force: bool = False) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    paths = Issued(directory / "ca.crt", directory / "ca.key")
    if not force and (paths.cert.exists() or paths.key.exists()):
        raise PkiError(f"{paths.cert} exists; pass --force to replace it")
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write_private(paths.key, _key_pem(key), force)
    _write_public(paths.cert, cert.public_bytes(serialization.Encoding.PEM), force)
    return paths


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except FileNotFoundError:
        raise PkiError(f"no CA in {directory}; run 'paywire certs init {directory}'") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("the CA key is not an EC key")
    return cert, key


def _san_entry(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def issue(
    directory: Path,
    role: str,
    name: str,
    sans: tuple[str, ...] | list[str] = (),
    force: bool = False,
) -> Issued:
    """Issue a certificate for ``role``/``name`` signed by the directory's CA.

    Every certificate may serve and connect (serverAuth + clientAuth): the hub serves
    merchants and connects to banks; a bank node serves hubs. Server names default to
    loopback so everything works on one machine.
    """
    if role not in ROLES:
        raise PkiError(f"role must be one of {', '.join(ROLES)}")
    if not name or not all(c.isalnum() or c in "._~-" for c in name):
        raise PkiError(f"invalid name {name!r}: use letters, digits and ._~-")
    ca_cert, ca_key = _load_ca(directory)
    paths = cert_paths(directory, role, name)
    if not force and (paths.cert.exists() or paths.key.exists()):
        raise PkiError(f"{paths.cert} exists; pass --force to replace it")
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    all_sans: list[str] = []
    for san in (*DEFAULT_SANS, *sans):
        if san not in all_sans:
            all_sans.append(san)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_san_entry(s) for s in all_sans]), False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                   ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths.key, _key_pem(key), force)
    _write_public(paths.cert, cert.public_bytes(serialization.Encoding.PEM), force)
    return paths


def init(
    directory: Path,
    merchants: list[str],
    banks: list[str],
    hub_name: str = "hub",
    sans: tuple[str, ...] | list[str] = (),
    force: bool = False,
) -> list[Issued]:
    """Create the CA and every certificate a deployment of one hub needs."""
    out = [create_ca(directory, force=force), issue(directory, "hub", hub_name, sans, force)]
    out += [issue(directory, "bank", b, sans, force) for b in banks]
    out += [issue(directory, "merchant", m, (), force) for m in merchants]
    return out
