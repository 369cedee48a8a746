"""Operations on the hub ↔ bank-node link, carried in the same REQUEST/RESPONSE frames.

Every money-moving operation carries an ``op_id`` chosen by the hub; the bank node stores
the first answer under it and returns that answer for any repeat, so the hub may resend an
operation after a timeout or to another node of the same bank without moving money twice.
Declines (unknown card, expired card, currency not held, insufficient funds) are answers, not
errors: they are stored too.
Errors are reserved for "nothing happened, ask again" (``BANK_UNAVAILABLE``).

``bank.batch`` carries many of these operations in one signed REQUEST (docs/protocol.md
§10.2): one HMAC, one SQL transaction and one RESPONSE for the lot, which is what makes the
bank hop cheap per operation. Each inner operation keeps its own ``op_id`` and its own
answer (a result or a coded error, in the order sent), so a bad one fails alone and the hub
treats a lost batch exactly as that many lost single operations. The pure parts of it, the
split of a received batch and the encoding and decoding of its answer, live here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.errors import BodyError, ErrorCode, PaywireError, RemoteError
from protocol.operations import AMOUNT, CARD, CURRENCY, MERCHANT_ID
from protocol.schema import Bool, Int, ListOf, Map, Opt, Str

OP_ID = Str(1, 128)
TXID = Str(1, 64)

AUTHORIZE = "bank.authorize"
CAPTURE = "bank.capture"
VOID = "bank.void"
REFUND = "bank.refund"
REVERSE = "bank.reverse"
INQUIRY = "bank.inquiry"
OPEN_PAYMENT = "bank.open_payment"
CLOSE_PAYMENT = "bank.close_payment"
PAYMENT = "bank.payment"  # bank -> hub: a customer paid (or a payment closed)
BATCH = "bank.batch"  # many of the operations above in one frame (§10.2)
ADMIN_PAY = "admin.pay"
ADMIN_BALANCES = "admin.balances"
ADMIN_FAULTS = "admin.faults"
ADMIN_PAYMENTS = "admin.payments"
ADMIN_STATS = "admin.stats"

# The most operations one ``bank.batch`` carries. Bounded below the body codec's 256 items
# per array, and so that a full batch of the largest answers (an inquiry's stored decline,
# ~250 bytes) stays well inside the default body limit of 65 536 bytes; the sender also
# splits a batch whose encoded request would exceed the negotiated limit.
BATCH_OPS_MAX = 128
# The hub's calls to a bank (docs/protocol.md §10, the "hub → bank" rows), which is also
# what a batch may carry. Not ``bank.payment`` (the other way), not ``admin.*`` (tools,
# answered outside the books' transaction), not ``bank.batch``.
BATCHABLE = frozenset({AUTHORIZE, CAPTURE, VOID, REFUND, REVERSE, INQUIRY, OPEN_PAYMENT,
                       CLOSE_PAYMENT})
ADMIN_OPS = frozenset({ADMIN_PAY, ADMIN_BALANCES, ADMIN_FAULTS, ADMIN_PAYMENTS, ADMIN_STATS})
# Every operation a bank node serves: the one table its requests are checked against
# (``validate_at_node``; inside a batch, ``split_batch`` checks ``BATCHABLE``). A node handed
# ``bank.payment`` (bank → hub only) answers UNKNOWN_OPERATION before touching its books,
# as for a name it has never heard of: its books have no such operation to apply.
NODE_SERVES = BATCHABLE | {BATCH} | ADMIN_OPS

ARGS: dict[str, Map] = {
    AUTHORIZE: Map({"op_id": OP_ID, "transaction_id": TXID, "account": Str(1, 32),
                    "exp_month": CARD.fields["exp_month"], "exp_year": CARD.fields["exp_year"],
                    "amount": AMOUNT, "currency": CURRENCY, "capture": Bool()}),
    CAPTURE: Map({"op_id": OP_ID, "transaction_id": TXID, "amount": AMOUNT}),
    VOID: Map({"op_id": OP_ID, "transaction_id": TXID}),
    REFUND: Map({"op_id": OP_ID, "transaction_id": TXID, "amount": AMOUNT}),
    REVERSE: Map({"op_id": OP_ID, "transaction_id": TXID, "target_op_id": OP_ID}),
    INQUIRY: Map({"op_id": OP_ID}),
    OPEN_PAYMENT: Map({"op_id": OP_ID, "transaction_id": TXID,
                       "kind": Str(choices=("va", "ewallet")), "amount": AMOUNT,
                       "currency": CURRENCY, "expiry_ms": Int(0, 2**63 - 1),
                       "merchant_id": MERCHANT_ID}),
    CLOSE_PAYMENT: Map({"op_id": OP_ID, "transaction_id": TXID,
                        "reason": Str(choices=("expire", "cancel"))}),
    PAYMENT: Map({"notification_id": Int(1, 2**63 - 1), "transaction_id": TXID,
                  "status": Str(choices=("settlement",)), "amount": AMOUNT,
                  "paid_ms": Int(0, 2**63 - 1)}),
    BATCH: Map({"ops": ListOf(Map({"op": Str(1, 32), "args": Map({}, allow_extra=True)}),
                              max_items=BATCH_OPS_MAX, min_items=1)}),
    ADMIN_PAY: Map({"transaction_id": Opt(TXID), "number": Opt(Str(1, 32))}),
    ADMIN_BALANCES: Map({}),
    ADMIN_FAULTS: Map({"latency_ms": Opt(Int(0, 600_000)),
                       "failure_rate_pct": Opt(Int(0, 100)),
                       "blackhole": Opt(Bool())}),
    ADMIN_PAYMENTS: Map({}),
    ADMIN_STATS: Map({}),
}


# What a hub reads of the answer to each hub -> bank operation (docs/protocol.md §10.4): the
# fields its decisions use, with their types. Other keys (``code``, ``auth_code``,
# ``duplicate``, ``timings_us``, later additions) are kept, not refused. An answer that
# fails its table is one the hub cannot read: the node may have applied the operation, so
# the hub treats it as an answer that never came (inquiry, then settle or reverse), never
# as the hub's own fault. ``reversed`` marks the stored answer of an operation the hub
# reversed (a charge's, §5.3): it is a complete answer whatever else it lacks.
REASON = Str(0, 255)
_OUTCOME = {"reason": Opt(REASON), "reversed": Opt(Bool())}
ANSWERS: dict[str, Map] = {
    AUTHORIZE: Map({"approved": Bool(), "captured": Opt(Bool()), **_OUTCOME},
                   allow_extra=True),
    OPEN_PAYMENT: Map({"ok": Bool(), "number": Opt(Str(1, 64)), **_OUTCOME},
                      allow_extra=True),
    CAPTURE: Map({"ok": Bool(), "reason": Opt(REASON)}, allow_extra=True),
    VOID: Map({"ok": Bool(), "reason": Opt(REASON)}, allow_extra=True),
    REFUND: Map({"ok": Bool(), "reason": Opt(REASON)}, allow_extra=True),
    CLOSE_PAYMENT: Map({"closed": Bool(), "paid": Opt(Bool()),
                        "paid_ms": Opt(Int(0, 2**63 - 1)), "reason": Opt(REASON)},
                       allow_extra=True),
    REVERSE: Map({"ok": Bool(), "undone": Opt(Bool())}, allow_extra=True),
    INQUIRY: Map({"found": Bool(), "result": Opt(Map({}, allow_extra=True))},
                 allow_extra=True),
}


def answer_defect(op: str, answer: Any) -> str | None:
    """Why ``answer`` is not a readable answer to ``op`` (``ANSWERS``, and the fields an
    answer needs given its outcome), or None if it is (or ``op`` has no table: ``admin.*``).
    Never raises."""
    spec = ANSWERS.get(op)
    if spec is None:
        return None
    try:
        checked: dict[str, Any] = spec.check(answer, "result")
    except BodyError as exc:
        return exc.message
    if checked.get("reversed"):
        return None
    if op == AUTHORIZE and checked["approved"] and "captured" not in checked:
        return "result.captured: is required when approved"
    if op == OPEN_PAYMENT and checked["ok"] and "number" not in checked:
        return "result.number: is required when ok"
    if op == INQUIRY and checked["found"] and "result" not in checked:
        return "result.result: is required when found"
    return None


# The node's own timings of one answer (docs/protocol.md §10.3), µs since the Unix epoch on
# the node's clock: when the REQUEST frame arrived, when the books' transaction holding its
# operations committed, and when the answer was built. Telemetry for ``paywire trace``
# only: a hub never decides anything from them, and ignores a value that fails this table.
TIMINGS_US = "timings_us"
# Keys a node may add later are ignored, not refused (``allow_extra``).
TIMINGS = Map({"received": Opt(Int(0, 2**63 - 1)), "committed": Opt(Int(0, 2**63 - 1)),
               "answered": Opt(Int(0, 2**63 - 1))}, allow_extra=True)


def answer_timings(answer: Any) -> dict[str, int] | None:
    """The ``timings_us`` of a bank answer (a plain result map, or a batch's result), or
    None if it has none or they fail ``TIMINGS``. Never raises: a peer's telemetry is
    never worth an error."""
    if type(answer) is not dict:
        return None
    raw = answer.get(TIMINGS_US)
    if raw is None:
        return None
    try:
        checked: dict[str, Any] = TIMINGS.check(raw, TIMINGS_US)
    except BodyError:
        return None
    return {k: checked[k] for k in TIMINGS.fields if k in checked}


def validate(op: str, args: Any) -> dict[str, Any]:
    spec = ARGS.get(op)
    if spec is None:
        raise BodyError(f"unknown operation {op!r}", code=ErrorCode.UNKNOWN_OPERATION,
                        field="op")
    checked: dict[str, Any] = spec.check(args, "args")
    return checked


def validate_at_node(op: str, args: Any) -> dict[str, Any]:
    """``validate`` for a REQUEST a bank node received: an operation the node does not
    serve (``NODE_SERVES``) is UNKNOWN_OPERATION, whatever its args, so nothing past this
    check ever sees it."""
    if op not in NODE_SERVES:
        raise BodyError(f"operation {op!r} is not served by a bank node",
                        code=ErrorCode.UNKNOWN_OPERATION, field="op")
    return validate(op, args)


@dataclass(frozen=True, slots=True)
class BatchOp:
    """One inner operation of a received batch that passed its own schema."""

    index: int
    op: str
    args: dict[str, Any]


def split_batch(args: dict[str, Any]) -> tuple[list[BatchOp], dict[int, PaywireError]]:
    """The inner operations of validated ``bank.batch`` args: the valid ones in order, and
    for each invalid one its error by position (``UNKNOWN_OPERATION`` for an op that is not
    ``BATCHABLE``, ``INVALID_FIELD`` naming ``ops[i].args.<field>``). An invalid inner op
    fails alone: the others are applied."""
    valid: list[BatchOp] = []
    errors: dict[int, PaywireError] = {}
    for i, entry in enumerate(args["ops"]):
        op = entry["op"]
        if op not in BATCHABLE:
            errors[i] = BodyError(f"operation {op!r} cannot be batched",
                                  code=ErrorCode.UNKNOWN_OPERATION, field=f"ops[{i}].op")
            continue
        try:
            checked = ARGS[op].check(entry["args"], f"ops[{i}].args")
        except BodyError as exc:
            errors[i] = exc
            continue
        valid.append(BatchOp(i, op, checked))
    return valid, errors


def batch_args(ops: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The ``args`` of a ``bank.batch`` REQUEST carrying ``ops`` in order."""
    return {"ops": [{"op": op, "args": args} for op, args in ops]}


def batch_result(entries: list[dict[str, Any] | PaywireError],
                 timings_us: dict[str, int] | None = None) -> dict[str, Any]:
    """The RESPONSE result of a batch: one entry per inner op, in the order sent, either
    ``{"result": map}`` or ``{"error": error body}`` (section 7's body); with the node's
    ``timings_us`` once for the whole frame (they are the same for every entry)."""
    out: dict[str, Any] = {"results": [{"error": e.to_body()} if isinstance(e, PaywireError)
                                       else {"result": e} for e in entries]}
    if timings_us is not None:
        out[TIMINGS_US] = timings_us
    return out


def decode_batch_result(body: Any, count: int) -> list[dict[str, Any] | RemoteError]:
    """The per-op answers of a batch RESPONSE sent with ``count`` operations. Never raises:
    an answer that is not a list of ``count`` entries gives every inner op an ``INTERNAL``
    error (the bank answered, but what it did is not readable: as for a single op whose
    RESPONSE is malformed); a malformed entry fails its own op only."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != count:
        # One error object per call: each is raised in its own caller.
        return [RemoteError("bank answered a batch with a malformed result",
                            code=ErrorCode.INTERNAL) for _ in range(count)]
    out: list[dict[str, Any] | RemoteError] = []
    for entry in results:
        if isinstance(entry, dict) and isinstance(entry.get("result"), dict):
            out.append(entry["result"])
        elif isinstance(entry, dict) and "error" in entry:
            out.append(RemoteError.from_body(entry["error"]))
        else:
            out.append(RemoteError("bank answered a batch entry with a malformed result",
                                   code=ErrorCode.INTERNAL))
    return out
