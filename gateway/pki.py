"""A development PKI: one CA, and certificates issued per role (hub, bank node, merchant).

Two directories. The *certs directory* holds what nodes load: ``ca.crt`` (the trust
anchor), then ``<role>-<name>.crt``/``.key`` for each node (``hub-hub.crt``,
``bank-bca-1.crt``, ``merchant-M1.crt``). The *CA directory* (default: a sibling named
``<certs directory>-ca``) holds the CA's private key and is read only by ``paywire certs``;
no node configuration points at it, so copying the certs directory to a node never copies
the key that can mint a hub. Both directories are 0700, private keys 0600, certificates
0644, whatever the umask.

A certificate's subject OU is its role and its CN the node's name; the extended key usage
says how the certificate may be used, per role (``ROLE_USES``): a merchant only connects
(clientAuth, no server names), a bank node only serves (serverAuth), the hub does both. A
peer is accepted only with exactly one OU and one CN, the role it is expected to have, and
an EKU that fits that role and the side of the connection it is on (``gateway/tls.py``).
Keys are EC P-256 (fast handshakes) and never silently overwritten.
"""

from __future__ import annotations

import datetime as dt
import enum
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
CA_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
DIR_MODE = 0o700
KEY_MODE = 0o600
CERT_MODE = 0o644


class Use(enum.Enum):
    """The side of a TLS connection a certificate is presented on, as its EKU names it."""

    SERVER = "serverAuth"
    CLIENT = "clientAuth"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        return ExtendedKeyUsageOID.SERVER_AUTH if self is Use.SERVER else \
            ExtendedKeyUsageOID.CLIENT_AUTH


# What each role's certificate is for. The hub serves merchants and connects to bank nodes;
# a bank node only serves (it reports payments on the connection the hub opened); a merchant
# only connects. A certificate whose EKU holds anything else does not fit its role.
ROLE_USES: dict[str, frozenset[Use]] = {
    "hub": frozenset({Use.SERVER, Use.CLIENT}),
    "bank": frozenset({Use.SERVER}),
    "merchant": frozenset({Use.CLIENT}),
}


class PkiError(Exception):
    """A certificate operation that cannot proceed (file exists, CA missing, bad name)."""


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def cert_paths(directory: Path, role: str, name: str) -> Issued:
    return Issued(directory / f"{role}-{name}.crt", directory / f"{role}-{name}.key")


def default_ca_dir(directory: Path) -> Path:
    """Where the CA key lives unless told otherwise: beside the certs directory, not in it."""
    directory = directory.absolute()
    return directory.parent / f"{directory.name}-ca"


def _private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700, and tighten it to 0700 if it exists: it
    holds private keys, and ``mkdir``'s mode is filtered by the umask only downwards."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=DIR_MODE)
        os.chmod(p, DIR_MODE)
    if not path.is_dir():
        raise PkiError(f"{path} is not a directory")
    os.chmod(path, DIR_MODE)


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Create with ``mode`` set before the first byte is written (whatever the umask, and
    also when ``force`` truncates a file that had looser bits); never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise PkiError(f"{path} exists; pass --force to replace it") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)
        f.write(data)


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


def _refuse_ca_key_in(directory: Path, ca_dir: Path) -> None:
    stray = directory / CA_KEY_FILE
    if stray.exists() and directory.absolute() != ca_dir.absolute():
        raise PkiError(f"{stray} is the CA private key in the directory nodes read; move it "
                       f"to {ca_dir / CA_KEY_FILE} (mode 0600) or delete it")


def create_ca(directory: Path, common_name: str = "Paywire Dev CA", force: bool = False,
              ca_dir: Path | None = None) -> Issued:
    """Create the CA: its key and certificate in ``ca_dir``, a copy of the certificate in
    ``directory`` for the nodes. Returns (the nodes' ``ca.crt``, the CA key)."""
    ca_dir = ca_dir or default_ca_dir(directory)
    if directory.absolute() == ca_dir.absolute():
        raise PkiError("the CA directory must not be the certs directory nodes read")
    _private_dir(directory)
    _private_dir(ca_dir)
    _refuse_ca_key_in(directory, ca_dir)
    paths = Issued(directory / CA_FILE, ca_dir / CA_KEY_FILE)
    if not force:
        for p in (paths.cert, paths.key, ca_dir / CA_FILE):
            if p.exists():
                raise PkiError(f"{p} exists; pass --force to replace it")
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
    pem = cert.public_bytes(serialization.Encoding.PEM)
    _write(paths.key, _key_pem(key), KEY_MODE, force)
    _write(ca_dir / CA_FILE, pem, CERT_MODE, force)
    _write(paths.cert, pem, CERT_MODE, force)
    return paths


