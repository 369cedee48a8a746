"""``paywire demo``: a whole deployment on this machine, driven through the client library.

Creates a dev PKI and configs, starts three bank/e-wallet node groups and a hub as separate
processes, sends a few hundred payments of every method over TLS, waits for simulated
customers to pay (or not), and prints what happened: statuses, latencies, one
transaction's hops, and a money check of the ledger against the banks' books.
"""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.cliout import Progress as _StageProgress
from gateway.config import FraudConfig, MerchantConfig, WebhookConfig
from gateway.deployment import (
    BankPlan,
    Deployment,
    plan_banks,
    start_deployment,
)
from gateway.deployment import luhn_complete as luhn_complete  # imported from here by tests
from gateway.storage.groupcommit import make_private_dirs

MERCHANT = "demo-merchant"
SERVER_KEY = "SB-Mid-server-demo-key"
BLOCKED_EMAIL = "fraudster@example.com"
REVIEW_AMOUNT = 2_500_000  # above the demo's challenge threshold: held for review
CONNECTIONS = 4
CONCURRENCY_PER_CONNECTION = 16


class Progress(_StageProgress):
    """The demo's bar: redrawn in place on a terminal, one line at the end otherwise
    (``make demo > demo.log`` used to hold one endless line of ``\r`` redraws)."""

    def __init__(self, total: int, label: str) -> None:
        super().__init__(label, total)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    # Nearest rank: the smallest value with at least q of the sample at or below it.
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def start_demo_deployment(workdir: Path, banks: list[BankPlan], webhook_url: str
                          ) -> Deployment:
    """The demo's deployment: one merchant, customers who pay 80% of their virtual accounts
    and e-wallet requests after about 0.6 s, and fraud rules the drive exercises."""
    fraud = FraudConfig(challenge_above={"IDR": 2_000_000}, deny_above={"IDR": 100_000_000},
                        block_emails=[BLOCKED_EMAIL])
    return start_deployment(
        workdir, banks, merchants=[MerchantConfig(MERCHANT, SERVER_KEY, webhook_url)],
        fraud=fraud,
        # The demo's receiver listens on loopback in clear: the lab opt-in.
        webhooks=WebhookConfig(poll_interval_s=0.05, allow_plain_http_loopback=True),
        auto_pay_after_s=0.6, auto_pay_ratio=0.8, expiry_check_interval_s=0.2)


