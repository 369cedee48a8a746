"""Lab 2: make certificates the hub must refuse, and see how it refuses them.

Mutual TLS: the hub proves who it is with its certificate, and so does the merchant. The hub
trusts one CA (``ca.crt`` in the sandbox's certs directory); a merchant certificate is
accepted only if that CA signed it, it is within its validity dates, its extended key usage
(EKU) allows client authentication, its subject OU is the role ``merchant`` and its CN a
merchant the hub knows (docs/protocol.md §1.1, ``gateway/pki.py``, ``gateway/tls.py``).

You write the functions that build certificates with the ``cryptography`` library; the rest
(loading the CA, writing PEM files, trying a certificate against the hub) is given. Run::

    python labwork/lab02/make_certs.py make labwork/lab02/out   # writes every certificate
    python labwork/lab02/make_certs.py try labwork/lab02/out expired   # tries one
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization  # noqa: F401 (you need hashes)
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: F401 (you need both)

SKEW = dt.timedelta(minutes=5)  # not_before a little in the past: clocks differ
CASES = ("valid", "expired", "rogue_ca", "wrong_role", "unknown_merchant")
UNKNOWN_MERCHANT = "M-nobody"  # a merchant id no sandbox configures


@dataclass(frozen=True)
class CertAndKey:
    """A certificate and its private key (a CA's, or a leaf's)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_ca(common_name: str) -> CertAndKey:
    """A new self-signed CA: subject = issuer = CN ``common_name``, BasicConstraints
    ca=True (critical), KeyUsage keyCertSign + cRLSign (critical), valid from
    now - SKEW for a year, an EC P-256 key, signed with SHA-256 by its own key."""
    raise NotImplementedError(
        "new_ca: build a self-signed CA with x509.CertificateBuilder (see the docstring "
        "and gateway/pki.py's create_ca)")


def leaf(issuer: CertAndKey, role: str, name: str, *, not_before: dt.datetime,
         not_after: dt.datetime, uses: list[x509.ObjectIdentifier]) -> CertAndKey:
    """A certificate for a new EC P-256 key, signed by ``issuer`` (SHA-256): subject
    OU=``role``, CN=``name``; issuer name = the issuer certificate's subject;
    BasicConstraints ca=False (critical); ExtendedKeyUsage ``uses`` (not critical)."""
    raise NotImplementedError(
        "leaf: build and sign the certificate (see the docstring and gateway/pki.py's issue)")


def valid_merchant(ca: CertAndKey, merchant_id: str) -> CertAndKey:
    """What ``paywire certs issue --role merchant`` makes: OU=merchant, CN=merchant_id,
    EKU clientAuth only, valid from now - SKEW for 30 days, signed by ``ca``."""
    raise NotImplementedError(
        'valid_merchant: call leaf(...) with role merchant, 30 days of validity, EKU clientAuth')


def expired_merchant(ca: CertAndKey, merchant_id: str) -> CertAndKey:
    """Like ``valid_merchant``, but its validity ended yesterday (it began 30 days ago)."""
    raise NotImplementedError(
        'expired_merchant: like valid_merchant, with not_after in the past')


def rogue_merchant(merchant_id: str) -> CertAndKey:
    """A merchant certificate that looks right but is signed by a CA of your own
    (``new_ca("Rogue CA")``), not the sandbox's."""
    raise NotImplementedError(
        "rogue_merchant: a valid-looking merchant certificate from new_ca('Rogue CA')")


def wrong_role(ca: CertAndKey, merchant_id: str) -> CertAndKey:
    """A certificate from the right CA, for the merchant's name, but with role ``hub``
    (OU=hub, EKU serverAuth and clientAuth, as ``paywire certs issue --role hub`` would)."""
    raise NotImplementedError(
        'wrong_role: leaf(...) from the sandbox CA with role hub and EKU serverAuth + clientAuth')


# --- given: you need not change anything below ---------------------------------------------

def load_ca(ca_dir: Path) -> CertAndKey:
    """The sandbox's CA (``ca.crt`` and ``ca.key``): ``paywire certs`` keeps its key apart
    from the certificates nodes load, in the directory beside them named ``<certs>-ca``."""
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_dir / 'ca.key'} is not an EC key")
    return CertAndKey(cert, key)


def make_all(ca: CertAndKey, merchant_id: str) -> dict[str, CertAndKey]:
    """Every case of the lab, by name."""
    return {"valid": valid_merchant(ca, merchant_id),
            "expired": expired_merchant(ca, merchant_id),
            "rogue_ca": rogue_merchant(merchant_id),
            "wrong_role": wrong_role(ca, merchant_id),
            "unknown_merchant": valid_merchant(ca, UNKNOWN_MERCHANT)}


def write_pair(pair: CertAndKey, directory: Path, stem: str) -> tuple[Path, Path]:
    """``stem.crt`` and ``stem.key`` (0600) in PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    crt.write_bytes(pair.cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return crt, key


def main(argv: list[str]) -> int:
    certs = Path(os.environ.get("PAYWIRE_CERTS", "certs"))
    ca_dir = Path(os.environ.get("PAYWIRE_CA_DIR", f"{certs.absolute()}-ca"))
    merchant = os.environ.get("PAYWIRE_MERCHANT", "M1")
    if len(argv) == 2 and argv[0] == "make":
        out = Path(argv[1])
        for case, pair in make_all(load_ca(ca_dir), merchant).items():
            crt, _ = write_pair(pair, out, case)
            print(f"wrote {crt} (OU={_one(pair.cert, NameOID.ORGANIZATIONAL_UNIT_NAME)}, "
                  f"CN={_one(pair.cert, NameOID.COMMON_NAME)}, issuer "
                  f"{pair.cert.issuer.rfc4514_string()}, until "
                  f"{pair.cert.not_valid_after_utc:%Y-%m-%d})")
        return 0
    if len(argv) == 3 and argv[0] == "try" and argv[2] in CASES:
        from gateway.labs import tlsprobe

        out, case = Path(argv[1]), argv[2]
        crt, key, ca = out / f"{case}.crt", out / f"{case}.key", certs / "ca.crt"
        identity = UNKNOWN_MERCHANT if case == "unknown_merchant" else merchant
        hub = tlsprobe.hub_outcome(os.environ.get("PAYWIRE_HUB", "127.0.0.1:7400"), ca, crt,
                                   key, identity)
        print(f"{case}: the hub: {hub}")
        print(f"{case}: openssl verify: {tlsprobe.verify_reason(ca, crt, key)}")
        server_crt, server_key = tlsprobe.hub_certificate(certs)
        alert = tlsprobe.alert_from_plain_server(server_crt, server_key, ca, crt, key)
        print(f"{case}: a plain TLS server's alert: {alert}")
        return 0
    print(f"usage: make_certs.py make OUT | make_certs.py try OUT {{{','.join(CASES)}}}",
          file=sys.stderr)
    return 2


def _one(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    return ",".join(str(a.value) for a in cert.subject.get_attributes_for_oid(oid))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
