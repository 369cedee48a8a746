"""Lab 2 — TLS and mutual TLS: the checks of the student's certificates and answers.

The student writes, in ``make_certs.py``, functions that build certificates with the
``cryptography`` library: a valid merchant certificate, an expired one, one from a rogue CA
and one with the wrong role. The checks inspect each (issuer and signature, validity dates,
subject OU/CN, extended key usage), then present each to the sandbox hub and verify it is
refused for the expected reason while the valid one is welcomed (plus a valid certificate
for a merchant the hub does not know). Last, the student's ``answers.toml`` must name what
the checks themselves observed for each case (``gateway/labs/tlsprobe.py``): what the hub
did, what OpenSSL's verifier said, which alert a plain TLS server sent.

It needs the sandbox: the certificates are issued by the sandbox's CA, whose key
``paywire certs`` keeps beside the certs directory (``<certs>-ca/``, ``gateway/pki.py``).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import pki
from gateway.labs import tlsprobe
from gateway.labs.checks import LabContext, Result

TITLE = "TLS and mutual TLS: make certificates, break the handshake"
FILES = ("make_certs.py", "answers.toml")
NEEDS_SANDBOX = True

HANDOUT = "docs/labs/02-tls.md"
CLIENT_AUTH, SERVER_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH
ANSWER_FIELDS = ("hub", "verify", "alert")
# What each case must meet at the hub, in OpenSSL's verifier and at a plain TLS server
# (normalised as ``_norm`` does). A hub that someday sends the alert instead of closing is
# also a refusal for the right reason: "alert <the expected alert>" counts as "closed".
EXPECTED: dict[str, tuple[str, str, str]] = {
    "valid": ("welcome", "ok", "none"),
    "expired": ("closed", "certificatehasexpired", "certificateexpired"),
    "rogue_ca": ("closed", "unabletogetlocalissuercertificate", "unknownca"),
    "wrong_role": ("forbidden", "ok", "none"),
    "unknown_merchant": ("unauthenticated", "ok", "none"),
}


def _norm(text: str) -> str:
    """Compare names loosely: case, spaces, underscores and the ``SSLV3_ALERT_`` /
    ``TLSV1_ALERT_`` prefixes Python puts on alert names do not matter."""
    text = text.strip().lower()
    text = re.sub(r"^(sslv3|tlsv1|tlsv13|ssl)_alert_", "", text)
    return re.sub(r"[^a-z0-9]", "", text)


def _hub_matches(outcome: str, want_hub: str, want_alert: str) -> bool:
    """Whether the hub's outcome (``tlsprobe.hub_outcome``: ``"closed: ..."``, ``"welcome:
    ..."``, ``"FORBIDDEN: ..."`` or ``"alert SSLV3_ALERT_CERTIFICATE_EXPIRED: ..."``) is the
    expected one. Where the hub is expected to close the connection, the TLS alert it sent
    (the expected alert) counts too: with TLS 1.3 the client may see the alert before it
    sees the connection close."""
    token = outcome.split(":", 1)[0].strip()
    if _norm(token) == want_hub:
        return True
    alert = re.match(r"alert\s+(.*)$", token, re.IGNORECASE)
    return want_hub == "closed" and alert is not None and _norm(alert.group(1)) == want_alert


def _load(ctx: LabContext, relative: str) -> ModuleType:
    path = ctx.work / relative
    name = f"labwork_{ctx.number:02d}_{path.stem}_{len(sys.modules)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass in the file looks its module up there
    spec.loader.exec_module(module)
    return module


def check(ctx: LabContext) -> Iterator[Result]:
    assert ctx.sandbox is not None  # NEEDS_SANDBOX
    env = ctx.sandbox.env
    certs = Path(env.get("PAYWIRE_CERTS", ""))
    ca_dir = pki.default_ca_dir(certs)
    merchant, hub = env.get("PAYWIRE_MERCHANT", ""), env.get("PAYWIRE_HUB", "")
    name = "make_certs.py imports and loads the sandbox's CA"
    try:
        module = _load(ctx, "make_certs.py")
        ca = module.load_ca(ca_dir)
    except Exception as exc:
        yield Result(name, False, f"{type(exc).__name__}: {exc}\nmake_certs.py must import "
                     f"and load_ca({ca_dir}) must read the sandbox's CA (ca.crt, ca.key); "
                     f"start again from `paywire lab start 2` if you removed something")
        return
    yield Result(name, True)
    ca_cert: x509.Certificate = ca.cert
    now = dt.datetime.now(dt.UTC)

    made: dict[str, Any] = {}
    cases: list[tuple[str, str, Any]] = [
        ("valid", "valid_merchant", lambda: module.valid_merchant(ca, merchant)),
        ("expired", "expired_merchant", lambda: module.expired_merchant(ca, merchant)),
        ("rogue_ca", "rogue_merchant", lambda: module.rogue_merchant(merchant)),
        ("wrong_role", "wrong_role", lambda: module.wrong_role(ca, merchant)),
    ]
    for case, fn, make in cases:
        try:
            pair = make()
            problem = _inspect(case, pair.cert, pair.key, ca_cert, merchant, now)
        except Exception as exc:  # the student's code may raise anything
            problem = f"{fn}() raised {type(exc).__name__}: {exc}"
        yield Result(f"{fn}() makes the certificate the lab asks for", problem is None,
                     f"{problem}\nsee {HANDOUT} (Steps) and the docstring of {fn}"
                     if problem else "")
        if problem is None:
            made[case] = pair
    if len(made) < len(cases):
        return
    # A valid certificate for a merchant the hub does not know (the checks' own name).
    stranger = f"lab02-stranger-{os.urandom(4).hex()}"
    try:
        made["unknown_merchant"] = module.valid_merchant(ca, stranger)
    except Exception as exc:
        yield Result("valid_merchant() works for any merchant id", False,
                     f"valid_merchant(ca, {stranger!r}) raised {type(exc).__name__}: {exc}")
        return

    # Private keys go to a directory of their own that is removed after the checks (the
    # scratch directory may be inside the repository, for the reference solution).
    with tempfile.TemporaryDirectory(prefix="lab02-") as keys:
        observed = _observe(made, Path(keys), certs, hub, merchant, stranger)
        yield from observed.results
    yield _check_answers(ctx, observed.seen)


@dataclass
class _Observed:
    seen: dict[str, tuple[str, str, str]]
    results: list[Result]


def _observe(made: dict[str, Any], keys: Path, certs: Path, hub: str, merchant: str,
             stranger: str) -> _Observed:
    """Each certificate at the hub, in OpenSSL's verifier and at a plain TLS server."""
    observed: dict[str, tuple[str, str, str]] = {}
    results: list[Result] = []
    server_crt, server_key = tlsprobe.hub_certificate(certs)
    ca_file = certs / pki.CA_FILE
    for case, pair in made.items():
        crt, key = _write(pair, keys, case)
        identity = stranger if case == "unknown_merchant" else merchant
        seen = (tlsprobe.hub_outcome(hub, ca_file, crt, key, identity),
                tlsprobe.verify_reason(ca_file, crt, key),
                tlsprobe.alert_from_plain_server(server_crt, server_key, ca_file, crt, key))
        observed[case] = seen
        want = EXPECTED[case]
        ok = _hub_matches(seen[0], want[0], want[2]) and _norm(seen[1]) == want[1] and \
            _norm(seen[2]) == want[2]
        verdict = "welcomed" if case == "valid" else "refused for the expected reason"
        results.append(Result(f"the {case} certificate is {verdict}", ok,
                              f"the hub: {seen[0]}\nopenssl verify: {seen[1]}\n"
                              f"a plain TLS server's alert: {seen[2]}\n"
                              f"expected: hub {want[0]}, verify {want[1]}, alert {want[2]}"))
    return _Observed(observed, results)


