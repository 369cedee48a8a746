"""Lab 5 checks: a charge that survives cut connections and black holes, never twice.

The check starts a chaos proxy (``gateway/chaos.py``) in this process, in front of the
sandbox's hub, and hands the student's ``charge_reliably`` a factory that opens one bare
client connection through it per call (one attempt, a short request timeout, no reconnect
and no automatic resolution: the retrying is the student's). Before returning a connection
the factory sets the faults that connection gets, from a seeded plan per order: the request
cut before it reaches the hub, the answer cut after the hub did the work, a black hole
either way, a connection refused at connect, an answer sliced into 1..3-byte pieces. Only
one order is charged at a time, so the proxy's faults (global to it) hit exactly the
connection the plan meant; the proxy is healed before every new connection.

Then the check reads what really happened, not what the student's code says: the hub's
ledger (every order id the run created, ``gateway/ledger``) and the bank's books (one
settlement per transaction, no duplicated debit: ``gateway/bank/store.py::read_books``,
what ``paywire audit`` reads). A naive charge (one attempt) through the same first faults
shows first that the faults bite.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import secrets
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gateway.labs.checks import LabContext, Result

TITLE = "Retries and idempotency under faults: chaos proxy, replays, paywire audit"
FILES = ("retry.py",)
NEEDS_SANDBOX = True

APPROVED_CARD = "4811111111111114"  # the sandbox's "approved" card (bca), if it lists none
REQUEST_TIMEOUT_S = 3.0  # the bare client's: how long a black hole costs one attempt
CONNECT_TIMEOUT_S = 3.0
ORDER_S_MAX = 120.0  # one order through every fault of its plan, on a loaded machine
ATTEMPTS_LIMIT = 10  # more connections than this for one order is not "bounded"
BACKOFF_SAMPLES = 400
SEED = 5
HANDOUT = "docs/labs/05-retries.md"

FAULTS: dict[str, dict[str, Any]] = {
    "clean": {},
    "cut request": {"direction": "up", "drop_after_bytes": 0},
    "cut answer": {"direction": "down", "drop_after_bytes": 0},
    "black hole up": {"direction": "up", "blackhole": True},
    "black hole down": {"direction": "down", "blackhole": True},
    "sliced answer": {"direction": "down", "slice_bytes_max": 3},
}
REFUSED = "refused at connect"  # set before connecting: the TLS handshake is reset
# Each order's faults, connection by connection (later connections are clean).
PLAN: list[list[str]] = [
    ["cut request"], ["cut answer"], ["black hole up"], ["black hole down"],
    [REFUSED, "cut answer"], ["sliced answer"], ["cut answer", "cut answer"],
    ["black hole down", "cut request"],
]


class _Failed(Exception):
    """What the student's code did wrong, said for the student."""


def _raised(exc: BaseException) -> str:
    tail = "".join(traceback.format_exception(exc)[-2:]).strip()
    return f"your code raised {type(exc).__name__}: {exc}\n{tail}"


def load_registered(ctx: LabContext, relative: str) -> ModuleType:
    """The student's file as a module registered in ``sys.modules`` under a name of its own
    (``dataclasses`` with postponed annotations look their module up there)."""
    path = ctx.work / relative
    name = f"labwork_{ctx.number:02d}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def check(ctx: LabContext) -> Iterator[Result]:
    try:
        student = load_registered(ctx, "retry.py")
    except Exception as exc:  # the student's file may not even import
        yield Result("retry.py imports", False, _raised(exc))
        return
    yield from _check_backoff(student)
    assert ctx.sandbox is not None  # NEEDS_SANDBOX: the frame made sure
    lab = _Lab(student, ctx.sandbox.env, ctx.sandbox.info, ctx.sandbox.directory)
    yield from asyncio.run(lab.run_all())


def _check_backoff(student: ModuleType) -> Iterator[Result]:
    name = "backoff_s is bounded, growing and jittered"
    try:
        base, cap = float(student.BACKOFF_BASE_S), float(student.BACKOFF_CAP_S)
        samples = {a: [student.backoff_s(a, random.Random(a * 1000 + i))
                       for i in range(BACKOFF_SAMPLES)] for a in range(1, 10)}
    except NotImplementedError as exc:
        yield Result(name, False, f"backoff_s() is not written yet: {exc}")
        return
    except Exception as exc:
        yield Result(name, False, _raised(exc))
        return
    if not 0 < base <= cap <= 10:
        yield Result(name, False, f"BACKOFF_BASE_S={base} and BACKOFF_CAP_S={cap}: expected "
                                  "0 < base <= cap <= 10 s")
        return
    bad = [(a, d) for a, ds in samples.items() for d in ds
           if not isinstance(d, float | int) or not 0.0 <= d <= min(cap, base * 2 ** a)]
    if bad:
        a, d = bad[0]
        yield Result(name, False, f"attempt {a} waited {d!r} s, outside [0, "
                                  f"min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**{a})] = [0, "
                                  f"{min(cap, base * 2 ** a):g}] ({HANDOUT}, "
                                  "'Backoff with jitter')")
        return
    top = max(samples)
    bound = min(cap, base * 2 ** top)
    ds = samples[top]
    # 400 uniform draws all in one half of the range: probability 2 * 2**-400.
    if not min(ds) < bound / 2 < max(ds):
        yield Result(name, False, f"{BACKOFF_SAMPLES} waits for attempt {top} all fell in "
                                  f"[{min(ds):.3f}, {max(ds):.3f}] s: draw uniformly from "
                                  f"[0, {bound:g}] with the rng you are given (full jitter), "
                                  "so clients cut at the same moment do not return together")
        return
    yield Result(name, True)


