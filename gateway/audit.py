"""``paywire audit``: check the ledger against the banks' books, Jepsen-style.

It reads the hub's ledger (a SQLite file or a PostgreSQL URL, through ``LedgerTools``) and
each bank's store (read-only) and reports:

* **lost**: a transaction a client was told about (``--acks``) missing from the ledger, or
  recorded in a status that cannot follow the acknowledged one;
* **duplicated**: more than one debit for one transaction (captures, payments);
* **money**: balances that no longer sum to the opening balances (money created or
  destroyed), negative holds, or holds that do not match open authorizations;
* **disagreement**: a transaction whose captured-minus-refunded amount in the ledger differs
  from what its bank moved to settlement, or bank movements with no ledger record;
* **stuck**: transactions whose bank call is still unresolved.

The process exits non-zero if any finding is reported.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bank.store import read_books
from gateway.ledger import TransactionSummary, ledger_tools
from protocol.lifecycle import TRANSITIONS
from protocol.operations import TransactionStatus


@dataclass
class Report:
    transactions: int = 0
    acks_checked: int = 0
    findings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        self.findings.append(f"{kind}: {text}")

    @property
    def clean(self) -> bool:
        return not self.findings

    def summary(self) -> dict[str, Any]:
        return {"transactions": self.transactions, "acks_checked": self.acks_checked,
                "lost": self.counts["lost"], "duplicated": self.counts["duplicated"],
                "money": self.counts["money"], "disagreement": self.counts["disagreement"],
                "stuck": self.counts["stuck"], "clean": self.clean}


def reachable(start: str) -> set[str]:
    """Statuses a transaction may legally be in after having been in ``start``."""
    seen = {start}
    todo = [TransactionStatus(start)]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt.value not in seen:
                seen.add(nxt.value)
                todo.append(nxt)
    return seen


def audit(ledger: Path | str, banks: dict[str, Path], acks: list[dict[str, Any]] | None = None
          ) -> Report:
    report = Report()
    rows = ledger_tools(ledger).summaries()
    report.transactions = len(rows)
    by_txid = {r.transaction_id: r for r in rows}
    by_order = {(r.merchant_id, r.order_id): r for r in rows}
    for r in rows:
        if r.unresolved:
            report.add("stuck", f"{r.merchant_id}/{r.order_id} ({r.transaction_id}) has an "
                                f"unresolved bank call")
    for ack in acks or []:
        report.acks_checked += 1
        row = by_order.get((ack["merchant_id"], ack["order_id"]))
        if row is None or row.transaction_id != ack["transaction_id"]:
            report.add("lost", f"acknowledged {ack['order_id']} ({ack['transaction_id']}) "
                               f"is not in the ledger")
        elif row.status not in reachable(ack["transaction_status"]):
            report.add("lost", f"{ack['order_id']} was acknowledged as "
                               f"{ack['transaction_status']} but the ledger says {row.status}")
    for bank, path in banks.items():
        _audit_bank(report, bank, path, by_txid)
    return report


def _audit_bank(report: Report, bank: str, path: Path,
                by_txid: dict[str, TransactionSummary]) -> None:
    books = read_books(path)
    if books.net != 0:
        report.add("money", f"{bank}: balances differ from opening balances by {books.net}")
    if books.held_min < 0:
        report.add("money", f"{bank}: an account has a negative hold")
    if books.held_total != books.open_holds:
        report.add("money", f"{bank}: held {books.held_total} but open authorizations total "
                            f"{books.open_holds}")
    for txid, kind, n in books.duplicated_debits:
        report.add("duplicated", f"{bank}: {n} {kind} debits for transaction {txid}")
    for txid, net in books.settled.items():
        row = by_txid.get(txid)
        if row is None:
            if net != 0:
                report.add("disagreement", f"{bank}: {net} moved for {txid}, unknown to the "
                                           f"ledger")
            continue
        if row.unresolved:
            continue  # unresolved: reported as stuck
        if net != row.captured - row.refunded:
            report.add("disagreement", f"{bank}: {txid} ({row.order_id}) settled {net} at the "
                                       f"bank but captured-refunded is "
                                       f"{row.captured - row.refunded} in the ledger "
                                       f"({row.status})")
    held_by_tx = books.held_by_tx
    for txid, row in by_txid.items():
        if row.bank != bank or row.unresolved:
            continue
        expected = row.captured - row.refunded
        if expected and txid not in books.settled:
            report.add("disagreement", f"{bank}: ledger says {row.order_id} captured "
                                       f"{expected}, the bank moved nothing")
        is_held = row.status == "authorize"
        if is_held != (txid in held_by_tx):
            report.add("disagreement", f"{bank}: {row.order_id} is {row.status} in the ledger "
                                       f"but the bank "
                                       f"{'holds' if txid in held_by_tx else 'holds no'} "
                                       f"funds for it")


def load_acks(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
