"""The hub's request pipeline: the one module that owns the work done per request.

Every REQUEST frame of a merchant connection passes here, in the order its bytes arrived,
synchronously inside the read that completed it: the cheap bounds first (the merchant's
rate, the connection's in-flight bound), then the envelope decoded, the request
authenticated (HMAC, timestamp, nonce), its arguments decoded and validated — each of these
exactly once, before anything of the arguments is trusted — and admitted: a ``status``
answered from the cache, a common operation handed to a flow (``gateway.hub.flows``, no
task), anything else to one task, admitted in arrival order (docs/protocol.md §4.5).

Batches form at every hop without a batch object here: everything one read delivers is
handled in one pass of the event loop, so its ledger writes leave in one group-commit
message, its bank calls for one node in one ``bank.batch`` frame, and its answers in one
socket write. The frames of a read are taken one at a time rather than as a list, because
the connection judges each after the previous one was acted on (an answer frees its
request id; a HELLO's WELCOME sets the limits the next frame is judged by: §3).

The connection (``protocol.connection``) has already refused a duplicate request id and a
request past our GOAWAY; the session owns the handshake, events and flow control.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from gateway.config import HubConfig
from gateway.hub.auth import Authenticator, TokenBucket, replayed_elsewhere
from gateway.hub.handler import Requester, RequestHandler
from gateway.ledger.base import Ledger
from gateway.metrics import OPERATION_UNKNOWN, HubMetrics
from gateway.transactions.model import now_us
from protocol import messages
from protocol.errors import ErrorCode, PaywireError
from protocol.frame import Frame
from protocol.operations import Operation, parse_operation, validate_args

log = logging.getLogger("paywire.session")


class Source(Requester, Protocol):
    """The merchant connection a request came on, as the pipeline sees it."""

    merchant_id: str | None
    in_flight: int
    in_flight_max: int
    # request id -> (operation, received µs) until answered: what /metrics counts it under.
    answering: dict[int, tuple[str, int, str | None]]

    def send(self, data: bytes) -> None: ...

    def answered(self, rid: int, seen: tuple[str, int, str | None], outcome: str) -> None: ...


class RequestPipeline:
    """Per-request work of every merchant connection of one hub."""

    def __init__(self, auth: Authenticator, buckets: dict[str, TokenBucket],
                 handler: RequestHandler) -> None:
        self.auth = auth
        self.buckets = buckets
        self.handler = handler
        self.metrics = HubMetrics()

    def request(self, source: Source, frame: Frame) -> None:
        """Handle one REQUEST frame of ``source`` (a session past its handshake)."""
        rid = frame.request_id
        received_us = now_us()
        merchant_id = source.merchant_id
        assert merchant_id is not None
        if not self.buckets[merchant_id].take(asyncio.get_running_loop().time()):
            self.metrics.rate_limited += 1
            source.answering[rid] = (OPERATION_UNKNOWN, received_us, None)
            source.respond_error(rid, PaywireError("merchant rate limit exceeded",
                                                   code=ErrorCode.RATE_LIMITED))
            return
        if source.in_flight >= source.in_flight_max:
            self.metrics.backpressure += 1
            source.answering[rid] = (OPERATION_UNKNOWN, received_us, None)
            source.respond_error(rid, PaywireError(
                f"more than {source.in_flight_max} requests in flight",
                code=ErrorCode.TOO_MANY_IN_FLIGHT))
            return
        try:
            req = messages.decode_request(rid, frame.body)
            nonce_spent = self.auth.check(req, merchant_id)
            # Authenticated: only now are the args unpacked (the signature covers their bytes).
            op = parse_operation(req.op)
            args = validate_args(op, messages.decode_args(req.args_raw))
        except PaywireError as exc:
            source.answering[rid] = (OPERATION_UNKNOWN, received_us, None)
            source.respond_error(rid, exc)
            return
        source.answering[rid] = (op.value, received_us, args.get("order_id"))
        handler = self.handler
        if op is Operation.STATUS and "order_id" not in args:
            # By transaction id (docs/protocol.md §5.1.3): cached, it is a status of its
            # order from here on; otherwise the task looks it up in the ledger first.
            order_id = handler.order_of(merchant_id, args["transaction_id"])
            if order_id is None:
                source.request_started(rid)
                source.track(asyncio.get_running_loop().create_task(self._serve(
                    source, rid, op, args, received_us, False, req.sent_us)))
                return
            args = {"order_id": order_id}
        key = (merchant_id, args["order_id"])
        # (A shared ledger's nonce check, ``nonce_spent``, is awaited in the task below.)
        if op is Operation.STATUS and nonce_spent is None:
            now = handler.status_now(key)
            if now is not None:  # the common case: no task
                seen = source.answering.pop(rid)
                source.send(messages.encode_response(rid, now))
                source.answered(rid, seen, str(now.get("status_code", "OK")))
                return
        if nonce_spent is None and \
                handler.start(source, rid, op, key, args, received_us, sent_us=req.sent_us):
            return  # the common case: no task (gateway/hub/flows.py)
        # Admitted now, in decode order: the order's lock is taken in this order (§4.5).
        after_earlier = handler.admit(key)
        source.request_started(rid)
        task = asyncio.get_running_loop().create_task(
            self._serve(source, rid, op, args, received_us, after_earlier, req.sent_us,
                        nonce_spent))
        source.track(task)
        task.add_done_callback(lambda _t: handler.finished(key))

    async def _serve(self, source: Source, rid: int, op: Operation, args: dict[str, Any],
                     received_us: int, after_earlier: bool, sent_us: int | None,
                     nonce_spent: asyncio.Future[int | None] | None = None) -> None:
        """The uncommon request, in its own task: run it, answer it, end it. With a shared
        ledger, first its nonce's write there (these resolve in submission order, so the
        tasks still reach the order's lock in admission order)."""
        merchant_id = source.merchant_id
        assert merchant_id is not None
        try:
            if nonce_spent is not None:
                replayed_elsewhere(await nonce_spent)
            result, replayed = await self.handler.execute(
                merchant_id, op, args, received_us, after_earlier=after_earlier,
                sent_us=sent_us)
            source.respond(rid, result, replayed)
            if not replayed and "order_id" in args:
                self.handler.answered((merchant_id, args["order_id"]), now_us())
        except PaywireError as exc:
            source.respond_error(rid, exc)
        except Exception:
            log.exception("request %d (%s) failed", rid, op.value)
            source.respond_error(rid, PaywireError("internal error", code=ErrorCode.INTERNAL))
        finally:
            source.request_finished(rid)


class SessionHost(Protocol):
    """What a merchant session uses of the hub beyond its ``RequestHandler``: the merchants'
    keys and limits, the connection counts, and the event stream it may subscribe to. (A
    protocol, so the session module does not import the hub's: no circle.)"""

    @property
    def cfg(self) -> HubConfig: ...

    @property
    def pipeline(self) -> RequestPipeline: ...

    @property
    def connections_by_merchant(self) -> dict[str, int]: ...

    @property
    def event_seq(self) -> dict[str, int]: ...

    @property
    def event_floor(self) -> dict[str, int]: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def sessions(self) -> set[Any]: ...

    @property
    def stopping(self) -> bool: ...


    def event_frame(self, merchant_id: str, seq: int, data: dict[str, Any]) -> bytes: ...

    def subscribe(self, session: Any) -> None: ...

    def unsubscribe(self, session: Any) -> None: ...

    def session_drained(self, session: Any) -> None: ...
