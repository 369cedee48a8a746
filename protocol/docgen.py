"""Generate the tables and the worked example of ``docs/protocol.md`` from the code.

The document holds each generated section between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->``; ``tests/test_protocol_doc.py`` fails when they differ from
what this module renders, so the spec and the implementation cannot drift apart.

    python -m protocol.docgen --write docs/protocol.md
"""

from __future__ import annotations

import hashlib
import re
import sys
from typing import Any

from protocol import banklink, connection, lifecycle, messages, operations, signing
from protocol import body as bodycodec
from protocol.errors import ErrorCode, PaywireError, class_for
from protocol.frame import FrameType, encode_frame
from protocol.schema import ListOf, Map, Opt, Spec

EXAMPLE_KEY = b"SB-Mid-server-EXAMPLE"
EXAMPLE_REQUEST_ID = 1
EXAMPLE_TIMESTAMP_MS = 1_764_547_200_000
EXAMPLE_NONCE = bytes(range(16))
EXAMPLE_ARGS: dict[str, Any] = {
    "order_id": "order-1001",
    "gross_amount": 150000,
    "payment_type": "credit_card",
    "card": {"number": "4811111111111114", "exp_month": 12, "exp_year": 2030, "cvv": "123"},
}
EXAMPLE_RESULT: dict[str, Any] = {
    "transaction_id": "9f6c2a1e-0b7d-4c55-8a3e-2f4d6b8c0a11",
    "order_id": "order-1001",
    "merchant_id": "M1",
    "gross_amount": 150000,
    "currency": "IDR",
    "payment_type": "credit_card",
    "transaction_status": "capture",
    "fraud_status": "accept",
    "status_code": "200",
    "status_message": "Success, card transaction is captured",
    "transaction_time": "2025-12-01 00:00:00.004",
    "captured_amount": 150000,
    "refunded_amount": 0,
    "masked_card": "481111******1114",
    "card_brand": "visa",
    "bank": "bca",
}

# The batched bank-link example (§10.2): hub ``hub-1`` sends two operations to a bank node
# in one frame; the second is refused by its schema and fails alone.
EXAMPLE_LINK_KEY = b"paywire-link-key-EXAMPLE"
EXAMPLE_LINK_IDENTITY = "hub-1"
EXAMPLE_BATCH_REQUEST_ID = 7
EXAMPLE_BATCH_OPS: list[tuple[str, dict[str, Any]]] = [
    (banklink.AUTHORIZE, {"op_id": "t-1001:auth", "transaction_id": "t-1001",
                          "account": "4811111111111114", "exp_month": 12, "exp_year": 2030,
                          "amount": 150000, "currency": "IDR", "capture": True}),
    (banklink.REFUND, {"op_id": "t-0999:refund:1", "transaction_id": "t-0999", "amount": 0}),
]


def example_batch_answers() -> list[dict[str, Any] | PaywireError]:
    """What a bank node answers to the example, per operation: the authorization approved
    (``auth_code`` is the first 6 hex digits of SHA-256 of its op id, upper case), the refund
    refused by its schema."""
    _valid, errors = banklink.split_batch(banklink.batch_args(EXAMPLE_BATCH_OPS))
    return [{"approved": True, "captured": True,
             "auth_code": hashlib.sha256(b"t-1001:auth").hexdigest()[:6].upper()}, errors[1]]


def example_batch_args() -> bytes:
    return messages.encode_args(banklink.batch_args(EXAMPLE_BATCH_OPS))


def example_batch_request() -> bytes:
    sig = signing.sign_request(EXAMPLE_LINK_KEY, EXAMPLE_LINK_IDENTITY, EXAMPLE_BATCH_REQUEST_ID,
                               banklink.BATCH, EXAMPLE_TIMESTAMP_MS, EXAMPLE_NONCE,
                               example_batch_args())
    return messages.encode_request(EXAMPLE_BATCH_REQUEST_ID, banklink.BATCH,
                                   EXAMPLE_LINK_IDENTITY, EXAMPLE_TIMESTAMP_MS, EXAMPLE_NONCE,
                                   sig, example_batch_args())


