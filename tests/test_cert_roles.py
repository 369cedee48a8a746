"""Certificate roles: every link checks that the peer holds the certificate of the role it
must have, before any application data is sent (issue 11, item 4).

Hostile certificates are built here with ``cryptography`` and signed by the test's own dev
CA, since that is the attack: any certificate the deployment's CA issued passes the TLS
handshake, so only the role check stands between a merchant's key and a card number.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import pki, secret_keys, tls
from gateway.client import Card, Client, connect
from gateway.config import BankNodeConfig
from gateway.processes import NodeProcess
from protocol import messages
from protocol.decoder import FrameDecoder
from protocol.errors import ErrorCode, RemoteError
from protocol.frame import BODY_BYTES_MAX_DEFAULT, Frame, FrameType
from tests.deploy import BNI_CARDS, KEYS, OPENING, RICH, Deployment
from tests.waiting import log_contains, wait_until

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
CARD_NUMBER = "4811000000000017"
WAIT_S = 10.0


def hostile_cert(certs: Path, out: Path, stem: str,
                 subject: list[tuple[x509.ObjectIdentifier, str]],
                 ekus: list[x509.ObjectIdentifier] | None,
                 sans: tuple[str, ...] = ("localhost", "127.0.0.1")) -> tuple[Path, Path]:
    """A certificate signed by the CA of ``certs`` with exactly the subject, EKU and SANs
    given (no EKU extension when ``ekus`` is None). Written as ``out/<stem>.crt/.key``."""
    ca_dir = pki.default_ca_dir(certs)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, v) for oid, v in subject]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if ekus is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    if sans:
        names: list[x509.GeneralName] = []
        for s in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                names.append(x509.DNSName(s))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    crt, keyfile = out / f"{stem}.crt", out / f"{stem}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return crt, keyfile


def ou(role: str) -> tuple[x509.ObjectIdentifier, str]:
    return NameOID.ORGANIZATIONAL_UNIT_NAME, role


def cn(name: str) -> tuple[x509.ObjectIdentifier, str]:
    return NameOID.COMMON_NAME, name


def der(crt: Path) -> bytes:
    return x509.load_pem_x509_certificate(crt.read_bytes()).public_bytes(
        serialization.Encoding.DER)


# --- issuance ------------------------------------------------------------------------------
def test_certificates_are_issued_per_role(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    pki.init(certs, merchants=["M1"], banks=["bca-1"], sans=["hub.example"])

    def load(stem: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((certs / f"{stem}.crt").read_bytes())

    def ekus(c: x509.Certificate) -> set[x509.ObjectIdentifier]:
        return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    merchant = load("merchant-M1")
    assert ekus(merchant) == {CLIENT}
    with pytest.raises(x509.ExtensionNotFound):
        merchant.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    hub = load("hub-hub")
    assert ekus(hub) == {SERVER, CLIENT}
    hub_names = hub.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "hub.example"} <= set(hub_names.get_values_for_type(x509.DNSName))
    assert ipaddress.ip_address("127.0.0.1") in hub_names.get_values_for_type(x509.IPAddress)
    bank = load("bank-bca-1")
    assert ekus(bank) == {SERVER}  # a bank node never connects: the hub opens the link
    assert "localhost" in bank.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    for stem, role, name in [("merchant-M1", "merchant", "M1"), ("hub-hub", "hub", "hub"),
                             ("bank-bca-1", "bank", "bca-1")]:
        subject = load(stem).subject
        assert [a.value for a in subject.get_attributes_for_oid(
            NameOID.ORGANIZATIONAL_UNIT_NAME)] == [role]
        assert [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [name]
    with pytest.raises(pki.PkiError, match="no server names"):
        pki.issue(certs, "merchant", "M2", sans=["shop.example"])
    # Each issued certificate passes the check for its own role and use, and only that.
    assert pki.check_certificate(der(certs / "hub-hub.crt"), "hub", pki.Use.SERVER) == \
        pki.Peer("hub", "hub")
    assert pki.check_certificate(der(certs / "hub-hub.crt"), "hub", pki.Use.CLIENT) == \
        pki.Peer("hub", "hub")
    assert pki.check_certificate(der(certs / "bank-bca-1.crt"), "bank", pki.Use.SERVER) == \
        pki.Peer("bank", "bca-1")
    assert isinstance(pki.check_certificate(der(certs / "bank-bca-1.crt"), "bank",
                                            pki.Use.CLIENT), pki.PeerRefused)
    assert pki.check_certificate(der(certs / "merchant-M1.crt"), "merchant",
                                 pki.Use.CLIENT) == pki.Peer("merchant", "M1")
    assert isinstance(pki.check_certificate(der(certs / "merchant-M1.crt"), "merchant",
                                            pki.Use.SERVER), pki.PeerRefused)
    assert isinstance(pki.check_certificate(der(certs / "merchant-M1.crt"), "hub",
                                            pki.Use.CLIENT), pki.PeerRefused)


@pytest.mark.parametrize(("subject", "ekus", "role", "used_as", "why"), [
    ([ou("bank"), ou("merchant"), cn("M1")], [CLIENT], "merchant", pki.Use.CLIENT, "2 OU"),
    ([ou("merchant"), ou("bank"), cn("M1")], [CLIENT], "merchant", pki.Use.CLIENT, "2 OU"),
    ([ou("merchant"), cn("M2"), cn("M1")], [CLIENT], "merchant", pki.Use.CLIENT, "2 CN"),
    ([cn("M1")], [CLIENT], "merchant", pki.Use.CLIENT, "0 OU"),
    ([ou("merchant")], [CLIENT], "merchant", pki.Use.CLIENT, "0 CN"),
    ([ou("merchant"), cn("M1")], None, "merchant", pki.Use.CLIENT, "no extended key usage"),
    ([ou("merchant"), cn("M1")], [SERVER, CLIENT], "merchant", pki.Use.CLIENT, "EKU"),
    ([ou("merchant"), cn("M1")], [SERVER], "merchant", pki.Use.CLIENT, "EKU"),
    ([ou("hub"), cn("hub")], [CLIENT], "hub", pki.Use.SERVER, "EKU"),
    ([ou("hub"), cn("hub")], [SERVER, CLIENT, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE],
     "hub", pki.Use.SERVER, "EKU"),
    ([ou("bank"), cn("bca-1")], [SERVER, CLIENT], "bank", pki.Use.SERVER, "EKU"),
    ([ou("merchant"), cn("M1")], [SERVER, CLIENT], "hub", pki.Use.SERVER, "role is 'merchant'"),
])
def test_check_certificate_refuses(certs_dir: Path, tmp_path: Path,
                                   subject: list[tuple[x509.ObjectIdentifier, str]],
                                   ekus: list[x509.ObjectIdentifier] | None, role: str,
                                   used_as: pki.Use, why: str) -> None:
    crt, _ = hostile_cert(certs_dir, tmp_path, "x", subject, ekus)
    refused = pki.check_certificate(der(crt), role, used_as)
    assert isinstance(refused, pki.PeerRefused)
    assert why in refused.reason


def test_check_certificate_never_raises_on_what_a_peer_sends() -> None:
    assert isinstance(pki.check_certificate(None, "hub", pki.Use.SERVER), pki.PeerRefused)
    for junk in (b"", b"\x30\x03\x02\x01\x01", b"not a certificate" * 10):
        assert isinstance(pki.check_certificate(junk, "hub", pki.Use.SERVER), pki.PeerRefused)


def test_peer_identity_refuses_two_ous_or_cns() -> None:
    def subject(*attrs: tuple[str, str]) -> dict[str, object]:
        return {"subject": tuple((a,) for a in attrs)}

    ou_, cn_ = "organizationalUnitName", "commonName"
    assert tls.peer_identity(subject((ou_, "merchant"), (cn_, "M1"))) == ("merchant", "M1")
    assert tls.peer_identity(subject((ou_, "bank"), (ou_, "merchant"), (cn_, "M1"))) == \
        (None, None)
    assert tls.peer_identity(subject((ou_, "merchant"), (cn_, "M2"), (cn_, "M1"))) == \
        (None, None)


# --- the client refuses a server that is not a hub -----------------------------------------
def fake_welcome(server: str) -> bytes:
    """The WELCOME a fake server answers any HELLO with."""
    return messages.encode_message(FrameType.WELCOME, {
        "version": 1, "server": server, "session_id": "fake",
        "body_bytes_max": BODY_BYTES_MAX_DEFAULT, "in_flight_max": 16,
        "heartbeat_interval_ms": 5000, "resume_token": b"", "event_seq": 0,
        "server_time_ms": 0})


@dataclass
class FakeHub:
    """A TLS server that plays the hub: answers HELLO with a WELCOME and records every byte
    the client sends (a REQUEST would carry the card number and CVV in it)."""

    raw: bytearray = field(default_factory=bytearray)
    frames: list[Frame] = field(default_factory=list)
    handshakes: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        decoder = FrameDecoder(BODY_BYTES_MAX_DEFAULT)
        try:
            while data := await reader.read(65536):
                self.raw += data
                for frame in decoder.feed(data):
                    self.frames.append(frame)
                    if frame.type == FrameType.HELLO:
                        writer.write(fake_welcome("paywire-hub/fake"))
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            writer.close()


@pytest.mark.parametrize("served", ["merchant-with-serverAuth", "bank", "merchant-as-issued"])
async def test_client_refuses_a_server_that_is_not_a_hub(certs_dir: Path, tmp_path: Path,
                                                         served: str) -> None:
    if served == "merchant-with-serverAuth":  # what `paywire certs` issued merchants before
        crt, key = hostile_cert(certs_dir, tmp_path, "m", [ou("merchant"), cn("M1")],
                                [SERVER, CLIENT])
    elif served == "bank":
        paths = pki.cert_paths(certs_dir, "bank", "bank-a")
        crt, key = paths.cert, paths.key
    else:
        paths = pki.cert_paths(certs_dir, "merchant", "M2")
        crt, key = paths.cert, paths.key
    fake = FakeHub()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0,
                                        ssl=tls.server_context(crt, key, certs_dir / "ca.crt"))
    port = server.sockets[0].getsockname()[1]
    card = Card(CARD_NUMBER, 12, 2030, "987")
    try:
        with pytest.raises(Exception) as info:  # which one: asserted below, per case
            async with connect("127.0.0.1", port, merchant_id="M1", server_key="sk-M1",
                               certs_dir=certs_dir, reconnect=False, connect_timeout_s=2.0,
                               timeout_s=2.0, resolve_unknown=False) as c:
                await c.charge("stolen-1", 10_000, card=card)
        if served == "merchant-as-issued":
            # No serverAuth and no server name: the TLS handshake itself fails.
            assert fake.handshakes == 0, info.value
        else:
            assert isinstance(info.value, RemoteError), repr(info.value)
            assert info.value.code is ErrorCode.FORBIDDEN
            assert "not a hub" in info.value.message
            await asyncio.wait_for(fake.closed.wait(), WAIT_S)
        assert fake.frames == [] and bytes(fake.raw) == b""
        assert CARD_NUMBER.encode() not in fake.raw
    finally:
        server.close()
        await server.wait_closed()


# --- the hub refuses a bank node that is not a bank; refuses odd merchant certificates -----
@pytest.fixture(scope="module")
def fake_bank_dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment,
                                                                             NodeProcess]]:
    """A deployment whose hub dials, for bank ``bni``, a real bank node process serving a
    *merchant* certificate (with serverAuth, as issued before): it would approve anything."""
    workdir = tmp_path_factory.mktemp("roles")
    certs = workdir / "certs"
    pki.init(certs, merchants=list(KEYS), banks=["bca-1", "bni-1", "wallet-1"])
    evil_dir = workdir / "evil-certs"
    evil_dir.mkdir()
    shutil.copy(certs / "ca.crt", evil_dir / "ca.crt")
    hostile_cert(certs, evil_dir, "bank-evil", [ou("merchant"), cn("M1")], [SERVER, CLIENT])
    # The deployment's own secrets file: the fake bank holds the real link key, so only its
    # certificate gives it away.
    secrets = secret_keys.init(workdir / "paywire-secrets.toml")
    evil = NodeProcess("bank", BankNodeConfig(
        node_id="evil", bank="bni", listen_port=0, certs_dir=evil_dir,
        store_path=workdir / "evil.db", secrets_file=secrets,
        accounts={c: OPENING for c in BNI_CARDS}), workdir, "evil").start()
    dep = Deployment(workdir, bca_nodes=1,
                     bank_address=lambda bank, port: evil.port if bank == "bni" else port)
    try:
        evil.wait_ready()
        yield dep.start(), evil
    finally:
        dep.stop()
        evil.terminate()


async def test_hub_refuses_a_bank_link_to_a_merchant_certificate(
        fake_bank_dep: tuple[Deployment, NodeProcess]) -> None:
    dep, _ = fake_bank_dep
    async with dep.client(retry_attempts_max=1) as c:
        with pytest.raises(RemoteError) as info:
            await c.charge("via-fake-bank", 10_000,
                           card=Card(BNI_CARDS[0], 12, 2030, "123"))
    assert info.value.code is ErrorCode.BANK_UNAVAILABLE
    rows = dep.ledger_sql("SELECT status FROM transactions WHERE order_id = ?",
                          ("via-fake-bank",))
    assert all(status not in ("capture", "authorize", "settlement") for (status,) in rows)
    conn = sqlite3.connect(dep.workdir / "evil.db")
    try:  # the fake bank moved no money: it was never asked
        assert conn.execute("SELECT COUNT(*) FROM effects").fetchone()[0] == 0
    finally:
        conn.close()
    hub_log = dep.workdir / "hub.log"
    await wait_until(lambda: "refusing" in hub_log.read_text(), "the hub to refuse the link")
    assert "certificate role is 'merchant', expected 'bank'" in hub_log.read_text()


@pytest.mark.parametrize(("subject", "why", "code"), [
    ([ou("bank"), ou("merchant"), cn("M1")], "2 OU", ErrorCode.FORBIDDEN),
    ([ou("merchant"), cn("M2"), cn("M1")], "2 CN", ErrorCode.FORBIDDEN),
    ([ou("hub"), cn("M1")], "role is 'hub'", ErrorCode.FORBIDDEN),
    ([ou("merchant"), cn("M9")], "unknown merchant 'M9'", ErrorCode.UNAUTHENTICATED),
])
async def test_hub_refuses_a_client_certificate_that_is_not_one_known_merchant(
        fake_bank_dep: tuple[Deployment, NodeProcess], tmp_path: Path,
        subject: list[tuple[x509.ObjectIdentifier, str]], why: str, code: ErrorCode) -> None:
    dep, _ = fake_bank_dep
    crt, key = hostile_cert(dep.certs, tmp_path, "odd", subject, [CLIENT], sans=())
    ctx = tls.client_context(dep.certs / "ca.crt", crt, key)
    with pytest.raises(RemoteError) as info:
        async with connect("127.0.0.1", dep.port, merchant_id="M1", server_key=KEYS["M1"],
                           ssl_context=ctx, reconnect=False, connect_timeout_s=5.0) as c:
            await c.status("nothing")
    assert info.value.code is code
    assert why in info.value.message


async def test_bank_node_refuses_a_client_that_is_not_a_hub(
        fake_bank_dep: tuple[Deployment, NodeProcess], tmp_path: Path) -> None:
    dep, _ = fake_bank_dep
    bank_port = dep.banks["bca"][0].port
    # A merchant certificate that claims clientAuth, and a bank node's (no clientAuth, and a
    # bank is not a hub), and a hub-named certificate with a second OU.
    cases = [
        hostile_cert(dep.certs, tmp_path, "m", [ou("merchant"), cn("hub")], [CLIENT], sans=()),
        hostile_cert(dep.certs, tmp_path, "h2", [ou("bank"), ou("hub"), cn("hub")], [CLIENT]),
    ]
    for crt, key in cases:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", bank_port, server_hostname="localhost",
            ssl=tls.client_context(dep.certs / "ca.crt", crt, key))
        data = await asyncio.wait_for(reader.read(), WAIT_S)  # the bank closes after ERROR
        writer.close()
        frames = FrameDecoder(BODY_BYTES_MAX_DEFAULT).feed(data)
        assert [f.type for f in frames] == [FrameType.ERROR]
        body = messages.decode_body(FrameType.ERROR, frames[0].body)
        assert body["code"] == ErrorCode.FORBIDDEN


# --- a bank may settle only its own transactions ---------------------------------------------
@dataclass
class FakeBankNode:
    """A TLS server holding a *genuine* bank node certificate (of bank ``bni``) that answers
    the hub's HELLO and then reports payments of its choosing, signed with the link key."""

    link_key: bytes
    writer: asyncio.StreamWriter | None = None
    responses: list[Frame] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(BODY_BYTES_MAX_DEFAULT)
        try:
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    if frame.type == FrameType.HELLO:
                        writer.write(fake_welcome("paywire-bank/bni-1"))
                        self.writer = writer
                    elif frame.type == FrameType.PING:
                        writer.write(messages.encode_message(FrameType.PONG, {},
                                                             frame.request_id))
                    elif frame.type == FrameType.RESPONSE:
                        self.responses.append(frame)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def report_payment(self, transaction_id: str, amount: int) -> None:
        from gateway.net.signed import build_request
        from gateway.transactions.model import now_ms
        from protocol import banklink

        assert self.writer is not None
        self.writer.write(build_request(self.link_key, "bni-1", 1, banklink.PAYMENT, {
            "notification_id": 1, "transaction_id": transaction_id, "status": "settlement",
            "amount": amount, "paid_ms": now_ms()}))


