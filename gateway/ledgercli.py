"""``paywire ledger backup|export|prune``: operators' copies of a ledger, through ``LedgerTools``
only (no SQL outside ``gateway/ledger/``), readable without the project."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from gateway.ledger import PruneResult, RetentionPolicy, ledger_tools
from gateway.transactions.model import Transaction, now_ms

# The export's columns, in order: plain values a spreadsheet or ``jq`` reads as they are.
# Never a full card number: the ledger stores only the masked one.
EXPORT_COLUMNS = ("transaction_id", "merchant_id", "order_id", "gross_amount", "currency",
                  "payment_type", "status", "fraud_status", "captured_amount",
                  "refunded_amount", "created_ms", "updated_ms", "settlement_ms", "bank",
                  "masked_card", "card_brand", "va_number", "decline_reason", "metadata")


def export_row(tx: Transaction) -> dict[str, Any]:
    """One transaction as the export's plain columns."""
    row: dict[str, Any] = {c: getattr(tx, c) for c in EXPORT_COLUMNS}
    row["metadata"] = dict(tx.metadata or {})
    return row


def write_export(txs: Iterable[Transaction], fmt: str, out: TextIO) -> int:
    """Write ``txs`` as JSON lines or CSV (metadata as a JSON object in its cell)."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        for tx in txs:
            row = export_row(tx)
            row["metadata"] = json.dumps(row["metadata"], sort_keys=True)
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
            count += 1
    else:
        for tx in txs:
            out.write(json.dumps(export_row(tx), sort_keys=False) + "\n")
            count += 1
    return count


def backup(where: Path | str, dest: Path) -> None:
    """A consistent copy of the live ledger at ``where`` into ``dest`` (``LedgerError``)."""
    ledger_tools(where).backup(dest)


def export(where: Path | str, fmt: str, out: TextIO | None = None) -> int:
    return write_export(ledger_tools(where).transactions(), fmt, out or sys.stdout)


def prune(where: Path | str, policy: RetentionPolicy, dry_run: bool = False,
          now: int | None = None) -> PruneResult:
    """``paywire ledger prune``: what the hub's retention sweeper does, once, by hand (the
    same rules, ``Ledger.prune``), batch after batch until one is not full. A dry run
    deletes nothing and counts one batch (so at most ``policy.rows_max`` of each)."""
    tools = ledger_tools(where)
    at = now_ms() if now is None else now
    if dry_run:
        return tools.prune(policy, at, dry_run=True)
    webhooks = events = 0
    floors: dict[str, int] = {}
    while True:
        done = tools.prune(policy, at)
        webhooks += done.webhooks
        events += done.events
        floors.update(done.floors)
        if max(done.webhooks, done.events) < policy.rows_max:
            return PruneResult(webhooks, events, floors)


def describe_prune(result: PruneResult, dry_run: bool) -> str:
    verb = "would delete" if dry_run else "deleted"
    floors = " ".join(f"{m}={f}" for m, f in sorted(result.floors.items()))
    return (f"{verb} {result.webhooks} delivered webhook(s) and {result.events} event(s)"
            + (f"; resume floors {floors}" if floors else ""))
