"""docs/protocol.md section 13 (webhooks) is what the hub does, byte for byte.

Part A (pure): the section's worked example is recomputed with ``hmac``/``hashlib``/``json``
only, from the recipe as the section states it, and the client's ``construct_event``
accepts it (and refuses it with one byte changed).

Part B (real processes): a deployment's hub delivers notifications of several kinds of
transactions to an HTTPS receiver on loopback, which keeps each raw request; every one is
checked by ``spec_verify`` and the tables of the section (headers, fields and when they are
present, decimals per currency, status codes), and the delivery rules (a 5xx retried and
signed anew, a 4xx dead-lettered after its attempts then redelivered, order per
transaction, event ids per merchant, no notification without a URL) are checked against
what arrived.

The verifier below is written from the section alone: nothing from ``gateway`` or
``protocol`` computes or checks a MAC or a ``signature_key`` here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.client import Card
from gateway.config import FraudConfig, WebhookConfig
from tests.deploy import KEYS, POOR, deployment
from tests.receiver import receiver_tls
from tests.test_e2e_webhooks import card, serve_posts
from tests.waiting import wait_until

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


# --- the section, as data -----------------------------------------------------------------

def section() -> str:
    text = DOC.read_text()
    start = text.index("\n## 13. Webhooks")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def table_after(heading: str, text: str | None = None) -> list[list[str]]:
    """The data rows (cells stripped) of the first Markdown table from the line holding
    ``heading`` on (that line may be the table's header row)."""
    text = section() if text is None else text
    rows: list[list[str]] = []
    start = text.rindex("\n", 0, text.index(heading)) + 1  # the heading's whole line
    for line in text[start:].splitlines():
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[1:]  # the header row is not data


def code(cell: str) -> str:
    """The first `code span` of a cell."""
    found = re.search(r"`([^`]*)`", cell)
    assert found is not None, cell
    return found.group(1)


def documented_headers() -> dict[str, str]:
    """Header name (lowercase) -> its cell in section 13.3's table."""
    return {code(name).lower(): value for name, value in table_after("Headers (names")}


def documented_fields() -> dict[str, tuple[str, str]]:
    """Field -> (type, present) from section 13.3's table."""
    return {code(f): (t, p) for f, t, p, _ in table_after("Fields (a receiver")}


def documented_exponents() -> dict[str, int]:
    rows = table_after("| exponent `e` | currencies |", section())
    return {cur: int(e) for e, curs in rows for cur in re.findall(r"`([A-Z]{3})`", curs)}


def documented_status_codes() -> dict[str, str]:
    """Section 5.2's table (referred to by 13.3): status -> status_code."""
    return {code(s): code(c) for s, c in table_after("| transaction_status | status_code |",
                                                     DOC.read_text())}


# How the present column reads (section 13.3): a new wording must be taught here.
@dataclass(frozen=True)
class Facts:
    """What the test knows about the transaction a notification is about."""

    payment_type: str
    transaction_status: str
    va_number: bool = False
    fraud_reasons: bool = False
    metadata: bool = False


PRESENT: dict[str, Callable[[Facts], bool]] = {
    "always": lambda f: True,
    "card payments": lambda f: f.payment_type == "credit_card",
    "bank transfers with a virtual account":
        lambda f: f.payment_type == "bank_transfer" and f.va_number,
    "e-wallet payments": lambda f: f.payment_type == "ewallet",
    "once refunded": lambda f: f.transaction_status in ("partial_refund", "refund"),
    "when the fraud screen recorded reasons": lambda f: f.fraud_reasons,
    "when the charge had a non-empty `metadata`": lambda f: f.metadata,
}

TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "string or `null`": lambda v: v is None or isinstance(v, str),
    "array": lambda v: isinstance(v, list) and all(
        isinstance(x, dict) and set(x) == {"bank", "va_number"}
        and all(isinstance(y, str) for y in x.values()) for x in v),
    "array of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "object of strings": lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
}


# --- the verifier, from section 13.4 alone ------------------------------------------------

HEADER_FORM = re.compile(r"t=([0-9]{1,12}),v1=([0-9a-f]{64})")
TOLERANCE_S = 300


class Refused(AssertionError):
    pass


def header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in headers if k.lower() == name.lower()]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


