"""Lab 1, last step: say HELLO to the sandbox hub and decode its WELCOME with *your* decoder.

Run it from the directory where you started ``paywire sandbox`` (its environment set:
``set -a; . sandbox/sandbox.env; set +a``)::

    python labwork/lab01/hello.py

It opens a TLS connection to ``$PAYWIRE_HUB`` with the merchant certificate in
``$PAYWIRE_CERTS``, sends a HELLO built with the project's ``protocol/`` helpers, then reads
with ``read_frames`` (yours) until your decoder returns the WELCOME, and prints its header and
body fields and how many ``recv`` calls it took.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING or __package__:
    from .decoder import Decoder, Frame
else:  # run as a script from labwork/lab01: decoder.py is beside this file
    from decoder import Decoder, Frame

RECV_BYTES_MAX = 4096  # one recv asks for at most this much; TCP may give less
RECV_CALLS_MAX = 10_000  # a bound on the loop, whatever the peer does
CONNECT_TIMEOUT_S = 10.0


def read_frames(sock: socket.socket, decoder: Decoder) -> tuple[list[Frame], int]:
    """Read from ``sock`` until ``decoder`` has returned at least one frame; return the
    frames and how many ``recv`` calls it took.

    When ``recv`` returns ``b""`` the peer has closed: tell the decoder (``eof``) and return
    what you have (perhaps nothing; ``decoder.error`` then says why). Stop too when the
    decoder has an error."""
    frames: list[Frame] = []
    calls = 0
    while not frames and decoder.error is None and calls < RECV_CALLS_MAX:
        data = sock.recv(RECV_BYTES_MAX)
        calls += 1
        if not data:
            decoder.eof()
            break
        frames.extend(decoder.feed(data))
    return frames, calls


def main() -> int:
    from gateway import pki, tls
    from protocol import body as bodycodec
    from protocol.frame import FrameType
    from protocol.messages import encode_message

    host, _, port = os.environ.get("PAYWIRE_HUB", "127.0.0.1:7400").rpartition(":")
    merchant = os.environ.get("PAYWIRE_MERCHANT", "M1")
    certs = Path(os.environ.get("PAYWIRE_CERTS", "certs"))
    mine = pki.cert_paths(certs, "merchant", merchant)
    context = tls.client_context(certs / pki.CA_FILE, mine.cert, mine.key)
    hello = encode_message(FrameType.HELLO, {"versions": [1], "role": "merchant",
                                             "identity": merchant, "client": "lab01-hello"})
    with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as raw, \
            context.wrap_socket(raw, server_hostname=host) as sock:
        print(f"connected to {host}:{port} with {sock.version()}, as merchant {merchant}")
        sock.sendall(hello)
        print(f"sent HELLO: {len(hello)} bytes")
        decoder = Decoder()
        frames, calls = read_frames(sock, decoder)
    if not frames:
        print(f"no frame: the hub closed the connection (decoder error: {decoder.error})")
        return 1
    frame = frames[0]
    name = FrameType(frame.frame_type).name if frame.frame_type in range(1, 10) else "?"
    print(f"received {name}: header version={frame.version} type={frame.frame_type} "
          f"flags={frame.flags} request_id={frame.request_id} body_length={len(frame.body)}")
    for key, value in bodycodec.unpack(frame.body).items():
        shown = value.hex() if isinstance(value, bytes) else value
        print(f"  {key} = {shown}")
    print(f"recv calls: {calls}")
    return 0 if frame.frame_type == FrameType.WELCOME else 1


if __name__ == "__main__":
    sys.exit(main())
