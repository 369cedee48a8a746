"""``paywire trace ORDER_ID``: fetch a transaction's hops, print the text chart, draw a PNG.

The hops come from the hub through the client library's ``status`` (what a merchant sees),
or with ``--ledger PATH`` from the hub's ledger file, offline, through the ledger interface
(``LedgerTools.transaction``): the last committed state, so ``answered``, kept in memory by
a running hub, may be missing there.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.tracing import timeline


@dataclass(frozen=True, slots=True)
class Traced:
    """What the chart says about a transaction besides its hops."""

    merchant_id: str
    order_id: str
    transaction_id: str
    payment_type: str
    status: str
    fraud_status: str
    hops_us: dict[str, Any]

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> Traced:
        """From a ``transaction`` map (docs/protocol.md §5.2)."""
        return cls(result["merchant_id"], result["order_id"], result["transaction_id"],
                   result["payment_type"], result["transaction_status"],
                   result["fraud_status"], dict(result.get("hops_us") or {}))

    @property
    def title(self) -> str:
        return (f"trace of order {self.order_id} (merchant {self.merchant_id}): "
                f"{self.payment_type}, {self.status}/{self.fraud_status}, "
                f"transaction {self.transaction_id}")


class TraceError(Exception):
    """The transaction could not be fetched; the message is the one line to print."""


async def fetch_from_hub(options: dict[str, Any], order_id: str) -> Traced:
    """The transaction as the hub's ``status`` answers it (``options``: the CLI's client
    options: host, port, merchant_id, server_key, certs_dir)."""
    from gateway.client import connect
    from protocol.errors import PaywireError

    opts = dict(options)
    host, port = opts.pop("host"), opts.pop("port")
    try:
        async with connect(host, port, **opts) as client:
            tx = await client.status(order_id)
    except PaywireError as exc:  # the hub's answer (NOT_FOUND, ...) or a lost connection
        raise TraceError(f"{exc.code.name}: {exc.message}") from None
    except OSError as exc:
        raise TraceError(f"cannot reach the hub at {host}:{port}: {exc}") from None
    return Traced(tx.merchant_id, tx.order_id, tx.transaction_id, tx.payment_type,
                  tx.transaction_status, tx.fraud_status, dict(tx.hops_us))


def fetch_from_ledger(path: Path, merchant_id: str, order_id: str) -> Traced:
    """The transaction as last committed in the ledger at ``path``."""
    from gateway.ledger import LedgerError, ledger_tools
    from gateway.transactions.model import RecordFormatError

    if not path.is_file():
        raise TraceError(f"no ledger file at {path}")
    try:
        tx = ledger_tools(path).transaction(merchant_id, order_id)
    except (LedgerError, RecordFormatError) as exc:
        raise TraceError(str(exc)) from None
    if tx is None:
        raise TraceError(f"NOT_FOUND: no transaction for order {order_id!r} of merchant "
                         f"{merchant_id!r} in {path}")
    return Traced.from_result(tx.to_result())


def show(traced: Traced, png: Path | None) -> str:
    """The text chart of ``traced``; with ``png``, also draw it there."""
    tl = timeline.build(traced.hops_us)
    text = timeline.render_text(tl, traced.title,
                                reasons=timeline.why_missing(tl, traced.fraud_status))
    if png is not None:
        from gateway.tracing.chart import write_png

        write_png(tl, traced.title, png)
        text += f"wrote {png}\n"
    return text


def run(order_id: str, *, png: Path | None, ledger: Path | None, merchant_id: str,
        client_options: dict[str, Any] | None) -> int:
    """The command: 0 with the chart on stdout; 1 with one line on stderr when the
    transaction cannot be fetched or the PNG cannot be written."""
    try:
        if ledger is not None:
            traced = fetch_from_ledger(ledger, merchant_id, order_id)
        else:
            assert client_options is not None
            traced = asyncio.run(fetch_from_hub(client_options, order_id))
        sys.stdout.write(show(traced, png))
    except TraceError as exc:
        print(f"paywire trace: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the PNG's file
        print(f"paywire trace: cannot write {png}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