def mac(key: str, t: str, body: bytes) -> str:
    return hmac.new(key.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_key(order_id: str, status_code: str, gross_amount: str, key: str) -> str:
    return hashlib.sha512((order_id + status_code + gross_amount + key).encode()).hexdigest()


def spec_verify(headers: Sequence[tuple[str, str]], body: bytes, keys: Sequence[str],
                now_s: float) -> tuple[int, dict[str, Any]]:
    """Steps 1-5 of section 13.4: the signing time and the parsed body, or ``Refused``."""
    value = header(headers, "X-Paywire-Signature")
    form = HEADER_FORM.fullmatch(value or "")
    if form is None:
        raise Refused(f"step 1: {value!r}")
    t, v1 = form.groups()
    if not any(hmac.compare_digest(mac(k, t, body), v1) for k in keys):
        raise Refused("step 2: MAC")
    if not now_s - TOLERANCE_S <= int(t) <= now_s + TOLERANCE_S:
        raise Refused(f"step 3: t={t} now={now_s}")
    data = json.loads(body)
    if not isinstance(data, dict) or not any(hmac.compare_digest(
            signature_key(data["order_id"], data["status_code"], data["gross_amount"], k),
            data["signature_key"]) for k in keys):
        raise Refused("step 4: signature_key")
    event_id = header(headers, "X-Paywire-Event-Id")
    if event_id is not None and event_id != data["event_id"]:
        raise Refused("step 5: event id header")
    return int(t), data


def gross_amount(amount_minor: int, currency: str) -> str:
    """Section 13.3's rule, with its exponent table."""
    e = documented_exponents()[currency]
    d = max(e, 2)
    digits = str(amount_minor * 10 ** (d - e)).rjust(d + 1, "0")
    return f"{digits[:-d]}.{digits[-d:]}"


def check_body(data: dict[str, Any], raw: bytes, facts: Facts) -> None:
    """Section 13.3: the encoding, every field's type, and which fields are present."""
    assert raw.isascii()
    assert json.dumps(data, separators=(",", ":"), sort_keys=True).encode() == raw
    fields = documented_fields()
    present = {name for name, (_t, when) in fields.items() if PRESENT[when](facts)}
    assert set(data) == present, (sorted(set(data) ^ present), facts)
    for name in data:
        assert TYPES[fields[name][0]](data[name]), (name, data[name])
    assert data["status_code"] == documented_status_codes()[data["transaction_status"]]
    assert re.fullmatch(r"evt_" + re.escape(data["merchant_id"]) + r"_[1-9][0-9]*",
                        data["event_id"])
    assert re.fullmatch(r"[0-9a-f]{128}", data["signature_key"])
    stamp = r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}"
    assert re.fullmatch(stamp, data["transaction_time"])
    assert (data["settlement_time"] is not None) == (data["transaction_status"] == "settlement")
    if data["settlement_time"] is not None:
        assert re.fullmatch(stamp, data["settlement_time"])
    if "masked_card" in data:
        assert re.fullmatch(r"[0-9]{6}\*+[0-9]{4}", data["masked_card"])
        assert data["card_type"] == "credit"


# --- Part A: the worked example -----------------------------------------------------------

@dataclass(frozen=True)
class Example:
    request_line: str
    headers: list[tuple[str, str]]
    body: bytes
    key: str
    v1: str
    signature_key: str
    signature_key_parts: list[str]
    signing_input_t: str
    body_bytes_said: int
    accepted_from: int
    accepted_to: int


def example() -> Example:
    text = section()
    http = re.search(r"```http\n(.*?)\n```", text, re.S)
    proofs = re.search(r"```text\n(.*?)\n```", text, re.S)
    assert http is not None and proofs is not None
    head, body = http.group(1).split("\n\n", 1)
    request_line, *lines = head.split("\n")
    headers = [(n, v) for n, _, v in (ln.partition(": ") for ln in lines)]
    p = proofs.group(1)
    key = re.search(r"^server_key\s+(\S+)$", p, re.M)
    v1 = re.search(r"^v1\s+.*= ([0-9a-f]+)$", p, re.M)
    signing = re.search(r'^signing input\s+"([0-9]+)\." followed by the ([0-9]+) body bytes',
                        p, re.M)
    sk = re.search(r"^signature_key\s+SHA-512\((.*)\)\n\s+= ([0-9a-f]+)$", p, re.M)
    window = re.search(r"clock reads between ([0-9]+) and ([0-9]+) accepts it", text)
    assert key and v1 and signing and sk and window, p
    return Example(request_line, headers, body.encode(), key.group(1), v1.group(1),
                   sk.group(2), re.findall(r'"([^"]*)"', sk.group(1)), signing.group(1),
                   int(signing.group(2)), int(window.group(1)), int(window.group(2)))