def _load_ca(directory: Path, ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    _refuse_ca_key_in(directory, ca_dir)
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CA_FILE).read_bytes())
        key = serialization.load_pem_private_key((ca_dir / CA_KEY_FILE).read_bytes(), None)
    except FileNotFoundError:
        raise PkiError(f"no CA in {ca_dir}; run 'paywire certs init {directory}' "
                       "(or give --ca-dir)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("the CA key is not an EC key")
    if not (directory / CA_FILE).exists():
        _private_dir(directory)
        _write(directory / CA_FILE, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE,
               False)
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
    ca_dir: Path | None = None,
) -> Issued:
    """Issue a certificate for ``role``/``name`` signed by the CA in ``ca_dir``.

    The EKU is the role's (``ROLE_USES``). Roles that serve (hub, bank) get the server names
    ``sans`` plus loopback, so everything works on one machine; a merchant certificate gets
    none, since it is never presented by a server.
    """
    if role not in ROLES:
        raise PkiError(f"role must be one of {', '.join(ROLES)}")
    if not name or not all(c.isalnum() or c in "._~-" for c in name):
        raise PkiError(f"invalid name {name!r}: use letters, digits and ._~-")
    uses = ROLE_USES[role]
    if sans and Use.SERVER not in uses:
        raise PkiError(f"a {role} certificate is never served, so it takes no server names")
    ca_dir = ca_dir or default_ca_dir(directory)
    ca_cert, ca_key = _load_ca(directory, ca_dir)
    _private_dir(directory)
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
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([u.oid for u in Use if u in uses]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if Use.SERVER in uses:
        all_sans: list[str] = []
        for san in (*DEFAULT_SANS, *sans):
            if san not in all_sans:
                all_sans.append(san)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san_entry(s) for s in all_sans]), False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(paths.key, _key_pem(key), KEY_MODE, force)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE, force)
    return paths


def init(
    directory: Path,
    merchants: list[str],
    banks: list[str],
    hub_name: str = "hub",
    sans: tuple[str, ...] | list[str] = (),
    force: bool = False,
    ca_dir: Path | None = None,
) -> list[Issued]:
    """Create the CA and every certificate a deployment of one hub needs."""
    out = [create_ca(directory, force=force, ca_dir=ca_dir),
           issue(directory, "hub", hub_name, sans, force, ca_dir)]
    out += [issue(directory, "bank", b, sans, force, ca_dir) for b in banks]
    out += [issue(directory, "merchant", m, (), force, ca_dir) for m in merchants]
    return out


@dataclass(frozen=True)
class Peer:
    """A peer certificate that passed ``check_certificate``."""

    role: str
    name: str


@dataclass(frozen=True)
class PeerRefused:
    """Why a peer certificate does not fit the role it was expected to have."""

    reason: str


def check_certificate(der: bytes | None, role: str, used_as: Use) -> Peer | PeerRefused:
    """Check a certificate OpenSSL has already verified against the CA: it must name exactly
    one OU and one CN, the OU must be ``role``, and its EKU must be present, allow
    ``used_as``, and hold nothing the role does not use (``ROLE_USES``).

    The single OU/CN rule matters because readers differ on which of several values wins; a
    certificate with ``OU=bank`` and ``OU=merchant`` must not be read as either.
    """
    if der is None:
        return PeerRefused("no peer certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
        ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
    except Exception as exc:
        # OpenSSL accepted it, but cryptography may still reject an odd encoding (ValueError,
        # DuplicateExtension, ...): whatever a peer sends is a refusal, never an exception.
        return PeerRefused(f"unreadable certificate: {type(exc).__name__}")
    if len(ous) != 1 or len(cns) != 1:
        return PeerRefused(f"certificate has {len(ous)} OU and {len(cns)} CN values; "
                           "exactly one of each is required")
    ou, cn = ous[0].value, cns[0].value
    if not isinstance(ou, str) or not isinstance(cn, str) or not cn:
        return PeerRefused("certificate OU/CN is not text")
    if ou != role:
        return PeerRefused(f"certificate role is {ou!r}, expected {role!r}")
    if eku is None:
        return PeerRefused("certificate has no extended key usage")
    allowed = {u.oid for u in ROLE_USES[role]}
    if used_as.oid not in eku or any(oid not in allowed for oid in eku):
        known = {u.oid: u.value for u in Use}
        names = ", ".join(known.get(oid, oid.dotted_string) for oid in eku)
        return PeerRefused(f"certificate EKU ({names}) does not fit a {role} "
                           f"used for {used_as.value}")
    return Peer(ou, cn)