@dataclass
class _Order:
    order_id: str
    amount: int
    faults: list[str]
    opened: int = 0
    report: Any = None
    error: str = ""
    steps: list[str] = field(default_factory=list)
    # What the student's code did with the connections the factory gave it, as the check
    # saw it (not as the student's report says): every charge/status call and its outcome
    # ("ok" or the exception's class name), and every client, to see whether it was closed.
    calls: list[tuple[str, str]] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)


def _watch(client: Any, order: _Order) -> Any:
    """Record ``client``'s ``charge`` and ``status`` calls into ``order.calls``: the
    instance's own attributes shadow the class's methods, so the student still gets the
    real client (``isinstance``, ``async with`` and every other method unchanged)."""
    for op in ("charge", "status"):
        real = getattr(client, op)

        async def recorded(*args: Any, _op: str = op, _real: Any = real,
                           **kwargs: Any) -> Any:
            try:
                answer = await _real(*args, **kwargs)
            except BaseException as exc:
                order.calls.append((_op, type(exc).__name__))
                raise
            order.calls.append((_op, "ok"))
            return answer

        setattr(client, op, recorded)
    order.clients.append(client)
    return client


class _Lab:
    def __init__(self, student: ModuleType, env: dict[str, str], info: dict[str, Any],
                 directory: Path) -> None:
        self.student = student
        host, _, port = env["PAYWIRE_HUB"].rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.merchant = env["PAYWIRE_MERCHANT"]
        self.key = env["PAYWIRE_SERVER_KEY"]
        self.certs = Path(env.get("PAYWIRE_CERTS", str(directory / "certs")))
        self.ledger = Path(env.get("PAYWIRE_LEDGER", str(directory / "ledger.db")))
        card = next((c for c in info.get("test_cards", []) if c.get("name") == "approved"),
                    {"number": APPROVED_CARD, "bank": "bca"})
        self.card_number = str(card["number"])
        bank = str(card.get("bank", "bca"))
        books = next((b.get("books") for b in info.get("banks", []) if b.get("name") == bank),
                     None)
        self.bank = bank
        self.books = Path(books) if books else directory / f"{bank}.db"
        self.run_id = f"lab5-{secrets.token_hex(4)}"
        self.proxy: Any = None

    def open_factory(self, order: _Order, faults: list[str]) -> Callable[[], Awaitable[Any]]:
        from gateway.client import connect

        async def open_client() -> Any:
            proxy = self.proxy
            fault = faults[order.opened] if order.opened < len(faults) else "clean"
            order.opened += 1
            order.steps.append(fault)
            proxy.heal()
            if fault == REFUSED:
                proxy.set("up", reset=True)
            client = connect("127.0.0.1", proxy.port, merchant_id=self.merchant,
                             server_key=self.key, certs_dir=self.certs, reconnect=False,
                             retry_attempts_max=1, resolve_unknown=False,
                             timeout_s=REQUEST_TIMEOUT_S,
                             connect_timeout_s=CONNECT_TIMEOUT_S)
            try:
                await client.connect()
            finally:
                proxy.heal()
            spec = dict(FAULTS.get(fault, {}))
            if spec:
                proxy.set(str(spec.pop("direction")), **spec)
            return _watch(client, order)

        return open_client

    async def run_all(self) -> list[Result]:
        from gateway.chaos import ChaosProxy

        self.proxy = await ChaosProxy(self.host, self.port, seed=SEED).start()
        try:
            results = [await self.gives_up()]
            naive = await self.naive()
            results.append(naive)
            if not naive.passed:
                return results
            results.extend(await self.student_run())
            return results
        finally:
            self.proxy.heal()
            await self.proxy.stop()

    def card(self) -> Any:
        from gateway.client import Card

        return Card(self.card_number, 12, 2030, "123")

    async def gives_up(self) -> Result:
        name = "charge_reliably gives up after ATTEMPTS_MAX connections when no hub answers"
        opened = 0

        async def refused() -> Any:
            nonlocal opened
            opened += 1
            raise ConnectionRefusedError("the check's factory: no hub here")

        try:
            limit = int(self.student.ATTEMPTS_MAX)
            if not 1 < limit <= ATTEMPTS_LIMIT:
                return Result(name, False, f"ATTEMPTS_MAX={limit}: expected 2..{ATTEMPTS_LIMIT}"
                                           " (bounded, but more than one attempt)")
            report = await asyncio.wait_for(self.student.charge_reliably(
                refused, f"{self.run_id}-nohub", 10_000, self.card(), random.Random(1)),
                ORDER_S_MAX)
        except NotImplementedError as exc:
            return Result(name, False, f"charge_reliably() is not written yet: {exc}")
        except TimeoutError:
            return Result(name, False, f"with no hub reachable your charge_reliably did not "
                                       f"return within {ORDER_S_MAX:g} s (it opened "
                                       f"{opened} connections): bound the attempts")
        except Exception as exc:
            return Result(name, False, "with no hub reachable, charge_reliably should return "
                                       "a report whose transaction is None (the outcome is "
                                       "unknown, say so), not raise: " + _raised(exc))
        if opened != limit or getattr(report, "transaction", "?") is not None:
            return Result(name, False, f"every connect was refused: expected {limit} "
                                       f"attempts (ATTEMPTS_MAX) and a report with "
                                       f"transaction None; your code opened {opened} and "
                                       f"returned {report!r}")
        return Result(name, True)

    async def naive(self) -> Result:
        orders = [_Order(f"{self.run_id}-naive{i}", 15_000 + i, plan[:1])
                  for i, plan in enumerate(PLAN)]
        lost = 0
        for order in orders:
            client = None
            try:
                client = await self.open_factory(order, order.faults)()
                await client.charge(order.order_id, order.amount, card=self.card())
            except Exception:  # the naive client has no plan B: the order is left unknown
                lost += 1
            finally:
                if client is not None:
                    await asyncio.wait_for(client.close(), ORDER_S_MAX)
        passed = lost > 0
        return Result(f"the faults bite: a naive charge (one attempt) leaves {lost} of "
                      f"{len(orders)} orders without an answer", passed,
                      "" if passed else "the chaos proxy injected no fault the naive client "
                      "noticed: the check's scenario is broken, tell your lecturer")

    async def student_run(self) -> list[Result]:
        rng = random.Random(SEED)
        plans = list(PLAN)
        rng.shuffle(plans)
        orders = [_Order(f"{self.run_id}-{i}", 20_000 + i, plan)
                  for i, plan in enumerate(plans)]
        name = "every order charged through the faults: answered, captured"
        for order in orders:
            try:
                order.report = await asyncio.wait_for(self.student.charge_reliably(
                    self.open_factory(order, order.faults), order.order_id, order.amount,
                    self.card(), random.Random(order.amount)), ORDER_S_MAX)
            except NotImplementedError as exc:
                return [Result(name, False, f"charge_reliably() is not written yet: {exc}")]
            except TimeoutError:
                order.error = f"did not return within {ORDER_S_MAX:g} s"
            except Exception as exc:
                order.error = _raised(exc)
        problems = []
        for o in orders:
            tx = getattr(o.report, "transaction", None)
            where = f"{o.order_id} (faults {' then '.join(o.faults)})"
            if o.error:
                problems.append(f"{where}: {o.error}")
            elif tx is None:
                problems.append(f"{where}: your report has no transaction after "
                                f"{o.opened} connections; steps {self._steps(o)}")
            elif (getattr(tx, "order_id", None), getattr(tx, "transaction_status", None),
                  getattr(tx, "gross_amount", None)) != (o.order_id, "capture", o.amount):
                got = (getattr(tx, "order_id", None), getattr(tx, "transaction_status", None),
                       getattr(tx, "gross_amount", None))
                problems.append(f"{where}: expected (order id, status, amount) = "
                                f"{(o.order_id, 'capture', o.amount)}; your report's "
                                f"transaction says {got}")
            elif o.opened > int(self.student.ATTEMPTS_MAX):
                problems.append(f"{where}: {o.opened} connections, more than ATTEMPTS_MAX")
        results = [Result(name, not problems,
                          "" if not problems else "\n".join(problems[:3]) + "\nRetry with the "
                          "same order id on a new connection; after a timeout ask status "
                          f"({HANDOUT}, step 4)")]
        results.append(self.status_after_unknown(orders))
        results.append(await self.closed(orders))
        results.append(self.money(orders))
        return results

    @staticmethod
    def status_after_unknown(orders: list[_Order]) -> Result:
        """After ``OutcomeUnknown`` the charge may be in progress at the hub: the next
        request for the order is ``status`` (the handout's step 4), not the charge again.
        Resending the charge is safe for the money (same order id) but, while the first is
        still in progress, it is answered ``OutcomeUnknown`` or ``IN_PROGRESS`` again."""
        name = "after OutcomeUnknown, the next request asks status (not the charge again)"
        seen = [o for o in orders if any(out == "OutcomeUnknown" for _, out in o.calls)]
        problems = []
        for o in seen:
            for (op, out), nxt in zip(o.calls, o.calls[1:], strict=False):
                if out == "OutcomeUnknown" and nxt[0] != "status":
                    problems.append(f"{o.order_id} (faults {' then '.join(o.faults)}): "
                                    f"{op} raised OutcomeUnknown, then your code sent "
                                    f"{nxt[0]}; requests: "
                                    f"{', '.join(f'{c} -> {r}' for c, r in o.calls)}")
                    break
        if not seen:
            return Result(name, False, "no request of yours ever raised OutcomeUnknown "
                          "although the plan black-holes some connections: does your code "
                          "send anything after connecting?")
        return Result(name, not problems,
                      "\n".join(problems[:3]) + "\nOutcomeUnknown means the hub may still be "
                      "working on the charge: on the next connection ask "
                      f"client.status(order_id) first ({HANDOUT}, step 4)" if problems else
                      f"{len(seen)} orders had an unknown outcome")

    @staticmethod
    async def closed(orders: list[_Order]) -> Result:
        """Every client the factory gave was closed by the time ``charge_reliably``
        returned: an abandoned one keeps a TLS connection (and the hub's session) open.
        The check closes the leftovers itself afterwards."""
        name = "every connection charge_reliably opened is closed before it returns"
        left = [(o, c) for o in orders for c in o.clients if not getattr(c, "_closed", True)]
        for _, client in left:
            try:
                await asyncio.wait_for(client.close(), CONNECT_TIMEOUT_S)
            except Exception:  # cleaning up after the student: nothing more to say
                pass
        opened = sum(len(o.clients) for o in orders)
        if not left:
            return Result(name, True, f"{opened} connections, all closed")
        where = sorted({o.order_id for o, _ in left})
        return Result(name, False, f"{len(left)} of the {opened} connections your code got "
                      f"from open_client() were still open when charge_reliably returned "
                      f"(orders {', '.join(where[:3])}): close every client you open, "
                      f"also when a call on it failed (try/finally: await client.close()); "
                      f"see {HANDOUT}, step 4")

    @staticmethod
    def _steps(order: _Order) -> str:
        steps = getattr(order.report, "steps", None)
        return ", ".join(f"{getattr(s, 'op', s)} {getattr(s, 'result', '')}"
                         for s in steps or [])[:300]

    def money(self, orders: list[_Order]) -> Result:
        """What the ledger and the bank say, whatever the student's code reported."""
        from gateway.bank.store import read_books
        from gateway.ledger import ledger_tools

        name = "the ledger and the bank: one transaction and one debit per order, no other"
        prefix = f"{self.run_id}-"
        rows = [r for r in ledger_tools(self.ledger).summaries()
                if r.merchant_id == self.merchant and r.order_id.startswith(prefix)
                and "-naive" not in r.order_id and not r.order_id.endswith("-nohub")]
        expected = {o.order_id: o for o in orders}
        strangers = sorted(r.order_id for r in rows if r.order_id not in expected)
        if strangers:
            return Result(name, False, f"the ledger has charges with order ids the check never "
                                       f"gave: {strangers[:4]}. A retry with a new order id is a "
                                       "new charge: the customer pays twice. Retry with the "
                                       "same order id: it is the idempotency key (§5)")
        missing = sorted(set(expected) - {r.order_id for r in rows})
        if missing:
            return Result(name, False, f"no transaction in the ledger for {missing[:4]}")
        books = read_books(self.books)
        ours = {r.transaction_id: r for r in rows}
        duplicated = [d for d in books.duplicated_debits if d[0] in ours]
        if duplicated:
            return Result(name, False, f"the bank debited twice: {duplicated[:3]}")
        wrong = [(r.order_id, books.settled.get(r.transaction_id), expected[r.order_id].amount)
                 for r in rows
                 if books.settled.get(r.transaction_id) != expected[r.order_id].amount
                 or r.status not in ("capture", "settlement")
                 or r.captured != expected[r.order_id].amount]
        if wrong:
            return Result(name, False, "(order, settled at the bank, amount): "
                                       f"{wrong[:3]}: each order should move its amount once")
        return Result(name, True, f"{len(rows)} transactions at {self.bank}, one debit each")