def test_the_worked_example_is_what_the_recipes_give() -> None:
    ex = example()
    assert ex.request_line == "POST /paywire HTTP/1.1"
    t, data = spec_verify(ex.headers, ex.body, [ex.key], now_s=int(ex.signing_input_t))
    assert str(t) == ex.signing_input_t
    assert ex.body_bytes_said == len(ex.body) == int(header(ex.headers, "Content-Length") or 0)
    assert f"({len(ex.body)} bytes)" in section()
    # The MAC by the recipe, in the header and in the proofs block.
    assert HEADER_FORM.fullmatch(header(ex.headers, "X-Paywire-Signature") or "")
    expected = hmac.new(ex.key.encode(), ex.signing_input_t.encode() + b"." + ex.body,
                        hashlib.sha256).hexdigest()
    assert ex.v1 == expected
    assert header(ex.headers, "X-Paywire-Signature") == f"t={ex.signing_input_t},v1={expected}"
    # signature_key by the recipe: the proofs block names the body's own strings.
    assert ex.signature_key_parts == [data["order_id"], data["status_code"],
                                      data["gross_amount"], ex.key]
    assert data["signature_key"] == ex.signature_key == hashlib.sha512(
        "".join(ex.signature_key_parts).encode()).hexdigest()
    assert header(ex.headers, "X-Paywire-Event-Id") == data["event_id"]
    assert header(ex.headers, "Content-Type") == code(documented_headers()["content-type"])
    assert header(ex.headers, "User-Agent") == code(documented_headers()["user-agent"])
    assert header(ex.headers, "X-Paywire-Attempt") == "1"
    check_body(data, ex.body, Facts("credit_card", data["transaction_status"], metadata=True))
    assert data["gross_amount"] == gross_amount(150_000, "IDR")
    # The acceptance window the example states is the tolerance, both ways.
    assert (ex.accepted_from, ex.accepted_to) == (t - TOLERANCE_S, t + TOLERANCE_S)


def test_the_worked_example_is_what_the_hub_would_send() -> None:
    """Not a verification (that is above): the example must not drift from the hub's body
    builder, nor the exponent table from the hub's."""
    from gateway.webhooks.payload import notification_body
    from protocol.signing import CURRENCY_EXPONENTS

    ex = example()
    data = json.loads(ex.body)
    result = {k: data[k] for k in ("transaction_id", "order_id", "merchant_id", "status_code",
                                   "status_message", "currency", "payment_type",
                                   "transaction_status", "fraud_status", "transaction_time",
                                   "masked_card", "bank", "metadata")}
    e = documented_exponents()[data["currency"]]
    result["gross_amount"] = int(data["gross_amount"].replace(".", "")) // 10 ** (max(e, 2) - e)
    seq = int(data["event_id"].rsplit("_", 1)[1])
    assert notification_body(result, ex.key, seq) == ex.body
    assert documented_exponents() == CURRENCY_EXPONENTS