async def test_a_bank_cannot_settle_another_banks_payment(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    pki.init(certs, merchants=list(KEYS), banks=["bca-1", "bni-1", "wallet-1"])
    # The deployment's own link key (the Deployment keeps an existing secrets file).
    fake = FakeBankNode(secret_keys.load_link_key(
        secret_keys.init(tmp_path / "paywire-secrets.toml")))
    bni = pki.cert_paths(certs, "bank", "bni-1")
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0, ssl=tls.server_context(
        bni.cert, bni.key, certs / "ca.crt"))
    fake_port = server.sockets[0].getsockname()[1]
    dep = Deployment(tmp_path, bca_nodes=1,
                     bank_address=lambda bank, port: fake_port if bank == "bni" else port)
    try:
        await dep.astart()
        await wait_until(lambda: fake.writer is not None, "the hub's link to the bni node")
        async with dep.client() as c:
            tx = await c.charge("va-at-bca", 75_000, "bank_transfer", bank="bca")
            assert tx.transaction_status == "pending"
            fake.report_payment(tx.transaction_id, 75_000)
            await wait_until(lambda: fake.responses, "the hub's answer to the payment report")
            assert (await c.status("va-at-bca")).transaction_status == "pending"
            assert "payment notification from bank bni" in (tmp_path / "hub.log").read_text()
            # The bank the payment was routed to still settles it.
            await dep.admin("bca", "admin.pay", {"number": tx.va_number})
            await wait_for_status(c, "va-at-bca", "settlement")
    finally:
        dep.stop()
        server.close()
        await server.wait_closed()