def _inspect(case: str, cert: Any, key: Any, ca: x509.Certificate, merchant: str,
             now: dt.datetime) -> str | None:
    """What is wrong with the student's certificate for ``case``, or ``None``."""
    if not isinstance(cert, x509.Certificate):
        return f"expected a CertAndKey whose cert is an x509.Certificate, got {type(cert)}"
    if not isinstance(key, ec.EllipticCurvePrivateKey) or \
            key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        return "the key is not the private key of the certificate's public key"
    ous = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    role = "hub" if case == "wrong_role" else "merchant"
    if ous != [role] or cns != [merchant]:
        return f"subject {cert.subject.rfc4514_string()}: expected exactly OU={role} and " \
               f"CN={merchant}"
    try:
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return "no ExtendedKeyUsage extension: the hub requires one (docs/protocol.md §1.1)"
    want_eku = {SERVER_AUTH, CLIENT_AUTH} if case == "wrong_role" else {CLIENT_AUTH}
    if eku != want_eku:
        names = sorted(o._name for o in eku)
        return f"EKU {names}: expected {sorted(o._name for o in want_eku)}"
    try:
        cert.verify_directly_issued_by(ca)
        by_sandbox = True
    except Exception:
        by_sandbox = False
    if case == "rogue_ca":
        if by_sandbox:
            return "it is signed by the sandbox's CA: sign it with a CA of your own (new_ca)"
        if cert.issuer == ca.subject:
            return f"its issuer is named {cert.issuer.rfc4514_string()}, like the sandbox's " \
                   "CA: name your rogue CA differently so `openssl x509 -text` shows it"
    elif not by_sandbox:
        return f"issuer {cert.issuer.rfc4514_string()}: expected it signed by the sandbox's " \
               f"CA ({ca.subject.rfc4514_string()})"
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if case == "expired":
        if not end < now or not start < end:
            return f"valid from {start} to {end}: expected the validity to have ended " \
                   "before now (and to start before it ends)"
    elif not start <= now < end:
        return f"valid from {start} to {end}: expected now ({now:%Y-%m-%d %H:%M} UTC) inside"
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            return "BasicConstraints says ca=True: a leaf certificate must not be a CA"
    except x509.ExtensionNotFound:
        pass
    return None