def test_construct_event_accepts_the_example_and_refuses_one_byte_changed() -> None:
    from gateway.client.webhooks import (
        SignatureVerificationError,
        VerificationFailure,
        construct_event,
    )

    ex = example()
    headers = dict(ex.headers)
    t = int(ex.signing_input_t)
    for now in (ex.accepted_from, t, ex.accepted_to):
        n = construct_event(ex.body, headers, ex.key, now_s=now)
        assert (n.event_id, n.signed_at_s, n.gross_amount) == ("evt_M1_42", t, "150000.00")
    for now, reason in ((ex.accepted_from - 1, VerificationFailure.FUTURE),
                        (ex.accepted_to + 1, VerificationFailure.STALE)):
        with pytest.raises(SignatureVerificationError) as info:
            construct_event(ex.body, headers, ex.key, now_s=now)
        assert info.value.reason == reason
    at = ex.body.index(b"capture")
    edited = ex.body[:at] + b"C" + ex.body[at + 1:]
    with pytest.raises(SignatureVerificationError) as info:
        construct_event(edited, headers, ex.key, now_s=t)
    assert info.value.reason == VerificationFailure.BAD_SIGNATURE
    with pytest.raises(Refused, match="step 2"):
        spec_verify(ex.headers, edited, [ex.key], t)
    flipped = {**headers, "X-Paywire-Signature": headers["X-Paywire-Signature"][:-1]
               + ("0" if headers["X-Paywire-Signature"][-1] != "0" else "1")}
    with pytest.raises(SignatureVerificationError) as info:
        construct_event(ex.body, flipped, ex.key, now_s=t)
    assert info.value.reason == VerificationFailure.BAD_SIGNATURE


# --- Part B: real deliveries --------------------------------------------------------------

