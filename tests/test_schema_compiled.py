"""The compiled schema checks (protocol/schema.py) agree with the interpreted ones.

A map's compiled check is a fast path: it must accept exactly what the interpreted check
accepts, with the same normalised output, and defer (``_FAIL``) on everything else so the
interpreted check names the defect. Checked on every schema of the protocol with valid
values and hypothesis-generated mutations of them.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import schema
from protocol.errors import BodyError
from protocol.operations import ARGS, TRANSACTION, Operation
from protocol.schema import Int, ListOf, Map, Opt, Str

CARD = {"number": "4811000000000001", "exp_month": 12, "exp_year": 2030, "cvv": "123"}
VALID: list[tuple[Map, dict[str, Any]]] = [
    (ARGS[Operation.CHARGE], {"order_id": "o-1", "gross_amount": 10_000,
                              "payment_type": "credit_card", "card": CARD}),
    (ARGS[Operation.CHARGE], {"order_id": "o-2", "gross_amount": 1, "currency": "USD",
                              "payment_type": "bank_transfer", "bank": "bca", "capture": False,
                              "customer": {"email": "a@b.c", "country": "ID", "ip": "::1"},
                              "expiry_s": 60, "description": ""}),
    (ARGS[Operation.REFUND], {"order_id": "o-3", "refund_key": "r1", "amount": 5,
                              "reason": None}),
    (TRANSACTION, {"transaction_id": "t", "order_id": "o", "merchant_id": "m",
                   "gross_amount": 5, "currency": "IDR", "payment_type": "credit_card",
                   "transaction_status": "capture", "fraud_status": "accept",
                   "status_code": "200", "status_message": "ok", "transaction_time": "x",
                   "captured_amount": 5, "refunded_amount": 0,
                   "refunds": [{"refund_key": "k", "amount": 1, "time": "t"}],
                   "fraud_reasons": ["a", "b"], "hops_us": {"received": 1, "bank_sent": 2}}),
]


def interpreted(spec: Map, value: Any) -> tuple[str, Any]:
    """The interpreted check alone (the compiled one switched off for this call)."""
    fast = spec._fast
    object.__setattr__(spec, "_fast", lambda _v: schema._FAIL)
    try:
        return "ok", spec.check(value, "args")
    except BodyError as exc:
        return "error", (exc.code, exc.message, exc.field)
    finally:
        object.__setattr__(spec, "_fast", fast)


def with_compiled(spec: Map, value: Any) -> tuple[str, Any]:
    try:
        return "ok", spec.check(value, "args")
    except BodyError as exc:
        return "error", (exc.code, exc.message, exc.field)


@pytest.mark.parametrize(("spec", "value"), VALID)
def test_valid_values_take_the_compiled_path_with_the_same_output(spec: Map, value: Any
                                                                   ) -> None:
    fast = spec._fast(value)
    assert fast is not schema._FAIL
    assert fast == interpreted(spec, value)[1]
    assert list(fast) == list(interpreted(spec, value)[1])  # same key order


def test_a_defect_defers_to_the_interpreted_check_which_names_it() -> None:
    spec, value = VALID[0]
    bad = {**value, "gross_amount": 1.5}
    assert spec._fast(bad) is schema._FAIL
    with pytest.raises(BodyError) as info:
        spec.check(bad, "args")
    assert info.value.field == "args.gross_amount"
    bad_card = {**value, "card": {**CARD, "cvv": "12x"}}
    with pytest.raises(BodyError) as info:
        spec.check(bad_card, "args")
    assert info.value.field == "args.card.cvv"


def test_extra_fields_kept_in_order_where_allowed_and_refused_elsewhere() -> None:
    open_map = Map({"a": Int()}, allow_extra=True)
    assert list(open_map.check({"z": 1, "a": 2, "b": [1.5]}, "x")) == ["a", "z", "b"]
    closed = Map({"a": Int()})
    with pytest.raises(BodyError):
        closed.check({"a": 1, "b": 2}, "x")
    nested = Map({"l": ListOf(Map({"s": Str(1, 3)}), 2), "o": Opt(Int(), 7)})
    assert nested.check({"l": [{"s": "ab"}]}, "x") == {"l": [{"s": "ab"}], "o": 7}
    with pytest.raises(BodyError):
        nested.check({"l": [{"s": "ab"}] * 3}, "x")


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**16), st.floats(),
                    st.text(max_size=70), st.binary(max_size=40), st.just([]), st.just({}),
                    st.sampled_from(["IDR", "credit_card", "bank_transfer", "4811000000000001",
                                     "a@b.c", "ID", "capture"]))


@settings(max_examples=400, deadline=None)
@given(which=st.integers(0, len(VALID) - 1), data=st.data())
def test_compiled_and_interpreted_agree_on_mutated_values(which: int, data: Any) -> None:
    spec, value = VALID[which]
    mutated = dict(value)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from([*mutated, "card", "customer", "extra", "refunds"]))
        if data.draw(st.booleans()) and key in mutated:
            del mutated[key]
        elif key == "card" and data.draw(st.booleans()):
            mutated[key] = {**CARD, data.draw(st.sampled_from(list(CARD))): data.draw(SCALARS)}
        else:
            mutated[key] = data.draw(SCALARS)
    assert with_compiled(spec, mutated) == interpreted(spec, mutated)