# The node's ``timings_us`` in the example's answer (§10.3): the frame arrived 0.35 ms after
# the example's timestamp, its books' transaction committed 1.06 ms later, and the answer
# was built 15 µs after that.
EXAMPLE_BATCH_TIMINGS_US = {"received": EXAMPLE_TIMESTAMP_MS * 1000 + 350,
                            "committed": EXAMPLE_TIMESTAMP_MS * 1000 + 1410,
                            "answered": EXAMPLE_TIMESTAMP_MS * 1000 + 1425}


def example_batch_response() -> bytes:
    return messages.encode_response(
        EXAMPLE_BATCH_REQUEST_ID,
        banklink.batch_result(example_batch_answers(), dict(EXAMPLE_BATCH_TIMINGS_US)))


ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.BAD_FRAME: "framing is invalid in a way no more specific code covers",
    ErrorCode.UNSUPPORTED_VERSION: "header version, or no common version in HELLO",
    ErrorCode.FRAME_TOO_LARGE: "body_length above the limit in force",
    ErrorCode.UNKNOWN_FRAME_TYPE: "frame_type is not 1..9",
    ErrorCode.RESERVED_FLAGS: "a flag bit not defined for this frame type is set",
    ErrorCode.TRUNCATED_FRAME: "the stream ended inside a frame",
    ErrorCode.UNEXPECTED_FRAME: "frame type not allowed in the connection's state",
    ErrorCode.HANDSHAKE_TIMEOUT: "no HELLO within the hello timeout",
    ErrorCode.IDLE_TIMEOUT: "peer silent for 3 heartbeat intervals",
    ErrorCode.DUPLICATE_REQUEST_ID: "a REQUEST reuses the id of one still in flight; "
    "it is not executed",
    ErrorCode.MALFORMED_BODY: "body is not a msgpack map within the limits",
    ErrorCode.INVALID_FIELD: "a field is missing, of the wrong type, out of range, or unknown",
    ErrorCode.UNKNOWN_OPERATION: "`op` names no operation",
    ErrorCode.RESUME_EXPIRED: "`events_since` is below the merchant's resume floor: events "
                              "after it are past the hub's resume horizon and deleted "
                              "(section 3.3)",
    ErrorCode.UNAUTHENTICATED: "unknown merchant",
    ErrorCode.BAD_SIGNATURE: "request HMAC does not verify",
    ErrorCode.REPLAYED: "nonce already used within the timestamp window",
    ErrorCode.STALE_TIMESTAMP: "timestamp outside the window (default ±300 s)",
    ErrorCode.FORBIDDEN: "identity does not match the certificate, or role not allowed",
    ErrorCode.RATE_LIMITED: "merchant over its rate or replay-window capacity",
    ErrorCode.TOO_MANY_IN_FLIGHT: "more requests in flight than WELCOME allowed",
    ErrorCode.TOO_MANY_CONNECTIONS: "merchant over its connection limit",
    ErrorCode.QUEUE_FULL: "a bounded internal queue (ledger, bank calls) is full",
    ErrorCode.RESPONSE_TOO_LARGE: "the result exceeds the negotiated `body_bytes_max`; "
    "the operation's effect stands (section 2.3)",
    ErrorCode.DUPLICATE_ORDER: "order id (or refund key) reused with different content",
    ErrorCode.INVALID_TRANSITION: "operation not allowed in the transaction's status",
    ErrorCode.INSUFFICIENT_FUNDS: "bank declined for funds (bank link; merchants see `deny`)",
    ErrorCode.NOT_FOUND: "no transaction for this merchant and order id",
    ErrorCode.REFUND_EXCEEDS_CAPTURED: "refunds would exceed the captured amount",
    ErrorCode.NO_ROUTE: "no bank for this card BIN, VA bank or e-wallet provider",
    ErrorCode.ACCOUNT_UNKNOWN: "issuer has no such account (bank link)",
    ErrorCode.CARD_EXPIRED: "issuer declined: the card's expiry month has passed (bank link; "
                            "merchants see `deny`)",
    ErrorCode.CURRENCY_NOT_SUPPORTED: "bank declined: the account (or, for a virtual account "
                                      "or e-wallet, the bank) is not in the charge's currency "
                                      "(bank link; merchants see `deny` / `failure`)",
    ErrorCode.TOO_MANY_REFUNDS: "the transaction already has the most refunds one may have "
                                "(`REFUNDS_PER_TRANSACTION_MAX`); refund the rest at once",
    ErrorCode.BANK_UNAVAILABLE: "no node of the bank could be asked; nothing happened",
    ErrorCode.TIMEOUT: "no response within the request timeout",
    ErrorCode.OUTCOME_UNKNOWN: "the bank's answer is not known yet; retry the same request",
    ErrorCode.INTERNAL: "a fault in the hub; nothing is acknowledged",
    ErrorCode.SHUTTING_DOWN: "the hub is draining; retry on another hub",
}
assert set(ERROR_MEANINGS) == set(ErrorCode)