@dataclass
class Request:
    """One POST as the receiver got it."""

    method: str
    path: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    received_s: float
    status: int = 0

    @property
    def data(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class Capture:
    """An HTTPS receiver (its own CA, trusted by the hub through ``webhooks.ca_file``) that
    keeps every request whole and answers as ``answer`` says."""

    def __init__(self, tls_dir: Path, answer: Callable[[Request], int]) -> None:
        self.ssl_ctx, self.ca_file = receiver_tls(tls_dir)
        self.answer = answer
        self.requests: list[Request] = []
        self.runner: Any = None
        self.base = ""

    async def start(self) -> Capture:
        self.runner, self.base = await serve_posts(self._handle, self.ssl_ctx)
        return self

    async def _handle(self, request: web.Request) -> web.Response:
        got = Request(request.method, request.path_qs,
                      f"{request.version.major}.{request.version.minor}",
                      [(k.decode(), v.decode()) for k, v in request.raw_headers],
                      await request.read(), time.time())
        got.status = self.answer(got)
        self.requests.append(got)
        return web.Response(status=got.status)

    def delivered(self) -> list[Request]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def of(self, order_id: str) -> list[Request]:
        return [r for r in self.requests if r.data["order_id"] == order_id]


HOOKS = WebhookConfig(time_scale=0.01, poll_interval_s=0.02)
FRAUD = FraudConfig(challenge_above={"IDR": 5_000_000})
# A value outside ASCII, one beyond U+FFFF among them: escaped in the body (section 13.3).
METADATA = {"cart": "c-42", "note": "Bandung \u2013 kopi \u2615 \U0001d11e"}
EXPECTED = {  # order -> its statuses, in order, as notified
    "spec-card": ["capture", "partial_refund", "refund"],
    "spec-auth": ["authorize", "capture"],
    "spec-va": ["pending", "settlement"],
    "spec-ew": ["pending"],
    "spec-usd": ["deny"],
    "spec-kwd": ["deny"],
    "spec-poor": ["deny"],
    "spec-review": ["authorize", "capture"],
    "spec-override": ["capture"],
    "spec-gone": ["capture"],
}
FAILING_ATTEMPTS = 2  # spec-auth's first notification is answered 500 this many times


async def test_real_deliveries_follow_the_section(tmp_path: Path) -> None:
    mode = {"gone": 404}

    def answer(r: Request) -> int:
        if r.path == "/gone":
            return mode["gone"]
        data = r.data
        if (data["order_id"], data["transaction_status"]) == ("spec-auth", "authorize"):
            earlier = [q for q in rx.requests if q.data["event_id"] == data["event_id"]]
            return 500 if len(earlier) < FAILING_ATTEMPTS else 200
        return 200

    rx = await Capture(tmp_path / "rx-tls", answer).start()
    results: dict[str, Any] = {}
    hooks = dataclasses.replace(HOOKS, ca_file=rx.ca_file)
    try:
        with deployment(tmp_path / "dep", bca_nodes=1,
                        webhook_urls={"M1": rx.base + "/hooks/M1"},
                        hub_overrides={"webhooks": hooks, "fraud": FRAUD}) as dep:
            async with dep.client("M1") as c:
                results["spec-card"] = await c.charge("spec-card", 150_000, card=card(0),
                                                      metadata=METADATA)
                await c.refund("spec-card", "r1", 50_000)
                await c.refund("spec-card", "r2", 100_000)
                results["spec-auth"] = await c.charge("spec-auth", 20_000, card=card(1),
                                                      capture=False)
                await c.capture("spec-auth")
                results["spec-va"] = await c.charge("spec-va", 75_000, "bank_transfer",
                                                    bank="bca")
                paid = await dep.admin("bca", "admin.pay",
                                       {"transaction_id": results["spec-va"].transaction_id})
                assert paid["paid"] is True
                results["spec-ew"] = await c.charge("spec-ew", 30_000, "ewallet",
                                                    provider="gopay")
                results["spec-usd"] = await c.charge("spec-usd", 1_999, card=card(2),
                                                     currency="USD")
                results["spec-kwd"] = await c.charge("spec-kwd", 1_500, card=card(3),
                                                     currency="KWD")
                results["spec-poor"] = await c.charge("spec-poor", 50_000,
                                                      card=Card(POOR, 12, 2030, "123"))
                results["spec-review"] = await c.charge("spec-review", 6_000_000,
                                                        card=card(4))
                await c.approve("spec-review")
                results["spec-override"] = await c.charge(
                    "spec-override", 10_000, card=card(5),
                    notification_url=rx.base + "/override/spec?ref=1")
                results["spec-gone"] = await c.charge("spec-gone", 1_000, card=card(6),
                                                      notification_url=rx.base + "/gone")
            async with dep.client("M2") as c2:
                await c2.charge("spec-m2", 1_000, card=card(7))
            # M2 has no webhook_url and its charge none: nothing is written for it.
            assert dep.ledger_sql("SELECT COUNT(*) FROM events WHERE merchant_id = 'M2'") \
                == [(1,)]
            assert dep.ledger_sql("SELECT COUNT(*) FROM webhooks WHERE merchant_id = 'M2'") \
                == [(0,)]
            assert results["spec-va"].va_number and results["spec-review"].fraud_reasons
            assert [results[o].transaction_status for o in ("spec-usd", "spec-kwd",
                                                             "spec-poor")] == ["deny"] * 3

            def notified() -> bool:
                got = {(r.data["order_id"], r.data["transaction_status"])
                       for r in rx.delivered()}
                return all((o, s) in got for o, ss in EXPECTED.items() for s in ss
                           if o != "spec-gone")

            await wait_until(notified, "every notification but spec-gone's to be delivered")
            await wait_until(lambda: dep.ledger_sql(
                "SELECT COUNT(*) FROM webhooks WHERE state = 'dead'") == [(1,)],
                "spec-gone's notification to be dead-lettered")
            ledger = str(dep.workdir / "ledger.db")
            listed = subprocess.run([sys.executable, "-m", "gateway.cli", "webhooks", "list",
                                     "--ledger", ledger, "--state", "dead"],
                                    check=True, capture_output=True, text=True, timeout=60)
            gone = [json.loads(line) for line in listed.stdout.splitlines()]
            assert [(g["url"], g["attempts"]) for g in gone] == \
                [(rx.base + "/gone", HOOKS.client_error_attempts_max)]
            dead_attempts = len(rx.of("spec-gone"))
            # The operator redelivers it (section 13.5); now the receiver takes it.
            mode["gone"] = 200
            subprocess.run([sys.executable, "-m", "gateway.cli", "webhooks", "redeliver",
                            "--ledger", ledger, str(gone[0]["id"])],
                           check=True, capture_output=True, timeout=60)
            await wait_until(lambda: [r for r in rx.of("spec-gone") if r.status == 200],
                             "spec-gone's redelivery")
            await wait_until(lambda: dep.ledger_sql(
                "SELECT COUNT(*) FROM webhooks WHERE state != 'delivered'") == [(0,)],
                "every notification to be recorded delivered")
            events_m1 = dep.ledger_sql("SELECT COUNT(*) FROM events WHERE merchant_id = 'M1'")
    finally:
        await rx.runner.cleanup()

    facts = {o: Facts(results[o].payment_type, "", va_number=bool(results[o].va_number),
                      fraud_reasons=bool(results[o].fraud_reasons),
                      metadata=bool(results[o].metadata)) for o in EXPECTED}
    check_every_request(rx.requests, facts, results)
    check_delivery_rules(rx, events_m1[0][0], dead_attempts)


def check_every_request(requests: list[Request], facts: dict[str, Facts],
                        results: dict[str, Any]) -> None:
    """Sections 13.2-13.4 on each request as it arrived."""
    documented = documented_headers()
    others = re.search(r"Other headers an HTTP/1.1 client sends \((.*?)\)", section())
    assert others is not None
    allowed = set(documented) | {h.lower() for h in re.findall(r"`([^`]+)`", others.group(1))}
    for r in requests:
        assert (r.method, r.version) == ("POST", "1.1")
        names = [k.lower() for k, _ in r.headers]
        assert set(names) <= allowed and set(documented) <= set(names), names
        assert len(names) == len(set(names)), names
        assert header(r.headers, "Content-Type") == code(documented["content-type"])
        assert header(r.headers, "User-Agent") == code(documented["user-agent"])
        assert header(r.headers, "Content-Length") == str(len(r.body))
        assert re.fullmatch(r"[1-9][0-9]*", header(r.headers, "X-Paywire-Attempt") or "")
        t, data = spec_verify(r.headers, r.body, [KEYS["M1"]], r.received_s)
        # Exactly the form of section 13.4 (no leading zeros, lowercase hex, no spaces).
        assert header(r.headers, "X-Paywire-Signature") == \
            f"t={t},v1={mac(KEYS['M1'], str(t), r.body)}"
        # t is the attempt's time: taken before the request, at most one timeout earlier.
        assert r.received_s - HOOKS.timeout_s - 1 <= t <= r.received_s + 1
        oid = data["order_id"]
        check_body(data, r.body, Facts(facts[oid].payment_type, data["transaction_status"],
                                       facts[oid].va_number, facts[oid].fraud_reasons,
                                       facts[oid].metadata))
        tx = results[oid]
        assert (data["transaction_id"], data["transaction_time"], data["merchant_id"],
                data["currency"], data["payment_type"]) == \
            (tx.transaction_id, tx.transaction_time, "M1", tx.currency, tx.payment_type)
        assert data["gross_amount"] == gross_amount(tx.gross_amount, tx.currency)
        assert data.get("metadata", {}) == tx.metadata
        assert r.path == {"spec-override": "/override/spec?ref=1",
                          "spec-gone": "/gone"}.get(oid, "/hooks/M1")
    by_status = {(r.data["order_id"], r.data["transaction_status"]): r.data for r in requests}
    # The decimals per currency, from the amounts the charges named.
    assert [by_status[o, "deny"]["gross_amount"] for o in ("spec-usd", "spec-kwd")] == \
        ["19.99", "1.500"]
    assert by_status["spec-card", "partial_refund"]["refund_amount"] == "50000.00"
    assert by_status["spec-card", "refund"]["refund_amount"] == "150000.00"
    assert by_status["spec-card", "refund"]["gross_amount"] == "150000.00"
    assert by_status["spec-review", "authorize"]["fraud_status"] == "challenge"
    assert by_status["spec-va", "pending"]["va_numbers"] == [
        {"bank": "bca", "va_number": results["spec-va"].va_number}]
    assert by_status["spec-ew", "pending"]["provider"] == "gopay"
    # Outside ASCII, escaped (\uXXXX, lowercase, a surrogate pair beyond U+FFFF).
    raw = next(r.body for r in requests if r.data["order_id"] == "spec-card")
    assert b"\\u2013 kopi \\u2615 \\ud834\\udd1e" in raw


def check_delivery_rules(rx: Capture, events_m1: int, dead_attempts: int) -> None:
    """Section 13.5 on what arrived, in arrival order."""
    requests = rx.requests
    # One notification per status change, in order per transaction; event ids are the
    # merchant's seqs, every one of them, the header repeating the body's.
    first_2xx: dict[str, Request] = {}
    for r in rx.delivered():
        first_2xx.setdefault(r.data["event_id"], r)
    for oid, statuses in EXPECTED.items():
        notes = [r for r in first_2xx.values() if r.data["order_id"] == oid]
        assert [n.data["transaction_status"] for n in notes] == statuses, oid
    seqs = sorted(int(e.rsplit("_", 1)[1]) for e in first_2xx)
    assert seqs == list(range(1, events_m1 + 1))
    for r in requests:
        assert header(r.headers, "X-Paywire-Event-Id") == r.data["event_id"]
    # A transaction's notification k+1 is not attempted before k is delivered or dead.
    by_tx: dict[str, list[tuple[int, int]]] = {}
    for i, r in enumerate(requests):
        by_tx.setdefault(r.data["transaction_id"], []).append(
            (int(r.data["event_id"].rsplit("_", 1)[1]), i))
    for arrivals in by_tx.values():
        seq_order = [s for s, _ in arrivals]
        assert seq_order == sorted(seq_order), arrivals
    # 5xx: retried with the same body and event id, each attempt numbered and signed anew.
    tries = [r for r in rx.of("spec-auth") if r.data["transaction_status"] == "authorize"]
    assert [r.status for r in tries] == [500] * FAILING_ATTEMPTS + [200]
    assert [header(r.headers, "X-Paywire-Attempt") for r in tries] == ["1", "2", "3"]
    assert len({r.body for r in tries}) == 1
    stamps = [spec_verify(r.headers, r.body, [KEYS["M1"]], r.received_s)[0] for r in tries]
    # §13.4 step 6: every attempt in a later second than the one before: a new t, a new MAC.
    assert all(a < b for a, b in itertools.pairwise(stamps)), stamps
    assert len({header(r.headers, "X-Paywire-Signature") for r in tries}) == len(tries)
    # 4xx: client_error_attempts_max attempts, dead; a redelivery starts again at attempt 1.
    gone = rx.of("spec-gone")
    assert dead_attempts == HOOKS.client_error_attempts_max
    assert [r.status for r in gone] == [404] * dead_attempts + [200]
    assert [header(r.headers, "X-Paywire-Attempt") for r in gone] == \
        [str(n) for n in range(1, dead_attempts + 1)] + ["1"]
    assert len({r.body for r in gone}) == 1
    # Nothing else arrived twice: every other answer was 2xx the first time.
    retried = {r.data["event_id"] for r in tries + gone}
    others = [r for r in requests if r.data["event_id"] not in retried]
    assert len(others) == len({r.data["event_id"] for r in others})
    assert {header(r.headers, "X-Paywire-Attempt") for r in others} == {"1"}


def test_verifier_refuses_what_the_section_says_to_refuse() -> None:
    """The verifier used on real deliveries is not a yes-machine: each step refuses."""
    ex = example()
    t = int(ex.signing_input_t)
    hdrs = dict(ex.headers)

    def with_header(name: str, value: str) -> list[tuple[str, str]]:
        return [(k, value if k == name else v) for k, v in ex.headers]

    cases: Mapping[str, tuple[list[tuple[str, str]], bytes, float]] = {
        "step 1": (with_header("X-Paywire-Signature",
                               hdrs["X-Paywire-Signature"].replace(",", ", ")), ex.body, t),
        "step 2": (ex.headers, ex.body + b" ", t),
        "step 3": (ex.headers, ex.body, t + TOLERANCE_S + 1),
        "step 5": (with_header("X-Paywire-Event-Id", "evt_M1_43"), ex.body, t),
    }
    for step, (h, b, now) in cases.items():
        with pytest.raises(Refused, match=step):
            spec_verify(h, b, [ex.key], now)
    with pytest.raises(Refused, match="step 3"):
        spec_verify(ex.headers, ex.body, [ex.key], t - TOLERANCE_S - 1)
    # A body signed correctly but whose signature_key was made with another key.
    data = json.loads(ex.body)
    data["signature_key"] = signature_key(data["order_id"], data["status_code"],
                                          data["gross_amount"], "another key")
    body = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    signed = with_header("X-Paywire-Signature",
                         f"t={t},v1={mac(ex.key, str(t), body)}")
    with pytest.raises(Refused, match="step 4"):
        spec_verify(signed, body, [ex.key], t)
    # Rotation (section 13.4): header by the new key, signature_key by the old one.
    assert spec_verify(signed, body, [ex.key, "another key"], t)[0] == t

