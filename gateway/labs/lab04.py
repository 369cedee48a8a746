"""Lab 4 checks: a client that pipelines requests on one connection.

The student's ``pipeline.py`` drives one TLS connection frame by frame: HELLO/WELCOME, then
a batch of REQUEST frames sent without waiting for each answer, at most WELCOME's
``in_flight_max`` outstanding, every RESPONSE matched to its call by ``request_id``.

What makes responses overtake each other without any timing assumption: a ``status`` of an
order with nothing in progress is answered from the committed state as soon as the hub
decodes it (docs/protocol.md §3.4, §4.5), while a new card charge is answered only after an
intent commit and a round trip to the bank node, another process. Sent in one batch behind a
charge, such statuses come back first: the hub has written their answers before the bank can
have answered. Operations on the *same* order are applied in arrival order (§4.5), so
``charge (authorize only), capture, refund, status`` of one order, pipelined back to back,
answers ``authorize, capture, refund, refund`` whatever the interleaving with others.

Every order id is unique to one run (a random prefix), so the checks never disturb another
lab sharing the sandbox.
"""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
import sys
import traceback
from collections.abc import Awaitable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from gateway.labs.checks import LabContext, Result

TITLE = "Pipelining and ordering: many requests in flight on one connection"
FILES = ("pipeline.py",)
NEEDS_SANDBOX = True

STEP_S_MAX = 90.0  # one batch on a loaded 2-core machine: generous
APPROVED_CARD = "4811111111111114"  # the sandbox's "approved" card (bca), if it lists none
WISH_SMALL = 3  # the in-flight limit the check asks for, so that the bound is reached
WISH_LARGE = 1000  # more than the hub grants (its default limit is 256): WELCOME says less
IN_FLIGHT_SPEC_MAX = 4096  # the most a HELLO may ask for (docs/protocol.md §3.1)
BOUND_BATCH = 10  # charges sent with that limit
HANDOUT = "docs/labs/04-pipelining.md"


class _Failed(Exception):
    """What the student's code did wrong, said for the student."""


def _raised(exc: BaseException) -> str:
    tail = "".join(traceback.format_exception(exc)[-2:]).strip()
    return f"your code raised {type(exc).__name__}: {exc}\n{tail}"


def load_registered(ctx: LabContext, relative: str) -> ModuleType:
    """The student's file as a module registered in ``sys.modules`` under a name of its own
    while the checks run (``dataclasses`` with postponed annotations look their module up
    there; ``ctx.load_module`` alone leaves it out)."""
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
        student = load_registered(ctx, "pipeline.py")
    except Exception as exc:  # the student's file may not even import
        yield Result("pipeline.py imports", False, _raised(exc))
        return
    yield _overtaken_on_examples(student)
    assert ctx.sandbox is not None  # NEEDS_SANDBOX: the frame made sure
    lab = _Lab(student, ctx.sandbox.env, ctx.sandbox.info, ctx.sandbox.directory)
    yield from asyncio.run(lab.run_all())


# --- overtaken(), a pure function: graded on examples -----------------------------------------
def _overtaken_on_examples(student: ModuleType) -> Result:
    name = "overtaken() finds the requests answered after a later one"
    examples: list[tuple[list[int], list[int]]] = [
        ([0, 1, 2, 3], []),
        ([3, 0, 1, 2], [0]),
        ([1, 0, 3, 2], [0, 2]),
        ([2, 1, 0], [0, 1]),
        ([0, 3, 1, 2], [1]),
    ]
    for arrivals, wanted_index in examples:
        try:
            calls = [student.Call("status", {"order_id": f"o{i}"}) for i in range(len(arrivals))]
            answers = [student.Answer(10 + i, calls[i], True, False, {}, arrival)
                       for i, arrival in enumerate(arrivals)]
            got = student.overtaken(answers)
        except NotImplementedError as exc:
            return Result(name, False, f"overtaken() is not written yet: {exc}")
        except Exception as exc:
            return Result(name, False, _raised(exc))
        wanted = [10 + i for i in wanted_index]
        if list(got) != wanted:
            return Result(name, False,
                          f"answers to request ids 10..{9 + len(arrivals)} (sent in that "
                          f"order) arrived in positions {arrivals}: expected {wanted}, "
                          f"your overtaken() returned {got!r}. A request is overtaken when "
                          f"some request sent after it was answered before it ({HANDOUT}, "
                          "step 4)")
    return Result(name, True)