def _field_rows(spec: Map, prefix: str = "") -> list[str]:
    rows = []
    for name, item in spec.fields.items():
        required = not isinstance(item, Opt)
        inner: Spec = item if isinstance(item, Spec) else item.spec
        default = ""
        if isinstance(item, Opt) and item.default is not None:
            shown = str(item.default).lower() if isinstance(item.default, bool) else item.default
            default = f" (default `{shown}`)"
        # A map subclass that describes itself (``StrMap``) says more than "free-form".
        kind = inner.describe() if not isinstance(inner, Map) \
            or type(inner).describe is not Map.describe else \
            ("map (free-form)" if inner.allow_extra else "map, see below")
        rows.append(f"| `{prefix}{name}` | {'yes' if required else 'no'} | {kind}{default} |")
        if isinstance(inner, Map) and not inner.allow_extra:
            rows += _field_rows(inner, f"{prefix}{name}.")
        if isinstance(inner, ListOf) and isinstance(inner.item, Map):
            rows += _field_rows(inner.item, f"{prefix}{name}[].")
    return rows


def _table(spec: Map) -> str:
    head = "| field | required | type and limits |\n|---|---|---|"
    return head + "\n" + "\n".join(_field_rows(spec))


def hexdump(data: bytes) -> str:
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        lines.append(f"{off:04x}  " + " ".join(f"{b:02x}" for b in chunk))
    return "\n".join(lines)


def example_args() -> bytes:
    """The example's ``args`` as sent and signed: plain msgpack in the order written."""
    return messages.encode_args(EXAMPLE_ARGS)


def example_request() -> bytes:
    sig = signing.sign_request(EXAMPLE_KEY, "M1", EXAMPLE_REQUEST_ID, "charge",
                               EXAMPLE_TIMESTAMP_MS, EXAMPLE_NONCE, example_args())
    return messages.encode_request(EXAMPLE_REQUEST_ID, "charge", "M1", EXAMPLE_TIMESTAMP_MS,
                                   EXAMPLE_NONCE, sig, example_args())


def example_response() -> bytes:
    return messages.encode_response(EXAMPLE_REQUEST_ID, EXAMPLE_RESULT)


