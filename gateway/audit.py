"""``paywire audit``: check the ledger against the banks' books, Jepsen-style.

It reads the hub's ledger and each bank's store (read-only) and reports:

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
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def audit(ledger: Path, banks: dict[str, Path], acks: list[dict[str, Any]] | None = None
          ) -> Report:
    report = Report()
    conn = _ro(ledger)
    try:
        rows = conn.execute("SELECT merchant_id, order_id, transaction_id, status, unresolved, "
                            "captured, refunded, bank FROM transactions").fetchall()
    finally:
        conn.close()
    report.transactions = len(rows)
    by_txid = {r[2]: r for r in rows}
    by_order = {(r[0], r[1]): r for r in rows}
    for r in rows:
        if r[4]:
            report.add("stuck", f"{r[0]}/{r[1]} ({r[2]}) has an unresolved bank call")
    for ack in acks or []:
        report.acks_checked += 1
        row = by_order.get((ack["merchant_id"], ack["order_id"]))
        if row is None or row[2] != ack["transaction_id"]:
            report.add("lost", f"acknowledged {ack['order_id']} ({ack['transaction_id']}) "
                               f"is not in the ledger")
        elif row[3] not in reachable(ack["transaction_status"]):
            report.add("lost", f"{ack['order_id']} was acknowledged as "
                               f"{ack['transaction_status']} but the ledger says {row[3]}")
    for bank, path in banks.items():
        _audit_bank(report, bank, path, by_txid)
    return report


def _audit_bank(report: Report, bank: str, path: Path, by_txid: dict[str, Any]) -> None:
    conn = _ro(path)
    try:
        totals = conn.execute("SELECT COALESCE(SUM(balance - opening), 0), "
                              "COALESCE(MIN(held), 0), COALESCE(SUM(held), 0) "
                              "FROM accounts").fetchone()
        open_holds = conn.execute("SELECT COALESCE(SUM(amount), 0) FROM holds "
                                  "WHERE state = 'held'").fetchone()[0]
        debits = conn.execute(
            "SELECT transaction_id, kind, COUNT(*) FROM effects WHERE delta < 0 AND "
            "kind IN ('capture', 'payment') AND account != 'settlement' "
            "GROUP BY transaction_id, kind HAVING COUNT(*) > 1").fetchall()
        settled = conn.execute("SELECT transaction_id, SUM(delta) FROM effects "
                               "WHERE account = 'settlement' GROUP BY transaction_id").fetchall()
        held_by_tx = dict(conn.execute("SELECT transaction_id, amount FROM holds "
                                       "WHERE state = 'held'").fetchall())
    finally:
        conn.close()
    if totals[0] != 0:
        report.add("money", f"{bank}: balances differ from opening balances by {totals[0]}")
    if totals[1] < 0:
        report.add("money", f"{bank}: an account has a negative hold")
    if totals[2] != open_holds:
        report.add("money", f"{bank}: held {totals[2]} but open authorizations total "
                            f"{open_holds}")
    for txid, kind, n in debits:
        report.add("duplicated", f"{bank}: {n} {kind} debits for transaction {txid}")
    for txid, net in settled:
        row = by_txid.get(txid)
        if row is None:
            if net != 0:
                report.add("disagreement", f"{bank}: {net} moved for {txid}, unknown to the "
                                           f"ledger")
            continue
        if row[4]:
            continue  # unresolved: reported as stuck
        if net != row[5] - row[6]:
            report.add("disagreement", f"{bank}: {txid} ({row[1]}) settled {net} at the bank "
                                       f"but captured-refunded is {row[5] - row[6]} in the "
                                       f"ledger ({row[3]})")
    settled_ids = {txid for txid, _ in settled}
    for txid, row in by_txid.items():
        if row[7] != bank or row[4]:
            continue
        expected = row[5] - row[6]
        if expected and txid not in settled_ids:
            report.add("disagreement", f"{bank}: ledger says {row[1]} captured {expected}, "
                                       f"the bank moved nothing")
        is_held = row[3] == "authorize"
        if is_held != (txid in held_by_tx):
            report.add("disagreement", f"{bank}: {row[1]} is {row[3]} in the ledger but the "
                                       f"bank {'holds' if txid in held_by_tx else 'holds no'} "
                                       f"funds for it")


def load_acks(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