# --- the checks against the sandbox ---------------------------------------------------------
class _Lab:
    def __init__(self, student: ModuleType, env: dict[str, str], info: dict[str, Any],
                 directory: Path) -> None:
        self.student = student
        self.env = env
        host, _, port = env["PAYWIRE_HUB"].rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.merchant = env["PAYWIRE_MERCHANT"]
        self.key = env["PAYWIRE_SERVER_KEY"]
        self.certs = Path(env.get("PAYWIRE_CERTS", str(directory / "certs")))
        number = next((c["number"] for c in info.get("test_cards", [])
                       if c.get("name") == "approved"), APPROVED_CARD)
        self.card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvv": "123"}
        self.run_id = f"lab4-{secrets.token_hex(4)}"
        self.serial = 0

    def order(self, what: str) -> str:
        self.serial += 1
        return f"{self.run_id}-{what}{self.serial}"

    def charge(self, order: str, amount: int, *, capture: bool = True) -> Any:
        return self.student.Call("charge", {"order_id": order, "gross_amount": amount,
                                            "payment_type": "credit_card",
                                            "capture": capture, "card": self.card})

    def call(self, op: str, args: dict[str, Any]) -> Any:
        return self.student.Call(op, args)

    async def open(self, wish: int | None) -> Any:
        from gateway.tls import node_client_context

        ctx = node_client_context(self.certs, "merchant", self.merchant)
        return await asyncio.wait_for(self.student.Pipeline.open(
            self.host, self.port, merchant_id=self.merchant, server_key=self.key,
            ssl_context=ctx, in_flight_wish=wish), STEP_S_MAX)

    async def batch(self, conn: Any, calls: list[Any]) -> list[Any]:
        answers = await asyncio.wait_for(conn.run(calls), STEP_S_MAX)
        answers = list(answers)
        if len(answers) != len(calls):
            raise _Failed(f"run() was given {len(calls)} calls and returned {len(answers)} "
                          "answers: one answer per call, in the order of the calls")
        ids = [a.request_id for a in answers]
        if any(not isinstance(i, int) or i <= 0 for i in ids) or len(set(ids)) != len(ids):
            raise _Failed(f"request ids must be distinct and non-zero (§4, §4.6); yours: "
                          f"{ids}")
        for i, (call, answer) in enumerate(zip(calls, answers, strict=True)):
            if answer.call is not call:
                raise _Failed(f"answer {i} carries call {answer.call!r}, not call {i} "
                              f"{call!r}: return the answers in the order of the calls")
        arrivals = sorted(a.arrival for a in answers)
        if arrivals != list(range(len(answers))):
            raise _Failed(f"the arrival positions should be 0..{len(answers) - 1}, each once; "
                          f"yours: {[a.arrival for a in answers]}")
        return answers

    async def guarded(self, name: str, step: Awaitable[str]) -> Result:
        try:
            return Result(name, True, await step)
        except _Failed as failed:
            return Result(name, False, str(failed))
        except NotImplementedError as exc:
            return Result(name, False, f"not written yet: {exc}")
        except TimeoutError:
            return Result(name, False,
                          f"no result within {STEP_S_MAX:g} s: does run() wait for a response "
                          "that will never come (a request never sent, an id never matched), "
                          "or handshake() wait for more than WELCOME?")
        except Exception as exc:
            return Result(name, False, _raised(exc))

    async def run_all(self) -> list[Result]:
        results = [await self.guarded("handshake() keeps WELCOME's in_flight_max",
                                      self.handshake())]
        if not results[-1].passed:
            return results
        matched = await self.guarded("every response is matched to its request by id",
                                     self.matching())
        results.append(matched)
        if matched.passed:
            results.append(await self.guarded(
                "responses overtake each other, and overtaken() sees it", self.out_of_order()))
        results.append(await self.guarded(
            "charge, capture, refund of one order pipelined: applied in that order",
            self.per_order()))
        results.append(await self.guarded(
            f"never more than in_flight_max ({WISH_SMALL}) requests outstanding",
            self.bound()))
        return results

    async def hub_limit(self) -> int:
        """The hub's own ``in_flight_max``, read by the project's client (not the
        student's): it asks for the most §3.2 allows, so WELCOME answers the hub's limit."""
        from gateway.client.client import connect
        from gateway.tls import node_client_context

        ctx = node_client_context(self.certs, "merchant", self.merchant)
        client = connect(self.host, self.port, merchant_id=self.merchant,
                         server_key=self.key, ssl_context=ctx,
                         in_flight_max=IN_FLIGHT_SPEC_MAX)
        await asyncio.wait_for(client.connect(), STEP_S_MAX)
        try:
            return int(client.welcome["in_flight_max"])
        finally:
            await client.close()

    async def handshake(self) -> str:
        limit = await self.hub_limit()
        # Small wishes the hub grants, one past its limit (WELCOME answers its limit, not
        # the wish) and no wish at all (WELCOME answers its limit): a client that keeps its
        # own wish instead of WELCOME's answer passes the first two only.
        for wish in (WISH_SMALL, 5, WISH_LARGE, None):
            conn = await self.open(wish)
            try:
                got = conn.in_flight_max
            finally:
                await conn.close()
            wanted = limit if wish is None else min(wish, limit)
            if got != wanted:
                asked = ("HELLO asked for no in_flight_max" if wish is None else
                         f"HELLO asked for in_flight_max={wish}")
                rule = ("its own limit" if wish is None else
                        f"min(wish, its own limit {limit})")
                raise _Failed(f"{asked}; the hub's WELCOME answers {rule} = {wanted}, but "
                              f"your handshake() left in_flight_max={got!r}: keep what the "
                              "WELCOME body says, not your wish (§3.1, §3.2)")
        return ""

    async def existing_orders(self, count: int) -> list[str]:
        """Orders charged and finished before the batch: their status is answered at once."""
        orders = [self.order("old") for _ in range(count)]
        conn = await self.open(None)
        try:
            answers = await self.batch(conn, [self.charge(o, 10_000) for o in orders])
        finally:
            await conn.close()
        bad = [(a.call.args["order_id"], a.body) for a in answers
               if not a.ok or a.body.get("transaction_status") != "capture"]
        if bad:
            raise _Failed(f"charges with the sandbox's approved card should be captured; "
                          f"got {bad[:2]}")
        return orders

    async def matching(self) -> str:
        old = await self.existing_orders(2)
        self.old = old
        new = [self.order("new") for _ in range(3)]
        amounts = [11_000, 12_000, 13_000]
        missing = self.order("nowhere")
        calls = [self.charge(new[0], amounts[0]),
                 self.call("status", {"order_id": old[0]}),
                 self.call("status", {"order_id": old[1]}),
                 self.charge(new[1], amounts[1]),
                 self.call("status", {"order_id": missing}),
                 self.charge(new[2], amounts[2])]
        conn = await self.open(None)
        try:
            answers = await self.batch(conn, calls)
        finally:
            await conn.close()
        self.mixed = answers
        for i, a in enumerate(answers):
            order = a.call.args["order_id"]
            if order == missing:
                if a.ok or a.body.get("name") != "NOT_FOUND":
                    raise _Failed(f"call {i} (status of an order that does not exist) should "
                                  f"be an error answer NOT_FOUND (503), ok=False; yours: "
                                  f"ok={a.ok!r} body={a.body!r}: is the ERROR flag read "
                                  "from the RESPONSE header (§2)?")
                continue
            if not a.ok:
                raise _Failed(f"call {i} ({a.call.op} {order}) came back as an error: "
                              f"{a.body!r}")
            if a.body.get("order_id") != order:
                raise _Failed(f"call {i} was {a.call.op} of {order}, but the answer you "
                              f"matched to it (request id {a.request_id}) is about "
                              f"{a.body.get('order_id')!r}: match a RESPONSE to its "
                              "REQUEST by the header's request_id, not by arrival (§4)")
        for order, amount in zip(new, amounts, strict=True):
            got = next(a for a in answers if a.call.args["order_id"] == order)
            if got.body.get("gross_amount") != amount:
                raise _Failed(f"the charge of {order} for {amount} was matched to an answer "
                              f"for {got.body.get('gross_amount')}")
        return ""

    async def out_of_order(self) -> str:
        answers = self.mixed
        first = answers[0]  # the charge of a new order: answered after the bank's round trip
        ahead = [a for a in answers[1:3] if a.arrival < first.arrival]
        if not ahead:
            raise _Failed(
                "the statuses of finished orders, sent right behind a new charge, came back "
                f"after it (arrivals {[a.arrival for a in answers]}): the hub answers such "
                "a status at once (§4.5), so this only happens if your run() waited for "
                "the charge's answer before sending them. Send while there is room under "
                f"in_flight_max, then read ({HANDOUT}, step 3)")
        try:
            got = list(self.student.overtaken(answers))
        except Exception as exc:
            raise _Failed(_raised(exc)) from exc
        if first.request_id not in got:
            raise _Failed(f"request {first.request_id} (the charge) was overtaken by "
                          f"{[a.request_id for a in ahead]}, but your overtaken() returned "
                          f"{got}")
        return f"overtaken: {got}"

    async def per_order(self) -> str:
        order = self.order("seq")
        calls = [self.charge(order, 30_000, capture=False),
                 self.call("capture", {"order_id": order}),
                 self.call("refund", {"order_id": order, "refund_key": f"{order}-r1"}),
                 self.call("status", {"order_id": order})]
        conn = await self.open(None)
        try:
            answers = await self.batch(conn, calls)
        finally:
            await conn.close()
        got = [a.body.get("transaction_status") if a.ok else a.body.get("name")
               for a in answers]
        wanted = ["authorize", "capture", "refund", "refund"]
        if got != wanted:
            raise _Failed(f"charge (authorize only), capture, refund, status of one order, "
                          f"pipelined: expected answers {wanted}, yours {got}. The hub "
                          "applies operations on one order in the order it receives them "
                          "(§4.5): send the calls in the order given, on one connection")
        return ""

    async def bound(self) -> str:
        orders = [self.order("bound") for _ in range(BOUND_BATCH)]
        conn = await self.open(WISH_SMALL)
        try:
            answers = await self.batch(conn, [self.charge(o, 14_000) for o in orders])
            peak = conn.peak_in_flight
            limit = conn.in_flight_max
        finally:
            await conn.close()
        refused = [a.request_id for a in answers
                   if not a.ok and a.body.get("name") == "TOO_MANY_IN_FLIGHT"]
        if refused:
            raise _Failed(f"the hub refused requests {refused} with TOO_MANY_IN_FLIGHT (401): "
                          f"your client had more than in_flight_max={limit} requests "
                          "outstanding (§3.4). Send only while fewer than in_flight_max are "
                          "waiting for their answer")
        other = [(a.request_id, a.body) for a in answers
                 if not a.ok or a.body.get("transaction_status") != "capture"]
        if other:
            raise _Failed(f"every charge should be captured; got {other[:2]}")
        if not isinstance(peak, int) or not 1 < peak <= limit:
            raise _Failed(f"{BOUND_BATCH} charges with in_flight_max={limit}: the most your "
                          f"client had outstanding (peak_in_flight) should be between 2 and "
                          f"{limit}; yours says {peak!r}. Count a request from sending it "
                          "until its RESPONSE is read")
        return f"peak {peak} of {limit}"