def _write(pair: Any, directory: Path, stem: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    crt.write_bytes(pair.cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pair.key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key.chmod(0o600)
    return crt, key


def _check_answers(ctx: LabContext, observed: dict[str, tuple[str, str, str]]) -> Result:
    name = "answers.toml names what you observed"
    try:
        answers = tomllib.loads((ctx.work / "answers.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return Result(name, False, f"answers.toml is not valid TOML: {exc}")
    wrong: list[str] = []
    for case, seen in observed.items():
        if case == "valid":
            continue
        given = answers.get(case)
        if not isinstance(given, dict):
            wrong.append(f"[{case}] is missing")
            continue
        hub_token = seen[0].split(":", 1)[0]
        accepted = {
            "hub": {_norm(hub_token)} | ({"closed"} if hub_token.startswith("alert") else set()),
            "verify": {_norm(seen[1])},
            "alert": {_norm(seen[2])},
        }
        for field, value in zip(ANSWER_FIELDS, (hub_token, seen[1], seen[2]), strict=True):
            answer = given.get(field)
            if not isinstance(answer, str) or not answer.strip():
                wrong.append(f"[{case}] {field} is blank")
            elif _norm(answer) not in accepted[field]:
                wrong.append(f"[{case}] {field} = {answer!r}, but the check saw {value!r}")
    if wrong:
        return Result(name, False, "\n".join(wrong) + f"\nrun `python labwork/lab02/"
                      f"make_certs.py try ...` for each case ({HANDOUT}, Steps) and copy "
                      "what you see")
    return Result(name, True)
