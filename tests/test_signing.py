"""Request HMACs, Midtrans signature_key, and webhook header signatures."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import body as bodycodec
from protocol import messages, signing
from protocol.decoder import FrameDecoder
from protocol.errors import PaywireError
from protocol.frame import FrameType

KEY = b"SB-Mid-server-TEST"
ARGS = {"order_id": "o-1", "gross_amount": 25000, "payment_type": "credit_card",
        "card": {"number": "4811111111111114", "exp_month": 1, "exp_year": 2031, "cvv": "999"}}


ARGS_RAW = messages.encode_args(ARGS)


def signed_frame() -> bytes:
    sig = signing.sign_request(KEY, "M1", 7, "charge", 1_700_000_000_000, b"N" * 16, ARGS_RAW)
    return messages.encode_request(7, "charge", "M1", 1_700_000_000_000, b"N" * 16, sig,
                                   ARGS_RAW)


def verifies(raw: bytes) -> bool:
    try:
        frames = FrameDecoder(65536).feed(raw)
        if len(frames) != 1 or frames[0].type != FrameType.REQUEST:
            return False
        req = messages.decode_request(frames[0].request_id, frames[0].body)
    except PaywireError:
        return False
    return signing.verify_request(KEY, req.signature, req.merchant_id, req.request_id, req.op,
                                  req.timestamp_ms, req.nonce, req.args_raw)


def test_signed_request_verifies_and_key_order_does_not_matter() -> None:
    assert verifies(signed_frame())
    reordered = dict(reversed(list(ARGS.items())))
    assert bodycodec.canonical(reordered) == bodycodec.canonical(ARGS)


def test_any_changed_byte_fails_verification() -> None:
    raw = signed_frame()
    for i in range(len(raw)):
        for delta in (1, 0x80):
            mutated = bytearray(raw)
            mutated[i] ^= delta
            assert not verifies(bytes(mutated)), f"byte {i} xor {delta:#x} still verified"


def test_other_key_fails() -> None:
    sig = signing.sign_request(b"other", "M1", 7, "charge", 1, b"N" * 16, ARGS_RAW)
    assert not signing.verify_request(KEY, sig, "M1", 7, "charge", 1, b"N" * 16, ARGS_RAW)


def test_midtrans_signature_key_matches_published_formula() -> None:
    # Midtrans: SHA512(order_id + status_code + gross_amount + ServerKey), hex.
    by_hand = hashlib.sha512(b"Postman-1578568851" b"200" b"10000.00" b"VT-server-key").hexdigest()
    got = signing.signature_key("Postman-1578568851", "200",
                                signing.format_gross_amount(10000, "IDR"), "VT-server-key")
    assert got == by_hand


def test_gross_amount_format() -> None:
    assert signing.format_gross_amount(10000, "IDR") == "10000.00"
    assert signing.format_gross_amount(1050, "USD") == "10.50"
    assert signing.format_gross_amount(5, "USD") == "0.05"
    assert signing.format_gross_amount(1500, "KWD") == "1.500"


def test_webhook_header_signature_and_replay_window() -> None:
    body = b'{"order_id":"o-1"}'
    header = signing.webhook_signature_header(KEY, 1_000_000, body)
    assert signing.verify_webhook_signature(KEY, header, body, now_s=1_000_010)
    assert not signing.verify_webhook_signature(KEY, header, body + b" ", now_s=1_000_010)
    assert not signing.verify_webhook_signature(KEY, header, body, now_s=1_000_000 + 301)
    assert not signing.verify_webhook_signature(b"x", header, body, now_s=1_000_010)
    assert not signing.verify_webhook_signature(KEY, "garbage", body, now_s=1_000_010)


@settings(max_examples=300)
@given(key=st.binary(max_size=200), data=st.binary(max_size=600))
def test_cached_pad_hmac_is_rfc2104_hmac_sha256(key: bytes, data: bytes) -> None:
    """Keys shorter than, equal to and longer than the 64-byte block, and the empty key."""
    assert signing.hmac_sha256(key, data) == hmac.digest(key, data, "sha256")
    assert signing.hmac_sha256(key, data) == hmac.digest(key, data, "sha256")  # cached pads
