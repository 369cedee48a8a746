"""The one error module: every code has one class, received errors are typed, errors pickle.

Unit tests of the registry and the tree (pure), pickling through the storage writer's real
process boundary, and an end-to-end check that a merchant's client gets instances of the
code's class for real error responses of a real hub, still catchable as ``RequestError``.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import pickle
import pkgutil
import sqlite3
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gateway
import protocol
from gateway.client import Card, Client, RequestError
from gateway.storage.groupcommit import GroupCommitWriter
from protocol import errors
from protocol.errors import (
    AuthenticationError,
    BankUnavailable,
    BodyError,
    CardError,
    ConnectionLost,
    DuplicateOrder,
    ErrorCode,
    FrameError,
    InvalidTransition,
    LimitError,
    NotFound,
    OutcomeUnknown,
    PaywireError,
    PermissionDenied,
    ProtocolError,
    ProtocolViolation,
    RateLimitError,
    RemoteError,
    RequestTimeout,
    ServerError,
    ShuttingDown,
    StorageClosed,
    TransactionError,
    UpstreamError,
    class_for,
    error_from_code,
    remote_class,
)
from tests.deploy import RICH, Deployment, deployment

# The family of each hundred (docs/protocol.md §7): a code's class lies under it.
FAMILIES: dict[int, type[PaywireError]] = {
    1: ProtocolError, 2: BodyError, 3: AuthenticationError, 4: LimitError,
    5: TransactionError, 6: UpstreamError, 9: ServerError,
}


def _tree() -> list[type[PaywireError]]:
    """Every class declared under PaywireError (generated remote classes left out)."""
    out: list[type[PaywireError]] = []
    todo: list[type[PaywireError]] = [PaywireError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo += [c for c in cls.__subclasses__() if c._remote_of is None]
    return out


# --- the registry --------------------------------------------------------------------------
def test_every_code_is_claimed_by_exactly_one_class() -> None:
    claims: dict[ErrorCode, list[str]] = {c: [] for c in ErrorCode}
    for cls in _tree():
        for code in cls.codes:
            claims[code].append(cls.__name__)
    assert {c: names for c, names in claims.items() if len(names) != 1} == {}
    for code in ErrorCode:
        assert code in class_for(code).codes


def test_a_second_claim_on_a_code_is_refused_at_declaration() -> None:
    with pytest.raises(TypeError, match="NOT_FOUND is claimed by NotFound"):
        type("Another", (PaywireError,), {"codes": (ErrorCode.NOT_FOUND,)})
    assert class_for(ErrorCode.NOT_FOUND) is NotFound
    gc.collect()  # the half-made class must not stay in PaywireError.__subclasses__()
    assert "Another" not in {c.__name__ for c in _tree()}


def test_each_code_lies_under_the_family_of_its_hundred() -> None:
    for code in ErrorCode:
        assert issubclass(class_for(code), FAMILIES[code.value // 100]), code
    # ... and no family reaches into another hundred.
    for hundred, family in FAMILIES.items():
        for other, other_family in FAMILIES.items():
            if other != hundred:
                assert not issubclass(family, other_family)


@pytest.mark.parametrize(("code", "cls"), [
    (ErrorCode.NOT_FOUND, NotFound),
    (ErrorCode.DUPLICATE_ORDER, DuplicateOrder),
    (ErrorCode.INVALID_TRANSITION, InvalidTransition),
    (ErrorCode.REFUND_EXCEEDS_CAPTURED, TransactionError),
    (ErrorCode.INSUFFICIENT_FUNDS, CardError),
    (ErrorCode.BANK_UNAVAILABLE, BankUnavailable),
    (ErrorCode.TIMEOUT, RequestTimeout),
    (ErrorCode.OUTCOME_UNKNOWN, OutcomeUnknown),
    (ErrorCode.SHUTTING_DOWN, ShuttingDown),
    (ErrorCode.INTERNAL, ServerError),
    (ErrorCode.FORBIDDEN, PermissionDenied),
    (ErrorCode.BAD_SIGNATURE, AuthenticationError),
    (ErrorCode.RATE_LIMITED, RateLimitError),
    (ErrorCode.RESPONSE_TOO_LARGE, LimitError),
    (ErrorCode.TRUNCATED_FRAME, FrameError),
    (ErrorCode.DUPLICATE_REQUEST_ID, ProtocolViolation),
    (ErrorCode.IDLE_TIMEOUT, ProtocolError),
    (ErrorCode.INVALID_FIELD, BodyError),
])
def test_error_from_code_gives_the_most_specific_class(
        code: ErrorCode, cls: type[PaywireError]) -> None:
    err = error_from_code(code, "why", "args.x")
    assert type(err) is cls and class_for(code) is cls
    assert (err.code, err.message, err.field, str(err)) == (code, "why", "args.x", "why")
    assert err.retryable is code.is_retryable
    assert not isinstance(err, RemoteError)  # raised here, not reported by a peer
    # No subclass claims the code: the class found is the most specific there is.
    assert not any(code in sub.codes for sub in _tree() if sub is not cls and issubclass(sub, cls))
    assert ConnectionLost.codes == StorageClosed.codes == ()


def test_every_class_defaults_to_a_code_it_covers() -> None:
    for cls in _tree():
        if cls.codes:
            assert cls.code is cls.codes[0]
    assert ConnectionLost("x").code is ErrorCode.OUTCOME_UNKNOWN
    assert StorageClosed("x").code is ErrorCode.SHUTTING_DOWN


def test_remote_errors_are_both_their_class_and_remote() -> None:
    for code in ErrorCode:
        err = error_from_code(code, "no", remote=True)
        assert isinstance(err, class_for(code)) and isinstance(err, RemoteError)
        assert isinstance(err, RequestError)  # the client's name for RemoteError
        assert type(err).__name__ == class_for(code).__name__
        assert err.code is code
        assert remote_class(class_for(code)) is type(err)  # made once, then reused
    assert remote_class(PaywireError) is RemoteError


def test_extra_attributes_and_unknown_numbers() -> None:
    err = error_from_code(602, "pending", remote=True, order_id="o-1")
    assert isinstance(err, OutcomeUnknown) and err.order_id == "o-1"
    assert OutcomeUnknown("hub side").order_id is None
    odd = error_from_code(777, "from the future")
    assert type(odd) is ServerError and odd.code is ErrorCode.INTERNAL


_KEYS = st.one_of(st.sampled_from(["code", "name", "message", "field"]), st.text(max_size=8))
_VALUES = st.one_of(st.integers(), st.sampled_from([int(c) for c in ErrorCode]),
                    st.text(max_size=8), st.none(), st.binary(max_size=4), st.booleans())


@given(st.one_of(st.dictionaries(_KEYS, _VALUES), _VALUES))
def test_a_received_error_body_never_escapes_as_another_exception(body: object) -> None:
    err = RemoteError.from_body(body)
    assert isinstance(err, RemoteError) and isinstance(err, class_for(err.code))
    assert isinstance(err.message, str)


def test_from_body_keeps_code_message_and_field() -> None:
    err = RemoteError.from_body({"code": 201, "name": "INVALID_FIELD", "message": "bad",
                                 "field": "args.amount"})
    assert isinstance(err, BodyError) and isinstance(err, RemoteError)
    assert (err.code, err.message, err.field) == (ErrorCode.INVALID_FIELD, "bad", "args.amount")
    assert err.to_body() == {"code": 201, "name": "INVALID_FIELD", "message": "bad",
                             "field": "args.amount"}


def test_no_error_class_of_the_tree_is_defined_outside_protocol_errors() -> None:
    """One OutcomeUnknown, one of everything: importing every module of both packages adds
    no PaywireError subclass elsewhere, and old import paths give the same classes."""
    for pkg in (gateway, protocol):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(info.name)
    strays = [f"{c.__module__}.{c.__qualname__}" for c in _tree()
              if c.__module__.split(".")[0] in ("gateway", "protocol")
              and c.__module__ != "protocol.errors"]
    assert strays == []
    from gateway import client
    from gateway.hub import auth, banklink, routing, service
    from gateway.net import signed
    from gateway.storage import groupcommit
    from gateway.transactions import states
    assert banklink.OutcomeUnknown is service.OutcomeUnknown is client.OutcomeUnknown \
        is OutcomeUnknown
    assert banklink.BankUnavailable is BankUnavailable
    assert service.NotFound is NotFound and service.Conflict is DuplicateOrder
    assert states.InvalidTransition is InvalidTransition
    assert routing.NoRoute is errors.NoRoute and auth.AuthError is AuthenticationError
    assert groupcommit.StorageClosed is StorageClosed
    assert signed.RequestTimeout is client.RequestTimeout is RequestTimeout
    assert client.RequestError is RemoteError and client.ConnectionLost is ConnectionLost
    assert issubclass(ConnectionLost, OutcomeUnknown) and not issubclass(ConnectionLost,
                                                                         RemoteError)


# --- pickling ------------------------------------------------------------------------------
def _samples() -> list[PaywireError]:
    out: list[PaywireError] = []
    for code in ErrorCode:
        out.append(error_from_code(code, f"local {code.name}", "args.f"))
        out.append(error_from_code(code, f"remote {code.name}", None, remote=True))
    out += [StorageClosed("closing"), ConnectionLost("gone", order_id="o-9"),
            OutcomeUnknown("pending", order_id="o-8"),
            FrameError("cut", code=ErrorCode.TRUNCATED_FRAME, frames_before=["f1"]),
            RemoteError("plain", code=ErrorCode.FORBIDDEN),
            PaywireError("odd", code=ErrorCode.QUEUE_FULL)]
    return out


def _same(a: PaywireError, b: PaywireError) -> None:
    assert type(a).__name__ == type(b).__name__
    assert isinstance(b, type(a)._remote_of or type(a))
    assert isinstance(b, RemoteError) == isinstance(a, RemoteError)
    assert (b.code, b.message, b.field, b.args, vars(b)) == (a.code, a.message, a.field,
                                                             a.args, vars(a))


def test_errors_survive_pickling() -> None:
    for err in _samples():
        _same(err, pickle.loads(pickle.dumps(err, protocol=pickle.HIGHEST_PROTOCOL)))


def _raise_sample(conn: sqlite3.Connection, index: int) -> None:
    """Runs in the storage writer process: errors come back to the node as pickles."""
    raise _samples()[index]


async def test_errors_cross_the_writer_process_boundary_intact(tmp_path: Path) -> None:
    writer = GroupCommitWriter(tmp_path / "e.db", "CREATE TABLE IF NOT EXISTS t (x);")
    await writer.start()
    try:
        samples = _samples()
        for index, sent in enumerate(samples):
            with pytest.raises(PaywireError) as info:
                await writer.submit(_raise_sample, index)
            _same(sent, info.value)
    finally:
        await writer.close()


# --- the client ----------------------------------------------------------------------------
async def test_the_client_names_the_order_of_an_unknown_outcome() -> None:
    """``OutcomeUnknown.order_id`` says which order to retry. One ConnectionLost fails every
    request of a connection (``Correlator.fail_all``): each caller gets its own order id,
    and the shared instance is left alone. The request layer is replaced here (no socket):
    what is tested is ``Client._tx``'s handling of what that layer raises."""
    shared = ConnectionLost("connection lost: reset")
    hub_said = error_from_code(ErrorCode.OUTCOME_UNKNOWN, "ask again", remote=True)

    class Cut(Client):
        async def request(self, op: str, args: dict[str, Any],
                          timeout_s: float | None = None) -> dict[str, Any]:
            raise shared if args["order_id"] != "hub" else hub_said

    c = Cut("127.0.0.1", 1, merchant_id="M1", server_key="k",
            ssl_context=ssl.create_default_context())
    for oid in ("a", "b"):
        with pytest.raises(ConnectionLost) as lost:
            await c.status(oid)
        assert lost.value.order_id == oid and lost.value.message == shared.message
    assert shared.order_id is None
    with pytest.raises(OutcomeUnknown) as unknown:
        await c.status("hub")
    assert unknown.value.order_id == "hub" and isinstance(unknown.value, RequestError)