def render() -> dict[str, str]:
    out: dict[str, str] = {}
    out["frame-types"] = "| value | type |\n|---|---|\n" + "\n".join(
        f"| {int(t)} | {t.name} |" for t in FrameType)
    error_rows = [f"| {int(c)} | `{c.name}` | `{class_for(c).__name__}` | "
                  f"{'yes' if c.is_fatal else 'no'} | "
                  f"{'yes' if c.is_retryable else 'no'} | {ERROR_MEANINGS[c]} |"
                  for c in ErrorCode]
    out["errors"] = ("| code | name | class | fatal | retry same request | meaning |\n"
                     "|---|---|---|---|---|---|\n" + "\n".join(error_rows))
    for ftype, spec in messages.BODY_SPECS.items():
        if ftype is FrameType.PONG:
            continue
        assert isinstance(spec, Map)
        out[f"body-{ftype.name.lower()}"] = _table(spec)
    for op, spec in operations.ARGS.items():
        out[f"op-{op.value}"] = _table(spec)
    out["transaction"] = _table(operations.TRANSACTION)
    out["link-timings"] = _table(banklink.TIMINGS)
    out["statuses"] = "| transaction_status | status_code |\n|---|---|\n" + "\n".join(
        f"| `{s.value}` | `{code}` |" for s, code in operations.STATUS_CODES.items())
    for link_op, link_spec in banklink.ARGS.items():
        out[f"link-{link_op}"] = _table(link_spec)
    out["transitions"] = "| from | may become |\n|---|---|\n" + "\n".join(
        f"| `{s.value}` | {', '.join(f'`{t.value}`' for t in sorted(targets)) or '(final)'} |"
        for s, targets in lifecycle.TRANSITIONS.items())
    out["transaction-events"] = "| transaction_status | fraud_status | event | becomes |\n" \
        "|---|---|---|---|\n" + "\n".join(
            f"| `{s.value}` | `{f.value}` | `{e.value}` | `{ns.value}` / `{nf.value}` |"
            for (s, f, e), (ns, nf) in lifecycle.TABLE.items())
    out["connection-states"] = "| side | state | frame received | next state |\n" \
        "|---|---|---|---|\n" + "\n".join(
            f"| {side.value} | {state.value} | {ftype.name} | {nxt.value} |"
            for (side, state, ftype), nxt in connection.TRANSITIONS.items())
    out["connection-states-sent"] = "| side | state | frame sent | next state |\n" \
        "|---|---|---|---|\n" + "\n".join(
            f"| {side.value} | {state.value} | {ftype.name} | {nxt.value} |"
            for (side, state, ftype), nxt in connection.SEND_TRANSITIONS.items())
    req = example_request()
    sig = signing.sign_request(EXAMPLE_KEY, "M1", EXAMPLE_REQUEST_ID, "charge",
                               EXAMPLE_TIMESTAMP_MS, EXAMPLE_NONCE, example_args())
    signed = signing.signing_input("M1", EXAMPLE_REQUEST_ID, "charge", EXAMPLE_TIMESTAMP_MS,
                                   EXAMPLE_NONCE, example_args())
    out["example-args"] = "```\n" + hexdump(example_args()) + "\n```"
    out["example-signing-input"] = "```\n" + hexdump(signed) + "\n```"
    out["example-signature"] = f"`{sig.hex()}`"
    out["example-request"] = "```\n" + hexdump(req) + "\n```"
    out["example-response"] = "```\n" + hexdump(example_response()) + "\n```"
    out["example-error"] = "```\n" + hexdump(encode_frame(
        FrameType.RESPONSE, 2, bodycodec.pack(
            {"code": 201, "name": "INVALID_FIELD",
             "message": "args.gross_amount: must be 1..1000000000000000, got 0",
             "field": "args.gross_amount"}), 0x0001)) + "\n```"
    signed = signing.signing_input(EXAMPLE_LINK_IDENTITY, EXAMPLE_BATCH_REQUEST_ID,
                                   banklink.BATCH, EXAMPLE_TIMESTAMP_MS, EXAMPLE_NONCE,
                                   example_batch_args())
    out["batch-args"] = "```\n" + hexdump(example_batch_args()) + "\n```"
    out["batch-signing-input"] = "```\n" + hexdump(signed) + "\n```"
    out["batch-signature"] = "`" + signing.sign_request(
        EXAMPLE_LINK_KEY, EXAMPLE_LINK_IDENTITY, EXAMPLE_BATCH_REQUEST_ID, banklink.BATCH,
        EXAMPLE_TIMESTAMP_MS, EXAMPLE_NONCE, example_batch_args()).hex() + "`"
    out["batch-request"] = "```\n" + hexdump(example_batch_request()) + "\n```"
    out["batch-response"] = "```\n" + hexdump(example_batch_response()) + "\n```"
    return out


_SECTION = re.compile(
    r"<!-- BEGIN GENERATED: ([a-z0-9._-]+) -->\n(.*?)\n<!-- END GENERATED: \1 -->", re.S)


def sections_in(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in _SECTION.finditer(text)}


def rewrite(text: str) -> str:
    rendered = render()
    return _SECTION.sub(lambda m: f"<!-- BEGIN GENERATED: {m.group(1)} -->\n"
                        f"{rendered[m.group(1)]}\n<!-- END GENERATED: {m.group(1)} -->", text)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--write":
        with open(argv[1]) as f:
            text = f.read()
        with open(argv[1], "w") as f:
            f.write(rewrite(text))
        return 0
    for name, body in render().items():
        print(f"<!-- BEGIN GENERATED: {name} -->\n{body}\n<!-- END GENERATED: {name} -->\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
