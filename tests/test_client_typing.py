"""What a merchant's type checker sees: ``mypy --strict`` on merchant-style code passes with
``Client``, ``SyncClient``, the enums and ``construct_event``, and reports a wrong call (the
package ships ``py.typed``; ``SyncClient`` has real signatures, not ``__getattr__``)."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import gateway
import protocol
from gateway.client import Client, SyncClient

ROOT = Path(__file__).resolve().parent.parent
MYPY_TIMEOUT_S = 600

GOOD = '''
from __future__ import annotations

from collections.abc import Iterator

from gateway.client import (Card, Client, Event, FraudStatus, NotFound, SyncClient,
                            TransactionResult, TransactionStatus, connect)
from gateway.client.webhooks import (SignatureVerificationError, WebhookNotification,
                                     construct_event)


def blocking(c: SyncClient) -> str:
    tx: TransactionResult = c.charge("o-1", 150_000, card=Card("4811111111111114", 12, 2030,
                                     "123"), metadata={"cart": "42"},
                                     notification_url="https://shop.example/hooks")
    again = c.status(transaction_id=tx.transaction_id)
    if tx.transaction_status == "deny":  # comparing with strings still type-checks
        return tx.decline_reason or ""
    assert again.transaction_status is TransactionStatus.CAPTURE
    if tx.fraud_status == FraudStatus.CHALLENGE:
        c.approve("o-1")
    c.refund("o-1", "r-1", 1_000, reason="damaged")
    events: Iterator[Event] = c.events(since=0)
    for event in events:
        seq: int = event.seq
        return f"{seq} {event.transaction.metadata.get('cart', '')}"
    return tx.transaction_status.value


async def nonblocking(host: str, port: int, key: str) -> int:
    async with connect(host, port, merchant_id="M1", server_key=key,
                       certs_dir="certs") as c:
        client: Client = c
        try:
            await client.status("o-2", 5.0)
        except NotFound as exc:
            print(exc.code.name, exc.field)
        async for event in client.events():
            return event.seq
    return 0


def receive(body: bytes, headers: dict[str, str]) -> int:
    try:
        n: WebhookNotification = construct_event(body, headers, "key", tolerance_s=300)
    except SignatureVerificationError as exc:
        print(exc.reason.value)
        return 401
    print(n.event_id, n.transaction_status.value, n.metadata)
    return 200
'''

# Each line marked ``# E`` must be reported: wrong types and names through SyncClient.
BAD = '''
from gateway.client import SyncClient, TransactionStatus


def wrong(c: SyncClient) -> None:
    c.charge("o-1", "150000")  # E: amount as a string
    c.status(order_ident="o-1")  # E: no such parameter
    c.refund("o-1")  # E: refund_key missing
    c.charge("o-1", 1, metadata={"n": 1})  # E: metadata values are strings
    s: int = c.status("o-1").transaction_status  # E: a TransactionStatus, not an int
    c.capture_all("o-1")  # E: no such method
    for e in c.events():
        e.seq.upper()  # E: seq is an int
    TransactionStatus.CAPTURED  # E: no such member
'''


def test_mypy_strict_sees_the_client_signatures(tmp_path: Path) -> None:
    (tmp_path / "merchant_good.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "merchant_bad.py").write_text(textwrap.dedent(BAD))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(tmp_path / ".mypy_cache"), "--config-file", "/dev/null",
         "merchant_good.py", "merchant_bad.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=MYPY_TIMEOUT_S,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith("merchant_good.py")], out
    assert not [e for e in errors if not e.startswith("merchant_bad.py")], out
    reported = {int(m.group(1)) for e in errors
                if (m := re.match(r"merchant_bad\.py:(\d+):", e))}
    marked = {i for i, line in enumerate(textwrap.dedent(BAD).splitlines(), 1)
              if line.rstrip().split("#")[-1].startswith(" E")}
    assert len(marked) == 8
    assert marked <= reported, (marked - reported, out)
    assert proc.returncode == 1


def test_the_packages_ship_py_typed() -> None:
    for pkg in (gateway, protocol):
        assert pkg.__file__ is not None
        assert (Path(pkg.__file__).parent / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'\[tool\.setuptools\.package-data\]\s*\ngateway = \["py\.typed"\]'
                     r'\s*\nprotocol = \["py\.typed"\]', pyproject)


def test_sync_client_has_every_client_coroutine_with_its_parameters() -> None:
    """Written out, not forwarded: each public coroutine (and ``events``) of ``Client`` has
    a method of ``SyncClient`` with the same parameters, and nothing is looked up
    dynamically."""
    assert "__getattr__" not in vars(SyncClient)
    names = [n for n, f in vars(Client).items() if not n.startswith("_")
             and (inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f))]
    assert {"charge", "status", "events", "refund", "close"} <= set(names)
    for name in names:
        want = inspect.signature(getattr(Client, name)).parameters
        got = inspect.signature(getattr(SyncClient, name)).parameters
        assert list(got) == list(want), name
        for p in want:
            assert (got[p].kind, got[p].default) == (want[p].kind, want[p].default), (name, p)
    assert list(inspect.signature(SyncClient.__init__).parameters)[:3] == \
        ["self", "host", "port"]