async def wait_for_status(c: Client, order_id: str, status: str) -> None:
    async def reached() -> bool:
        return (await c.status(order_id)).transaction_status == status
    await wait_until(reached, f"{order_id} to reach {status}", timeout_s=WAIT_S)


async def test_hub_refuses_a_genuine_node_of_another_bank(tmp_path: Path) -> None:
    """A real bca node answering at the address configured for bni's node: its certificate
    is a genuine bank certificate, but it names bca-1, not bni-1, so the hub refuses the link
    (it would otherwise approve bni's charges and could report payments as bni)."""
    dep: Deployment
    dep = Deployment(tmp_path, bca_nodes=1, bank_address=lambda bank, port:
                     dep.banks["bca"][0].port if bank == "bni" else port)
    try:
        await dep.astart()
        await wait_until(log_contains(tmp_path / "hub.log",
                                      "certificate names bank node 'bca-1'"),
                         "the hub to refuse bca-1 at bni-1's address")
        async with dep.client(retry_attempts_max=1) as c:
            with pytest.raises(RemoteError) as info:
                await c.charge("bni-via-bca", 10_000, card=Card(BNI_CARDS[0], 12, 2030, "123"))
            assert info.value.code is ErrorCode.BANK_UNAVAILABLE
            # The node itself is fine where it belongs: bca's own charges go through.
            tx = await c.charge("bca-own", 10_000, card=Card(RICH[0], 12, 2030, "123"))
            assert tx.transaction_status == "capture"
    finally:
        dep.stop()