async def drive(port: int, certs: Path, banks: list[BankPlan], count: int, seed: int
                ) -> dict[str, Any]:
    from gateway.client import Card, RequestError, connect

    rng = random.Random(seed)
    cards = [c for b in banks for c in b.rich_cards]
    poor = [c for b in banks for c in b.poor_cards]
    run_id = f"{int(time.time())}-{rng.randrange(10**6):06d}"
    clients = [await connect("127.0.0.1", port, merchant_id=MERCHANT, server_key=SERVER_KEY,
                             certs_dir=certs).connect() for _ in range(CONNECTIONS)]
    latencies_ms: list[float] = []
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    screened: Counter[str] = Counter()
    orders: list[str] = []
    sample: dict[str, Any] = {}
    progress = Progress(count, "payments")
    slots = asyncio.Semaphore(CONNECTIONS * CONCURRENCY_PER_CONNECTION)

    def a_card(numbers: list[str]) -> Card:
        return Card(rng.choice(numbers), 12, 2030, "123")

    async def one(i: int) -> None:
        client = clients[i % CONNECTIONS]
        order = f"demo-{run_id}-{i:05d}"
        roll = rng.random()
        amount = rng.randrange(10, 2_000) * 1_000
        async with slots:
            try:
                t0 = time.perf_counter()
                sent_us = time.time_ns() // 1000
                if roll < 0.45:
                    kind = "card capture"
                    tx = await client.charge(order, amount, card=a_card(cards))
                elif roll < 0.55:
                    kind = "card auth+capture"
                    tx = await client.charge(order, amount, capture=False,
                                             card=a_card(cards))
                elif roll < 0.60:
                    kind = "card auth+cancel"
                    tx = await client.charge(order, amount, capture=False,
                                             card=a_card(cards))
                elif roll < 0.68:
                    kind = "card, no funds"
                    tx = await client.charge(order, amount, card=a_card(poor))
                elif roll < 0.80:
                    kind = "virtual account"
                    tx = await client.charge(order, amount, "bank_transfer",
                                             bank=rng.choice(["bca", "bni"]), expiry_s=3)
                elif roll < 0.90:
                    kind = "e-wallet"
                    tx = await client.charge(order, amount, "ewallet",
                                             provider=rng.choice(["gopay", "shopeepay"]),
                                             expiry_s=3)
                elif roll < 0.95:
                    kind = "card + refund"
                    tx = await client.charge(order, amount, card=a_card(cards))
                elif roll < 0.98:
                    kind = "card, fraud review"
                    tx = await client.charge(order, REVIEW_AMOUNT,
                                             card=a_card(cards))
                else:
                    kind = "card, blocked buyer"
                    tx = await client.charge(order, amount,
                                             card=a_card(cards),
                                             customer={"email": BLOCKED_EMAIL})
                latencies_ms.append((time.perf_counter() - t0) * 1000)
                received_us = time.time_ns() // 1000
                kinds[kind] += 1
                screened[tx.fraud_status] += 1
                if kind == "card auth+capture" and tx.transaction_status == "authorize":
                    await client.capture(order)
                elif kind == "card auth+cancel" and tx.transaction_status == "authorize":
                    await client.cancel(order)
                elif kind == "card + refund" and tx.transaction_status == "capture":
                    await client.refund(order, f"{order}-r1", amount // 4, "partial return")
                elif kind == "card, fraud review" and tx.fraud_status == "challenge":
                    # The merchant's reviewer approves every other one.
                    if i % 2:
                        await client.approve(order)
                    else:
                        await client.deny(order)
                if kind == "card capture" and not sample:
                    sample.update(order=order, client_sent_us=sent_us,
                                  client_received_us=received_us)
                orders.append(order)
            except RequestError as exc:
                errors[exc.code.name] += 1
            progress.step()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    progress.finish()  # once, whatever the count (a no-op when the last step ended it)
    elapsed_s = time.perf_counter() - started

    # Wait (bounded) for simulated customers to pay and for unpaid requests to expire.
    deadline = time.monotonic() + 10
    final: dict[str, Any] = {}
    while True:
        results = await asyncio.gather(*(clients[i % CONNECTIONS].status(o)
                                         for i, o in enumerate(orders)))
        final = {r.order_id: r for r in results}
        if all(r.transaction_status != "pending" for r in results) or \
                time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    fraud: Counter[str] = Counter()
    for r in final.values():
        outcomes[r.transaction_status] += 1
        fraud[r.fraud_status] += 1
    if sample:
        hop = await clients[0].status(sample["order"])
        sample["hops_us"] = hop.hops_us
    for c in clients:
        await c.close()
    return {"latencies_ms": latencies_ms, "outcomes": outcomes, "errors": errors,
            "kinds": kinds, "elapsed_s": elapsed_s, "final": final, "sample": sample,
            "fraud": fraud, "screened": screened}


class WebhookReceiver:
    """The merchant's side of webhooks, as a merchant would write it: verify, then count."""

    def __init__(self) -> None:
        self.received = 0
        self.verified = 0
        self.event_ids: set[str] = set()
        self.statuses: Counter[str] = Counter()
        self._runner: Any = None
        self.port = 0

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/paywire", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: Any) -> Any:
        import hashlib
        import json

        from aiohttp import web

        from protocol.signing import verify_webhook_signature

        raw = await request.read()
        body = json.loads(raw)
        header = request.headers.get("X-Paywire-Signature", "")
        by_formula = hashlib.sha512((body["order_id"] + body["status_code"]
                                     + body["gross_amount"] + SERVER_KEY).encode()).hexdigest()
        self.received += 1
        if verify_webhook_signature(SERVER_KEY.encode(), header, raw, int(time.time())) \
                and body["signature_key"] == by_formula:
            self.verified += 1
            if body["event_id"] not in self.event_ids:
                self.event_ids.add(body["event_id"])
                self.statuses[body["transaction_status"]] += 1
        return web.Response(status=200)


def money_check(workdir: Path, banks: list[BankPlan], final: dict[str, Any]) -> list[str]:
    """The hub's captured-minus-refunded per bank must equal each bank's settlement balance."""
    from gateway.bank.store import read_books

    lines = []
    expected: Counter[str] = Counter()
    for r in final.values():
        if r.bank is not None:
            expected[r.bank] += r.captured_amount - r.refunded_amount
    for bank in banks:
        books = read_books(workdir / f"{bank.name}.db")
        got = books.settlement
        ok = got == expected[bank.name] and books.net == 0
        lines.append(f"  {bank.name:<8} ledger {expected[bank.name]:>14,}  bank {got:>14,}  "
                     f"money created {books.net:>3}  {'OK' if ok else 'MISMATCH'}")
    return lines


def run_demo(directory: Path | None, count: int, seed: int) -> int:
    import uvloop

    workdir = directory or Path(tempfile.mkdtemp(prefix="paywire-demo-"))
    make_private_dirs(workdir)  # 0700: it will hold the ledger, the books and the keys
    for stale in workdir.glob("*.db*"):
        stale.unlink()
    print(f"Paywire demo in {workdir}")
    report = uvloop.run(_demo(workdir, count, seed))
    ok = _print_report(workdir, count, report)
    print(f"\nLogs and databases are in {workdir}")
    if directory is None and ok:
        shutil.rmtree(workdir, ignore_errors=True)
        print("(removed: all checks passed; pass --dir to keep them)")
    return 0 if ok else 1


async def _demo(workdir: Path, count: int, seed: int) -> dict[str, Any]:
    from gateway.ledger import ledger_tools

    banks = plan_banks()
    receiver = WebhookReceiver()
    await receiver.start()
    print("  creating a dev CA and certificates, starting 4 bank nodes and a hub ...")
    loop = asyncio.get_running_loop()
    deployment = await loop.run_in_executor(None, lambda: start_demo_deployment(
        workdir, banks, f"http://127.0.0.1:{receiver.port}/paywire"))
    bank_procs, hub = deployment.banks, deployment.hub
    print(f"  hub on 127.0.0.1:{hub.port}; banks: "
          + ", ".join(f"{p.name}@{p.port}" for p in bank_procs)
          + f"; webhook receiver on 127.0.0.1:{receiver.port}")
    try:
        report = await drive(hub.port, workdir / "certs", banks, count, seed)
        # Every committed status change has a webhook row; wait (bounded) until delivered.
        expected = ledger_tools(workdir / "ledger.db").webhook_count()
        deadline = time.monotonic() + 15
        while len(receiver.event_ids) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        report["webhooks_expected"] = expected
    finally:
        await loop.run_in_executor(None, deployment.stop)
        await receiver.stop()
    report["banks"] = banks
    report["receiver"] = receiver
    return report


def _print_report(workdir: Path, count: int, report: dict[str, Any]) -> bool:
    lat = report["latencies_ms"]
    print(f"\nDrove {count} payments over {CONNECTIONS} TLS connections in "
          f"{report['elapsed_s']:.2f} s ({count / report['elapsed_s']:,.0f}/s, pipelined)\n")
    print("Payment methods")
    for kind, n in sorted(report["kinds"].items()):
        print(f"  {kind:<20} {n:>5}")
    print("\nFinal transaction statuses")
    for status, n in report["outcomes"].most_common():
        print(f"  {status:<20} {n:>5}")
    for name, n in report["errors"].items():
        print(f"  error {name:<14} {n:>5}")
    print("\nFraud screening: verdict at charge time -> after the merchant's review")
    for status in ("accept", "challenge", "deny"):
        print(f"  {status:<20} {report['screened'][status]:>5} -> {report['fraud'][status]:>5}")
    print("\nCharge latency, client side (ms)")
    print(f"  p50 {percentile(lat, 0.5):7.2f}   p90 {percentile(lat, 0.9):7.2f}   "
          f"p99 {percentile(lat, 0.99):7.2f}   max {max(lat, default=0):7.2f}")
    sample = report["sample"]
    if sample.get("hops_us"):
        h = sample["hops_us"]
        print(f"\nWhere the time went for {sample['order']} (µs)")
        steps = [("client -> hub (TLS, decode, auth)", sample["client_sent_us"], h["received"]),
                 ("intent committed (group commit)", h["received"], h["intent_committed"]),
                 ("hub -> bank -> hub", h["bank_sent"], h["bank_answered"]),
                 ("result committed", h["bank_answered"], h.get("committed", h["bank_answered"])),
                 ("hub -> client", h.get("committed", h["bank_answered"]),
                  sample["client_received_us"])]
        for label, a, b in steps:
            print(f"  {label:<36} {b - a:>8,}")
    rx: WebhookReceiver = report["receiver"]
    print("\nWebhook deliveries (HTTP POST to the demo's receiver, signatures verified)")
    print(f"  notifications written {report['webhooks_expected']:>6}   delivered "
          f"{len(rx.event_ids):>6}   POSTs {rx.received:>6}   verified {rx.verified:>6}")
    for status, n in rx.statuses.most_common():
        print(f"    {status:<20} {n:>5}")
    print("\nMoney check: hub ledger (captured - refunded) vs bank settlement accounts")
    lines = money_check(workdir, report["banks"], report["final"])
    print("\n".join(lines))
    hooks_ok = len(rx.event_ids) == report["webhooks_expected"] and rx.verified == rx.received
    return all(line.endswith("OK") for line in lines) and not report["errors"] and hooks_ok