# --- end to end ----------------------------------------------------------------------------
_orders = itertools.count(1)


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("errors"), bca_nodes=1) as d:
        yield d


async def test_a_client_gets_the_class_of_each_error_response(dep: Deployment) -> None:
    card = Card(RICH[0], 12, 2030, "123")
    oid = f"typed-{next(_orders)}"
    async with dep.client() as c:
        with pytest.raises(NotFound) as missing:
            await c.status(f"never-{oid}")
        await c.charge(oid, 10_000, card=card, capture=False)
        with pytest.raises(DuplicateOrder) as duplicate:
            await c.charge(oid, 20_000, card=card, capture=False)
        await c.cancel(oid)
        with pytest.raises(InvalidTransition) as illegal:
            await c.capture(oid)
        for info, code in ((missing, ErrorCode.NOT_FOUND),
                           (duplicate, ErrorCode.DUPLICATE_ORDER),
                           (illegal, ErrorCode.INVALID_TRANSITION)):
            err = info.value
            assert isinstance(err, RequestError) and isinstance(err, TransactionError)
            assert err.code is code and err.message
        # Existing merchant code that catches RequestError by code keeps working.
        try:
            await c.capture(oid)
        except RequestError as exc:
            assert exc.code is ErrorCode.INVALID_TRANSITION
        else:
            raise AssertionError("capture of a cancelled order succeeded")
        with pytest.raises(BodyError) as bad:
            await c.refund(oid, "r1", 0)
        assert isinstance(bad.value, RequestError) and bad.value.field == "args.amount"
        assert (await c.status(oid)).transaction_status == "cancel"
