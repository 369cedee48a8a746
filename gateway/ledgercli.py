"""``paywire ledger backup|export``: operators' copies of a ledger, through ``LedgerTools``
only (no SQL outside ``gateway/ledger/``), readable without the project."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from gateway.ledger import ledger_tools
from gateway.transactions.model import Transaction

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
