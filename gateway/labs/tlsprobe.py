"""Lab 2's probes: what the hub, OpenSSL's verifier and a plain TLS server make of one
client certificate. Used by the student's ``make_certs.py`` (``try``, ``verify``, ``alert``)
and by ``paywire lab check 2``, so both see the same things.

Why three views. In TLS 1.3 the client's handshake is finished before the server has
checked the client's certificate, so a refusal reaches the client only on its first read.
The hub (an asyncio server) then drops the connection without flushing the TLS alert, so
the client just sees the connection end: ``hub_outcome`` says ``closed``. *Why* OpenSSL
refused is what ``verify_reason`` reports (the same words as ``openssl verify``), and the
alert a plain blocking OpenSSL server does send is what ``alert_from_plain_server`` reads.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

CONNECT_TIMEOUT_S = 10.0
READ_BYTES_MAX = 4096
READS_MAX = 100  # the hub answers a HELLO with one frame; a bound on the loop all the same


def hub_outcome(hub: str, ca_file: Path, crt: Path, key: Path, identity: str) -> str:
    """Connect to ``hub`` (HOST:PORT) with this certificate, send a HELLO as merchant
    ``identity``; ``welcome``, ``closed`` (the connection ended without a frame), or the
    ERROR frame's code name (``FORBIDDEN``, ...), then ``: `` and the details."""
    from protocol import body as bodycodec
    from protocol.decoder import FrameDecoder
    from protocol.errors import FrameError
    from protocol.frame import HANDSHAKE_BODY_BYTES_MAX, FrameType
    from protocol.messages import encode_message

    host, _, port = hub.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca_file))  # verifies the hub, by name
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(crt, key)
    decoder = FrameDecoder(HANDSHAKE_BODY_BYTES_MAX)
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as raw, \
                context.wrap_socket(raw, server_hostname=host) as sock:
            sock.sendall(encode_message(FrameType.HELLO, {
                "versions": [1], "role": "merchant", "identity": identity}))
            for _ in range(READS_MAX):
                data = sock.recv(READ_BYTES_MAX)
                if not data:
                    return "closed: the hub ended the connection without a frame"
                for frame in decoder.feed(data):
                    if frame.type == FrameType.WELCOME:
                        return "welcome: the hub accepted the certificate"
                    if frame.type == FrameType.ERROR:
                        body = bodycodec.unpack(frame.body)
                        return f"{body.get('name')}: {body.get('message')}"
            return "closed: no WELCOME or ERROR frame"
    except (ssl.SSLEOFError, ConnectionError) as exc:
        return f"closed: {exc}"
    except ssl.SSLError as exc:
        return f"alert {exc.reason}: {exc}"
    except (OSError, FrameError) as exc:
        return f"closed: {type(exc).__name__}: {exc}"


def verify_reason(ca_file: Path, crt: Path, key: Path) -> str:
    """What OpenSSL's verifier says of the certificate when a server trusting ``ca_file``
    checks it as a client certificate: ``OK`` or its message (``certificate has
    expired``, ...). An in-memory handshake: no socket, nothing sent anywhere."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cafile=str(ca_file))
    # The server needs a certificate of its own for the handshake: the client's will do,
    # since the client below does not check it.
    server.load_cert_chain(crt, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.load_cert_chain(crt, key)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(to_client, to_server)
    s = server.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(10):  # a TLS 1.3 handshake takes 2-3 flights
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                return str(exc.verify_message)
            except ssl.SSLError as exc:
                if side is s:
                    return f"{exc.reason}"
        if s.version() is not None and c.version() is not None:
            try:
                s.do_handshake()
                return "OK"
            except ssl.SSLCertVerificationError as exc:
                return str(exc.verify_message)
            except ssl.SSLWantReadError:
                continue
    return "no result"


def alert_from_plain_server(server_crt: Path, server_key: Path, ca_file: Path, crt: Path,
                            key: Path) -> str:
    """The TLS alert a plain blocking OpenSSL server (trusting ``ca_file``, requiring a
    client certificate) sends when this certificate is presented, as Python names it on
    the client (``SSLV3_ALERT_CERTIFICATE_EXPIRED``, ...); ``none`` when the handshake
    succeeds."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cafile=str(ca_file))
    server.load_cert_chain(server_crt, server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(CONNECT_TIMEOUT_S)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.settimeout(CONNECT_TIMEOUT_S)
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")  # reached only if the client's certificate passed
        except OSError:
            pass  # the refusal: OpenSSL has sent its alert
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(ca_file))
    client.check_hostname = False  # this server is the hub's certificate on a new port
    client.load_cert_chain(crt, key)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S) as raw, \
                client.wrap_socket(raw) as sock:
            data = sock.recv(READ_BYTES_MAX)
            return "none" if data == b"ok" else "none (the connection ended)"
    except ssl.SSLError as exc:
        return str(exc.reason)
    except OSError as exc:
        return f"none ({type(exc).__name__})"
    finally:
        thread.join(CONNECT_TIMEOUT_S)
        listener.close()


def hub_certificate(certs: Path) -> tuple[Path, Path]:
    """The hub's certificate and key in a certs directory (``hub-<name>.crt``), for the
    plain server of ``alert_from_plain_server``."""
    for crt in sorted(certs.glob("hub-*.crt")):
        if crt.with_suffix(".key").is_file():
            return crt, crt.with_suffix(".key")
    raise FileNotFoundError(f"no hub-*.crt with its .key in {certs}")
